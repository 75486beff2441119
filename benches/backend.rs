//! End-to-end latency of every network and GFLOP/s of its convolutions by kind, compiled in
//! process (the same kernels `inceptc compile` links into executables), at batch 1 and the model's
//! own image size, on one thread and on all cores.
//!
//! `cargo bench --bench backend [-- MODEL...]`; `INCEPTC_BENCH_RUNS` sets the timed runs (default
//! 10). Code is generated for this machine's best tier (x86-64-v4 where it has AVX-512). Figures
//! are medians over the runs; the peak is that tier's FMA peak (two FMA ports of 512 or 256 bits:
//! 64 or 32 FLOP/cycle) at the clock measured with a chain of dependent adds. Winograd kernels are
//! listed apart, at the direct convolution's FLOPs (effective GFLOP/s, which may pass the peak).

use std::time::{Duration, Instant};

use inceptc::codegen::jit::JitProgram;
use inceptc::codegen::tile::Tier;
use inceptc::codegen::{Kernel, LowerOptions, Program};
use inceptc::passes::run_pipeline;
use inceptc_graphs::{load, Model, Options, Weights};
use inceptc_runtime::exec::{Arena, StepTimes};
use inceptc_runtime::pool::ThreadPool;
use inceptc_suite::random_input;

/// The core clock in MHz, measured: a chain of dependent integer adds retires one add per cycle.
/// (/proc/cpuinfo reports the nominal clock, not the turbo clock the benchmark runs at.)
fn clock_mhz() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let adds: u64 = 400_000_000;
        let start = Instant::now();
        let mut x: u64 = std::hint::black_box(0);
        for _ in 0..adds / 8 {
            // SAFETY: eight register adds, no memory access.
            unsafe {
                std::arch::asm!(
                    "add {0}, 1", "add {0}, 1", "add {0}, 1", "add {0}, 1",
                    "add {0}, 1", "add {0}, 1", "add {0}, 1", "add {0}, 1",
                    inout(reg) x
                );
            }
        }
        std::hint::black_box(x);
        Some(adds as f64 / start.elapsed().as_secs_f64() / 1e6)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The kind of a kernel, for the table: convolutions by shape, then everything else.
fn kind(kernel: &Kernel) -> Option<&'static str> {
    let k = match kernel {
        Kernel::Conv(k) => k,
        Kernel::Winograd(w) => {
            return Some(match w.kernel {
                [3, 3] => "3x3 wino",
                [1, 7] | [7, 1] => "1x7 wino",
                _ => "1x3 wino",
            })
        }
        Kernel::Pool(_) => return Some("pools"),
        _ => return Some("head"),
    };
    Some(match (k.kernel, k.stride) {
        (_, [2, 2]) => "stride 2",
        ([1, 1], _) => "1x1",
        ([3, 3], _) => "3x3",
        ([1, 7] | [7, 1], _) => "1x7/7x1",
        ([1, 3] | [3, 1], _) => "1x3/3x1",
        _ => "other",
    })
}

fn main() {
    let runs: usize = std::env::var("INCEPTC_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10)
        .max(1);
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tier = Tier::native();
    let peak = match tier {
        Tier::V4 => 64.0,
        Tier::V3 => 32.0,
    };
    let mhz = clock_mhz();
    match mhz {
        Some(m) => println!(
            "clock {m:.0} MHz (measured); {} FMA peak {:.1} GFLOP/s per core",
            tier.name(),
            peak * m / 1e3
        ),
        None => println!("clock unknown"),
    }
    for model in Model::ALL {
        if !wanted.is_empty() && !wanted.iter().any(|w| *w == model.to_string()) {
            continue;
        }
        let size = model.default_image_size();
        let mut graph = load(model, Weights::Seeded(1), &Options::default()).unwrap();
        let start = Instant::now();
        run_pipeline(&mut graph, None).unwrap();
        let options = LowerOptions {
            tier,
            ..LowerOptions::default()
        };
        let program = Program::with_options(&graph, 1, size, size, &options).unwrap();
        let jit = JitProgram::new(program).unwrap();
        let compile = start.elapsed();
        // Each kernel timed alone: a stage's kernels run one after another.
        let m = inceptc_runtime::exec::Model {
            stages: inceptc_runtime::exec::StageOrder::OneByOne,
            ..jit.model()
        };
        let x = random_input(1, size, 1);
        let mut arena = Arena::new(m.arena_bytes).unwrap();
        println!("\n{model} at {size}×{size}, batch 1 (passes + lowering + JIT: {compile:.2?})");
        for threads in [1, cores] {
            let pool = ThreadPool::new(threads);
            let mut totals = Vec::with_capacity(runs);
            let mut per_step: Vec<Vec<Duration>> = vec![Vec::new(); m.steps.len()];
            let mut times = StepTimes::default();
            m.run(&mut arena, x.data(), &pool).unwrap();
            for _ in 0..runs {
                let t = Instant::now();
                m.run_timed(&mut arena, x.data(), &pool, Some(&mut times))
                    .unwrap();
                totals.push(t.elapsed());
                for (s, d) in times.duration.iter().enumerate() {
                    per_step[s].push(*d);
                }
            }
            let min = *totals.iter().min().unwrap();
            println!(
                "  {threads} thread(s): median {:.1} ms, min {:.1} ms",
                median(totals).as_secs_f64() * 1e3,
                min.as_secs_f64() * 1e3
            );
            let step_medians: Vec<Duration> = per_step.into_iter().map(median).collect();
            let mut kinds: Vec<(&str, u64, Duration)> = Vec::new();
            for (step, t) in jit.program.steps.iter().zip(&step_medians) {
                let Some(kernel) = &step.kernel else { continue };
                if let Some(k) = kind(kernel) {
                    match kinds.iter_mut().find(|e| e.0 == k) {
                        Some(e) => {
                            e.1 += kernel.flops();
                            e.2 += *t;
                        }
                        None => kinds.push((k, kernel.flops(), *t)),
                    }
                }
            }
            for (k, flops, t) in kinds {
                if flops == 0 {
                    println!("    {k:<9} {:>29.2} ms", t.as_secs_f64() * 1e3);
                    continue;
                }
                let gflops = flops as f64 / t.as_secs_f64() / 1e9;
                let peak = mhz
                    .map(|m| {
                        format!(
                            " ({:.0}% of {threads}-core peak)",
                            100.0 * gflops / (peak * m / 1e3 * threads as f64)
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "    {k:<9} {:>7.2} GFLOP in {:>7.2} ms: {gflops:>6.1} GFLOP/s{peak}",
                    flops as f64 / 1e9,
                    t.as_secs_f64() * 1e3
                );
            }
        }
    }
}
