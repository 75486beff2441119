//! The assembled register tiles: machine code encoded with iced-x86's `code_asm`, because
//! Cranelift's x86-64 backend has 128-bit vectors only and its FMA lowering overwrites a
//! multiplicand (DESIGN.md §6). Each function is specialized for one shape and placed beside the
//! kernels with `cranelift_module::Module::define_function_bytes`; the kernels call it from
//! [`super::emit`]'s register-tile seam. Both families end with `vzeroupper` and clobber only
//! caller-saved registers (System V).
//!
//! - [`Avx2Tile`] `(input, weights, acc, count)`: up to 12 pixels × 8 channels, one ymm
//!   accumulator per pixel, over `count` input channels of one tap. `acc` holds 8 floats per pixel,
//!   read at entry and written back at exit.
//! - [`TransformTile`] `(source, destination, bias, residual)`: a Winograd input or output
//!   transform of one tile, 16 channels a vector (see its documentation).
//! - [`ZmmTile`] `(input, weights, bias, outputs, residuals, channel)`: `pixels` × `vectors` zmm
//!   accumulators over every tap and input channel, then the epilogue: residual, ReLU, and the
//!   store, masked in the last vector. `input` is the tile's first pixel at tap (0, 0); `weights`
//!   the panel, `[tap][input channel][16 · vectors]`; `bias` 16 · vectors floats (or unused);
//!   `outputs` and `residuals` tables of one pointer per pixel, to which `channel` bytes are added.
//!   `prefetch` (the seventh, on the stack) is where the tile starts prefetching into L2 the
//!   weights that a later call will read while its own come from cache, when its
//!   [`ZmmTile::prefetch_step`] is not 0.

use iced_x86::code_asm::registers::{ymm::get_ymm, zmm::get_zmm};
use iced_x86::code_asm::*;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter, Mnemonic, Register};

use super::tile::AVX2_PIXELS;

/// `ymm<i>`.
fn ymm(i: usize) -> AsmRegisterYmm {
    get_ymm(Register::YMM0 + i as u32).expect("ymm0..ymm15")
}

/// `zmm<i>`.
fn zmm(i: usize) -> AsmRegisterZmm {
    get_zmm(Register::ZMM0 + i as u32).expect("zmm0..zmm31")
}

/// An assembled tile function of either family.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TileFn {
    Avx2(Avx2Tile),
    Zmm(ZmmTile),
    Transform(TransformTile),
}

impl TileFn {
    /// The function's symbol (unique per shape within a module: see [`ZmmTile::name`]).
    pub fn name(&self, index: usize) -> String {
        match self {
            TileFn::Avx2(t) => t.name(),
            TileFn::Zmm(t) => t.name(index),
            TileFn::Transform(t) => t.name(index),
        }
    }

    /// The machine code.
    pub fn code(&self) -> Result<Vec<u8>, IcedError> {
        match self {
            TileFn::Avx2(t) => t.code(),
            TileFn::Zmm(t) => t.code(),
            TileFn::Transform(t) => t.code(),
        }
    }

    /// Arguments the function takes (all 64-bit).
    pub fn arguments(&self) -> usize {
        match self {
            TileFn::Avx2(_) => 4,
            TileFn::Zmm(_) => 7,
            TileFn::Transform(_) => 4,
        }
    }
}

/// The AVX2 tile for one shape (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Avx2Tile {
    /// Output pixels, 1 ..= [`AVX2_PIXELS`].
    pub pixels: usize,
    /// Bytes from one of the tile's input pixels to the next.
    pub pixel_step: i64,
}

impl Avx2Tile {
    pub fn name(&self) -> String {
        format!("tile_avx2_{}px_step{}", self.pixels, self.pixel_step)
    }

