//! What `inceptc compile --report` prints for every kernel: the operation, the algorithm and
//! register tile chosen, its work items, and a predicted time from a cost model.
//!
//! The model is deliberately simple and calibrated, not derived: a direct convolution runs at a
//! fixed fraction of its register tile's FMA peak for its kind (16, 32 or 64 FLOP per cycle per
//! core for the 128-bit, AVX2 and AVX-512 tiles; on the AVX-512 tier, times the fraction of the
//! tile's ideal rate the layer's shape allows, [`tile::fill`]); a Winograd
//! convolution's point-wise products run at one fraction of that peak and its transforms at a
//! fixed rate of vector instructions; a pool runs at a fixed rate of window taps, a linear layer at
//! a fixed rate of weight bytes. The convolution constants are fitted to the per-kernel minima of
//! four one-thread `OUT --bench --trace` runs of Inception-v4 and Inception-ResNet-v2, built with
//! `--conv direct` and with the default (the Winograd fit: 213 ms measured, 226 ms predicted over
//! 66 kernels, single kernels within 45 %); the pool and linear rates come from an earlier
//! one-thread trace of Inception-v4. The development machine is shared and its speed varies by up
//! to 2× from minute to minute: the constants come from the quietest of the runs.
//!
//! On the AVX-512 tier a layer also streams its weights from memory once per call (the
//! panel-major split keeps each panel in cache), and a Winograd layer whose transformed weights
//! overflow the L2 cache streams them once per work item; that time is added at a fitted rate.
//! Its constants are fitted to the per-kernel minima of two one-thread traces each of
//! Inception-v4 and Inception-ResNet-v2, direct and default, on an AVX-512 Xeon.

use std::fmt::Write as _;

use super::lower::{tile_fill, Kernel};
use super::tile::{self, Isa, Tile};
use super::Program;

/// The clock the predictions assume, in GHz (the development machine's, measured).
pub const CLOCK_GHZ: f64 = 2.98;
/// Fraction of the 128-bit peak the narrow tile reaches (a stem layer with 3 input channels).
const NARROW_EFFICIENCY: f64 = 0.66;

/// One kernel as the report shows it.
#[derive(Clone, Debug)]
pub struct KernelReport {
    pub name: String,
    pub block: String,
    /// What it computes: `conv 3×3/2 192→192 35×35`.
    pub op: String,
    /// How: algorithm and register tile.
    pub algorithm: String,
    pub items: usize,
    pub flops: u64,
    /// Predicted time on one core, in seconds.
    pub predicted: f64,
}

/// Fraction of the AVX2 tile's peak a direct convolution of this shape reaches (fitted by kind).
fn conv_efficiency(kernel: [usize; 2], stride: [usize; 2]) -> f64 {
    match (kernel, stride) {
        (_, s) if s != [1, 1] => 0.70,
        ([1, 1], _) => 0.76,
        ([3, 3], _) => 0.77,
        ([1, 7] | [7, 1], _) => 0.70,
        ([1, 3] | [3, 1], _) => 0.63,
        _ => 0.76,
    }
}

/// Fraction of the AVX-512 tile's peak a direct convolution of this shape reaches at full fill
/// (fitted by kind).
fn conv_efficiency_avx512(kernel: [usize; 2], stride: [usize; 2]) -> f64 {
    match (kernel, stride) {
        (_, s) if s != [1, 1] => 0.82,
        ([1, 1], _) => 0.85,
        ([3, 3], _) => 0.92,
        ([1, 7] | [7, 1], _) => 0.91,
        ([1, 3] | [3, 1], _) => 0.89,
        _ => 0.87,
    }
}

