//! The AVX-512 register tile: M pixels × N zmm vectors over every tap and input channel, with the
//! fused epilogue and the weight prefetch.

use super::*;

/// Input channel steps per loop iteration of a [`ZmmTile`].
pub const ZMM_UNROLL: usize = 4;

/// The u8 epilogue of vector `j` of `vectors` in `acc` (f32 of the i32 sums): `· M + B`, `+ R ·
/// residual` (the u8 residual at `r10 + r9 + 16j`, widened into `widened`), clamped to `L ..=
/// 255` (`top` holds 255.0) in f32 (so that no conversion overflows), rounded to nearest even and
/// stored as 16 bytes at `rax + r9 + 16j`, under mask `k1` when `partial`. `rdx` is the table
/// (see [`Data::U8S8`]); `scale` is scratch.
pub(super) fn finish_u8(
    a: &mut CodeAssembler,
    acc: AsmRegisterZmm,
    [scale, widened, top]: [AsmRegisterZmm; 3],
    vectors: usize,
    j: usize,
    partial: bool,
    residual: bool,
) -> Result<(), IcedError> {
    let table = (64 * vectors) as i32;
    let at = 16 * j as i32;
    let row = 64 * j as i32;
    a.vmovups(scale, zmmword_ptr(rdx + row))?;
    a.vfmadd213ps(acc, scale, zmmword_ptr(rdx + table + row))?;
    if residual {
        match partial {
            true => a.vpmovzxbd(widened.k1().z(), xmmword_ptr(r10 + r9 + at))?,
            false => a.vpmovzxbd(widened, xmmword_ptr(r10 + r9 + at))?,
        }
        a.vcvtdq2ps(widened, widened)?;
        a.vfmadd231ps(acc, widened, zmmword_ptr(rdx + 2 * table + row))?;
    }
    // maxps returns its second operand when either is NaN: NaN becomes the floor.
    a.vmaxps(acc, acc, zmmword_ptr(rdx + 3 * table + row))?;
    a.vminps(acc, acc, top)?;
    a.vcvtps2dq(acc, acc)?;
    // The values are 0 ..= 255 now: vpmovusdb's unsigned saturation changes none.
    match partial {
        true => a.vpmovusdb(xmmword_ptr(rax + r9 + at).k1(), acc),
        false => a.vpmovusdb(xmmword_ptr(rax + r9 + at), acc),
    }
}

/// The AVX-512 tile for one shape and epilogue (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZmmTile {
    /// Output pixels.
    pub pixels: usize,
    /// zmm vectors of 16 output channels per pixel (the panel is 16 · `vectors` wide).
    pub vectors: usize,
    /// Channels stored of the last vector, 1 ..= 16 (a mask below 16).
    pub last_lanes: usize,
    /// The taps: rows × columns, row-major; the weights follow in the same order.
    pub taps: [usize; 2],
    /// Bytes from one tap's input to the next tap row's and to the next column's.
    pub tap_steps: [i32; 2],
    /// Input channel steps per tap: channels (f32), channel pairs (bf16) or quads (u8).
    pub channels: usize,
    /// Bytes from one of the tile's input pixels to the next.
    pub pixel_step: i32,
    /// Whether the accumulators start from the bias (else from zero).
    pub bias: bool,
    /// Whether the residual is added before storing.
    pub residual: bool,
    /// Whether ReLU ends the epilogue.
    pub relu: bool,
    /// Bytes the `prefetch` pointer moves on per channel loop iteration, each of its cache lines
    /// prefetched into L2 as it goes; 0: the tile prefetches nothing.
    pub prefetch_step: i32,
    /// What the activations and weights are.
    pub data: Data,
}

/// The data types of a [`ZmmTile`]. Every step reads one dword of a pixel's input (a channel, a
/// pair or a quad) and a 64-byte weight row per vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Data {
    /// f32 everywhere; `vfmadd231ps`.
    F32,
    /// bf16 activations and weights (AVX512-BF16): weights `[tap][pair][16 · vectors][2]`,
    /// products accumulated in f32 with `vdpbf16ps`; bias and epilogue in f32; the residual and
    /// output bf16, the output rounded to nearest even.
    Bf16,
    /// u8 activations, s8 weights `[tap][quad][16 · vectors][4]` (AVX512-VNNI): products
    /// accumulated exactly in i32 with `vpdpbusd`, then requantized per output channel in f32:
    /// `q = round_even(min(max(acc · M + B + R · residual, L), 255))`. The `bias` argument
    /// points at the table `M`, `B`, `R` and `L` (16 · vectors f32 each; `R` is read with a
    /// residual only); the tile's `bias` and `relu` are off (the bias and the output's zero
    /// point are in `B`; the floor `L` is the output's zero point after a ReLU, else 0).
    U8S8,
}

