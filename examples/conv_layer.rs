//! One convolution layer compiled in process and timed on one thread: the quickest loop for kernel
//! work. `cargo run --release --example conv_layer -- IN OUT SIZE KERNEL [auto|direct|M]` (square
//! kernel, stride 1, "same" padding; `M` forces Winograd tiles of M × M outputs) prints the best
//! of 30 runs in ms and GFLOP/s (the direct convolution's FLOPs, whatever the algorithm).

use inceptc::codegen::{jit::JitProgram, ConvAlgorithm, LowerOptions, Program};
use inceptc_ir::text;
use inceptc_runtime::{exec::Arena, pool::ThreadPool};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let conv = match args.get(4).map(String::as_str) {
        None | Some("auto") => ConvAlgorithm::Auto,
        Some("direct") => ConvAlgorithm::Direct,
        Some(m) => {
            let m = m
                .parse()
                .expect("the algorithm is auto, direct or a tile size");
            ConvAlgorithm::WinogradTile([m, m])
        }
    };
    args.truncate(4);
    let args: Vec<usize> = args
        .iter()
        .map(|a| a.parse().expect("IN OUT SIZE KERNEL are whole numbers"))
        .collect();
    let [ic, oc, hw, k] = args[..] else {
        panic!("usage: conv_layer IN OUT SIZE KERNEL");
    };
    let p = k / 2;
    let body = format!(
        r#"graph "t" {{
  %0 = input channels={ic} name="input" block="b"
  %1 = fused_conv %0 in={ic} out={oc} kernel={k}x{k} stride=1x1 pad={p}x{p} bias=true residual=false relu=true name="conv" block="b"
  output %1
}}"#
    );
    let mut g = text::parse(&body).unwrap();
    inceptc_ir::init::seed_weights(&mut g, 1);
    let options = LowerOptions {
        conv,
        ..LowerOptions::default()
    };
    let prog = Program::with_options(&g, 1, hw, hw, &options).unwrap();
    let flops = prog.steps[1].kernel.as_ref().unwrap().flops();
    let jit = JitProgram::new(prog).unwrap();
    let m = jit.model();
    let mut arena = Arena::new(m.arena_bytes).unwrap();
    let pool = ThreadPool::new(1);
    let x = vec![0.5f32; ic * hw * hw];
    let mut best = f64::MAX;
    for _ in 0..30 {
        let mut times = Default::default();
        m.run_timed(&mut arena, &x, &pool, Some(&mut times))
            .unwrap();
        best = best.min(times.duration[1].as_secs_f64());
    }
    println!(
        "{ic}->{oc} {hw}x{hw} k{k}: {:.2} ms, {:.1} GFLOP/s",
        best * 1e3,
        flops as f64 / best / 1e9
    );
}