/// Bytes of weights per second one core streams from memory into its caches (fitted).
const WEIGHT_STREAM_BYTES_PER_SECOND: f64 = 12e9;
/// Winograd weights larger than this stream from memory once per work item instead of once per
/// call (fitted; about the L2 cache of the development machine).
const WINOGRAD_WEIGHTS_CACHED: usize = 3 << 20;
/// What the AVX-512 tier's Winograd products take of the AVX2 fit's prediction (fitted, with
/// the transforms' factor below, to the per-layer choices one-thread traces measured faster: see
/// the test `the_avx512_model_picks_what_measured_faster`).
const WINOGRAD_AVX512_SCALE: f64 = 1.2;
/// What its transforms, assembled on zmm vectors of 16 channels, take of the 128-bit ones' (fitted
/// to the Winograd layers of one-thread Inception-v4 traces before and after they went wide).
const WINOGRAD_AVX512_TRANSFORMS: f64 = 0.45;

/// What the cost of a convolution depends on.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub images: usize,
    pub in_channels: usize,
    /// All output ranges together.
    pub out_channels: usize,
    pub out: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
}

impl ConvShape {
    /// Floating-point operations of the direct convolution (2 per multiply–add).
    pub fn flops(&self) -> u64 {
        let pixels = self.images * self.out[0] * self.out[1];
        2 * (pixels * self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]) as u64
    }
}

/// FLOP per second of one core at `register`'s peak.
fn peak(register: &Tile) -> f64 {
    register.peak_flop_per_cycle() * CLOCK_GHZ * 1e9
}

/// Predicted one-core time of the direct convolution in register tiles `register` over runs of
/// `run` output pixels (a row, or the whole batch of a flat convolution).
pub fn direct_time(shape: &ConvShape, register: &Tile, run: usize) -> f64 {
    let steps = shape.kernel[0] * shape.kernel[1] * shape.in_channels;
    let efficiency = match register.isa {
        Isa::Sse => NARROW_EFFICIENCY,
        Isa::Avx2 => conv_efficiency(shape.kernel, shape.stride),
        Isa::Avx512 => {
            conv_efficiency_avx512(shape.kernel, shape.stride)
                * tile::fill(register, run, steps, shape.out_channels)
        }
    };
    let compute = shape.flops() as f64 / (efficiency * peak(register));
    match register.isa {
        Isa::Avx512 => {
            let bytes = steps * register.padded(shape.out_channels) * 4;
            compute + bytes as f64 / WEIGHT_STREAM_BYTES_PER_SECOND
        }
        Isa::Sse | Isa::Avx2 => compute,
    }
}

/// Fraction of the AVX2 tile's peak the point-wise products of a Winograd convolution reach with
/// full register tiles (fitted).
const WINOGRAD_PRODUCT_EFFICIENCY: f64 = 0.79;
/// Vector instructions per cycle of the input and output transforms (loads, stores, adds, FMAs;
/// fitted).
const TRANSFORM_OPS_PER_CYCLE: f64 = 1.0;

/// Predicted one-core time of a Winograd convolution with `tile` outputs per tile (y, x) and
/// `group` tile rows per work item, its products in register tiles `register`: the point-wise
/// products at the register tile's fill, plus the transforms, counted in vector instructions.
pub fn winograd_time(shape: &ConvShape, tile: [usize; 2], group: usize, register: &Tile) -> f64 {
    let parts = winograd_parts(shape, tile, group, register);
    parts.products + parts.transforms + parts.streaming
}

/// A Winograd convolution's predicted time in its parts.
#[derive(Clone, Copy, Debug)]
pub struct WinogradParts {
    /// The point-wise products in the register tiles.
    pub products: f64,
    /// The input and output transforms.
    pub transforms: f64,
    /// Streaming the transformed weights from memory.
    pub streaming: f64,
}

