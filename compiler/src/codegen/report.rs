//! What `inceptc compile --report` prints: every kernel with its operation, the algorithm and
//! register tile chosen, its work items, FLOPs and the one-core time [`super::cost`] predicts.

use std::fmt::Write as _;

use super::cost::{
    direct_time, winograd_item_times, winograd_parts, winograd_split_time, ConvShape, CLOCK_GHZ,
};
use super::lower::{ItemOrder, Kernel, Split};
use super::tile::Tile;
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
    /// Floating-point operations (2 per multiply-add).
    pub flops: u64,
    /// Its work items and their predicted time on one core (`work.one`, in seconds).
    pub work: Work,
    /// Predicted time on the report's thread count, in seconds: its share of its stage's
    /// [`stage_time`], in proportion to its one-thread time.
    pub parallel: f64,
    /// Whether it runs together with the kernel before (one stage).
    pub joins: bool,
    /// Work items of its stage: its own and those of the kernels it runs with.
    pub stage_items: usize,
}

/// What handing a kernel's work items to the pool's threads costs per kernel, in seconds, when
/// more than one thread runs (`runtime/examples/pool_overhead.rs` measures it).
const POOL_HANDOUT: f64 = 1.5e-6;

/// A kernel's work items as the pool runs them: of equal cost, except the last `tail` of every
/// `period` consecutive items (an image's last Winograd tile-row group, which may hold fewer
/// rows).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Work {
    /// The one-thread time of all items, in seconds.
    pub one: f64,
    /// Work items.
    pub items: usize,
    /// Items per run of consecutive items that ends with `tail` items of another cost.
    pub period: usize,
    /// Items at the end of each run that cost `tail_weight` times what another does.
    pub tail: usize,
    /// See `tail`.
    pub tail_weight: f64,
}

impl Work {
    /// `items` items of equal cost that take `one` seconds in all.
    pub fn even(one: f64, items: usize) -> Work {
        Work {
            one,
            items,
            period: 1,
            tail: 0,
            tail_weight: 1.0,
        }
    }

    /// The work of `kernel`, which takes `one` seconds on one thread.
    pub fn of(kernel: &Kernel, one: f64) -> Work {
        match kernel {
            Kernel::Winograd(k) => Work {
                one,
                ..Work::winograd(&k.shape(), k.tile, k.group, k.parts, &k.register)
            },
            _ => Work::even(one, kernel.items()),
        }
    }

    /// The work of a Winograd convolution of `shape` in tiles `tile`, `group` tile rows and
    /// `parts` channel parts per item, its products in `register`, as [`super::cost`] predicts
    /// it: an image's last group may cost less ([`winograd_item_times`]).
    pub fn winograd(
        shape: &ConvShape,
        tile: [usize; 2],
        group: usize,
        parts: usize,
        register: &Tile,
    ) -> Work {
        let groups = shape.tiles(tile)[0].div_ceil(group);
        let (full, last) = winograd_item_times(shape, tile, group, parts, register);
        Work {
            one: winograd_split_time(shape, tile, group, parts, register),
            items: shape.images * groups * parts,
            period: groups * parts,
            tail: parts,
            tail_weight: last / full.max(f64::MIN_POSITIVE),
        }
    }

    /// Its time on `threads` threads, alone in its stage ([`stage_time`]).
    pub fn time(&self, threads: usize) -> f64 {
        stage_time(&[*self], threads)
    }

    /// Each item's one-thread time, in order.
    fn costs(&self) -> impl Iterator<Item = f64> + '_ {
        let period = self.period.max(1);
        let weight = move |i: usize| match i % period >= period - self.tail.min(period) {
            true => self.tail_weight,
            false => 1.0,
        };
        let total: f64 = (0..self.items).map(weight).sum();
        let unit = self.one / total.max(f64::MIN_POSITIVE);
        (0..self.items).map(move |i| unit * weight(i))
    }
}

/// The time a kernel of `items` equal work items that takes `one` seconds on one thread takes on
/// `threads` threads, as the runtime's pool runs it: each thread takes its own share of the items
/// in chunks that halve as the share runs out, then chunks of what is left of the others' shares
/// ([`inceptc_runtime::pool`]). Memory bandwidth shared by the threads is not modelled.
pub fn parallel_time(one: f64, items: usize, threads: usize) -> f64 {
    stage_time(&[Work::even(one, items)], threads)
}

