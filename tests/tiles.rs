//! Register tiles run on their own against scalar references on the same inputs, over tile
//! shapes, tap grids, channel counts, masked last vectors and every epilogue:
//! - the bf16 zmm tile (`vdpbf16ps`, f32 accumulation, bf16 residual and output rounded to
//!   nearest even), within bf16's rounding of an f64 reference; it needs AVX512-BF16;
//! - the u8 × s8 zmm tile (`vpdpbusd`, i32 accumulation, requantized to u8), bit for bit; it
//!   needs AVX512-VNNI.
//!
//! A host without the feature says so in the test output.

use half::bf16;
use inceptc::codegen::x86::{AmxTile, Data, ZmmTile, AMX_CHANNELS};
use inceptc_ir::interp::amx_dot_step;
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
    /// Pixels whose input the tile reads: an AMX tile reads whole blocks of 16.
    read_pixels: usize,
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
    fn of_amx(tile: &AmxTile) -> Geometry {
        let [row_step, column_step] = tile.tap_steps.map(|s| s as usize);
        Geometry {
            pixels: tile.pixels,
            read_pixels: tile.pixels.next_multiple_of(16),
            width: 16 * tile.vectors,
            valid: 16 * (tile.vectors - 1) + tile.last_lanes,
            rows: tile.taps[0],
            columns: tile.taps[1],
            steps: tile.chunks * AMX_CHANNELS / 2,
            row_step,
            column_step,
            pixel_step: tile.pixel_step as usize,
        }
    }

    fn of(tile: &ZmmTile) -> Geometry {
        let [row_step, column_step] = tile.tap_steps.map(|s| s as usize);
        Geometry {
            pixels: tile.pixels,
            read_pixels: tile.pixels,
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

    /// Bytes the input must hold for every step of every tap of every pixel it reads.
    fn input_bytes(&self) -> usize {
        self.read_pixels * self.pixel_step
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
    code: &[u8],
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
    let exe = Executable::new(code);
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

/// A bf16 tile under test: its geometry, epilogue and code.
struct Bf16Tile {
    g: Geometry,
    bias: bool,
    residual: bool,
    relu: bool,
    code: Vec<u8>,
    name: String,
}

impl Bf16Tile {
    fn zmm(tile: &ZmmTile) -> Bf16Tile {
        Bf16Tile {
            g: Geometry::of(tile),
            bias: tile.bias,
            residual: tile.residual,
            relu: tile.relu,
            code: tile.code().unwrap(),
            name: format!("{tile:?}"),
        }
    }

    fn amx(tile: &AmxTile) -> Bf16Tile {
        Bf16Tile {
            g: Geometry::of_amx(tile),
            bias: tile.bias,
            residual: tile.residual,
            relu: tile.relu,
            code: tile.code().unwrap(),
            name: format!("{tile:?}"),
        }
    }
}

/// One bf16 tile run on random data, checked against an f64 reference on the same bf16 values;
/// returns how many outputs equal an f32 sum with each pair's even product first, how many
/// with its odd product first (`vdpbf16ps`'s order), and how many the f32 sums of
/// `tdpbf16ps` (`inceptc_ir::interp::amx_dot_step` per tap and 16 pairs), of all outputs.
fn check(tile: &Bf16Tile, seed: u64) -> [usize; 4] {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let g = &tile.g;
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
        &tile.code,
        &input,
        &weights,
        &bias,
        &mut outputs,
        &residuals,
        channel,
    );
    let first = channel / 2;
    let mut orders = [0; 4];
    for p in 0..m {
        for o in 0..width {
            let got = outputs[p][first + o];
            if o >= valid {
                assert_eq!(
                    got.to_bits(),
                    sentinel.to_bits(),
                    "{}: lane {o} written",
                    tile.name
                );
                continue;
            }
            let start = if tile.bias { bias[o] } else { 0.0 };
            let mut want = start as f64;
            let mut magnitude = want.abs();
            let mut ordered = [start; 3];
            for ty in 0..rows {
                for tx in 0..columns {
                    let t = ty * columns + tx;
                    let products: Vec<f32> = (0..2 * pairs)
                        .map(|i| {
                            let x = input[at(p, ty, tx, i / 2, i % 2)].to_f32();
                            x * weights[((t * pairs + i / 2) * width + o) * 2 + i % 2].to_f32()
                        })
                        .collect();
                    for block in products.chunks(AMX_CHANNELS) {
                        ordered[2] = amx_dot_step(ordered[2], block);
                    }
                    for c in 0..pairs {
                        for k in 0..2 {
                            let x = input[at(p, ty, tx, c, k)].to_f64();
                            let w = weights[((t * pairs + c) * width + o) * 2 + k].to_f64();
                            want += x * w;
                            magnitude += (x * w).abs();
                        }
                        let product = |k: usize| {
                            let x = input[at(p, ty, tx, c, k)].to_f32();
                            x * weights[((t * pairs + c) * width + o) * 2 + k].to_f32()
                        };
                        for (order, sum) in ordered[..2].iter_mut().enumerate() {
                            for k in [order, 1 - order] {
                                *sum += product(k);
                            }
                        }
                    }
                }
            }
            let finish = |mut v: f64| {
                if tile.residual {
                    v += residuals[p][first + o].to_f64();
                }
                if tile.relu {
                    v = v.max(0.0);
                }
                v
            };
            want = finish(want);
            for (order, sum) in ordered.iter().enumerate() {
                let v = bf16::from_f32(finish(*sum as f64) as f32);
                orders[order] += (v == got) as usize;
            }
            orders[3] += 1;
            // bf16 rounding (half an ulp: 2⁻⁹ relative) and f32 accumulation.
            let err = (got.to_f64() - want).abs();
            let bound = want.abs() / 256.0 + 1e-6 * magnitude + 1e-30;
            assert!(
                err <= bound,
                "{}: pixel {p} channel {o}: got {got}, want {want} (error {err:e})",
                tile.name
            );
        }
    }
    orders
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
            let [_, odd_first, _, all] = check(&Bf16Tile::zmm(&tile), (10 * i + epilogue) as u64);
            assert_eq!(
                odd_first, all,
                "vdpbf16ps sums each pair's odd product first"
            );
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

/// One u8 × s8 zmm tile run on random data, checked bit for bit against the scalar
/// requantization.
fn check_u8(tile: &ZmmTile, seed: u64) {
    let code = tile.code().unwrap();
    check_u8_code(
        &Geometry::of(tile),
        &code,
        tile.residual,
        &format!("{tile:?}"),
        seed,
    );
}

/// One u8 × s8 tile (`code`, of geometry `g`, adding a residual if `residual`) run on random
/// data, checked bit for bit against the scalar requantization.
fn check_u8_code(g: &Geometry, code: &[u8], residual: bool, tile: &str, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
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
    table.extend((0..width).map(|_| match rng.gen_bool(0.5) {
        true => 0.0,
        false => rng.gen_range(0..40) as f32,
    }));
    let channel = 48;
    let sentinel = 0xAAu8;
    let mut outputs: Vec<Vec<u8>> = (0..m).map(|_| vec![sentinel; channel + width]).collect();
    let residuals: Vec<Vec<u8>> = (0..m)
        .map(|_| (0..channel + width).map(|_| rng.gen()).collect())
        .collect();
    run(
        code,
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
                assert_eq!(got, sentinel, "{tile}: lane {o} written");
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
            if residual {
                v = (residuals[p][channel + o] as f32).mul_add(table[2 * width + o], v);
            }
            let floor = table[3 * width + o];
            let want = v.clamp(floor, 255.0).round_ties_even() as u8;
            low += usize::from(v < floor);
            high += usize::from(v > 255.0);
            assert_eq!(
                got, want,
                "{tile}: pixel {p} channel {o}: acc {acc}, value {v}"
            );
        }
    }
    assert!(
        low > 0 || high > 0 || m * valid < 8,
        "{tile}: no clamped value"
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

/// (pixels, vectors, last lanes, taps, 32-channel chunks) of AMX tiles: one and two A tiles,
/// full and partial ones, one to three accumulator columns, masked last vectors, tap grids.
const AMX_SHAPES: [(usize, usize, usize, [usize; 2], usize); 6] = [
    (16, 2, 16, [1, 1], 1),
    (32, 2, 9, [2, 2], 2),
    (5, 3, 16, [1, 3], 1),
    (20, 1, 7, [3, 1], 3),
    (1, 1, 16, [1, 1], 1),
    (32, 1, 16, [1, 1], 4),
];

/// An AMX tile of `shape` (an [`AMX_SHAPES`] entry) on `data`, run alone: its taps and pixels
/// laid out with gaps between them, no epilogue beyond the store.
fn amx_shape(
    (pixels, vectors, last_lanes, taps, chunks): (usize, usize, usize, [usize; 2], usize),
    data: Data,
) -> AmxTile {
    let column_step = 2 * AMX_CHANNELS * chunks + 64;
    let row_step = taps[1] * column_step + 128;
    AmxTile {
        pixels,
        vectors,
        last_lanes,
        taps,
        tap_steps: [row_step as i32, column_step as i32],
        chunks,
        pixel_step: (taps[0] * row_step + 32) as i32,
        bias: false,
        residual: false,
        relu: false,
        configures: true,
        prefetch_step: 0,
        data,
    }
}

/// Whether this CPU runs AMX tiles of `precision`, with Linux's permission for the tile data
/// asked for; if not, says on standard error what it lacks and that `what` was assembled but not
/// run.
fn amx_runs(precision: inceptc_runtime::layout::Precision, what: &str) -> bool {
    let missing = inceptc_runtime::exec::missing_features_for(
        inceptc_runtime::exec::Tier::V4,
        precision,
        true,
    );
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED: this CPU lacks {}; {what} was assembled but not run",
            missing.join(", ")
        );
        return false;
    }
    inceptc_runtime::exec::enable_amx().unwrap();
    true
}

#[test]
fn the_amx_bf16_tile_matches_a_scalar_reference() {
    let amx = amx_runs(
        inceptc_runtime::layout::Precision::Bf16,
        "the AMX bf16 tile",
    );
    let (mut runs, mut orders) = (0, [0; 4]);
    for (i, shape) in AMX_SHAPES.into_iter().enumerate() {
        for epilogue in 0..4 {
            let tile = AmxTile {
                bias: epilogue % 2 == 1,
                residual: epilogue >= 2,
                relu: epilogue % 3 == 0,
                ..amx_shape(shape, Data::Bf16)
            };
            let tested = Bf16Tile::amx(&tile);
            if !amx {
                continue;
            }
            let counts = check(&tested, (100 + 10 * i + epilogue) as u64);
            orders.iter_mut().zip(counts).for_each(|(o, c)| *o += c);
            runs += 1;
        }
    }
    if amx {
        let [even_first, odd_first, as_amx, all] = orders;
        eprintln!(
            "AMX bf16 tile: {runs} shapes and epilogues match the reference; of {all} outputs, \
             {as_amx} equal tdpbf16ps's f32 sums as the interpreter models them, {even_first} an \
             f32 sum with each pair's even product first, {odd_first} with its odd one first"
        );
        assert_eq!(as_amx, all, "tdpbf16ps sums as amx_dot_step models it");
    }
}

/// The AMX int8 tile (`tdpbusd`, 64 channels a step) requantizes bit for bit like the zmm one:
/// its i32 sums are exact in any order.
#[test]
fn the_amx_int8_tile_requantizes_bit_for_bit() {
    let run_here = amx_runs(inceptc_runtime::layout::Precision::U8, "the AMX int8 tile");
    let mut runs = 0;
    for (i, shape) in AMX_SHAPES.into_iter().enumerate() {
        for residual in [false, true] {
            let tile = AmxTile {
                residual,
                ..amx_shape(shape, Data::U8S8)
            };
            let code = tile.code().unwrap();
            if !run_here {
                continue;
            }
            let g = Geometry::of_amx(&tile);
            check_u8_code(
                &g,
                &code,
                residual,
                &format!("{tile:?}"),
                (300 + 10 * i) as u64,
            );
            runs += 1;
        }
    }
    if run_here {
        eprintln!("AMX int8 tile: {runs} shapes and epilogues bit-exact");
    }
}

/// One lane of the AMX probe: bias, (input channel, product) pairs, the question and the answer.
type Question = (f32, Vec<(usize, f32)>, &'static str, f32);

/// How `tdpbf16ps` sums, probed with products whose f32 rounding shows (inputs 1.0, so each
/// weight is its product; a last block of 32 channels subtracts 1.0 exactly where the bias is
/// 1.0, which exposes the low bits), one output lane per question. What AMX answered on the
/// development host: within a block of 32 channels, the even channels' products are summed in
/// f32 in channel order, the odd ones' apart, and their two sums added before the accumulator
/// (a product of 2⁻³⁰ is lost beside 1.0 in its own half of the block, kept beside 1.0 in the
/// other); the accumulator rounds to nearest even. `inceptc_ir::interp::amx_dot_step` models
/// exactly that (and matches every answer here), so the interpreter's bf16 mode follows AMX
/// tiles bit for bit as it follows `vdpbf16ps`.
#[test]
fn amx_sums_even_and_odd_channels_apart() {
    if !amx_runs(inceptc_runtime::layout::Precision::Bf16, "the probe's tile") {
        return;
    }
    let tile = AmxTile {
        pixels: 1,
        vectors: 1,
        last_lanes: 16,
        taps: [1, 1],
        tap_steps: [0, 0],
        chunks: 2,
        pixel_step: 128,
        bias: true,
        residual: false,
        relu: false,
        configures: true,
        prefetch_step: 0,
        data: Data::Bf16,
    };
    let p = |e: i32| 2f32.powi(e);
    // (bias, [(input channel, product)], question, the answer)
    #[rustfmt::skip]
    let lanes: Vec<Question> = vec![
        (1.0, vec![(0, p(-24)), (32, -1.0)], "1 + half an ulp (a tie), − 1", 0.0),
        (1.0, vec![(0, 3.0 * p(-25)), (32, -1.0)], "1 + 3/4 ulp, − 1", p(-23)),
        (1.0, vec![(0, p(-24)), (1, p(-24)), (32, -1.0)], "1 + two half ulps in a pair, − 1", p(-23)),
        (1.0, vec![(0, p(-24)), (2, p(-24)), (32, -1.0)], "1 + two half ulps in two pairs, − 1", p(-23)),
        (1.0, vec![(0, p(-25)), (2, p(-25)), (4, p(-25)), (6, p(-25)), (32, -1.0)], "1 + four quarter ulps, − 1", p(-23)),
        (0.0, vec![(0, 1.0), (1, p(-30)), (2, -1.0)], "1 and 2⁻³⁰ in a pair, −1 next", p(-30)),
        (0.0, vec![(1, 1.0), (0, p(-30)), (3, -1.0)], "odd 1, even 2⁻³⁰, odd −1 next", p(-30)),
        (0.0, vec![(0, 1.0), (2, p(-30)), (4, -1.0)], "1, 2⁻³⁰, −1 in three pairs", 0.0),
        (0.0, vec![(0, p(-30)), (2, 1.0), (4, -1.0)], "2⁻³⁰, 1, −1 in three pairs", 0.0),
        (0.0, vec![(0, 1.0), (30, p(-30)), (31, -1.0)], "1 first, 2⁻³⁰ and −1 in the last pair", 0.0),
        (0.0, vec![(0, 1.0), (16, p(-30)), (31, -1.0)], "1, 2⁻³⁰ mid-block, −1 last", 0.0),
        (0.0, vec![(0, 1.0), (3, p(-30)), (6, -1.0)], "even 1, odd 2⁻³⁰, even −1 two pairs on", p(-30)),
        (0.0, vec![(0, 1.0), (3, -1.0), (6, p(-30))], "even 1, odd −1, even 2⁻³⁰ after them", 0.0),
        (0.0, vec![(0, 1.0), (4, -1.0), (6, p(-30))], "even 1, even −1, then even 2⁻³⁰", p(-30)),
    ];
    let input = vec![bf16::ONE; 64];
    let mut weights = vec![bf16::ZERO; 32 * 16 * 2];
    let mut bias = vec![0f32; 16];
    for (lane, (b, products, _, _)) in lanes.iter().enumerate() {
        bias[lane] = *b;
        for &(channel, v) in products {
            weights[((channel / 2) * 16 + lane) * 2 + channel % 2] = bf16::from_f32(v);
        }
    }
    let mut outputs = vec![vec![bf16::ZERO; 16]];
    run(
        &tile.code().unwrap(),
        &input,
        &weights,
        &bias,
        &mut outputs,
        &[vec![bf16::ZERO; 16]],
        0,
    );
    for (lane, (b, products, question, answer)) in lanes.iter().enumerate() {
        let v = outputs[0][lane].to_f32();
        assert_eq!(v, *answer, "{question}: {v:e}");
        let mut channels = [0f32; 64];
        for &(channel, product) in products {
            channels[channel] = product;
        }
        let modelled = channels.chunks(AMX_CHANNELS).fold(*b, amx_dot_step);
        assert_eq!(
            bf16::from_f32(modelled).to_f32(),
            *answer,
            "the model: {question}"
        );
    }
}

/// One `tdpbf16ps` on a single row: `c[16] += a[32] · b[16 pairs][16][2]`, the accumulators read
/// and written as f32 (no bf16 rounding after it, unlike a tile's epilogue).
fn tdpbf16ps_row() -> Vec<u8> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64).unwrap();
    let mut config = a.create_label();
    a.ldtilecfg(ptr(config)).unwrap();
    a.mov(rax, 64i64).unwrap();
    a.tileloadd(tmm0, ptr(rdx + rax)).unwrap();
    a.tileloadd(tmm1, ptr(rdi + rax)).unwrap();
    a.tileloadd(tmm2, ptr(rsi + rax)).unwrap();
    a.tdpbf16ps(tmm0, tmm1, tmm2).unwrap();
    a.tilestored(ptr(rdx + rax), tmm0).unwrap();
    a.tilerelease().unwrap();
    a.ret().unwrap();
    a.set_label(&mut config).unwrap();
    // Palette 1; tmm0 (C) and tmm1 (A) one row of 64 bytes, tmm2 (B) 16 rows.
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    for t in 0..3 {
        bytes[16 + 2 * t] = 64;
    }
    bytes[48..51].copy_from_slice(&[1, 1, 16]);
    a.db(&bytes).unwrap();
    a.assemble(0).unwrap()
}

/// `tdpbf16ps` on random bf16 values of widely spread magnitudes (2⁻¹⁰ to 2¹¹, products 2⁻²⁰ to
/// 2²², so that sums cancel and round in every way, all within f32's normal range) gives
/// exactly the f32 sums `amx_dot_step` models, lane by lane; the documented pseudo-code's chain
/// of fused multiply-adds does not.
#[test]
fn tdpbf16ps_sums_as_the_interpreter_models_it() {
    let code = tdpbf16ps_row();
    if !amx_runs(inceptc_runtime::layout::Precision::Bf16, "tdpbf16ps") {
        return;
    }
    let exe = Executable::new(&code);
    // SAFETY: the code reads 64 bytes at `a`, 1 KiB at `b` and reads and writes 64 at `c`.
    let call = unsafe {
        std::mem::transmute::<
            *mut libc::c_void,
            unsafe extern "C" fn(*const bf16, *const bf16, *mut f32),
        >(exe.ptr)
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2016);
    let value = |rng: &mut rand_chacha::ChaCha8Rng| {
        let magnitude = rng.gen_range(1.0f32..2.0) * 2f32.powi(rng.gen_range(-10..=10));
        bf16::from_f32(if rng.gen_bool(0.5) {
            -magnitude
        } else {
            magnitude
        })
    };
    let (mut lanes, mut chained) = (0, 0);
    for _ in 0..2000 {
        let a: Vec<bf16> = (0..32).map(|_| value(&mut rng)).collect();
        let b: Vec<bf16> = (0..512).map(|_| value(&mut rng)).collect();
        let start: Vec<f32> = (0..16).map(|_| 4.0 * value(&mut rng).to_f32()).collect();
        let mut c = start.clone();
        // SAFETY: the sizes above.
        unsafe { call(a.as_ptr(), b.as_ptr(), c.as_mut_ptr()) };
        for lane in 0..16 {
            let products: Vec<f32> = (0..32)
                .map(|i| a[i].to_f32() * b[((i / 2) * 16 + lane) * 2 + i % 2].to_f32())
                .collect();
            let want = amx_dot_step(start[lane], &products);
            assert_eq!(
                c[lane].to_bits(),
                want.to_bits(),
                "lane {lane}: {} against {want}",
                c[lane]
            );
            let fma = products.iter().fold(start[lane], |acc, p| acc + p);
            chained += (fma != c[lane]) as usize;
            lanes += 1;
        }
    }
    // The chain differs from AMX on most lanes: the test tells the two apart.
    assert!(chained > lanes / 4, "{chained} of {lanes}");
    eprintln!("tdpbf16ps: {lanes} random lanes as modelled; a chain of f32 additions differs on {chained}");
}