impl ZmmTile {
    /// `tile<index>_avx512_<pixels>x<vectors>`: the shape, and the module's index of the
    /// specialization.
    pub fn name(&self, index: usize) -> String {
        let isa = match self.data {
            Data::F32 => "avx512",
            Data::Bf16 => "avx512bf16",
            Data::U8S8 => "avx512vnni",
        };
        format!("tile{index}_{isa}_{}x{}", self.pixels, self.vectors)
    }

    fn acc(&self, pixel: usize, vector: usize) -> AsmRegisterZmm {
        zmm(pixel * self.vectors + vector)
    }

    /// Registers: accumulators zmm0.., weights after them, the broadcast (and after the loops,
    /// ReLU's zero) in zmm31. Each tap is a loop of [`ZMM_UNROLL`] channel steps over `r10`
    /// (input) and `r11` (weights), with the leftover steps after it; the weights run on from
    /// tap to tap, the input moves to the next tap, and loops over the tap rows (`rsi`) and
    /// columns (`rdx`) repeat that code, which stays small whatever the kernel's size.
    pub fn code(&self) -> Result<Vec<u8>, IcedError> {
        let (m, n) = (self.pixels, self.vectors);
        assert!(m >= 1 && n >= 1 && m * n + n < 32, "{self:?}");
        assert!((1..=16).contains(&self.last_lanes), "{self:?}");
        if self.data == Data::U8S8 {
            // The requantization needs four registers after the accumulators.
            assert!(m * n <= 28 && !self.bias && !self.relu, "{self:?}");
        }
        let mut a = CodeAssembler::new(64)?;
        let masked = self.last_lanes < 16;
        if masked {
            a.mov(eax, (1u32 << self.last_lanes) - 1)?;
            a.kmovw(k1, eax)?;
        }
        for p in 0..m {
            for j in 0..n {
                let acc = self.acc(p, j);
                match self.bias {
                    true => a.vmovups(acc, zmmword_ptr(rdx + 64 * j as i32))?,
                    false => a.vpxord(acc, acc, acc)?,
                }
            }
        }
        let row = (16 * n * 4) as i32;
        let loops = self.channels / ZMM_UNROLL;
        let rest = self.channels % ZMM_UNROLL;
        let [rows, columns] = self.taps;
        let [row_step, column_step] = self.tap_steps;
        // After a tap, the input pointer has moved on by the looped channels.
        let moved = (4 * ZMM_UNROLL * loops) as i32;
        a.mov(r10, rdi)?;
        a.mov(r11, rsi)?;
        if self.prefetch_step > 0 {
            // The seventh argument, above the return address.
            a.mov(rdi, qword_ptr(rsp + 8))?;
        }
        if self.data == Data::U8S8 {
            // The loops count tap columns in rdx; the requantization table is read after them.
            a.push(rdx)?;
        }
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
        if loops > 0 {
            a.mov(eax, loops as u32)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            for u in 0..ZMM_UNROLL {
                self.step(&mut a, u)?;
            }
            if self.prefetch_step > 0 {
                for line in 0..(self.prefetch_step as usize).div_ceil(64) {
                    a.prefetcht1(byte_ptr(rdi + 64 * line as i32))?;
                }
                a.add(rdi, self.prefetch_step)?;
            }
            a.add(r10, (4 * ZMM_UNROLL) as i32)?;
            a.add(r11, row * ZMM_UNROLL as i32)?;
            a.dec(eax)?;
            a.jnz(top)?;
        }
        for u in 0..rest {
            self.step(&mut a, u)?;
        }
        if rest > 0 {
            a.add(r11, row * rest as i32)?;
        }
        if columns > 1 {
            a.add(r10, column_step - moved)?;
            a.dec(edx)?;
            a.jnz(tap)?;
        }
        if rows > 1 {
            // From the row's last tap plus one column to the next row's first tap.
            let back = match columns > 1 {
                true => row_step - columns as i32 * column_step,
                false => row_step - moved,
            };
            a.add(r10, back)?;
            a.dec(esi)?;
            a.jnz(tap_row)?;
        }
        match self.data {
            Data::F32 | Data::Bf16 => self.float_epilogue(&mut a, masked)?,
            Data::U8S8 => {
                a.pop(rdx)?;
                self.requantize(&mut a, masked)?
            }
        }
        a.vzeroupper()?;
        a.ret()?;
        a.assemble(0)
    }

