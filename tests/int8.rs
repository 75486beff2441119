//! int8 code (`--precision int8`) against the interpreter's int8 mode, which rounds where the
//! executable does: single convolutions on random shapes (odd channel counts, strides, paddings,
//! residuals, inputs with and without a zero point), pools, concat tiles and shared kernels, all
//! under the bounds check and bit for bit; and whole networks, which must also stay near f32.
//! Both tile families run: `vpdpbusd` on zmm, and AMX `tdpbusd` where the host has AMX-INT8;
//! their i32 sums are exact, so both match bit for bit. The tests need x86-64-v4 with
//! AVX512-VNNI (and AMX-INT8 for the AMX family); elsewhere they say so on standard error.

use inceptc::codegen::jit::JitProgram;
use inceptc::codegen::tile::Tier;
use inceptc::codegen::{ItemOrder, LowerOptions, Program};
use inceptc::passes::run_pipeline;
use inceptc_graphs::{load, Model, Options, Weights};
use inceptc_ir::interp;
use inceptc_ir::quant::{calibrate, Calibration, Int8Params};
use inceptc_ir::{text, Graph, Tensor};
use inceptc_runtime::exec::{missing_features_for, Arena};
use inceptc_runtime::layout::Precision;
use inceptc_runtime::pool::ThreadPool;
use inceptc_suite::{random_conv, random_input, ConvCase};
use rand::{Rng, SeedableRng};

/// The int8 tile families this CPU runs (`false`: zmm `vpdpbusd`, `true`: AMX `tdpbusd` where
/// a layer has a multiple of 64 input channels); names the ones it cannot run.
fn families(test: &str) -> Vec<bool> {
    [false, true]
        .into_iter()
        .filter(|&amx| {
            let missing = missing_features_for(Tier::V4.runtime(), Precision::U8, amx);
            if !missing.is_empty() {
                let tiles = if amx { "AMX" } else { "zmm" };
                eprintln!(
                    "SKIPPED {test} with {tiles} tiles: this CPU lacks {}",
                    missing.join(", ")
                );
            }
            missing.is_empty()
        })
        .collect()
}

/// The u8 parameters of `graph`'s maps, calibrated on `inputs` by min/max.
fn params(graph: &Graph, inputs: &[Tensor]) -> Int8Params {
    let ranges = calibrate(graph, inputs, Calibration::MinMax).unwrap();
    Int8Params::new(graph, &ranges).unwrap_or_else(|e| panic!("{e}"))
}

/// `graph` compiled in int8 with `int8` (with AMX tiles if `amx`) under the bounds check and run
/// on `threads` threads; whether some kernel ran AMX tiles.
fn run_int8(
    graph: &Graph,
    x: &Tensor,
    int8: &Int8Params,
    threads: usize,
    amx: bool,
) -> (Vec<Tensor>, bool) {
    let [n, _, h, w] = x.shape() else {
        panic!("input must be NCHW")
    };
    let options = LowerOptions {
        check_bounds: true,
        tier: Tier::V4,
        precision: Precision::U8,
        int8: int8.clone(),
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
    (got, program.amx)
}

/// Asserts that `got` and `want` are equal value for value, naming the first difference.
fn assert_same(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    let differ = got
        .data()
        .iter()
        .zip(want.data())
        .enumerate()
        .filter(|(_, (g, w))| g.to_bits() != w.to_bits())
        .map(|(i, (g, w))| (i, *g, *w))
        .collect::<Vec<_>>();
    if let Some((i, g, w)) = differ.first() {
        panic!(
            "{what}: {} of {} values differ; first at {i}: {g} against {w}",
            differ.len(),
            got.data().len()
        );
    }
}

fn input(n: usize, c: usize, h: usize, w: usize, seed: u64, signed: bool) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let low = if signed { -1.0 } else { 0.0 };
    let data = (0..n * c * h * w)
        .map(|_| rng.gen_range(low..1.0))
        .collect();
    Tensor::new(vec![n, c, h, w], data).unwrap()
}

fn graph(body: &str) -> Graph {
    let mut g = text::parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    inceptc_ir::init::seed_weights(&mut g, 11);
    inceptc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}\n{body}"));
    g
}

/// Single convolutions: the generated values are the int8 interpreter's, bit for bit, and stay
/// near f32.
#[test]
fn random_int8_convolutions_match_the_int8_interpreter() {
    for amx in families("random_int8_convolutions_match_the_int8_interpreter") {
        random_convolutions(amx);
    }
}