    /// Per input channel: one weight load, then per pixel a broadcast into one of three rotating
    /// registers and a `vfmadd231ps` into the pixel's accumulator, which stays in its register.
    pub fn code(&self) -> Result<Vec<u8>, IcedError> {
        assert!((1..=AVX2_PIXELS).contains(&self.pixels), "{self:?}");
        let mut a = CodeAssembler::new(64)?;
        // Accumulators ymm0..ymm11, broadcasts ymm12..ymm14, weights ymm15.
        let broadcast = |p: usize| ymm(AVX2_PIXELS + p % 3);
        let w = ymm(15);
        for p in 0..self.pixels {
            a.vmovups(ymm(p), ymmword_ptr(rdx + 32 * p as i32))?;
        }
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.vmovups(w, ymmword_ptr(rsi))?;
        for p in 0..self.pixels {
            let at = (self.pixel_step * p as i64) as i32;
            a.vbroadcastss(broadcast(p), dword_ptr(rdi + at))?;
            a.vfmadd231ps(ymm(p), w, broadcast(p))?;
        }
        a.add(rsi, 32)?;
        a.add(rdi, 4)?;
        a.dec(rcx)?;
        a.jnz(top)?;
        for p in 0..self.pixels {
            a.vmovups(ymmword_ptr(rdx + 32 * p as i32), ymm(p))?;
        }
        a.vzeroupper()?;
        a.ret()?;
        a.assemble(0)
    }
}

/// Input channel steps per loop iteration of a [`ZmmTile`].
pub const ZMM_UNROLL: usize = 4;

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
    /// Input channels per tap.
    pub channels: usize,
    /// Bytes from one of the tile's input pixels to the next.
    pub pixel_step: i32,
    /// Whether the accumulators start from the bias (else from zero).
    pub bias: bool,
    pub residual: bool,
    pub relu: bool,
    /// Bytes the `prefetch` pointer moves on per channel loop iteration, each of its cache lines
    /// prefetched into L2 as it goes; 0: the tile prefetches nothing.
    pub prefetch_step: i32,
}

impl ZmmTile {
    /// `tile<index>_avx512_<pixels>x<vectors>`: the shape, and the module's index of the
    /// specialization.
    pub fn name(&self, index: usize) -> String {
        format!("tile{index}_avx512_{}x{}", self.pixels, self.vectors)
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
        let zero = zmm(31);
        if self.relu {
            a.vpxord(zero, zero, zero)?;
        }
        for p in 0..m {
            a.mov(rax, qword_ptr(rcx + 8 * p as i32))?;
            if self.residual {
                a.mov(r10, qword_ptr(r8 + 8 * p as i32))?;
            }
            for j in 0..n {
                let acc = self.acc(p, j);
                let partial = masked && j == n - 1;
                let at = 64 * j as i32;
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
                    true => a.vmovups(zmmword_ptr(rax + r9 + at).k1(), acc)?,
                    false => a.vmovups(zmmword_ptr(rax + r9 + at), acc)?,
                }
            }
        }
        a.vzeroupper()?;
        a.ret()?;
        a.assemble(0)
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
            let at = p as i32 * self.pixel_step + 4 * u as i32;
            if n == 1 {
                a.vfmadd231ps(self.acc(p, 0), zmm(m), dword_bcst(r10 + at))?;
                continue;
            }
            a.vbroadcastss(zmm(31), dword_ptr(r10 + at))?;
            for j in 0..n {
                a.vfmadd231ps(self.acc(p, j), zmm(m * n + j), zmm(31))?;
            }
        }
        Ok(())
    }
}

