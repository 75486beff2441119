//! The AVX2 register tile: machine code inceptc writes itself, because Cranelift's x86-64 backend
//! has 128-bit vectors only (DESIGN.md §6). One function per tile shape computes up to
//! [`WIDE_PIXELS`] output pixels × 8 output channels (one 256-bit accumulator per pixel) over
//! `count` input channels and is placed next to the kernels with
//! `cranelift_module::Module::define_function_bytes`; the kernels call it from
//! [`super::emit`]'s register-tile seam. Twelve pixels per tile halve the weight traffic per FMA
//! against six (the weights stream from L2 or L3 for large layers); accumulators and broadcasts
//! take 15 of the 16 ymm registers.
//!
//! Contract (System V): `tile(input, weights, acc, count)`. `input` is the tile's first pixel at
//! the current tap, its other pixels `pixel_step` bytes apart; `weights` the tap's packed weights,
//! a row of 8 floats per input channel; `acc` the accumulators, 8 floats per pixel, read at entry
//! and written back at exit; `count ≥ 1`. It clobbers only caller-saved registers (the argument
//! registers and ymm0–15) and ends with `vzeroupper`.
//!
//! Loop per input channel: one weight load, then per pixel a broadcast and a `vfmadd231ps` into
//! the pixel's accumulator, which stays in its register (Cranelift's FMA lowering has only the
//! 213 and 132 forms, whose result replaces a multiplicand).

/// Output pixels of a full wide tile.
pub const WIDE_PIXELS: usize = 12;
/// Input channels from which a register tile calls the AVX2 tile function (below, the call and
/// the accumulators' round trip through memory cost more than the narrower tile loses).
pub const WIDE_MIN_CHANNELS: usize = 8;

/// Pixels per tile for inputs `pixel_step` bytes apart: [`WIDE_PIXELS`], or 6 where the pixels'
/// addresses would crowd the same sets of a 64-set, 8-way L1 cache (more than 4 of the 12 in one
/// set, e.g. a step of 4096 bytes puts all of them in one) and evict each other every channel.
pub fn wide_pixels(pixel_step: usize) -> usize {
    let mut per_set = [0usize; 64];
    for p in 0..WIDE_PIXELS {
        per_set[(p * pixel_step / 64) % 64] += 1;
    }
    match per_set.iter().max() {
        Some(&most) if most > 4 => WIDE_PIXELS / 2,
        _ => WIDE_PIXELS,
    }
}

/// The shape a tile function is specialized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WideTile {
    /// Output pixels, 1 ..= [`WIDE_PIXELS`].
    pub pixels: usize,
    /// Bytes from one of the tile's input pixels to the next.
    pub pixel_step: i64,
}

impl WideTile {
    /// The function's symbol.
    pub fn name(&self) -> String {
        format!("tile_avx2_{}px_step{}", self.pixels, self.pixel_step)
    }

    /// The machine code (x86-64, AVX2 and FMA).
    pub fn code(&self) -> Vec<u8> {
        assert!((1..=WIDE_PIXELS).contains(&self.pixels), "{self:?}");
        let mut a = Asm::default();
        let (input, weights, acc, count) = (RDI, RSI, RDX, RCX);
        // Accumulators ymm0..ymm11, broadcasts rotating through ymm12..ymm14, weights ymm15.
        let broadcast = |p: usize| (WIDE_PIXELS + p % 3) as u8;
        let w = 15;
        for p in 0..self.pixels {
            a.vmovups_load(p as u8, acc, 32 * p as i32);
        }
        let top = a.code.len();
        a.vmovups_load(w, weights, 0);
        for p in 0..self.pixels {
            a.vbroadcastss(broadcast(p), input, (self.pixel_step * p as i64) as i32);
            a.vfmadd231ps(p as u8, w, broadcast(p));
        }
        a.add_imm8(weights, 32);
        a.add_imm8(input, 4);
        a.dec(count);
        a.jnz(top);
        for p in 0..self.pixels {
            a.vmovups_store(p as u8, acc, 32 * p as i32);
        }
        a.code.extend_from_slice(&[0xC5, 0xF8, 0x77]); // vzeroupper
        a.code.push(0xC3); // ret
        a.code
    }
}

/// x86-64 general register numbers.
const RCX: u8 = 1;
const RDX: u8 = 2;
const RSI: u8 = 6;
const RDI: u8 = 7;

/// The few instructions a tile needs, encoded by hand (Intel SDM vol. 2, VEX prefix §2.3).
#[derive(Default)]
struct Asm {
    code: Vec<u8>,
}

impl Asm {
    /// Three-byte VEX prefix: `r`, `x`, `b` extend ModRM.reg, SIB.index and ModRM.rm; `map` 1 =
    /// 0F, 2 = 0F38; `vvvv` the second source (0 when unused); `l` 1 = 256-bit; `pp` 1 = 66.
    #[allow(clippy::too_many_arguments)]
    fn vex3(&mut self, r: u8, x: u8, b: u8, map: u8, w: u8, vvvv: u8, l: u8, pp: u8) {
        self.code.push(0xC4);
        self.code
            .push(((!r & 1) << 7) | ((!x & 1) << 6) | ((!b & 1) << 5) | map);
        self.code
            .push((w << 7) | ((!vvvv & 0xF) << 3) | (l << 2) | pp);
    }