/// [`winograd_time`] in its parts.
pub fn winograd_parts(
    shape: &ConvShape,
    tile: [usize; 2],
    group: usize,
    register: &Tile,
) -> WinogradParts {
    let [ly, lx] = [tile[0] + shape.kernel[0] - 1, tile[1] + shape.kernel[1] - 1];
    let points = (ly * lx) as f64;
    let [th, tw] = [
        shape.out[0].div_ceil(tile[0]),
        shape.out[1].div_ceil(tile[1]),
    ];
    let item_tiles = group * tw;
    let fill = match register.isa {
        Isa::Avx512 => tile::fill(register, item_tiles, shape.in_channels, shape.out_channels),
        Isa::Sse | Isa::Avx2 => tile_fill(item_tiles, register.pixels),
    };
    let tiles = (shape.images * th.div_ceil(group) * item_tiles) as f64;
    let co = register.padded(shape.out_channels) as f64;
    let ci = shape.in_channels as f64;
    let products =
        2.0 * points * tiles * ci * co / (WINOGRAD_PRODUCT_EFFICIENCY * fill * peak(register));
    // Per tile and 4 channels: input loads, both transform passes, stores; products stored and
    // loaded, both inverse passes, the epilogue.
    let input_ops = (ly * lx + ly * ly * lx + ly * lx * lx) as f64 + points;
    let output_ops = 2.0 * points
        + (tile[0] * ly * lx + tile[0] * tile[1] * lx) as f64
        + 3.0 * (tile[0] * tile[1]) as f64;
    let transform_ops = tiles * (ci / 4.0 * input_ops + co / 4.0 * output_ops);
    let transforms = transform_ops / (TRANSFORM_OPS_PER_CYCLE * CLOCK_GHZ * 1e9);
    match register.isa {
        Isa::Avx512 => {
            let bytes = ly * lx * shape.in_channels * register.padded(shape.out_channels) * 4;
            let items = shape.images * th.div_ceil(group);
            let streams = match bytes > WINOGRAD_WEIGHTS_CACHED {
                true => items,
                false => 1,
            };
            WinogradParts {
                products: WINOGRAD_AVX512_SCALE * products,
                transforms: WINOGRAD_AVX512_TRANSFORMS * transforms,
                streaming: (bytes * streams) as f64 / WEIGHT_STREAM_BYTES_PER_SECOND,
            }
        }
        Isa::Sse | Isa::Avx2 => WinogradParts {
            products,
            transforms,
            streaming: 0.0,
        },
    }
}

/// Window taps per second of max pooling, one core.
const MAX_POOL_TAPS_PER_SECOND: f64 = 1.75e9;
/// Window taps per second of average pooling, one core.
const AVG_POOL_TAPS_PER_SECOND: f64 = 2.6e9;
/// Bytes of weights per second a linear layer streams, one core.
const LINEAR_BYTES_PER_SECOND: f64 = 4.8e9;
/// Values per second the global pool and the L2 normalization read, one core.
const STREAM_VALUES_PER_SECOND: f64 = 0.9e9;

/// Describes and predicts every kernel of `program`, in step order.
pub fn report(program: &Program) -> Vec<KernelReport> {
    program
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| {
            let kernel = step.kernel.as_ref()?;
            let (op, algorithm, predicted) = describe(kernel);
            Some(KernelReport {
                name: super::kernel_name(i, &step.nodes[0]),
                block: program.blocks[step.block].clone(),
                op,
                algorithm,
                items: kernel.items(),
                flops: kernel.flops(),
                predicted,
            })
        })
        .collect()
}

