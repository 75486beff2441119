//! bf16 code (`--precision bf16`) against the interpreter's bf16 rounding mode: single kernels on
//! random shapes (odd channel counts, strides, paddings, residuals, pools, concat tiles, shared
//! kernels), under the bounds check, and whole networks, which must also stay close to f32. Both
//! tile families run: the `vdpbf16ps` zmm tile, which matches the interpreter bit for bit, and
//! the AMX tile (layers of 32·k input channels), whose `tdpbf16ps` sums in an order of its own
//! (see `tests/tiles.rs`), so its values may differ by a bf16 rounding. The tests need x86-64-v4
//! with AVX512-BF16, and AMX-BF16 for the AMX family; elsewhere they say so on standard error.

use inceptc::codegen::jit::JitProgram;
use inceptc::codegen::tile::Tier;
use inceptc::codegen::{ItemOrder, Kernel, LowerOptions, Program};
use inceptc::passes::run_pipeline;
use inceptc_graphs::{load, Model, Options, Weights};
use inceptc_ir::interp::{self, Rounding};
use inceptc_ir::{text, Graph, Tensor};
use inceptc_runtime::exec::{missing_features_for, Arena};
use inceptc_runtime::layout::Precision;
use inceptc_runtime::pool::ThreadPool;
use inceptc_suite::{random_conv, random_input, ConvCase};
use rand::{Rng, SeedableRng};

/// The tile families this CPU runs (`false`: zmm only, `true`: AMX where it applies); names
/// the ones it cannot run.
fn families(test: &str) -> Vec<bool> {
    [false, true]
        .into_iter()
        .filter(|&amx| {
            let missing = missing_features_for(Tier::V4.runtime(), Precision::Bf16, amx);
            if !missing.is_empty() {
                eprintln!(
                    "SKIPPED {test} with {} tiles: this CPU lacks {}",
                    if amx { "AMX" } else { "zmm" },
                    missing.join(", ")
                );
            }
            missing.is_empty()
        })
        .collect()
}

/// `graph` compiled in bf16 (with AMX tiles if `amx`) under the bounds check and run on
/// `threads` threads.
fn run_bf16(graph: &Graph, x: &Tensor, threads: usize, amx: bool) -> (Vec<Tensor>, Program) {
    let [n, _, h, w] = x.shape() else {
        panic!("input must be NCHW")
    };
    let options = LowerOptions {
        check_bounds: true,
        tier: Tier::V4,
        precision: Precision::Bf16,
        amx,
        item_order: Some(match inceptc_suite::panel_major_for(x.data()) {
            true => ItemOrder::PanelMajor,
            false => ItemOrder::GroupMajor,
        }),
        ..LowerOptions::default()
    };
    let program =
        Program::with_options(graph, *n, *h, *w, &options).unwrap_or_else(|e| panic!("{e}"));
    let jit = JitProgram::new(program.clone()).unwrap_or_else(|e| panic!("{e}"));
    let model = jit.model();
    let mut arena = Arena::new(model.arena_bytes).unwrap();
    let pool = ThreadPool::new(threads);
    let got = inceptc_suite::run_in_both_orders(&model, &mut arena, x.data(), &pool)
        .unwrap_or_else(|e| panic!("{e}"));
    let got = got
        .into_iter()
        .zip(&program.outputs)
        .map(|(g, o)| Tensor::new(o.dims(), g).expect("output size"))
        .collect();
    (got, program)
}

/// The share of generated values that differ from the rounding interpreter's, and the largest
/// difference in bf16 units in the last place of the interpreter's value.
fn differing(got: &Tensor, want: &Tensor) -> (f64, f64) {
    let (mut count, mut ulps) = (0, 0f64);
    for (g, r) in got.data().iter().zip(want.data()) {
        if g != r {
            count += 1;
            let ulp = 2f64.powi(r.abs().max(f32::MIN_POSITIVE).log2().floor() as i32 - 7);
            ulps = ulps.max((g - r).abs() as f64 / ulp);
        }
    }
    (count as f64 / got.len().max(1) as f64, ulps)
}

/// Checks generated values against the rounding interpreter's: equal, with the zmm tiles and
/// with AMX's.
fn check_values(got: &Tensor, want: &Tensor, what: &str) {
    let (share, ulps) = differing(got, want);
    assert!(
        share == 0.0,
        "{what}: {share} of the values differ, by up to {ulps} ulps"
    );
}

/// The rounding interpreter's values for `program` on `x`: its AMX tiles' convolutions summed
/// as AMX sums.
fn rounded(g: &Graph, x: &Tensor, program: &Program) -> Vec<Tensor> {
    let amx = program.amx_nodes();
    interp::run_bf16_amx(g, x, &|id| amx.contains(&g.node(id).name)).unwrap()
}

fn input(n: usize, c: usize, h: usize, w: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data = (0..n * c * h * w)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    Tensor::new(vec![n, c, h, w], data).unwrap()
}

fn graph(body: &str) -> Graph {
    let mut g = text::parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    inceptc_ir::init::seed_weights(&mut g, 11);
    inceptc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}\n{body}"));
    g
}

/// Single convolutions: the generated values are the rounding interpreter's, bit for bit (it
/// sums in f32 in the tiles' order, AMX's included).
#[test]
fn random_bf16_convolutions_match_the_rounding_interpreter() {
    for amx in families("random_bf16_convolutions_match_the_rounding_interpreter") {
        random_convolutions(amx);
    }
}

