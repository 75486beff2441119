//! One convolution layer compiled in process and timed on one thread: the quickest loop for kernel
//! work. `cargo run --release --example conv_layer -- IN OUT SIZE KERNEL [auto|direct|M]` (square
//! kernel, stride 1, "same" padding; `M` forces Winograd tiles of M × M outputs) prints the best
//! of 30 runs in ms and GFLOP/s (the direct convolution's FLOPs, whatever the algorithm), and its
//! share of one core's FMA peak for the tier's vectors, measured in the same process. Code is
//! for this machine's best tier, or the one `INCEPTC_TIER` names (`x86-64-v3`, `x86-64-v4`).
//! `INCEPTC_EVICT=MIB` writes that many MiB of other memory before each run, so that the weights
//! come from where a whole network's do (512: from DRAM) instead of from cache.

use inceptc::codegen::tile::Tier;
use inceptc::codegen::{jit::JitProgram, ConvAlgorithm, Kernel, LowerOptions, Program};
use inceptc_ir::text;
use inceptc_runtime::layout::Precision;
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
    let tier = match std::env::var("INCEPTC_TIER").as_deref() {
        Ok("x86-64-v3") => Tier::V3,
        Ok("x86-64-v4") => Tier::V4,
        _ => Tier::native(),
    };
    // `INCEPTC_PRECISION=bf16`: bf16 maps and weights, on AMX tiles where this CPU has them.
    let precision = match std::env::var("INCEPTC_PRECISION").as_deref() {
        Ok("bf16") => Precision::Bf16,
        Ok("f32") | Err(_) => Precision::F32,
        Ok(other) => panic!("INCEPTC_PRECISION is f32 or bf16, not {other}"),
    };
    let amx = precision == Precision::Bf16
        && inceptc_runtime::exec::amx_present()
        && inceptc_runtime::exec::missing_features_for(tier.runtime(), precision, true).is_empty();
    let options = LowerOptions {
        conv,
        tier,
        precision,
        amx,
        ..LowerOptions::default()
    };
    let prog = Program::with_options(&g, 1, hw, hw, &options).unwrap();
    let kernel = prog.steps[1].kernel.as_ref().unwrap();
    let flops = kernel.flops();
    let tile = match kernel {
        Kernel::Conv(k) => format!("direct, {}", k.register.describe()),
        Kernel::Winograd(k) => format!("winograd {:?}, {}", k.tile, k.register.describe()),
        _ => unreachable!("a convolution"),
    };
    let jit = JitProgram::new(prog).unwrap();
    let m = jit.model();
    let mut arena = Arena::new(m.arena_bytes).unwrap();
    let pool = ThreadPool::new(1);
    let evict: usize = std::env::var("INCEPTC_EVICT")
        .map(|mib| mib.parse().expect("INCEPTC_EVICT is a whole number of MiB"))
        .unwrap_or(0);
    let mut other = vec![0u8; evict << 20];
    let x = vec![0.5f32; ic * hw * hw];
    let mut best = f64::MAX;
    for _ in 0..30 {
        for line in other.iter_mut().step_by(64) {
            *line = line.wrapping_add(1);
        }
        let mut times = Default::default();
        m.run_timed(&mut arena, &x, &pool, Some(&mut times))
            .unwrap();
        best = best.min(times.duration[1].as_secs_f64());
    }
    let gflops = flops as f64 / best / 1e9;
    let wide = tier == Tier::V4;
    let peak = inceptc::codegen::jit::fma_peak(wide, 5).unwrap();
    let cache = match evict {
        0 => String::new(),
        mib => format!(", {mib} MiB evicted before each run"),
    };
    println!(
        "{ic}->{oc} {hw}x{hw} k{k} ({}{}, {tile}{cache}): {:.3} ms, {gflops:.1} GFLOP/s = {:.0}% of the {} FMA peak \
         ({peak:.1} GFLOP/s, measured by a loop of independent vfmadd231ps)",
        tier.name(),
        match precision {
            Precision::Bf16 if amx => " bf16 with AMX",
            Precision::Bf16 => " bf16",
            _ => "",
        },
        best * 1e3,
        100.0 * gflops / peak,
        if wide { "zmm" } else { "ymm" },
    );
}