fn describe(kernel: &Kernel) -> (String, String, f64) {
    match kernel {
        Kernel::Conv(k) => {
            let shape = k.shape();
            let op = conv_op(&shape, k.ranges.len());
            let (tiles, run) = match k.flat {
                true => ("flat pixel tiles", k.input.n * k.out_h * k.out_w),
                false => ("row tiles", k.out_w),
            };
            let algorithm = format!("direct, {tiles} {}", k.register.describe());
            (op, algorithm, direct_time(&shape, &k.register, run))
        }
        Kernel::Winograd(k) => {
            let shape = k.shape();
            let op = conv_op(&shape, k.ranges.len());
            let [my, mx] = k.tile;
            let [ry, rx] = k.kernel;
            let name = match (my, ry) {
                (1, 1) => format!("F({mx},{rx})"),
                _ if mx == 1 && rx == 1 => format!("F({my},{ry})"),
                _ => format!("F({my}×{mx},{ry}×{rx})"),
            };
            let parts = winograd_parts(&shape, k.tile, k.group, &k.register);
            let time = parts.products + parts.transforms + parts.streaming;
            let algorithm = format!(
                "winograd {name}, {} tiles, {}; transforms {:.0}%",
                k.item_tiles(),
                k.register.describe(),
                100.0 * parts.transforms / time
            );
            (op, algorithm, time)
        }
        Kernel::Pool(k) => {
            let kind = match k.average {
                None => "max",
                Some(_) => "avg",
            };
            let [kh, kw] = k.window.kernel;
            let op = format!(
                "{kind} pool {kh}×{kw}/{} {} ch {}×{}",
                k.window.stride[0], k.out.channels, k.out.h, k.out.w
            );
            let taps = (k.out.n * k.out.h * k.out.w * k.out.channels * kh * kw) as f64;
            let rate = match k.average {
                None => MAX_POOL_TAPS_PER_SECOND,
                Some(_) => AVG_POOL_TAPS_PER_SECOND,
            };
            (op, "direct, rows".into(), taps / rate)
        }
        Kernel::GlobalPool(k) => {
            let values = k.input.n * k.input.h * k.input.w * k.input.channels;
            let op = format!("global avg pool {} ch", k.input.channels);
            (
                op,
                "direct".into(),
                values as f64 / STREAM_VALUES_PER_SECOND,
            )
        }
        Kernel::Linear(k) => {
            let bytes = 4 * k.input.features * k.out.features;
            let op = format!("linear {}→{}", k.input.features, k.out.features);
            let algorithm = match &k.register {
                Some(register) => format!("direct, {}", register.describe()),
                None => "direct, 4 outputs per step".into(),
            };
            (op, algorithm, bytes as f64 / LINEAR_BYTES_PER_SECOND)
        }
        Kernel::L2Norm(k) => {
            let op = format!("l2 normalize {}", k.input.features);
            let values = k.input.n * k.input.features;
            (
                op,
                "direct".into(),
                values as f64 / STREAM_VALUES_PER_SECOND,
            )
        }
    }
}

/// A convolution as the report names it: `conv 3×3/2 192→192 35×35`, with `(N shared)` for a
/// kernel that computes `ranges` sibling convolutions.
fn conv_op(shape: &ConvShape, ranges: usize) -> String {
    let shared = match ranges {
        1 => String::new(),
        n => format!(" ({n} shared)"),
    };
    let ([kh, kw], [oh, ow]) = (shape.kernel, shape.out);
    format!(
        "conv {kh}×{kw}/{} {}→{}{shared} {oh}×{ow}",
        shape.stride[0], shape.in_channels, shape.out_channels
    )
}