/// One Winograd transform `M_y · D · M_xᵀ` of one tile on zmm vectors of 16 channels, for
/// `vectors` whole vectors and a masked last one of `last_lanes` (0: none), every pointer moving
/// on by 64 bytes a vector. `D`'s entry (i, j) is read at `source + loads[i · columns + j]` (`None`:
/// known zero, left out of the sums); result (a, b) is written at
/// `destination + stores[a · results along x + b]` (`None`: outside the map, not written). The output transform (`output`) starts each
/// result from the bias, adds the residual at the same offset from `residual`, and applies ReLU.
/// Along two axes the products along y pass through a stack buffer, as in the 128-bit emitter.
/// The coefficients are a table after the code, read as embedded broadcasts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransformTile {
    /// F(m, r) along y and x; (1, 1) is the identity.
    pub y: (usize, usize),
    pub x: (usize, usize),
    /// `Aᵀ` (the output transform, with its epilogue) instead of `Bᵀ`.
    pub output: bool,
    pub loads: Vec<Option<i32>>,
    pub stores: Vec<Option<i32>>,
    pub vectors: usize,
    pub last_lanes: usize,
    pub bias: bool,
    pub residual: bool,
    pub relu: bool,
}

/// Registers of [`TransformTile`]: a row's inputs from zmm0, the sum in `SUM`, the bias in
/// `BIAS`, ReLU's zero in `ZERO`.
const SUM: usize = 16;
const BIAS: usize = 30;
const ZERO: usize = 31;

impl TransformTile {
    /// `transform<index>_<in|out>_<m_y>x<m_x>_<r_y>x<r_x>`.
    pub fn name(&self, index: usize) -> String {
        let kind = if self.output { "out" } else { "in" };
        let ((my, ry), (mx, rx)) = (self.y, self.x);
        format!("transform{index}_{kind}_{my}x{mx}_{ry}x{rx}")
    }

    /// The matrices along y and x (rows of results, columns of inputs).
    fn matrices(&self) -> [Vec<Vec<f64>>; 2] {
        [self.y, self.x].map(|(m, r)| {
            let t = super::winograd::Transform::new(m, r).expect("an offered Winograd tile");
            match self.output {
                true => t.at,
                false => t.bt,
            }
        })
    }

    pub fn code(&self) -> Result<Vec<u8>, IcedError> {
        let [my, mx] = self.matrices();
        let (ly, lx) = (my[0].len(), mx[0].len());
        assert_eq!(self.loads.len(), ly * lx, "{self:?}");
        assert_eq!(self.stores.len(), my.len() * mx.len(), "{self:?}");
        assert!(ly.max(lx) <= SUM, "{self:?}");
        let mut a = CodeAssembler::new(64)?;
        let mut constants = Constants::default();
        let two_axes = ly > 1 && lx > 1;
        let stage = (my.len() * lx * 64) as i32;
        if two_axes {
            a.sub(rsp, stage)?;
        }
        if self.relu {
            a.vpxord(zmm(ZERO), zmm(ZERO), zmm(ZERO))?;
        }
        if self.last_lanes > 0 {
            a.mov(eax, (1u32 << self.last_lanes) - 1)?;
            a.kmovw(k1, eax)?;
        }
        if self.vectors > 0 {
            a.mov(eax, self.vectors as u32)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            self.vector(&mut a, &mut constants, &my, &mx, false)?;
            for r in [rdi, rsi, rdx, rcx] {
                a.add(r, 64)?;
            }
            a.dec(eax)?;
            a.jnz(top)?;
        }
        if self.last_lanes > 0 {
            self.vector(&mut a, &mut constants, &my, &mx, true)?;
        }
        if two_axes {
            a.add(rsp, stage)?;
        }
        a.vzeroupper()?;
        a.ret()?;
        constants.place(&mut a)?;
        a.assemble(0)
    }

