//! Register tiles run on their own against scalar references on the same inputs, over tile
//! shapes, tap grids, channel counts, masked last vectors and every epilogue:
//! - the bf16 zmm tile (`vdpbf16ps`, f32 accumulation, bf16 residual and output rounded to
//!   nearest even), within bf16's rounding of an f64 reference; it needs AVX512-BF16;
//! - the u8 × s8 zmm tile (`vpdpbusd`, i32 accumulation, requantized to u8), bit for bit; it
//!   needs AVX512-VNNI.
//!
//! A host without the feature says so in the test output.

use half::bf16;
use inceptc::codegen::x86::{Data, ZmmTile};
use rand::{Rng, SeedableRng};

/// Whether this CPU runs AVX-512 F and AVX512-VNNI code.
fn has_avx512_vnni() -> bool {
    // CPUID leaf 7, sub-leaf 0: ECX bit 11 is AVX512_VNNI.
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 11) != 0
}

/// Whether this CPU runs AVX-512 F and AVX512-BF16 code.
fn has_avx512_bf16() -> bool {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return false;
    }
    // CPUID leaf 7, sub-leaf 1: EAX bit 5 is AVX512_BF16.
    let leaf = std::arch::x86_64::__cpuid_count(7, 1);
    leaf.eax & (1 << 5) != 0
}

/// Machine code made executable in an anonymous mapping, unmapped when dropped.
struct Executable {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Executable {
    fn new(code: &[u8]) -> Executable {
        let len = code.len().next_multiple_of(4096);
        // SAFETY: a fresh private mapping, written while writable, then made executable only.
        unsafe {
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(ptr, libc::MAP_FAILED);
            std::ptr::copy_nonoverlapping(code.as_ptr(), ptr as *mut u8, code.len());
            assert_eq!(
                libc::mprotect(ptr, len, libc::PROT_READ | libc::PROT_EXEC),
                0
            );
            Executable { ptr, len }
        }
    }
}

impl Drop for Executable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer called.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The zmm tile's C signature (see `inceptc::codegen::x86`).
type TileCall = unsafe extern "C" fn(
    *const u8,
    *const u8,
    *const f32,
    *const *mut u8,
    *const *const u8,
    usize,
    *const u8,
);

/// (pixels, vectors, last lanes, taps, channel steps): one vector (embedded broadcasts) and
/// several, masked and full last vectors, looped and leftover steps, tap rows and columns.
const SHAPES: [(usize, usize, usize, [usize; 2], usize); 6] = [
    (3, 2, 5, [2, 2], 5),
    (1, 1, 16, [1, 1], 4),
    (6, 4, 16, [1, 3], 9),
    (14, 2, 9, [3, 1], 3),
    (8, 1, 7, [1, 1], 1),
    (9, 3, 12, [3, 3], 8),
];

/// A tile's shape as the tests lay out its buffers.
struct Geometry {
    pixels: usize,
    /// Output channels of a full panel (16 per vector).
    width: usize,
    /// Output channels stored (the last vector masked to them).
    valid: usize,
    rows: usize,
    columns: usize,
    /// Input steps (channels, pairs or quads) per tap.
    steps: usize,
    row_step: usize,
    column_step: usize,
    pixel_step: usize,
}

impl Geometry {
    fn of(tile: &ZmmTile) -> Geometry {
        let [row_step, column_step] = tile.tap_steps.map(|s| s as usize);
        Geometry {
            pixels: tile.pixels,
            width: 16 * tile.vectors,
            valid: 16 * (tile.vectors - 1) + tile.last_lanes,
            rows: tile.taps[0],
            columns: tile.taps[1],
            steps: tile.channels,
            row_step,
            column_step,
            pixel_step: tile.pixel_step as usize,
        }
    }

    /// Bytes the input must hold for every step of every tap of every pixel.
    fn input_bytes(&self) -> usize {
        self.pixels * self.pixel_step
            + self.rows * self.row_step
            + self.columns * self.column_step
            + 4 * self.steps
    }

