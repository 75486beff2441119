//! What `inceptc compile --report` prints for every kernel: the operation, the algorithm and
//! register tile chosen, its work items, and a predicted time from a cost model.
//!
//! The model is deliberately simple and calibrated, not derived: a direct convolution runs at a
//! fixed fraction of the FMA peak for its kind (32 FLOP per cycle per core with the AVX2 register
//! tile, 16 with the 128-bit one below [`WIDE_MIN_CHANNELS`] input channels); a Winograd
//! convolution's point-wise products run at one fraction of that peak and its transforms at a
//! fixed rate of vector instructions; a pool runs at a fixed rate of window taps, a linear layer at
//! a fixed rate of weight bytes. The convolution constants are fitted to the per-kernel minima of
//! four one-thread `OUT --bench --trace` runs of Inception-v4 and Inception-ResNet-v2, built with
//! `--conv direct` and with the default (the Winograd fit: 213 ms measured, 226 ms predicted over
//! 66 kernels, single kernels within 45 %); the pool and linear rates come from an earlier
//! one-thread trace of Inception-v4. The development machine is shared and its speed varies by up
//! to 2× from minute to minute: the constants come from the quietest of the runs.

use std::fmt::Write as _;

use super::lower::{tile_fill, Kernel, CONV_LANES};
use super::wide::WIDE_MIN_CHANNELS;
use super::Program;
use crate::codegen::emit::tile_pixels;

/// The clock the predictions assume, in GHz (the development machine's, measured).
pub const CLOCK_GHZ: f64 = 2.98;
/// FLOP per cycle per core of the AVX2 register tile: two 256-bit FMA ports.
pub const PEAK_FLOP_PER_CYCLE: f64 = 32.0;
/// FLOP per cycle per core of the 128-bit register tile.
const NARROW_PEAK_FLOP_PER_CYCLE: f64 = 16.0;
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

fn peak() -> f64 {
    PEAK_FLOP_PER_CYCLE * CLOCK_GHZ * 1e9
}

/// Predicted one-core time of the direct convolution.
pub fn direct_time(shape: &ConvShape) -> f64 {
    if shape.in_channels < WIDE_MIN_CHANNELS {
        let narrow = NARROW_PEAK_FLOP_PER_CYCLE * CLOCK_GHZ * 1e9;
        return shape.flops() as f64 / (NARROW_EFFICIENCY * narrow);
    }
    shape.flops() as f64 / (conv_efficiency(shape.kernel, shape.stride) * peak())
}

/// Fraction of the AVX2 tile's peak the point-wise products of a Winograd convolution reach with
/// full register tiles (fitted).
const WINOGRAD_PRODUCT_EFFICIENCY: f64 = 0.79;
/// Vector instructions per cycle of the input and output transforms (loads, stores, adds, FMAs;
/// fitted).
const TRANSFORM_OPS_PER_CYCLE: f64 = 1.0;

/// Predicted one-core time of a Winograd convolution with `tile` outputs per tile (y, x) and
/// `group` tile rows per work item: the point-wise products at the register tile's fill, plus the
/// transforms, counted in vector instructions.
pub fn winograd_time(shape: &ConvShape, tile: [usize; 2], group: usize) -> f64 {
    let [ly, lx] = [tile[0] + shape.kernel[0] - 1, tile[1] + shape.kernel[1] - 1];
    let points = (ly * lx) as f64;
    let [th, tw] = [
        shape.out[0].div_ceil(tile[0]),
        shape.out[1].div_ceil(tile[1]),
    ];
    let item_tiles = group * tw;
    let register = tile_pixels(shape.in_channels, shape.in_channels * 4);
    let fill = tile_fill(item_tiles, register);
    let tiles = (shape.images * th.div_ceil(group) * item_tiles) as f64;
    let co = shape.out_channels.next_multiple_of(CONV_LANES) as f64;
    let ci = shape.in_channels as f64;
    let products = 2.0 * points * tiles * ci * co / (WINOGRAD_PRODUCT_EFFICIENCY * fill * peak());
    // Per tile and 4 channels: input loads, both transform passes, stores; products stored and
    // loaded, both inverse passes, the epilogue.
    let input_ops = (ly * lx + ly * ly * lx + ly * lx * lx) as f64 + points;
    let output_ops = 2.0 * points
        + (tile[0] * ly * lx + tile[0] * tile[1] * lx) as f64
        + 3.0 * (tile[0] * tile[1]) as f64;
    let transform_ops = tiles * (ci / 4.0 * input_ops + co / 4.0 * output_ops);
    products + transform_ops / (TRANSFORM_OPS_PER_CYCLE * CLOCK_GHZ * 1e9)
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
            let tiles = match k.flat {
                true => "flat pixel tiles",
                false => "row tiles",
            };
            let isa = match k.input.channels >= WIDE_MIN_CHANNELS {
                true => "avx2",
                false => "sse",
            };
            let pixels = tile_pixels(k.input.channels, k.stride[1] * k.input.pixel_stride());
            let algorithm = format!("direct, {tiles} {pixels} px × {CONV_LANES} ch {isa}");
            (op, algorithm, direct_time(&shape))
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
            let algorithm = format!(
                "winograd {name}, {} tiles × {CONV_LANES} ch",
                k.item_tiles()
            );
            (op, algorithm, winograd_time(&shape, k.tile, k.group))
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
            (
                op,
                "direct, 4 outputs per step".into(),
                bytes as f64 / LINEAR_BYTES_PER_SECOND,
            )
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
        "{} kernels, {:.2} GFLOP; predicted {:.1} ms on one core at {CLOCK_GHZ} GHz (a cost model \
         calibrated on the development machine; measure with OUT --bench)",
        rows.len(),
        flops as f64 / 1e9,
        total * 1e3
    );
    out
}
