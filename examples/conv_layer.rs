//! One convolution layer compiled in process and timed: the quickest loop for kernel work.
//! `cargo run --release --example conv_layer -- IN OUT SIZE KERNEL [auto|direct|M]` (KERNEL `K`
//! for K × K or `KHxKW`, e.g. `1x7`; stride 1, "same" padding; `M` forces Winograd tiles of M × M
//! outputs) prints the best of 30 runs in ms and GFLOP/s (the direct convolution's FLOPs,
//! whatever the algorithm), and its share of one core's FMA peak for the tier's vectors, measured
//! in the same process. Code is for this machine's best tier, or the one `INCEPTC_TIER` names
//! (`x86-64-v3`, `x86-64-v4`).
//!
//! - `INCEPTC_THREADS=N` splits the work for N threads and runs it on a pool of N (default 1);
//!   the share of the peak is then of N cores'.
//! - `INCEPTC_EVICT=MIB` writes that many MiB of other memory before each run, so that the weights
//!   come from where a whole network's do (512: from DRAM) instead of from cache.
//! - `INCEPTC_COLD=weights|maps|all` flushes the layer's packed weights, its maps (the arena), or
//!   both from every cache (`clflush`) before each run, to tell which cold data a layer waits
//!   for. The pool writes the input into the arena at the start of the run, each thread its
//!   share of the rows, so `maps` leaves the input in the caches of the threads that wrote it and
//!   the output to be fetched from memory.

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
    let [ic, oc, hw, kernel] = &args[..] else {
        panic!("usage: conv_layer IN OUT SIZE KERNEL [auto|direct|M]");
    };
    let whole = |a: &str| -> usize { a.parse().expect("IN OUT SIZE and KERNEL are whole numbers") };
    let (ic, oc, hw) = (whole(ic), whole(oc), whole(hw));
    let (kh, kw) = match kernel.split_once('x') {
        Some((kh, kw)) => (whole(kh), whole(kw)),
        None => (whole(kernel), whole(kernel)),
    };
    let (ph, pw) = (kh / 2, kw / 2);
    let body = format!(
        r#"graph "t" {{
  %0 = input channels={ic} name="input" block="b"
  %1 = fused_conv %0 in={ic} out={oc} kernel={kh}x{kw} stride=1x1 pad={ph}x{pw} bias=true residual=false relu=true name="conv" block="b"
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
    let threads: usize = std::env::var("INCEPTC_THREADS")
        .map(|t| t.parse().expect("INCEPTC_THREADS is a whole number"))
        .unwrap_or(1)
        .max(1);
    let cold = std::env::var("INCEPTC_COLD").unwrap_or_default();
    let (cold_weights, cold_maps) = match cold.as_str() {
        "" | "none" => (false, false),
        "weights" => (true, false),
        "maps" => (false, true),
        "all" => (true, true),
        other => panic!("INCEPTC_COLD is weights, maps, all or none, not {other}"),
    };
    let options = LowerOptions {
        conv,
        threads,
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
    let pool = ThreadPool::new(threads);
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
        if cold_weights {
            flush(m.weights.as_ptr(), m.weights.len());
        }
        if cold_maps {
            flush(arena.as_mut_ptr(), m.arena_bytes);
        }
        let mut times = Default::default();
        m.run_timed(&mut arena, &x, &pool, Some(&mut times))
            .unwrap();
        best = best.min(times.duration[1].as_secs_f64());
    }
    let gflops = flops as f64 / best / 1e9;
    let wide = tier == Tier::V4;
    let peak = threads as f64 * inceptc::codegen::jit::fma_peak(wide, 5).unwrap();
    let mut cache = match evict {
        0 => String::new(),
        mib => format!(", {mib} MiB evicted before each run"),
    };
    if cold_weights || cold_maps {
        cache += &format!(", {cold} flushed before each run");
    }
    if threads > 1 {
        cache += &format!(", {threads} threads");
    }
    println!(
        "{ic}->{oc} {hw}x{hw} k{kh}x{kw} ({}{}, {tile}{cache}): {:.3} ms, {gflops:.1} GFLOP/s = {:.0}% of the {} FMA peak \
         ({peak:.1} GFLOP/s on {threads} core(s), measured by a loop of independent vfmadd231ps)",
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

/// Writes back and evicts the cache lines of `bytes` bytes at `start` from every cache.
fn flush(start: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..bytes).step_by(64) {
        // SAFETY: every line flushed lies in the `bytes` bytes at `start` (weights or arena).
        unsafe { std::arch::x86_64::_mm_clflush(start.add(offset)) };
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a fence has no operands.
    unsafe {
        std::arch::x86_64::_mm_mfence()
    };
}