    /// One vector of 16 channels (`masked`: the last, partial one).
    fn vector(
        &self,
        a: &mut CodeAssembler,
        constants: &mut Constants,
        my: &[Vec<f64>],
        mx: &[Vec<f64>],
        masked: bool,
    ) -> Result<(), IcedError> {
        let (ly, lx) = (my[0].len(), mx[0].len());
        let load = |a: &mut CodeAssembler, reg: usize, at: AsmMemoryOperand| match masked {
            true => a.vmovups(zmm(reg).k1().z(), at),
            false => a.vmovups(zmm(reg), at),
        };
        if self.bias {
            load(a, BIAS, zmmword_ptr(rdx))?;
        }
        if !(ly > 1 && lx > 1) {
            // One axis: the inputs in registers, each result written as it is formed.
            let m = if ly > 1 { my } else { mx };
            let mut present = vec![false; m[0].len()];
            for (i, at) in self.loads.iter().enumerate() {
                if let Some(at) = at {
                    load(a, i, zmmword_ptr(rdi + *at))?;
                    present[i] = true;
                }
            }
            for (o, row) in m.iter().enumerate() {
                self.result(a, constants, row, &present, o, masked)?;
            }
            return Ok(());
        }
        // Along y, one column at a time, into the stack buffer: entry (a, j) at (a · L_x + j) · 64.
        for j in 0..lx {
            let mut present = vec![false; ly];
            for (i, here) in present.iter_mut().enumerate() {
                if let Some(at) = self.loads[i * lx + j] {
                    load(a, i, zmmword_ptr(rdi + at))?;
                    *here = true;
                }
            }
            for (r, row) in my.iter().enumerate() {
                if !combine(a, constants, row, &present)? {
                    a.vpxord(zmm(SUM), zmm(SUM), zmm(SUM))?;
                }
                a.vmovups(zmmword_ptr(rsp + ((r * lx + j) * 64) as i32), zmm(SUM))?;
            }
        }
        // Along x, one row at a time.
        for r in 0..my.len() {
            for j in 0..lx {
                a.vmovups(zmm(j), zmmword_ptr(rsp + ((r * lx + j) * 64) as i32))?;
            }
            for (b, row) in mx.iter().enumerate() {
                self.result(a, constants, row, &vec![true; lx], r * mx.len() + b, masked)?;
            }
        }
        Ok(())
    }

    /// Result `index`: the combination of the registers `row` weighs, then (output transform)
    /// bias, residual and ReLU, written unless it falls outside the map.
    fn result(
        &self,
        a: &mut CodeAssembler,
        constants: &mut Constants,
        row: &[f64],
        present: &[bool],
        index: usize,
        masked: bool,
    ) -> Result<(), IcedError> {
        let Some(at) = self.stores[index] else {
            return Ok(());
        };
        let formed = combine(a, constants, row, present)?;
        let sum = zmm(SUM);
        if self.bias {
            match formed {
                true => a.vaddps(sum, sum, zmm(BIAS))?,
                false => a.vmovaps(sum, zmm(BIAS))?,
            }
        } else if !formed {
            a.vpxord(sum, sum, sum)?;
        }
        if self.residual {
            match masked {
                true => a.vaddps(sum.k1().z(), sum, zmmword_ptr(rcx + at))?,
                false => a.vaddps(sum, sum, zmmword_ptr(rcx + at))?,
            }
        }
        if self.relu {
            // NaN becomes 0, as in the interpreter's f32::max (see ZmmTile).
            a.vmaxps(sum, sum, zmm(ZERO))?;
        }
        match masked {
            true => a.vmovups(zmmword_ptr(rsi + at).k1(), sum),
            false => a.vmovups(zmmword_ptr(rsi + at), sum),
        }
    }
}