    /// The f32 and bf16 epilogue: residual, ReLU and the store of every accumulator, the last
    /// vector masked when `masked`.
    fn float_epilogue(&self, a: &mut CodeAssembler, masked: bool) -> Result<(), IcedError> {
        let (m, n) = (self.pixels, self.vectors);
        let zero = zmm(31);
        if self.relu {
            a.vpxord(zero, zero, zero)?;
        }
        // Bytes of one output vector: 16 f32, or 16 bf16.
        let vector_bytes = match self.data {
            Data::Bf16 => 32,
            Data::F32 | Data::U8S8 => 64,
        };
        let bf16 = self.data == Data::Bf16;
        self.each_output(a, masked, |a, acc, j, partial| {
            let at = vector_bytes * j as i32;
            if bf16 {
                // After the loops the weight registers are free: the first holds a widened
                // residual.
                let (flags, spare) = ((self.residual, self.relu), (m * n, zero));
                return super::amx::finish_bf16(a, acc, spare, at, partial, flags);
            }
            if self.residual {
                match partial {
                    true => a.vaddps(acc.k1().z(), acc, zmmword_ptr(r10 + r9 + at))?,
                    false => a.vaddps(acc, acc, zmmword_ptr(r10 + r9 + at))?,
                }
            }
            if self.relu {
                // maxps returns its second operand when either is NaN: NaN becomes 0, as in
                // the interpreter's f32::max.
                a.vmaxps(acc, acc, zero)?;
            }
            match partial {
                true => a.vmovups(zmmword_ptr(rax + r9 + at).k1(), acc),
                false => a.vmovups(zmmword_ptr(rax + r9 + at), acc),
            }
        })
    }

    /// The u8 epilogue (see [`Data::U8S8`]): per accumulator, i32 → f32, `· M + B`, `+ R ·
    /// residual`, clamped to L ..= 255 in f32 (so that no conversion overflows), rounded to
    /// nearest even, and stored as 16 bytes, the last vector masked when `masked`. `rdx` is the
    /// table, `r9` the channel offset in bytes.
    fn requantize(&self, a: &mut CodeAssembler, masked: bool) -> Result<(), IcedError> {
        let n = self.vectors;
        let (scale, widened, top) = (zmm(28), zmm(29), zmm(31));
        a.mov(eax, 255f32.to_bits())?;
        a.vpbroadcastd(top, eax)?;
        self.each_output(a, masked, |a, acc, j, partial| {
            a.vcvtdq2ps(acc, acc)?;
            finish_u8(a, acc, [scale, widened, top], n, j, partial, self.residual)
        })
    }

    /// Calls `body(a, accumulator, vector, partial)` for every accumulator, pixel by pixel, with
    /// the pixel's output pointer in `rax` and, with a residual, its residual pointer in `r10`;
    /// `partial` marks the masked last vector when `masked`.
    fn each_output(
        &self,
        a: &mut CodeAssembler,
        masked: bool,
        mut body: impl FnMut(&mut CodeAssembler, AsmRegisterZmm, usize, bool) -> Result<(), IcedError>,
    ) -> Result<(), IcedError> {
        let n = self.vectors;
        for p in 0..self.pixels {
            a.mov(rax, qword_ptr(rcx + 8 * p as i32))?;
            if self.residual {
                a.mov(r10, qword_ptr(r8 + 8 * p as i32))?;
            }
            for j in 0..n {
                body(a, self.acc(p, j), j, masked && j == n - 1)?;
            }
        }
        Ok(())
    }

    /// Channel step `u` of the current loop iteration: the panel's weight vectors, then per pixel
    /// a broadcast and its FMAs (with one vector, the broadcast is the FMA's memory operand).
    fn step(&self, a: &mut CodeAssembler, u: usize) -> Result<(), IcedError> {
        let (m, n) = (self.pixels, self.vectors);
        let row = 16 * n * 4;
        for j in 0..n {
            a.vmovups(zmm(m * n + j), zmmword_ptr(r11 + (u * row + 64 * j) as i32))?;
        }
        for p in 0..m {
            // A channel (f32), a channel pair (bf16) or a quad (u8): one dword each.
            let at = p as i32 * self.pixel_step + 4 * u as i32;
            match (self.data, n) {
                (Data::F32, 1) => a.vfmadd231ps(self.acc(p, 0), zmm(m), dword_bcst(r10 + at))?,
                (Data::Bf16, 1) => a.vdpbf16ps(self.acc(p, 0), zmm(m), dword_bcst(r10 + at))?,
                _ => {
                    a.vbroadcastss(zmm(31), dword_ptr(r10 + at))?;
                    for j in 0..n {
                        let (acc, w) = (self.acc(p, j), zmm(m * n + j));
                        match self.data {
                            Data::F32 => a.vfmadd231ps(acc, w, zmm(31))?,
                            Data::Bf16 => a.vdpbf16ps(acc, w, zmm(31))?,
                            // u8 input (the broadcast quad) times s8 weights.
                            Data::U8S8 => a.vpdpbusd(acc, zmm(31), w)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
