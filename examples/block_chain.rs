//! A chain of Inception-ResNet-v2's Inception-B blocks (17 × 17 × 1088, seeded weights), compiled
//! in process for this machine's best tier and timed on one thread and on two in interleaved
//! rounds: what the whole network loses on two threads, reproduced in a loop of seconds.
//! `cargo run --release --example block_chain -- [BLOCKS] [ROUNDS]` (20 and 7) takes each
//! kernel's minimum over the rounds (5 runs each) and prints, per kind of kernel summed over the
//! blocks and for the chain, the time on one and two threads and what two threads lose against
//! twice one thread's speed, in thread-ms: extra work (the threads' time in the kernel less its
//! one-thread time) and waiting (two × its time less the threads' time).
//!
//! With 20 blocks, as in the network, the chain's 86 MB of weights come from memory on every run;
//! with 2 they stay in the caches from run to run.

use inceptc::codegen::tile::Tier;
use inceptc::codegen::{jit::JitProgram, LowerOptions, Program};
use inceptc_ir::text;
use inceptc_runtime::exec::StepTimes;
use inceptc_runtime::{exec::Arena, pool::ThreadPool};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let whole = |a: &str| -> usize { a.parse().expect("BLOCKS and ROUNDS are whole numbers") };
    let blocks = args.first().map_or(20, |a| whole(a)).max(1);
    let rounds = args.get(1).map_or(7, |a| whole(a)).max(1);
    let mut body =
        String::from("graph \"chain\" {\n  %0 = input channels=1088 name=\"input\" block=\"in\"\n");
    let mut x = 0;
    let mut next = 1;
    for b in 0..blocks {
        let mut v = || {
            next += 1;
            next - 1
        };
        let name = |s: &str| format!("name=\"b{b}.{s}\" block=\"b{b}\"");
        let mut conv = |input: usize, ci: usize, co: usize, k: (usize, usize), s: &str| {
            let (c, bn, r) = (v(), v(), v());
            body += &format!(
                "  %{c} = conv2d %{input} in={ci} out={co} kernel={}x{} stride=1x1 pad={}x{} bias=false {}\n",
                k.0, k.1, k.0 / 2, k.1 / 2, name(&format!("{s}.conv"))
            );
            body += &format!(
                "  %{bn} = batch_norm %{c} channels={co} eps=0.001 {}\n",
                name(&format!("{s}.bn"))
            );
            body += &format!("  %{r} = relu %{bn} {}\n", name(&format!("{s}.relu")));
            r
        };
        let b0 = conv(x, 1088, 192, (1, 1), "branch0");
        let b1 = conv(x, 1088, 128, (1, 1), "branch1.0");
        let b1 = conv(b1, 128, 160, (1, 7), "branch1.1");
        let b1 = conv(b1, 160, 192, (7, 1), "branch1.2");
        let (cat, up, sc, add, r) = (v(), v(), v(), v(), v());
        body += &format!("  %{cat} = concat %{b0}, %{b1} {}\n", name("concat"));
        body += &format!(
            "  %{up} = conv2d %{cat} in=384 out=1088 kernel=1x1 stride=1x1 pad=0x0 bias=true {}\n",
            name("conv2d")
        );
        body += &format!("  %{sc} = scale %{up} factor=0.1 {}\n", name("scale"));
        body += &format!("  %{add} = add %{sc}, %{x} {}\n", name("add"));
        body += &format!("  %{r} = relu %{add} {}\n", name("relu"));
        x = r;
    }
    body += &format!("  output %{x}\n}}\n");
    let mut g = text::parse(&body).unwrap();
    inceptc_ir::init::seed_weights(&mut g, 1);
    inceptc::passes::run_pipeline(&mut g, None).unwrap();
    let options = LowerOptions {
        threads: 2,
        tier: Tier::native(),
        ..LowerOptions::default()
    };
    let prog = Program::with_options(&g, 1, 17, 17, &options).unwrap();
    let jit = JitProgram::new(prog).unwrap();
    let m = jit.model();
    let mut arena = Arena::new(m.arena_bytes).unwrap();
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    let input = vec![0.5f32; 1088 * 17 * 17];
    let steps = m.steps.len();
    // Per thread count: each step's minimum time and the threads' time in that run.
    let mut best = [vec![(f64::MAX, 0.0); steps], vec![(f64::MAX, 0.0); steps]];
    for _ in 0..rounds {
        for (pool, best) in pools.iter().zip(&mut best) {
            for _ in 0..5 {
                let mut times = StepTimes::default();
                m.run_timed(&mut arena, &input, pool, Some(&mut times))
                    .unwrap();
                for (s, b) in best.iter_mut().enumerate() {
                    let t = times.duration[s].as_secs_f64() * 1e3;
                    if t < b.0 {
                        *b = (t, times.busy[s].as_secs_f64() * 1e3);
                    }
                }
            }
        }
    }
    // Per kind of kernel in a block (the steps of one block, in order), summed over the blocks:
    // one thread's time, two threads' time and the two threads' time in the work.
    let per_block = (steps - 1) / blocks;
    assert_eq!(
        1 + per_block * blocks,
        steps,
        "every block has the same steps"
    );
    let kinds: Vec<[f64; 3]> = (0..per_block)
        .map(|k| {
            (0..blocks)
                .map(|i| 1 + i * per_block + k)
                .fold([0.0; 3], |a, s| {
                    [
                        a[0] + best[0][s].0,
                        a[1] + best[1][s].0,
                        a[2] + best[1][s].1,
                    ]
                })
        })
        .collect();
    let line = |[one, two, busy]: [f64; 3]| {
        format!(
            "1 thread {one:.2} ms, 2 threads {two:.2} ms (×{:.2}); extra work {:+.2} thread-ms \
             ({:+.1} %), waiting {:.2} thread-ms",
            one / two,
            busy - one,
            100.0 * (busy - one) / one,
            2.0 * two - busy
        )
    };
    for (k, kind) in kinds.iter().enumerate() {
        println!("  {:<40} {}", m.steps[1 + k].name, line(*kind));
    }
    let all = kinds
        .iter()
        .fold([0.0; 3], |a, k| [a[0] + k[0], a[1] + k[1], a[2] + k[2]]);
    println!(
        "{blocks} Inception-B blocks, {rounds} rounds of 5 runs: {}",
        line(all)
    );
}
