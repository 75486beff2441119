//! The AMX register tile: up to 32 pixels × 48 output channels in tile registers, summed by
//! `tdpbf16ps` over every tap and every 32 input channels (bf16), or by `tdpbusd` over every 64
//! (u8 × s8), then the bf16 or the u8 zmm epilogue.

use super::*;

/// Input channels one `tdpbf16ps` step reads per pixel: 16 pairs, 64 bytes.
pub const AMX_CHANNELS: usize = 32;

/// Bytes of one accumulator tile (16 rows of 16 f32) in the epilogue's scratch.
const C_TILE_BYTES: usize = 1024;

/// The AMX tile for one shape and epilogue (bf16; int8 as [`AmxTile::data`] says). Its arguments
/// are [`ZmmTile`]'s, the prefetch pointer included. Tile registers: per A tile (16 pixels, one
/// row each: 32 input channels, `pixel_step` bytes apart) `vectors` accumulators C of 16 pixels × 16 output channels; each
/// weight tile B is 16 channel pairs × 16 output channels of the panel `[tap][pair][16 · vectors]
/// [2]`, a row of `64 · vectors` bytes per pair. The accumulators start from the bias (a tile
/// load with stride 0 repeats its row), the steps loop over `chunks` 32-channel blocks per tap
/// and the taps like [`ZmmTile`]'s, and the epilogue stores the accumulators to the stack and
/// finishes each valid pixel's vectors on zmm registers as the bf16 [`ZmmTile`] does.
///
/// Before the products, the tile asks for each pixel's output cache lines with intent to write
/// (`prefetchw`), so that they arrive while the products run.
///
/// A kernel loads the configuration of 16 rows in every tile register once, before its tiles
/// ([`amx_configure`]), and releases it after them. A tile of a multiple of 16 pixels runs in
/// it; a tile with a partial block of 16 loads a configuration with that block's rows at its
/// start and the full one back at its end (a partial block computed in full rows would cost as
/// much as a full one). With `configures`, the tile loads its configuration itself and releases
/// it at its end (to run it alone).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AmxTile {
    /// Output pixels, 1 ..= 32: up to 16 per A tile.
    pub pixels: usize,
    /// Accumulator tiles of 16 output channels per A tile: up to 3 with one A tile, 2 with two.
    pub vectors: usize,
    /// Channels stored of the last vector, 1 ..= 16 (a mask below 16).
    pub last_lanes: usize,
    /// The taps: rows × columns, row-major; the weights follow in the same order.
    pub taps: [usize; 2],
    /// Bytes from one tap's input to the next tap row's and to the next column's.
    pub tap_steps: [i32; 2],
    /// Blocks of [`AMX_CHANNELS`] input channels per tap.
    pub chunks: usize,
    /// Bytes from one of the tile's input pixels to the next.
    pub pixel_step: i32,
    /// Whether the accumulators start from the bias (else from zero).
    pub bias: bool,
    /// Whether the bf16 residual is added before storing.
    pub residual: bool,
    /// Whether ReLU ends the epilogue.
    pub relu: bool,
    /// Whether the tile configures the tile registers itself and releases them at its end.
    pub configures: bool,
    /// Bytes the `prefetch` pointer moves on per 32-channel step, each of its cache lines
    /// prefetched into L2 as it goes; 0: the tile prefetches nothing.
    pub prefetch_step: i32,
    /// [`Data::Bf16`]: `tdpbf16ps` on channel pairs, the bf16 epilogue. [`Data::U8S8`]:
    /// `tdpbusd` on quads of u8 input and s8 weights (`chunks` of 64 channels, the same 64 bytes
    /// a step), i32 accumulators from zero, and [`ZmmTile`]'s requantization (its table at the
    /// `bias` argument; `bias` and `relu` off).
    pub data: Data,
}

/// Tile registers of the kernel-wide configuration: four accumulators, two A tiles, two B tiles,
/// all 16 rows of 64 bytes.
const AMX_TILES: usize = 8;

