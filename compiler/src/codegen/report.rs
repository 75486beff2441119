//! What `inceptc compile --report` prints: every kernel with its operation, the algorithm and
//! register tile chosen, its work items, FLOPs and the one-core time [`super::cost`] predicts.

use std::fmt::Write as _;

use super::cost::{direct_time, winograd_parts, ConvShape, CLOCK_GHZ};
use super::lower::Kernel;
use super::Program;

/// One kernel as the report shows it.
#[derive(Clone, Debug)]
pub struct KernelReport {
    /// The kernel's symbol name.
    pub name: String,
    /// Its block.
    pub block: String,
    /// What it computes: `conv 3×3/2 192→192 35×35`.
    pub op: String,
    /// How: algorithm and register tile.
    pub algorithm: String,
    /// Work items.
    pub items: usize,
    /// Floating-point operations (2 per multiply-add).
    pub flops: u64,
    /// Predicted time on one core, in seconds.
    pub predicted: f64,
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