/// `Σ row[i] · zmm(i)` over the present inputs with a non-zero coefficient into `SUM`, with adds
/// and subtracts for ±1 (a +1 term first) as the 128-bit emitter's `combine`; false (and `SUM`
/// untouched) when no term is left.
fn combine(
    a: &mut CodeAssembler,
    constants: &mut Constants,
    row: &[f64],
    present: &[bool],
) -> Result<bool, IcedError> {
    let mut terms: Vec<(f64, usize)> = row
        .iter()
        .enumerate()
        .filter(|&(i, c)| present[i] && *c != 0.0)
        .map(|(i, c)| (*c, i))
        .collect();
    terms.sort_by_key(|(c, _)| super::winograd::sum_order(*c));
    let sum = zmm(SUM);
    for (n, &(c, i)) in terms.iter().enumerate() {
        let v = zmm(i);
        match (n, c) {
            (0, 1.0) => a.vmovaps(sum, v)?,
            (0, -1.0) => {
                // −v: flip the sign bit, as fneg does.
                let sign = constants.label(a, -0.0)?;
                a.vxorps(sum, v, dword_bcst(sign))?
            }
            (0, _) => {
                let k = constants.label(a, c as f32)?;
                a.vmulps(sum, v, dword_bcst(k))?
            }
            (_, 1.0) => a.vaddps(sum, sum, v)?,
            (_, -1.0) => a.vsubps(sum, sum, v)?,
            (_, _) => {
                let k = constants.label(a, c as f32)?;
                a.vfmadd231ps(sum, v, dword_bcst(k))?
            }
        }
    }
    Ok(!terms.is_empty())
}

/// The f32 constants of a function, each a label into the table placed after its code.
#[derive(Default)]
struct Constants {
    labels: Vec<(u32, CodeLabel)>,
}

impl Constants {
    fn label(&mut self, a: &mut CodeAssembler, value: f32) -> Result<CodeLabel, IcedError> {
        let bits = value.to_bits();
        if let Some((_, l)) = self.labels.iter().find(|(b, _)| *b == bits) {
            return Ok(*l);
        }
        let l = a.create_label();
        self.labels.push((bits, l));
        Ok(l)
    }

    fn place(&mut self, a: &mut CodeAssembler) -> Result<(), IcedError> {
        for (bits, label) in &mut self.labels {
            a.set_label(label)?;
            a.dd(&[*bits])?;
        }
        Ok(())
    }
}

/// Independent accumulators of [`fma_probe`]: enough to cover the FMA latency on both ports.
pub const PROBE_ACCUMULATORS: usize = 12;