/// `ldtilecfg` of the kernel-wide configuration (palette 1, [`AMX_TILES`] tiles of 16 rows × 64
/// bytes), then `ret`; the configuration follows the code.
pub fn amx_configure() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut config = a.create_label();
    a.ldtilecfg(ptr(config))?;
    a.ret()?;
    a.set_label(&mut config)?;
    a.db(&config_bytes(&[]))?;
    a.assemble(0)
}

/// `tilerelease`, then `ret`: the tile registers back to their initial state, which spares the
/// kernel saving them at a context switch.
pub fn amx_release() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    a.tilerelease()?;
    a.ret()?;
    a.assemble(0)
}

/// The 64-byte configuration: palette 1, every tile 64 bytes a row, 16 rows but for the tiles
/// `short` lists with their rows.
fn config_bytes(short: &[(usize, usize)]) -> [u8; 64] {
    let mut cfg = [0u8; 64];
    cfg[0] = 1;
    for t in 0..AMX_TILES {
        cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
        cfg[48 + t] = 16;
    }
    for &(t, rows) in short {
        cfg[48 + t] = rows as u8;
    }
    cfg
}

/// `tmm<i>`.
fn tmm(i: usize) -> AsmRegisterTmm {
    [tmm0, tmm1, tmm2, tmm3, tmm4, tmm5, tmm6, tmm7][i]
}

impl AmxTile {
    /// `tile<index>_amxbf16_<pixels>x<vectors>` (`amxint8` for u8).
    pub fn name(&self, index: usize) -> String {
        let isa = match self.data {
            Data::U8S8 => "amxint8",
            Data::F32 | Data::Bf16 => "amxbf16",
        };
        format!("tile{index}_{isa}_{}x{}", self.pixels, self.vectors)
    }

    /// A tiles (16 pixels each).
    fn a_tiles(&self) -> usize {
        self.pixels.div_ceil(16)
    }

    /// The tiles of a partial last block of pixels, with its rows (none when the blocks are
    /// full).
    fn short_tiles(&self) -> Vec<(usize, usize)> {
        let rows = self.pixels % 16;
        if rows == 0 {
            return Vec::new();
        }
        let last = self.a_tiles() - 1;
        let mut short: Vec<(usize, usize)> =
            (0..self.vectors).map(|j| (self.c(last, j), rows)).collect();
        short.push((self.a(last), rows));
        short
    }

    /// Tile registers: the accumulators first (A tile-major), then the A tiles, then the B tiles.
    fn c(&self, i: usize, j: usize) -> usize {
        i * self.vectors + j
    }
    fn a(&self, i: usize) -> usize {
        self.a_tiles() * self.vectors + i
    }
    fn b(&self, j: usize) -> usize {
        self.a_tiles() * (self.vectors + 1) + j
    }

