//! The AVX2 tier's tile: up to 12 pixels × 8 output channels over one tap (see the module
//! documentation of `x86`).

use super::*;

/// The AVX2 tile for one shape (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Avx2Tile {
    /// Output pixels, 1 ..= [`AVX2_PIXELS`].
    pub pixels: usize,
    /// Bytes from one of the tile's input pixels to the next.
    pub pixel_step: i64,
}

impl Avx2Tile {
    /// The function's symbol name.
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