fn random_convolutions(amx: bool) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    let mut amx_kernels = 0;
    for case in 0..50 {
        // Odd counts pad the input's pixels to whole channel pairs; multiples of 32 take the
        // AMX tile.
        let ConvCase {
            body,
            shape: [n, ic, h, w],
        } = random_conv(&mut rng, Some(32), 37, 70);
        let g = graph(&body);
        let x = input(n, ic, h, w, case);
        let (got, program) = run_bf16(&g, &x, 1 + case as usize % 3, amx);
        assert!(
            program
                .steps
                .iter()
                .all(|s| !matches!(s.kernel, Some(Kernel::Winograd(_)))),
            "bf16 convolutions are direct"
        );
        amx_kernels += program.amx as usize;
        let want = rounded(&g, &x, &program);
        check_values(&got[0], &want[0], &format!("case {case}\n{body}"));
        // And bf16 stays near f32.
        let exact = interp::run(&g, &x).unwrap();
        let err = got[0].relative_error(&exact[0]).unwrap();
        assert!(err <= 1e-2, "case {case}: {err:.2e} from f32\n{body}");
    }
    if amx {
        assert!(amx_kernels >= 10, "only {amx_kernels} cases ran AMX tiles");
        eprintln!("{amx_kernels} of 50 cases ran AMX tiles");
    }
}

/// Pools (max and average, both padding rules, the clamped edges), concat tiles and shared
/// kernels in bf16.
#[test]
fn bf16_concat_tiles_shared_kernels_and_pools_match_the_rounding_interpreter() {
    let test = "bf16_concat_tiles_shared_kernels_and_pools_match_the_rounding_interpreter";
    if !families(test).contains(&false) {
        return;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    for case in 0..30 {
        let c = rng.gen_range(1..=23);
        let (a, b, d) = (
            rng.gen_range(1..=20),
            rng.gen_range(1..=20),
            rng.gen_range(1..=20),
        );
        let (h, w) = (rng.gen_range(3..=12), rng.gen_range(3..=12));
        let pk = rng.gen_range(1..=3);
        let ps = rng.gen_range(1..=2);
        let pp = rng.gen_range(0..pk);
        let include = rng.gen_bool(0.3);
        let pool = match rng.gen_bool(0.5) {
            true => format!("max_pool %6 kernel={pk}x{pk} stride={ps}x{ps} pad={pp}x{pp}"),
            false => format!(
                "avg_pool %6 kernel={pk}x{pk} stride={ps}x{ps} pad={pp}x{pp} count_include_pad={include}"
            ),
        };
        let body = format!(
            r#"graph "t" {{
  %0 = input channels={c} name="input" block="b"
  %1 = conv2d %0 in={c} out={a} kernel=1x1 stride=1x1 pad=0x0 bias=true name="m.b0" block="m"
  %2 = relu %1 name="m.b0.relu" block="m"
  %3 = conv2d %0 in={c} out={b} kernel=1x1 stride=1x1 pad=0x0 bias=true name="m.b1" block="m"
  %4 = conv2d %0 in={c} out={d} kernel=1x1 stride=1x1 pad=0x0 bias=false name="m.b2" block="m"
  %5 = conv2d %4 in={d} out={a} kernel=3x3 stride=1x1 pad=1x1 bias=true name="m.b2.1" block="m"
  %6 = concat %2, %3, %5 name="m" block="m"
  %7 = {pool} name="pool" block="p"
  %8 = global_avg_pool %7 name="gap" block="p"
  output %6, %7, %8
}}"#
        );
        let mut g = graph(&body);
        run_pipeline(&mut g, None).unwrap();
        let x = input(2, c, h, w, case);
        let (got, _) = run_bf16(&g, &x, 2, false);
        let want = interp::run_rounded(&g, &x, Rounding::Bf16).unwrap();
        for (i, (g1, w1)) in got.iter().zip(&want).enumerate() {
            check_values(g1, w1, &format!("case {case}, output {i}\n{body}"));
        }
    }
}

/// Whole networks in bf16, with zmm tiles and with AMX's: the rounding interpreter's values (up
/// to the f64 of its L2 normalization), within 1e-2 of f32 and with f32's top class.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn every_network_in_bf16_matches_the_rounding_interpreter() {
    let families = families("every_network_in_bf16_matches_the_rounding_interpreter");
    for amx in families {
        networks(amx);
    }
}

fn networks(amx: bool) {
    for model in Model::ALL {
        let mut g = load(model, Weights::Seeded(3), &Options::default()).unwrap();
        run_pipeline(&mut g, None).unwrap();
        for batch in [1, 2] {
            let x = random_input(batch, 107, 5);
            let (got, program) = run_bf16(&g, &x, 2, amx);
            let rounded = rounded(&g, &x, &program);
            let exact = interp::run(&g, &x).unwrap();
            let to_rounded = got[0].relative_error(&rounded[0]).unwrap();
            let to_f32 = got[0].relative_error(&exact[0]).unwrap();
            let tiles = if amx { "AMX" } else { "zmm" };
            eprintln!(
                "{model} batch {batch}, {tiles} tiles: {to_rounded:.2e} from the bf16 \
                 interpreter, {to_f32:.2e} from f32"
            );
            assert!(
                to_rounded <= 1e-6,
                "{model} batch {batch}, {tiles} tiles: {to_rounded:.2e}"
            );
            assert!(to_f32 <= 1e-2, "{model} batch {batch}: {to_f32:.2e}");
            let last = g.node(g.outputs()[0]);
            if matches!(last.op, inceptc_ir::Op::L2Normalize(_)) {
                // An embedding has no class.
                continue;
            }
            let classes = exact[0].shape()[1];
            for image in 0..batch {
                let top = |t: &Tensor| {
                    let row = &t.data()[image * classes..(image + 1) * classes];
                    (0..classes)
                        .max_by(|a, b| row[*a].total_cmp(&row[*b]))
                        .unwrap()
                };
                assert_eq!(top(&got[0]), top(&exact[0]), "{model} image {image}");
            }
        }
    }
}