/// [`parallel_time`] of a stage: kernels that run together, their work items numbered one after
/// another, each kernel's split into the threads' shares as if it ran alone
/// ([`inceptc_runtime::pool::ThreadPool::run_segments`]).
pub fn stage_time(kernels: &[Work], threads: usize) -> f64 {
    use inceptc_runtime::pool;
    let items: usize = kernels.iter().map(|k| k.items).sum();
    let one: f64 = kernels.iter().map(|k| k.one).sum();
    if threads <= 1 || items <= 1 {
        return one;
    }
    // Each item's cost, in order.
    let costs: Vec<f64> = kernels.iter().flat_map(|k| k.costs()).collect();
    let shares = pool::shares(
        &pool::segment_ends(kernels.iter().map(|k| k.items)),
        threads,
    );
    let mut next: Vec<usize> = shares.iter().map(|r| r.start).collect();
    let mut free = vec![0.0f64; threads];
    // The thread that is free first takes its next chunk; once it finds none, none is left.
    loop {
        let me = (0..threads)
            .min_by(|a, b| free[*a].total_cmp(&free[*b]))
            .unwrap_or(0);
        let Some(i) =
            pool::visit_order(me, threads, kernels.len()).find(|&i| next[i] < shares[i].end)
        else {
            break;
        };
        let size = pool::chunk_size(shares[i].end - next[i]);
        free[me] += costs[next[i]..next[i] + size].iter().sum::<f64>();
        next[i] += size;
    }
    free.iter().cloned().fold(0.0, f64::max) + POOL_HANDOUT
}

/// Window taps per second of max pooling, one core.
const MAX_POOL_TAPS_PER_SECOND: f64 = 1.75e9;
/// Window taps per second of average pooling, one core.
const AVG_POOL_TAPS_PER_SECOND: f64 = 2.6e9;
/// Bytes of weights per second a linear layer streams, one core.
const LINEAR_BYTES_PER_SECOND: f64 = 4.8e9;
/// Values per second the global pool and the L2 normalization read, one core.
const STREAM_VALUES_PER_SECOND: f64 = 0.9e9;

/// Describes and predicts every kernel of `program`, in step order, on one and on `threads`
/// threads.
pub fn report(program: &Program, threads: usize) -> Vec<KernelReport> {
    let mut rows: Vec<KernelReport> = Vec::new();
    for (i, step) in program.steps.iter().enumerate() {
        let Some(kernel) = step.kernel.as_ref() else {
            continue;
        };
        let (op, algorithm, predicted) = describe(kernel);
        rows.push(KernelReport {
            name: super::kernel_name(i, &step.nodes[0]),
            block: program.blocks[step.block].clone(),
            op,
            algorithm,
            flops: kernel.flops(),
            work: Work::of(kernel, predicted),
            parallel: 0.0,
            joins: step.joins,
            stage_items: 0,
        });
    }
    // Each stage's time, shared among its kernels as their one-thread times are.
    for stage in rows.chunk_by_mut(|_, next| next.joins) {
        let kernels: Vec<Work> = stage.iter().map(|r| r.work).collect();
        let time = stage_time(&kernels, threads);
        let one: f64 = kernels.iter().map(|k| k.one).sum();
        let items = kernels.iter().map(|k| k.items).sum();
        for r in stage {
            r.parallel = time * r.work.one / one.max(f64::MIN_POSITIVE);
            r.stage_items = items;
        }
    }
    rows
}

/// The one-core time [`super::cost`] predicts for `kernel`, in seconds.
pub fn predicted(kernel: &Kernel) -> f64 {
    describe(kernel).2
}

