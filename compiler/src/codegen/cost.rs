//! What `inceptc compile --report` prints for every kernel: the operation, the algorithm and
//! register tile chosen, its work items, and a predicted time from a cost model.
//!
//! The model is deliberately simple and calibrated, not derived: a convolution runs at a fixed
//! fraction of the 128-bit FMA peak (16 FLOP per cycle per core) for its kind, a pool at a fixed
//! rate of window taps, a linear layer at a fixed rate of weight bytes. The constants come from
//! one-thread runs on the development machine: the convolution fractions from `cargo bench --bench
//! backend` (Inception-v4 and Inception-ResNet-v2, by kind, at the measured clock), the rates from
//! the kernels of a one-thread `OUT --bench --trace` of Inception-v4. Measured against the same
//! kind of run, the prediction is within about 10 % for 3×3, stride-2 and 1×3 layers and
//! optimistic by 15–40 % for 1×1 and 1×7 layers on a loaded machine.

use std::fmt::Write as _;

use super::lower::{Kernel, CONV_LANES};
use super::Program;
use crate::codegen::emit::TILE_PIXELS;

/// The clock the predictions assume, in GHz (the development machine's, measured).
pub const CLOCK_GHZ: f64 = 2.98;
/// FLOP per cycle per core with two 128-bit FMA ports.
pub const PEAK_FLOP_PER_CYCLE: f64 = 16.0;

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

/// Fraction of the FMA peak a direct convolution of this shape reaches (measured by kind).
fn conv_efficiency(kernel: [usize; 2], stride: [usize; 2]) -> f64 {
    match (kernel, stride) {
        (_, s) if s != [1, 1] => 0.74,
        ([1, 1], _) => 0.76,
        ([3, 3], _) => 0.79,
        ([1, 7] | [7, 1], _) => 0.77,
        ([1, 3] | [3, 1], _) => 0.66,
        _ => 0.70,
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
            let out: usize = k.ranges.iter().map(|r| r.channels).sum();
            let shared = match k.ranges.len() {
                1 => String::new(),
                n => format!(" ({n} shared)"),
            };
            let op = format!(
                "conv {}×{}/{} {}→{out}{shared} {}×{}",
                k.kernel[0], k.kernel[1], k.stride[0], k.input.channels, k.out_h, k.out_w
            );
            let tiles = match k.flat {
                true => "flat pixel tiles",
                false => "row tiles",
            };
            let algorithm = format!("direct, {tiles} {TILE_PIXELS} px × {CONV_LANES} ch");
            let peak = PEAK_FLOP_PER_CYCLE * CLOCK_GHZ * 1e9;
            let time = kernel.flops() as f64 / (conv_efficiency(k.kernel, k.stride) * peak);
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