    /// The machine code (see the type's documentation). Registers: `r10` input, `r11` weights,
    /// `rbx` the A stride (pixel step), `r12` the B stride (a weight row), `eax` the channel
    /// loop, `esi` and `edx` the tap rows and columns.
    pub fn code(&self) -> Result<Vec<u8>, IcedError> {
        let (m, n) = (self.pixels, self.vectors);
        let a_tiles = self.a_tiles();
        assert!((1..=32).contains(&m) && n >= 1, "{self:?}");
        assert!(a_tiles * n + a_tiles + n <= 8, "{self:?}");
        assert!(
            (1..=16).contains(&self.last_lanes) && self.chunks >= 1,
            "{self:?}"
        );
        let u8 = self.data == Data::U8S8;
        assert!(self.data != Data::F32, "{self:?}");
        assert!(!u8 || (!self.bias && !self.relu), "{self:?}");
        let mut a = CodeAssembler::new(64)?;
        let (mut own, mut full) = (a.create_label(), a.create_label());
        let short = self.short_tiles();
        let scratch = (C_TILE_BYTES * a_tiles * n) as i32;
        if u8 {
            // The loops count tap columns in edx; the requantization table is read after them.
            a.push(rdx)?;
        }
        // Bytes the tile pushes before its scratch.
        let pushed = if u8 { 24 } else { 16 };
        a.push(rbx)?;
        a.push(r12)?;
        a.sub(rsp, scratch)?;
        if self.configures || !short.is_empty() {
            a.ldtilecfg(ptr(own))?;
        }
        // The accumulators: the bias row repeated (stride 0), or zero.
        a.xor(eax, eax)?;
        for i in 0..a_tiles {
            for j in 0..n {
                let c = tmm(self.c(i, j));
                match self.bias {
                    true => a.tileloadd(c, ptr(rdx + rax + 64 * j as i32))?,
                    false => a.tilezero(c)?,
                }
            }
        }
        // Claim the output lines while the products run: with two threads, the next kernels'
        // reads leave the lines shared by both cores, and a store to a shared line waits for
        // the other core to drop it, one line after another at commit. `prefetchw` asks for
        // them all at once (Inception-ResNet-v2's residual up-projections, in place in the
        // block's input, spent half their two-thread time there).
        let value = if u8 { 1 } else { 2 };
        let bytes = value * (16 * (n - 1) + self.last_lanes);
        for p in 0..m {
            a.mov(rax, qword_ptr(rcx + 8 * p as i32))?;
            for line in 0..bytes.div_ceil(64) {
                a.prefetchw(byte_ptr(rax + r9 + 64 * line as i32))?;
            }
        }
        let row = (64 * n) as i32;
        a.mov(rbx, self.pixel_step as i64)?;
        a.mov(r12, row as i64)?;
        a.mov(r10, rdi)?;
        a.mov(r11, rsi)?;
        if self.prefetch_step > 0 {
            // The seventh argument, above the return address, the pushes and the scratch.
            a.mov(rdi, qword_ptr(rsp + scratch + pushed + 8))?;
        }
        let [rows, columns] = self.taps;
        let [row_step, column_step] = self.tap_steps;
        let moved = (2 * AMX_CHANNELS * self.chunks) as i32;
        let mut tap_row = a.create_label();
        let mut tap = a.create_label();
        if rows > 1 {
            a.mov(esi, rows as u32)?;
            a.set_label(&mut tap_row)?;
        }
        if columns > 1 {
            a.mov(edx, columns as u32)?;
            a.set_label(&mut tap)?;
        }
        a.mov(eax, self.chunks as u32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        for i in 0..a_tiles {
            let at = 16 * i as i32 * self.pixel_step;
            a.tileloadd(tmm(self.a(i)), ptr(r10 + rbx + at))?;
        }
        for j in 0..n {
            a.tileloadd(tmm(self.b(j)), ptr(r11 + r12 + 64 * j as i32))?;
            for i in 0..a_tiles {
                match u8 {
                    true => a.tdpbusd(tmm(self.c(i, j)), tmm(self.a(i)), tmm(self.b(j)))?,
                    false => a.tdpbf16ps(tmm(self.c(i, j)), tmm(self.a(i)), tmm(self.b(j)))?,
                }
            }
        }
        if self.prefetch_step > 0 {
            for line in 0..(self.prefetch_step as usize).div_ceil(64) {
                a.prefetcht1(byte_ptr(rdi + 64 * line as i32))?;
            }
            a.add(rdi, self.prefetch_step)?;
        }
        a.add(r10, (2 * AMX_CHANNELS) as i32)?;
        a.add(r11, 16 * row)?;
        a.dec(eax)?;
        a.jnz(top)?;
        if columns > 1 {
            a.add(r10, column_step - moved)?;
            a.dec(edx)?;
            a.jnz(tap)?;
        }
        if rows > 1 {
            let back = match columns > 1 {
                true => row_step - columns as i32 * column_step,
                false => row_step - moved,
            };
            a.add(r10, back)?;
            a.dec(esi)?;
            a.jnz(tap_row)?;
        }
        // The accumulators to the stack, 64 bytes a row.
        a.mov(r12, 64i64)?;
        for i in 0..a_tiles {
            for j in 0..n {
                let at = (C_TILE_BYTES * self.c(i, j)) as i32;
                a.tilestored(ptr(rsp + r12 + at), tmm(self.c(i, j)))?;
            }
        }
        match (self.configures, short.is_empty()) {
            (true, _) => a.tilerelease()?,
            // Back to the kernel's configuration.
            (false, false) => a.ldtilecfg(ptr(full))?,
            (false, true) => {}
        }
        let masked = self.last_lanes < 16;
        if masked {
            a.mov(eax, (1u32 << self.last_lanes) - 1)?;
            a.kmovw(k1, eax)?;
        }
        let (acc, zero) = (zmm(0), zmm(31));
        if self.relu {
            a.vpxord(zero, zero, zero)?;
        }
        let top = zmm(30);
        if u8 {
            a.mov(eax, 255f32.to_bits())?;
            a.vpbroadcastd(top, eax)?;
            a.mov(rdx, qword_ptr(rsp + scratch + 16))?;
        }
        for p in 0..m {
            a.mov(rax, qword_ptr(rcx + 8 * p as i32))?;
            if self.residual {
                a.mov(r10, qword_ptr(r8 + 8 * p as i32))?;
            }
            for j in 0..n {
                let at = (C_TILE_BYTES * self.c(p / 16, j) + 64 * (p % 16)) as i32;
                let partial = masked && j == n - 1;
                if u8 {
                    a.vcvtdq2ps(acc, zmmword_ptr(rsp + at))?;
                    let regs = [zmm(1), zmm(2), top];
                    super::zmm::finish_u8(&mut a, acc, regs, n, j, partial, self.residual)?;
                    continue;
                }
                a.vmovups(acc, zmmword_ptr(rsp + at))?;
                finish_bf16(
                    &mut a,
                    acc,
                    (1, zero),
                    32 * j as i32,
                    partial,
                    (self.residual, self.relu),
                )?;
            }
        }
        a.add(rsp, scratch)?;
        a.pop(r12)?;
        a.pop(rbx)?;
        if u8 {
            a.pop(rdx)?;
        }
        a.vzeroupper()?;
        a.ret()?;
        a.set_label(&mut own)?;
        a.db(&config_bytes(&short))?;
        a.set_label(&mut full)?;
        a.db(&config_bytes(&[]))?;
        a.assemble(0)
    }
}

/// The bf16 epilogue of one accumulator vector `acc`: with `residual`, the bf16 residual at
/// `r10 + r9 + at` widened (into zmm `spare`) and added; with `relu`, the maximum with `zero`;
/// then rounded to bf16 (nearest even, into ymm `spare`) and stored at `rax + r9 + at`, under
/// mask `k1` when `partial`.
pub(super) fn finish_bf16(
    a: &mut CodeAssembler,
    acc: AsmRegisterZmm,
    (spare, zero): (usize, AsmRegisterZmm),
    at: i32,
    partial: bool,
    (residual, relu): (bool, bool),
) -> Result<(), IcedError> {
    let wide = zmm(spare);
    if residual {
        // bf16 → f32: the 16 bits become the high half of each lane.
        match partial {
            true => a.vpmovzxwd(wide.k1().z(), ymmword_ptr(r10 + r9 + at))?,
            false => a.vpmovzxwd(wide, ymmword_ptr(r10 + r9 + at))?,
        }
        a.vpslld(wide, wide, 16)?;
        a.vaddps(acc, acc, wide)?;
    }
    if relu {
        // maxps returns its second operand when either is NaN: NaN becomes 0, as in the
        // interpreter's f32::max.
        a.vmaxps(acc, acc, zero)?;
    }
    let half = ymm(spare);
    a.vcvtneps2bf16(half, acc)?;
    match partial {
        true => a.vmovdqu16(ymmword_ptr(rax + r9 + at).k1(), half),
        false => a.vmovdqu16(ymmword_ptr(rax + r9 + at), half),
    }
}