    /// ModRM for `reg, [base + disp32]` (base neither rsp nor r12, which would need a SIB byte).
    fn mem(&mut self, reg: u8, base: u8, disp: i32) {
        debug_assert_ne!(base & 7, 4, "rsp and r12 need a SIB byte");
        self.code.push(0x80 | ((reg & 7) << 3) | (base & 7));
        self.code.extend_from_slice(&disp.to_le_bytes());
    }

    /// `vmovups ymm, [base + disp]`
    fn vmovups_load(&mut self, ymm: u8, base: u8, disp: i32) {
        self.vex3(ymm >> 3, 0, base >> 3, 1, 0, 0, 1, 0);
        self.code.push(0x10);
        self.mem(ymm, base, disp);
    }

    /// `vmovups [base + disp], ymm`
    fn vmovups_store(&mut self, ymm: u8, base: u8, disp: i32) {
        self.vex3(ymm >> 3, 0, base >> 3, 1, 0, 0, 1, 0);
        self.code.push(0x11);
        self.mem(ymm, base, disp);
    }

    /// `vbroadcastss ymm, dword [base + disp]`
    fn vbroadcastss(&mut self, ymm: u8, base: u8, disp: i32) {
        self.vex3(ymm >> 3, 0, base >> 3, 2, 0, 0, 1, 1);
        self.code.push(0x18);
        self.mem(ymm, base, disp);
    }

    /// `vfmadd231ps dst, a, b`: dst = a · b + dst.
    fn vfmadd231ps(&mut self, dst: u8, a: u8, b: u8) {
        self.vex3(dst >> 3, 0, b >> 3, 2, 0, a, 1, 1);
        self.code.push(0xB8);
        self.code.push(0xC0 | ((dst & 7) << 3) | (b & 7));
    }

    /// `add reg, imm8` (64-bit).
    fn add_imm8(&mut self, reg: u8, imm: i8) {
        self.code
            .extend_from_slice(&[0x48 | (reg >> 3), 0x83, 0xC0 | (reg & 7), imm as u8]);
    }

    /// `dec reg` (64-bit).
    fn dec(&mut self, reg: u8) {
        self.code
            .extend_from_slice(&[0x48 | (reg >> 3), 0xFF, 0xC8 | (reg & 7)]);
    }

    /// `jnz target` (rel32, backwards).
    fn jnz(&mut self, target: usize) {
        let end = self.code.len() + 6;
        let rel = target as i64 - end as i64;
        self.code.extend_from_slice(&[0x0F, 0x85]);
        self.code.extend_from_slice(&(rel as i32).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_as_the_manual_says() {
        // Checked against `objdump -D -b binary -m i386:x86-64`.
        let mut a = Asm::default();
        a.vmovups_load(0, RDX, 0x40); // vmovups 0x40(%rdx),%ymm0
        a.vmovups_store(5, RDX, 0xa0); // vmovups %ymm5,0xa0(%rdx)
        a.vmovups_load(15, RSI, 0); // vmovups 0x0(%rsi),%ymm15
        a.vbroadcastss(11, RDI, 0x1800); // vbroadcastss 0x1800(%rdi),%ymm11
        a.vfmadd231ps(3, 15, 9); // vfmadd231ps %ymm9,%ymm15,%ymm3
        a.add_imm8(RSI, 32); // add $0x20,%rsi
        a.dec(RCX); // dec %rcx
        let want: &[u8] = &[
            0xC4, 0xE1, 0x7C, 0x10, 0x82, 0x40, 0, 0, 0, // vmovups load
            0xC4, 0xE1, 0x7C, 0x11, 0xAA, 0xA0, 0, 0, 0, // vmovups store
            0xC4, 0x61, 0x7C, 0x10, 0xBE, 0, 0, 0, 0, // vmovups ymm15
            0xC4, 0x62, 0x7D, 0x18, 0x9F, 0x00, 0x18, 0, 0, // vbroadcastss
            0xC4, 0xC2, 0x05, 0xB8, 0xD9, // vfmadd231ps
            0x48, 0x83, 0xC6, 0x20, // add
            0x48, 0xFF, 0xC9, // dec
        ];
        assert_eq!(a.code, want);
    }

    #[test]
    fn pixels_that_would_share_cache_sets_get_half_a_tile() {
        // 1024 channels: 4096 bytes apart, all in one set; 1536: two sets.
        assert_eq!(wide_pixels(4096), 6);
        assert_eq!(wide_pixels(6144), 6);
        // 1088, 384 and 192 channels spread over many sets.
        assert_eq!(wide_pixels(4352), 12);
        assert_eq!(wide_pixels(1536), 12);
        assert_eq!(wide_pixels(768), 12);
    }

    #[test]
    fn the_loop_jumps_back_to_its_first_weight_load() {
        let code = WideTile {
            pixels: 2,
            pixel_step: 64,
        }
        .code();
        // 2 accumulator loads of 9 bytes, then the loop; jnz's target is the loop's start.
        let jnz = code.windows(2).position(|w| w == [0x0F, 0x85]).unwrap();
        let rel = i32::from_le_bytes(code[jnz + 2..jnz + 6].try_into().unwrap());
        assert_eq!(jnz as i64 + 6 + rel as i64, 18);
        assert_eq!(&code[code.len() - 4..], &[0xC5, 0xF8, 0x77, 0xC3]);
    }
}