/// The report as a table, with totals.
pub fn table(program: &Program) -> String {
    let rows = report(program);
    let total: f64 = rows.iter().map(|r| r.predicted).sum();
    let flops: u64 = rows.iter().map(|r| r.flops).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:<20} {:<36} {:<34} {:>6} {:>9} {:>10} {:>6}",
        "kernel", "block", "operation", "algorithm, tile", "items", "MFLOP", "predicted", "share"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<44} {:<20} {:<36} {:<34} {:>6} {:>9.1} {:>7.3} ms {:>5.1}%",
            r.name,
            r.block,
            r.op,
            r.algorithm,
            r.items,
            r.flops as f64 / 1e6,
            r.predicted * 1e3,
            100.0 * r.predicted / total.max(f64::MIN_POSITIVE)
        );
    }
    let _ = writeln!(
        out,
        "{} kernels for {}, {:.2} GFLOP; predicted {:.1} ms on one core at {CLOCK_GHZ} GHz (a cost \
         model calibrated on the development machine; measure with OUT --bench)",
        rows.len(),
        program.tier.name(),
        flops as f64 / 1e9,
        total * 1e3
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::lower::winograd_group;
    use crate::codegen::tile::{choose, Tier, TileNeeds};
    use crate::codegen::winograd;

    /// (direct time, best Winograd time) of a stride-1 layer on one 299×299 image's map.
    fn times(tier: Tier, kernel: [usize; 2], ci: usize, co: usize, size: usize) -> (f64, f64) {
        let shape = ConvShape {
            images: 1,
            in_channels: ci,
            out_channels: co,
            out: [size, size],
            kernel,
            stride: [1, 1],
        };
        let needs = TileNeeds {
            tier,
            in_channels: ci,
            steps: kernel[0] * kernel[1] * ci,
            pixel_step: 4 * ci,
            run: size,
            out_channels: co,
        };
        let direct = direct_time(&shape, &choose(needs), size);
        let register = choose(TileNeeds {
            steps: ci,
            run: (size.div_ceil(2) * size.div_ceil(2)).clamp(1, 48),
            ..needs
        });
        let r = kernel[0].max(kernel[1]);
        let wino = winograd::choices(r)
            .iter()
            .map(|&m| {
                let tile = [
                    if kernel[0] == 1 { 1 } else { m },
                    if kernel[1] == 1 { 1 } else { m },
                ];
                let [th, tw] = [size.div_ceil(tile[0]), size.div_ceil(tile[1])];
                let group = winograd_group(1, th, tw, register.pixels);
                winograd_time(&shape, tile, group, &register)
            })
            .fold(f64::MAX, f64::min);
        (direct, wino)
    }

    #[test]
    fn the_avx512_model_picks_what_measured_faster() {
        // Per-kernel minima of three one-thread traces each of Inception-v4 built --conv direct
        // and --conv winograd on an AVX-512 Xeon, with the wide transforms (direct / Winograd,
        // ms over the network's layers of the shape): Winograd won on 17×17 1×7/7×1 (12.1 / 8.8,
        // 5.2 / 3.5), on 35×35 3×3 (5.3 / 2.6, 4.8 / 2.2) and 147×147 32→64 (4.7 / 3.6); direct on
        // 147×147 32→32 (2.3 / 2.6) and on every 8×8 1×3/3×1 layer (1.5 / 3.0, 0.7 / 0.8,
        // 0.9 / 1.2, 1.2 / 1.6), whose transformed weights stream from memory for few outputs.
        let wins = |kernel, ci, co, size| {
            let (direct, wino) = times(Tier::V4, kernel, ci, co, size);
            wino < direct
        };
        assert!(wins([1, 7], 192, 224, 17));
        assert!(wins([7, 1], 192, 192, 17));
        assert!(wins([3, 3], 64, 96, 35));
        assert!(wins([3, 3], 192, 224, 35));
        assert!(wins([3, 3], 32, 64, 147));
        assert!(!wins([3, 3], 32, 32, 147));
        assert!(!wins([1, 3], 448, 512, 8));
        assert!(!wins([3, 1], 384, 256, 8));
        assert!(!wins([1, 3], 512, 256, 8));
        assert!(!wins([3, 1], 384, 448, 8));
    }

    #[test]
    fn weights_that_stream_per_work_item_cost_more() {
        let shape = ConvShape {
            images: 1,
            in_channels: 512,
            out_channels: 512,
            out: [8, 8],
            kernel: [1, 3],
            stride: [1, 1],
        };
        let register = Tile {
            isa: Isa::Avx512,
            pixels: 8,
            vectors: 3,
        };
        // F(4,3): 6 points × 512 × 512 × 4 bytes = 6 MiB, over the cached size: two work items
        // stream them twice.
        let one = winograd_time(&shape, [1, 4], 8, &register);
        let two = winograd_time(&shape, [1, 4], 4, &register);
        assert!(two > one + 4e-4, "{one} {two}");
    }
}