/// A throughput probe `fn(iterations)`: per iteration, [`PROBE_ACCUMULATORS`] independent
/// `vfmadd231ps` on zmm (`wide`) or ymm registers, twice. Each call does
/// `iterations · 2 · PROBE_ACCUMULATORS` FMAs of 16 or 8 lanes.
pub fn fma_probe(wide: bool) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let accumulators = PROBE_ACCUMULATORS;
    for i in 0..accumulators + 2 {
        a.vxorps(ymm(i % 16), ymm(i % 16), ymm(i % 16))?;
    }
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    for _ in 0..2 {
        for i in 0..accumulators {
            match wide {
                true => a.vfmadd231ps(zmm(i), zmm(accumulators), zmm(accumulators + 1))?,
                false => a.vfmadd231ps(ymm(i), ymm(accumulators), ymm(accumulators + 1))?,
            }
        }
    }
    a.dec(rdi)?;
    a.jnz(top)?;
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// `code` disassembled, one instruction a line in Intel syntax with its offset.
pub fn disassemble(code: &[u8]) -> String {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut out = String::new();
    let mut text = String::new();
    for instruction in &mut decoder {
        text.clear();
        formatter.format(&instruction, &mut text);
        out.push_str(&format!("  {:5x}: {text}\n", instruction.ip()));
        // Every function returns at its end; a transform's coefficients follow.
        if instruction.mnemonic() == Mnemonic::Ret {
            let data = code.len() - instruction.next_ip() as usize;
            if data > 0 {
                out.push_str(&format!(
                    "  {:5x}: ({data} bytes of f32 constants)\n",
                    instruction.next_ip()
                ));
            }
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(code: &[u8]) -> Vec<String> {
        disassemble(code)
            .lines()
            .map(|l| l.split_once(": ").map_or("", |x| x.1).to_string())
            .collect()
    }

    #[test]
    fn the_avx2_tile_disassembles_to_its_loop() {
        let code = Avx2Tile {
            pixels: 2,
            pixel_step: 0x1800,
        }
        .code()
        .unwrap();
        let want = [
            "vmovups ymm0,[rdx]",
            "vmovups ymm1,[rdx+20h]",
            "vmovups ymm15,[rsi]",
            "vbroadcastss ymm12,[rdi]",
            "vfmadd231ps ymm0,ymm15,ymm12",
            "vbroadcastss ymm13,[rdi+1800h]",
            "vfmadd231ps ymm1,ymm15,ymm13",
            "add rsi,20h",
            "add rdi,4",
            "dec rcx",
            "jne short 9",
            "vmovups [rdx],ymm0",
            "vmovups [rdx+20h],ymm1",
            "vzeroupper",
            "ret",
        ];
        assert_eq!(lines(&code), want);
    }

    #[test]
    fn a_zmm_tile_keeps_its_accumulators_and_fuses_the_epilogue() {
        let tile = ZmmTile {
            pixels: 2,
            vectors: 2,
            last_lanes: 5,
            taps: [2, 1],
            tap_steps: [0x2000, 0x40],
            channels: 5,
            pixel_step: 0x40,
            bias: true,
            residual: true,
            relu: true,
            prefetch_step: 0,
        };
        let got = lines(&tile.code().unwrap());
        let want_start = [
            "mov eax,1Fh",
            "kmovw k1,eax",
            "vmovups zmm0,[rdx]",
            "vmovups zmm1,[rdx+40h]",
            "vmovups zmm2,[rdx]",
            "vmovups zmm3,[rdx+40h]",
            "mov r10,rdi",
            "mov r11,rsi",
            "mov esi,2",
            "mov eax,1",
            "vmovups zmm4,[r11]",
            "vmovups zmm5,[r11+40h]",
            "vbroadcastss zmm31,[r10]",
            "vfmadd231ps zmm0,zmm4,zmm31",
            "vfmadd231ps zmm1,zmm5,zmm31",
            "vbroadcastss zmm31,[r10+40h]",
            "vfmadd231ps zmm2,zmm4,zmm31",
            "vfmadd231ps zmm3,zmm5,zmm31",
        ];
        assert_eq!(got[..want_start.len()], want_start);
        // The weights run on past the leftover channel; the input moves to the next tap row:
        // 0x2000 bytes on from the first tap, less the 4 channels the loop moved it.
        for line in ["add r11,80h", "add r10,1FF0h", "dec esi"] {
            assert!(got.contains(&line.to_string()), "{line}: {got:#?}");
        }
        let want_end = [
            "vpxord zmm31,zmm31,zmm31",
            "mov rax,[rcx]",
            "mov r10,[r8]",
            "vaddps zmm0,zmm0,[r10+r9]",
            "vmaxps zmm0,zmm0,zmm31",
            "vmovups [rax+r9],zmm0",
            "vaddps zmm1{k1}{z},zmm1,[r10+r9+40h]",
            "vmaxps zmm1,zmm1,zmm31",
            "vmovups [rax+r9+40h]{k1},zmm1",
            "mov rax,[rcx+8]",
            "mov r10,[r8+8]",
            "vaddps zmm2,zmm2,[r10+r9]",
            "vmaxps zmm2,zmm2,zmm31",
            "vmovups [rax+r9],zmm2",
            "vaddps zmm3{k1}{z},zmm3,[r10+r9+40h]",
            "vmaxps zmm3,zmm3,zmm31",
            "vmovups [rax+r9+40h]{k1},zmm3",
            "vzeroupper",
            "ret",
        ];
        assert_eq!(got[got.len() - want_end.len()..], want_end);
    }

    #[test]
    fn a_one_vector_zmm_tile_broadcasts_from_memory() {
        let tile = ZmmTile {
            pixels: 3,
            vectors: 1,
            last_lanes: 16,
            taps: [1, 1],
            tap_steps: [0, 0],
            channels: 1,
            pixel_step: 0x100,
            bias: false,
            residual: false,
            relu: false,
            prefetch_step: 0,
        };
        let got = lines(&tile.code().unwrap());
        assert_eq!(got[0], "vpxord zmm0,zmm0,zmm0");
        assert!(got.contains(&"vfmadd231ps zmm2,zmm3,[r10+200h]{1to16}".to_string()));
        assert!(!got.iter().any(|l| l.contains("k1")));
    }

    #[test]
    fn a_prefetching_tile_reads_its_seventh_argument_and_prefetches_each_iteration() {
        let tile = ZmmTile {
            pixels: 4,
            vectors: 2,
            last_lanes: 16,
            taps: [1, 1],
            tap_steps: [0, 0],
            channels: 8,
            pixel_step: 0x100,
            bias: true,
            residual: false,
            relu: true,
            prefetch_step: 0x60,
        };
        let got = lines(&tile.code().unwrap());
        assert!(got.contains(&"mov rdi,[rsp+8]".to_string()), "{got:#?}");
        // 0x60 bytes an iteration span two lines; two iterations of 4 channels.
        let count = |want: &str| got.iter().filter(|l| *l == want).count();
        assert_eq!(count("prefetcht1 [rdi]"), 1);
        assert_eq!(count("prefetcht1 [rdi+40h]"), 1);
        assert_eq!(count("add rdi,60h"), 1);
        let quiet = ZmmTile {
            prefetch_step: 0,
            ..tile
        };
        let got = lines(&quiet.code().unwrap());
        assert!(!got
            .iter()
            .any(|l| l.contains("prefetch") || l.contains("rsp")));
    }

    #[test]
    fn a_transform_reads_its_coefficients_after_its_code_and_skips_what_is_outside() {
        // F(2, 3) along x: 4 inputs, the first outside the map (zero), 2 results, the second
        // outside the map; 20 channels: one whole vector and 4 masked lanes.
        let tile = TransformTile {
            y: (1, 1),
            x: (2, 3),
            output: false,
            loads: vec![None, Some(0x40), Some(0x80), Some(0xc0)],
            stores: vec![Some(0), Some(0x1000), Some(0x2000), Some(0x3000)],
            vectors: 1,
            last_lanes: 4,
            bias: false,
            residual: false,
            relu: false,
        };
        let code = tile.code().unwrap();
        let listing = disassemble(&code);
        let got = lines(&code);
        assert!(listing.contains("bytes of f32 constants"), "{listing}");
        assert!(got.contains(&"mov eax,0Fh".to_string()), "{listing}");
        // Input 0 is never read, inputs 1..3 are, in the whole vector and (masked) in the last.
        assert!(!got.iter().any(|l| l.contains("[rdi]")), "{listing}");
        assert!(
            got.contains(&"vmovups zmm1,[rdi+40h]".to_string()),
            "{listing}"
        );
        assert!(
            got.contains(&"vmovups zmm1{k1}{z},[rdi+40h]".to_string()),
            "{listing}"
        );
        assert!(
            got.contains(&"vmovups [rsi+3000h]{k1},zmm16".to_string()),
            "{listing}"
        );
        let output = TransformTile {
            output: true,
            loads: vec![Some(0), Some(0x40), Some(0x80), Some(0xc0)],
            stores: vec![Some(0), None],
            bias: true,
            residual: true,
            relu: true,
            ..tile
        };
        let got = lines(&output.code().unwrap());
        assert!(
            got.contains(&"vaddps zmm16,zmm16,[rcx]".to_string()),
            "{got:#?}"
        );
        assert!(
            got.contains(&"vmaxps zmm16,zmm16,zmm31".to_string()),
            "{got:#?}"
        );
        // The second output is outside the map: one store per vector.
        assert_eq!(
            got.iter().filter(|l| l.starts_with("vmovups [rsi")).count(),
            2
        );
    }
}