fn random_convolutions(amx: bool) {
    let mut amx_kernels = 0;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(26);
    for case in 0..60 {
        // Multiples of 64 take the AMX tile.
        let ConvCase {
            body,
            shape: [n, ic, h, w],
        } = random_conv(&mut rng, Some(64), 70, 70);
        // A signed input has a zero point, which its halo holds for the padded taps.
        let signed = rng.gen_bool(0.6);
        let g = graph(&body);
        let x = input(n, ic, h, w, case, signed);
        let p = params(&g, std::slice::from_ref(&x));
        let (got, ran_amx) = run_int8(&g, &x, &p, 1 + case as usize % 3, amx);
        amx_kernels += usize::from(ran_amx);
        let want = interp::run_int8(&g, &x, &p).unwrap();
        assert_same(&got[0], &want[0], &format!("case {case}\n{body}"));
        let exact = interp::run(&g, &x).unwrap();
        let err = got[0].relative_error(&exact[0]).unwrap();
        assert!(err <= 5e-2, "case {case}: {err:.2e} from f32\n{body}");
    }
    if amx {
        assert!(amx_kernels >= 10, "only {amx_kernels} cases ran AMX tiles");
        eprintln!("{amx_kernels} of 60 cases ran AMX int8 tiles");
    }
}

/// Pools (max and average, both padding rules, the clamped edges; the max pool both keeping its
/// input's parameters and requantizing into a concatenation's), concat tiles (ReLU and plain
/// parts mixed, so that ReLUs clamp at a zero point) and shared kernels in int8, bit for bit.
#[test]
fn int8_concat_tiles_shared_kernels_and_pools_match_the_int8_interpreter() {
    let test = "int8_concat_tiles_shared_kernels_and_pools_match_the_int8_interpreter";
    if !families(test).contains(&false) {
        return;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
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
        // Each part of the concatenation ends with a ReLU or not: with a part that does not,
        // the buffer has a zero point, and the ReLUs clamp at it.
        let relu: Vec<bool> = (0..3).map(|_| rng.gen_bool(0.6)).collect();
        let mut acts = String::new();
        let mut parts = Vec::new();
        for (i, (v, name)) in [(1, "m.b0"), (3, "m.b1"), (5, "m.b2.1")].iter().enumerate() {
            match relu[i] {
                true => {
                    acts += &format!(
                        "  %{} = relu %{v} name=\"{name}.act\" block=\"m\"\n",
                        20 + i
                    );
                    parts.push(format!("%{}", 20 + i));
                }
                false => parts.push(format!("%{v}")),
            }
        }
        let parts = parts.join(", ");
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
  %3 = conv2d %0 in={c} out={b} kernel=1x1 stride=1x1 pad=0x0 bias=true name="m.b1" block="m"
  %4 = conv2d %0 in={c} out={d} kernel=1x1 stride=1x1 pad=0x0 bias=false name="m.b2" block="m"
  %13 = relu %4 name="m.b2.relu" block="m"
  %5 = conv2d %13 in={d} out={a} kernel=3x3 stride=1x1 pad=1x1 bias=true name="m.b2.1" block="m"
{acts}
  %6 = concat {parts} name="m" block="m"
  %7 = {pool} name="pool" block="p"
  %8 = max_pool %13 kernel=3x3 stride=2x2 pad=0x0 name="r.pool" block="r"
  %9 = conv2d %13 in={d} out={b} kernel=3x3 stride=2x2 pad=0x0 bias=true name="r.conv" block="r"
  %10 = relu %9 name="r.relu" block="r"
  %11 = concat %8, %10 name="r" block="r"
  %12 = global_avg_pool %7 name="gap" block="p"
  output %6, %7, %11, %12
}}"#
        );
        let mut g = graph(&body);
        run_pipeline(&mut g, None).unwrap();
        let x = input(2, c, h.max(3), w.max(3), case, true);
        let p = params(&g, std::slice::from_ref(&x));
        let (got, _) = run_int8(&g, &x, &p, 2, false);
        let want = interp::run_int8(&g, &x, &p).unwrap();
        for (i, (g1, w1)) in got.iter().zip(&want).enumerate() {
            assert_same(g1, w1, &format!("case {case}, output {i}\n{body}"));
        }
    }
}

/// Whole networks in int8, calibrated on two inputs and run on a third: the int8 interpreter's
/// values (up to the f64 of an L2 normalization) and near f32.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn every_network_in_int8_matches_the_int8_interpreter() {
    for amx in families("every_network_in_int8_matches_the_int8_interpreter") {
        networks(amx);
    }
}

fn networks(amx: bool) {
    let tiles = if amx { "AMX" } else { "zmm" };
    for model in Model::ALL {
        let mut g = load(model, Weights::Seeded(3), &Options::default()).unwrap();
        run_pipeline(&mut g, None).unwrap();
        let calibration = [random_input(1, 107, 1), random_input(1, 107, 2)];
        let p = params(&g, &calibration);
        let x = random_input(2, 107, 5);
        let (got, _) = run_int8(&g, &x, &p, 2, amx);
        let want = interp::run_int8(&g, &x, &p).unwrap();
        let exact = interp::run(&g, &x).unwrap();
        let to_int8 = got[0].relative_error(&want[0]).unwrap();
        let to_f32 = got[0].relative_error(&exact[0]).unwrap();
        eprintln!(
            "{model}, {tiles} tiles: {to_int8:.2e} from the int8 interpreter, {to_f32:.2e} from f32"
        );
        assert!(to_int8 <= 1e-6, "{model}: {to_int8:.2e}");
        assert!(to_f32 <= 0.1, "{model}: {to_f32:.2e}");
    }
}
