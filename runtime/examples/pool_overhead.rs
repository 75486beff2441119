//! The cost of one `ThreadPool::run` with trivial work: what every step of a model pays to hand
//! its work items to the threads. `cargo run --release -p inceptc-runtime --example pool_overhead`.

use std::time::Instant;

use inceptc_runtime::pool::ThreadPool;

fn main() {
    for threads in [1, 2] {
        let pool = ThreadPool::new(threads);
        let calls = 20_000;
        let start = Instant::now();
        for _ in 0..calls {
            pool.run(64, &|b, e| {
                std::hint::black_box((b, e));
            });
        }
        let per_call = start.elapsed().as_secs_f64() / calls as f64 * 1e6;
        println!("{threads} thread(s): {per_call:.1} µs per run");
    }
}