fn describe(kernel: &Kernel) -> (String, String, f64) {
    match kernel {
        Kernel::Conv(k) => {
            let shape = k.shape();
            let op = conv_op(&shape, k.ranges.len());
            let (tiles, run) = match k.flat {
                true => ("flat pixel tiles", k.flat_run()),
                false => ("row tiles", k.out_w),
            };
            let mut algorithm = match k.input.precision {
                inceptc_runtime::layout::Precision::F32 => {
                    format!("direct, {tiles} {}", k.register.describe())
                }
                p => format!("direct, {tiles} {} {}", k.register.describe(), p.name()),
            };
            if let Split::Panels { order, .. } = k.split {
                algorithm += match order {
                    ItemOrder::PanelMajor => ", channels first",
                    ItemOrder::GroupMajor => ", pixels first",
                };
            }
            let time = direct_time(&shape, &k.register, run, k.input.precision);
            (op, algorithm, time)
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
            let time = winograd_split_time(&shape, k.tile, k.group, k.parts, &k.register);
            // Transforms, the repeated input transforms of the channel parts included.
            let transforms = time - parts.products - parts.streaming;
            let split = match k.parts {
                1 => String::new(),
                n => format!(" in {n} channel parts"),
            };
            let algorithm = format!(
                "winograd {name}, {} tiles{split}, {}; transforms {:.0}%",
                k.item_tiles(),
                k.register.describe(),
                100.0 * transforms / time
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
                "{kind} pool {kh}×{kw}/{} {} ch {}×{}{}",
                k.window.stride[0],
                k.out.channels,
                k.out.h,
                k.out.w,
                if k.relu { ", relu" } else { "" }
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

/// The report as a table, with totals; with `threads` above 1, each kernel's predicted time on
/// that many threads, and per block the predicted times and the parallel efficiency (one-thread
/// time / (threads × `threads`-thread time)).
pub fn table(program: &Program, threads: usize) -> String {
    let rows = report(program, threads);
    let total: f64 = rows.iter().map(|r| r.work.one).sum();
    let flops: u64 = rows.iter().map(|r| r.flops).sum();
    let parallel = threads > 1;
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<44} {:<20} {:<36} {:<34} {:>6} {:>9} {:>10} {:>6}",
        "kernel", "block", "operation", "algorithm, tile", "items", "MFLOP", "predicted", "share"
    );
    match parallel {
        true => {
            let _ = writeln!(out, " {:>10}", format!("{threads} threads"));
        }
        false => out.push('\n'),
    }
    for r in &rows {
        let name = match r.joins {
            true => format!("+ {}", r.name),
            false => r.name.clone(),
        };
        let _ = write!(
            out,
            "{:<44} {:<20} {:<36} {:<34} {:>6} {:>9.1} {:>7.3} ms {:>5.1}%",
            name,
            r.block,
            r.op,
            r.algorithm,
            r.work.items,
            r.flops as f64 / 1e6,
            r.work.one * 1e3,
            100.0 * r.work.one / total.max(f64::MIN_POSITIVE)
        );
        match parallel {
            true => {
                let _ = writeln!(out, " {:>7.3} ms", r.parallel * 1e3);
            }
            false => out.push('\n'),
        }
    }
    let _ = writeln!(
        out,
        "{} kernels in {} stages (a kernel marked + runs together with the one above) for {} in \
         {}, {:.2} GFLOP; predicted {:.1} ms on one core at {CLOCK_GHZ} GHz (a cost model fitted \
         to f32 code on the development machine, bf16 and int8 scaled by their instructions' \
         products; measure with OUT --bench)",
        rows.len(),
        rows.iter().filter(|r| !r.joins).count(),
        program.tier.name(),
        program.precision.name(),
        flops as f64 / 1e9,
        total * 1e3
    );
    if parallel {
        out.push_str(&threads_summary(program, &rows, threads));
    }
    out
}

/// Per block and in all: predicted times on one and on `threads` threads and the parallel
/// efficiency, and how much of the one-thread time is in kernels with fewer items than threads.
fn threads_summary(program: &Program, rows: &[KernelReport], threads: usize) -> String {
    let efficiency = |one: f64, many: f64| one / (threads as f64 * many.max(f64::MIN_POSITIVE));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<24} {:>10} {:>12} {:>10} {:>9}",
        "block",
        "1 thread",
        format!("{threads} threads"),
        "efficiency",
        "min items"
    );
    for block in &program.blocks {
        let of_block: Vec<&KernelReport> = rows.iter().filter(|r| &r.block == block).collect();
        if of_block.is_empty() {
            continue;
        }
        let one: f64 = of_block.iter().map(|r| r.work.one).sum();
        let many: f64 = of_block.iter().map(|r| r.parallel).sum();
        let least = of_block.iter().map(|r| r.stage_items).min().unwrap_or(0);
        let _ = writeln!(
            out,
            "{block:<24} {:>7.3} ms {:>9.3} ms {:>10.2} {least:>9}",
            one * 1e3,
            many * 1e3,
            efficiency(one, many)
        );
    }
    let one: f64 = rows.iter().map(|r| r.work.one).sum();
    let many: f64 = rows.iter().map(|r| r.parallel).sum();
    // A fold from +0 (an empty f64 sum is −0, which prints as "-0%").
    let starved = rows
        .iter()
        .filter(|r| r.stage_items < threads)
        .map(|r| r.work.one)
        .fold(0.0, |a, b| a + b);
    let _ = writeln!(
        out,
        "predicted {:.1} ms on {threads} threads against {:.1} ms on one: parallel efficiency \
         {:.2}; {:.0}% of the one-thread time is in stages with fewer than {threads} work items \
         (the kernels of a stage run together, the stages one after another; memory bandwidth is \
         not modelled)",
        many * 1e3,
        one * 1e3,
        efficiency(one, many),
        100.0 * starved / one.max(f64::MIN_POSITIVE)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_splits_each_kernel_as_if_alone() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // 2 costly items, then 40 cheap ones, on 2 threads: one costly item each, then 20 cheap
        // ones each.
        assert!(close(
            stage_time(&[Work::even(2.0, 2), Work::even(0.4, 40)], 2),
            1.2 + POOL_HANDOUT
        ));
        // The same kernels one after another, each on both threads.
        let apart = parallel_time(2.0, 2, 2) + parallel_time(0.4, 40, 2);
        assert!(close(
            apart - stage_time(&[Work::even(2.0, 2), Work::even(0.4, 40)], 2),
            POOL_HANDOUT
        ));
        // 3 items of one kernel on 4 threads leave a thread idle that the next kernel fills.
        assert!(
            stage_time(&[Work::even(3.0, 3), Work::even(1.0, 1)], 4)
                < parallel_time(3.0, 3, 4) + 1.0
        );
        // On one thread, the sum.
        assert_eq!(
            stage_time(&[Work::even(3.0, 3), Work::even(1.0, 1)], 1),
            4.0
        );
    }

    #[test]
    fn an_images_cheaper_last_winograd_items_are_timed_as_such() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // Two items, the second 0.8 of the first (a group of 5 tile rows and one of 4): on two
        // threads the stage takes the first item's time, not half the total.
        let short = Work {
            one: 9.0,
            items: 2,
            period: 2,
            tail: 1,
            tail_weight: 0.8,
        };
        assert!(close(short.time(2), 5.0 + POOL_HANDOUT));
        assert!(close(Work::even(9.0, 2).time(2), 4.5 + POOL_HANDOUT));
        assert_eq!(short.time(1), 9.0);
        // Two images of three groups in two parts: the last two items of each six are cheap.
        let costs: Vec<f64> = Work {
            one: 10.0,
            items: 12,
            period: 6,
            tail: 2,
            tail_weight: 0.5,
        }
        .costs()
        .collect();
        assert_eq!(costs, [1.0, 1.0, 1.0, 1.0, 0.5, 0.5].repeat(2));
    }

    #[test]
    fn parallel_time_follows_the_pools_chunks() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // One thread, or one item: the one-thread time, no hand-out.
        assert_eq!(parallel_time(1.0, 64, 1), 1.0);
        assert_eq!(parallel_time(1.0, 1, 16), 1.0);
        // Two items on 16 threads: two threads work, each on half.
        assert!(close(parallel_time(1.0, 2, 16), 0.5 + POOL_HANDOUT));
        // 64 items on 16 threads: 16 chunks of two items, then 32 of one: four items each.
        assert!(close(parallel_time(1.0, 64, 16), 0.25 / 4.0 + POOL_HANDOUT));
        // 80 items on 2 threads: chunks of 20, 15, 12, 9, … 1 end level, 40 items each.
        assert!(close(parallel_time(80.0, 80, 2), 40.0 + POOL_HANDOUT));
        // 17 items on 16 threads: one thread takes two.
        assert!(close(parallel_time(17.0, 17, 16), 2.0 + POOL_HANDOUT));
        // 6 items on 4 threads: 6 chunks, two threads take two.
        assert!(close(parallel_time(6.0, 6, 4), 2.0 + POOL_HANDOUT));
    }
}