    /// The byte offset of step `c` (a dword) of tap (`ty`, `tx`) of pixel `p`.
    fn at(&self, p: usize, ty: usize, tx: usize, c: usize) -> usize {
        p * self.pixel_step + ty * self.row_step + tx * self.column_step + 4 * c
    }
}

/// Calls `tile` (assembled and mapped executable) on these buffers: `outputs` and `residuals`
/// hold one buffer per pixel, which the tile reads and writes from `channel` bytes on.
fn run<I, W, O>(
    tile: &ZmmTile,
    input: &[I],
    weights: &[W],
    table: &[f32],
    outputs: &mut [Vec<O>],
    residuals: &[Vec<O>],
    channel: usize,
) {
    let out_ptrs: Vec<*mut u8> = outputs
        .iter_mut()
        .map(|o| o.as_mut_ptr() as *mut u8)
        .collect();
    let res_ptrs: Vec<*const u8> = residuals.iter().map(|r| r.as_ptr() as *const u8).collect();
    let exe = Executable::new(&tile.code().unwrap());
    // SAFETY: the tile is this signature; the callers size every buffer by the formulas of the
    // tile's loops (`Geometry`), so every address it reads or writes lies inside them.
    unsafe {
        let call = std::mem::transmute::<*mut libc::c_void, TileCall>(exe.ptr);
        call(
            input.as_ptr() as *const u8,
            weights.as_ptr() as *const u8,
            table.as_ptr(),
            out_ptrs.as_ptr(),
            res_ptrs.as_ptr(),
            channel,
            std::ptr::null(),
        );
    }
}

/// One bf16 tile run on random data, checked against an f64 reference on the same bf16 values.
fn check(tile: &ZmmTile, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let g = Geometry::of(tile);
    let (m, width, valid, pairs) = (g.pixels, g.width, g.valid, g.steps);
    let (rows, columns) = (g.rows, g.columns);
    let value = |rng: &mut rand_chacha::ChaCha8Rng| bf16::from_f32(rng.gen_range(-1.0..1.0));
    let input: Vec<bf16> = (0..g.input_bytes().div_ceil(2))
        .map(|_| value(&mut rng))
        .collect();
    let at = |p: usize, ty: usize, tx: usize, c: usize, k: usize| g.at(p, ty, tx, c) / 2 + k;
    // Weights: [tap][pair][16·n][2], zero past the valid channels as the packer leaves them.
    let taps = rows * columns;
    let mut weights = vec![bf16::ZERO; taps * pairs * width * 2];
    for t in 0..taps {
        for c in 0..pairs {
            for o in 0..valid {
                for k in 0..2 {
                    weights[((t * pairs + c) * width + o) * 2 + k] = value(&mut rng);
                }
            }
        }
    }
    let bias: Vec<f32> = (0..width).map(|_| rng.gen_range(-1.0..1.0)).collect();
    // Outputs and residuals start `channel` bytes into each pixel's buffer.
    let channel = 64;
    let sentinel = bf16::from_bits(0x7FC1);
    let mut outputs: Vec<Vec<bf16>> = (0..m).map(|_| vec![sentinel; 32 + width]).collect();
    let residuals: Vec<Vec<bf16>> = (0..m)
        .map(|_| (0..32 + width).map(|_| value(&mut rng)).collect())
        .collect();
    run(
        tile,
        &input,
        &weights,
        &bias,
        &mut outputs,
        &residuals,
        channel,
    );
    let first = channel / 2;
    for p in 0..m {
        for o in 0..width {
            let got = outputs[p][first + o];
            if o >= valid {
                assert_eq!(
                    got.to_bits(),
                    sentinel.to_bits(),
                    "{tile:?}: lane {o} written"
                );
                continue;
            }
            let mut want = if tile.bias { bias[o] as f64 } else { 0.0 };
            let mut magnitude = want.abs();
            for ty in 0..rows {
                for tx in 0..columns {
                    let t = ty * columns + tx;
                    for c in 0..pairs {
                        for k in 0..2 {
                            let x = input[at(p, ty, tx, c, k)].to_f64();
                            let w = weights[((t * pairs + c) * width + o) * 2 + k].to_f64();
                            want += x * w;
                            magnitude += (x * w).abs();
                        }
                    }
                }
            }
            if tile.residual {
                want += residuals[p][first + o].to_f64();
            }
            if tile.relu {
                want = want.max(0.0);
            }
            // bf16 rounding (half an ulp: 2⁻⁹ relative) and f32 accumulation.
            let err = (got.to_f64() - want).abs();
            let bound = want.abs() / 256.0 + 1e-6 * magnitude + 1e-30;
            assert!(
                err <= bound,
                "{tile:?}: pixel {p} channel {o}: got {got}, want {want} (error {err:e})"
            );
        }
    }
}

#[test]
fn the_bf16_zmm_tile_matches_a_scalar_reference() {
    if !has_avx512_bf16() {
        eprintln!("SKIPPED: this CPU lacks AVX512-BF16; the bf16 tile was assembled but not run");
        for vectors in [1, 2] {
            let tile = shape(4, vectors, 16, [1, 1], 3, true);
            assert!(!tile.code().unwrap().is_empty());
        }
        return;
    }
    let mut runs = 0;
    for (i, (pixels, vectors, last, taps, pairs)) in SHAPES.into_iter().enumerate() {
        for epilogue in 0..4 {
            let tile = shape(pixels, vectors, last, taps, pairs, epilogue % 2 == 1);
            let tile = ZmmTile {
                residual: epilogue >= 2,
                relu: epilogue % 3 == 0,
                ..tile
            };
            check(&tile, (10 * i + epilogue) as u64);
            runs += 1;
        }
    }
    eprintln!("bf16 zmm tile: {runs} shapes and epilogues match the reference");
}

/// A bf16 tile whose input pixels, taps and pairs sit at distinct, padded offsets.
fn shape(
    pixels: usize,
    vectors: usize,
    last_lanes: usize,
    taps: [usize; 2],
    pairs: usize,
    bias: bool,
) -> ZmmTile {
    let column_step = 4 * pairs + 64;
    let row_step = taps[1] * column_step + 128;
    ZmmTile {
        pixels,
        vectors,
        last_lanes,
        taps,
        tap_steps: [row_step as i32, column_step as i32],
        channels: pairs,
        pixel_step: (taps[0] * row_step + 32) as i32,
        bias,
        residual: false,
        relu: false,
        prefetch_step: 0,
        data: Data::Bf16,
    }
}

/// One u8 × s8 tile run on random data, checked bit for bit against the scalar requantization.
fn check_u8(tile: &ZmmTile, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let g = Geometry::of(tile);
    let (m, width, valid, quads) = (g.pixels, g.width, g.valid, g.steps);
    let (rows, columns) = (g.rows, g.columns);
    let input: Vec<u8> = (0..g.input_bytes()).map(|_| rng.gen()).collect();
    let at = |p: usize, ty: usize, tx: usize, c: usize, k: usize| g.at(p, ty, tx, c) + k;
    // Weights: [tap][quad][16·n][4] s8, zero past the valid channels.
    let taps = rows * columns;
    let mut weights = vec![0i8; taps * quads * width * 4];
    for t in 0..taps {
        for c in 0..quads {
            for o in 0..valid {
                for k in 0..4 {
                    weights[((t * quads + c) * width + o) * 4 + k] = rng.gen_range(-127..=127);
                }
            }
        }
    }
    // The table M, B, R: scales that put some results below 0 and some above 255.
    let terms = (taps * quads * 4) as f32;
    let mut table = Vec::with_capacity(3 * width);
    table.extend((0..width).map(|_| rng.gen_range(0.5..2.0) / (40.0 * terms.sqrt() * 64.0)));
    table.extend((0..width).map(|_| rng.gen_range(-40.0..200.0f32)));
    table.extend((0..width).map(|_| rng.gen_range(0.0..1.5f32)));
    let channel = 48;
    let sentinel = 0xAAu8;
    let mut outputs: Vec<Vec<u8>> = (0..m).map(|_| vec![sentinel; channel + width]).collect();
    let residuals: Vec<Vec<u8>> = (0..m)
        .map(|_| (0..channel + width).map(|_| rng.gen()).collect())
        .collect();
    run(
        tile,
        &input,
        &weights,
        &table,
        &mut outputs,
        &residuals,
        channel,
    );
    let (mut low, mut high) = (0, 0);
    for p in 0..m {
        for o in 0..width {
            let got = outputs[p][channel + o];
            if o >= valid {
                assert_eq!(got, sentinel, "{tile:?}: lane {o} written");
                continue;
            }
            let mut acc = 0i32;
            for ty in 0..rows {
                for tx in 0..columns {
                    let t = ty * columns + tx;
                    for c in 0..quads {
                        for k in 0..4 {
                            let x = input[at(p, ty, tx, c, k)] as i32;
                            let w = weights[((t * quads + c) * width + o) * 4 + k] as i32;
                            acc += x * w;
                        }
                    }
                }
            }
            let mut v = (acc as f32).mul_add(table[o], table[width + o]);
            if tile.residual {
                v = (residuals[p][channel + o] as f32).mul_add(table[2 * width + o], v);
            }
            let want = v.clamp(0.0, 255.0).round_ties_even() as u8;
            low += usize::from(v < 0.0);
            high += usize::from(v > 255.0);
            assert_eq!(
                got, want,
                "{tile:?}: pixel {p} channel {o}: acc {acc}, value {v}"
            );
        }
    }
    assert!(
        low > 0 || high > 0 || m * valid < 8,
        "{tile:?}: no clamped value"
    );
}

#[test]
fn the_u8_zmm_tile_requantizes_bit_for_bit() {
    if !has_avx512_vnni() {
        eprintln!("SKIPPED: this CPU lacks AVX512-VNNI; the u8 tile was assembled but not run");
        assert!(!u8_shape(4, 2, 16, [1, 1], 3).code().unwrap().is_empty());
        return;
    }
    let mut runs = 0;
    for (i, (pixels, vectors, last, taps, quads)) in SHAPES.into_iter().enumerate() {
        for residual in [false, true] {
            let tile = ZmmTile {
                residual,
                ..u8_shape(pixels, vectors, last, taps, quads)
            };
            check_u8(&tile, (10 * i + usize::from(residual)) as u64);
            runs += 1;
        }
    }
    eprintln!("u8 zmm tile: {runs} shapes and epilogues bit-exact");
}

/// A u8 tile laid out as [`shape`]'s bf16 one, quads for pairs.
fn u8_shape(
    pixels: usize,
    vectors: usize,
    last_lanes: usize,
    taps: [usize; 2],
    quads: usize,
) -> ZmmTile {
    ZmmTile {
        bias: false,
        data: Data::U8S8,
        ..shape(pixels, vectors, last_lanes, taps, quads, false)
    }
}
