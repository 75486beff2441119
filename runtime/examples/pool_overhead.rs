//! The cost of one `ThreadPool::run` with trivial work: what every stage of a model pays to hand
//! its work items to the threads, for one range and for a stage of four kernels' segments
//! (`run_segments`). `cargo run --release -p inceptc-runtime --example pool_overhead [THREADS…]`
//! (default 1 2 16; more threads than cores measures a shared machine, not a server).

use std::time::Instant;

use inceptc_runtime::pool::ThreadPool;

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = match counts.is_empty() {
        true => vec![1, 2, 16],
        false => counts,
    };
    for threads in counts {
        let pool = ThreadPool::new(threads);
        let calls = 20_000;
        let time = |run: &dyn Fn()| {
            let start = Instant::now();
            for _ in 0..calls {
                run();
            }
            start.elapsed().as_secs_f64() / calls as f64 * 1e6
        };
        let one = time(&|| {
            pool.run(64, &|b, e| {
                std::hint::black_box((b, e));
            })
        });
        let four = time(&|| {
            pool.run_segments(&[16, 40, 48, 64], &|b, e| {
                std::hint::black_box((b, e));
            })
        });
        println!(
            "{threads} thread(s): {one:.1} µs per run of 64 items, {four:.1} µs per stage of 4 \
             kernels (64 items)"
        );
    }
}
