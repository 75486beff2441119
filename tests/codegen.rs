//! Generated code against the reference interpreter: single kernels compiled in process over
//! random shapes (kernel sizes, strides, paddings, odd sizes, channel counts that are not multiples
//! of 4 or 8, concat tiles, shared kernels, residuals), and whole networks, on every register-tile
//! tier this machine runs (the others are named on standard error).

use inceptc::codegen::jit::JitProgram;
use inceptc::codegen::tile::Tier;
use inceptc::codegen::{ConvAlgorithm, ItemOrder, Kernel, LowerOptions, Program};
use inceptc::passes::run_pipeline;
use inceptc_graphs::{load, Model, Options, Weights};
use inceptc_ir::{interp, text, Graph, Tensor};
use inceptc_runtime::exec::{Arena, StageOrder};
use inceptc_runtime::pool::ThreadPool;
use inceptc_suite::{conv_graph, random_conv, random_input, ConvCase};
use rand::{Rng, SeedableRng};

/// max |generated − interpreter| / max |interpreter| allowed.
const TOLERANCE: f64 = 1e-4;

/// The tiers this machine runs; the others are named on standard error.
fn tiers() -> Vec<Tier> {
    Tier::ALL
        .into_iter()
        .filter(|t| {
            let missing = inceptc_runtime::exec::missing_features(t.runtime());
            if !missing.is_empty() {
                eprintln!(
                    "tier {} not tested: this CPU lacks {}",
                    t.name(),
                    missing.join(", ")
                );
            }
            missing.is_empty()
        })
        .collect()
}

/// The worst relative error over the tiers, and the tier it was found on.
#[derive(Clone, Copy, Debug)]
struct Worst {
    err: f64,
    tier: &'static str,
}

impl std::fmt::Display for Worst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2e} on {}", self.err, self.tier)
    }
}

/// Runs `graph` compiled in process for every tier this machine runs and with the interpreter;
/// returns the worst relative error.
fn compare(graph: &Graph, x: &Tensor, threads: usize) -> Worst {
    compare_with(graph, x, threads, ConvAlgorithm::Auto)
}

/// [`compare`] with convolutions computed by `conv`.
fn compare_with(graph: &Graph, x: &Tensor, threads: usize, conv: ConvAlgorithm) -> Worst {
    compare_options(graph, x, threads, conv, 0)
}

/// [`compare_with`] on code whose work splits are made for `split_for` threads
/// ([`LowerOptions::threads`]).
fn compare_options(
    graph: &Graph,
    x: &Tensor,
    threads: usize,
    conv: ConvAlgorithm,
    split_for: usize,
) -> Worst {
    let mut worst = Worst {
        err: 0.0,
        tier: "no tier",
    };
    for tier in tiers() {
        let err = compare_tier(graph, x, threads, conv, tier, split_for);
        if err >= worst.err {
            worst = Worst {
                err,
                tier: tier.name(),
            };
        }
    }
    worst
}

/// [`compare_with`] on one tier.
fn compare_tier(
    graph: &Graph,
    x: &Tensor,
    threads: usize,
    conv: ConvAlgorithm,
    tier: Tier,
    split_for: usize,
) -> f64 {
    let [n, _, h, w] = x.shape() else {
        panic!("input must be NCHW")
    };
    // Every comparison also runs under the bounds check: no kernel may touch a canary or a halo.
    let checked = LowerOptions {
        check_bounds: true,
        conv,
        tier,
        threads: split_for,
        item_order: Some(match inceptc_suite::panel_major_for(x.data()) {
            true => ItemOrder::PanelMajor,
            false => ItemOrder::GroupMajor,
        }),
        ..LowerOptions::default()
    };
    let program =
        Program::with_options(graph, *n, *h, *w, &checked).unwrap_or_else(|e| panic!("{e}"));
    let jit = JitProgram::new(program).unwrap_or_else(|e| panic!("{e}"));
    let model = jit.model();
    let mut arena = Arena::new(model.arena_bytes).unwrap();
    let pool = ThreadPool::new(threads);
    let got = inceptc_suite::run_in_both_orders(&model, &mut arena, x.data(), &pool)
        .unwrap_or_else(|e| panic!("{e}"));
    let want = interp::run(graph, x).unwrap();
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .map(|(g, r)| {
            let t = Tensor::new(r.shape().to_vec(), g.clone()).expect("output size");
            t.relative_error(r).unwrap()
        })
        .fold(0.0, f64::max)
}

fn input(n: usize, c: usize, h: usize, w: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data = (0..n * c * h * w)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    Tensor::new(vec![n, c, h, w], data).unwrap()
}

fn graph(body: String) -> Graph {
    let mut g = text::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    inceptc_ir::init::seed_weights(&mut g, 7);
    inceptc_ir::verify(&g).unwrap_or_else(|e| panic!("{e}\n{body}"));
    g
}

/// A global pool's work items are blocks of channels per image: one block or several, a last
/// block with a tail of fewer than 4 channels, one image or two, 1 to 3 threads.
#[test]
fn global_pools_split_into_channel_blocks_match_the_interpreter() {
    for (case, (channels, h, w, n)) in [(130, 3, 5, 1), (64, 1, 1, 2), (7, 2, 2, 2), (257, 4, 3, 2)]
        .into_iter()
        .enumerate()
    {
        let body = format!(
            r#"graph "t" {{
  %0 = input channels={channels} name="input" block="b"
  %1 = global_avg_pool %0 name="pool" block="b"
  output %1
}}"#
        );
        let g = graph(body);
        let x = input(n, channels, h, w, case as u64);
        for threads in 1..=3 {
            let err = compare(&g, &x, threads);
            assert!(
                err.err <= TOLERANCE,
                "{channels} channels, {threads} threads: {err}"
            );
        }
    }
}

/// Every Winograd tile the compiler offers, forced on random stride-1 convolutions (3- and 7-tap
/// axes, every padding the IR allows, sizes that leave partial edge tiles, residuals
/// in place, 1–3 threads), against the interpreter.
#[test]
fn random_winograd_convolutions_match_the_interpreter() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4343);
    let kernels = [[1, 3], [3, 1], [3, 3], [1, 7], [7, 1]];
    let mut used = std::collections::BTreeSet::new();
    for case in 0..60 {
        let [kh, kw] = kernels[case % kernels.len()];
        let pick = |rng: &mut rand_chacha::ChaCha8Rng, r: usize| match r {
            1 => 1,
            3 => [2, 4][rng.gen_range(0..2)],
            _ => [2, 3][rng.gen_range(0..2)],
        };
        let m = pick(&mut rng, kh.max(kw));
        let tile = [if kh == 1 { 1 } else { m }, if kw == 1 { 1 } else { m }];
        let (ph, pw) = (rng.gen_range(0..kh), rng.gen_range(0..kw));
        let h = rng.gen_range(kh.saturating_sub(2 * ph).max(1)..=19);
        let w = rng.gen_range(kw.saturating_sub(2 * pw).max(1)..=19);
        let ic = 4 * rng.gen_range(1..=6);
        let oc = rng.gen_range(1..=21);
        let n = rng.gen_range(1..=2);
        let relu = rng.gen_bool(0.5);
        let residual = ph == kh / 2 && pw == kw / 2 && rng.gen_bool(0.5);
        let bias = residual || rng.gen_bool(0.8);
        let body = conv_graph(ic, oc, [kh, kw], [1, 1], [ph, pw], bias, relu, residual);
        let g = graph(body.clone());
        let conv = ConvAlgorithm::WinogradTile(tile);
        let program = Program::with_options(
            &g,
            n,
            h,
            w,
            &LowerOptions {
                conv,
                ..LowerOptions::default()
            },
        )
        .unwrap();
        let winograd = program
            .steps
            .iter()
            .any(|s| matches!(s.kernel, Some(Kernel::Winograd(_))));
        assert!(winograd, "case {case}: no Winograd kernel\n{body}");
        used.insert((kh, kw, tile));
        let err = compare_with(&g, &input(n, ic, h, w, case as u64), 1 + case % 3, conv);
        assert!(
            err.err <= TOLERANCE,
            "case {case}: tile {tile:?}: error {err}\n{body}"
        );
    }
    assert_eq!(
        used.len(),
        10,
        "every kernel with both of its tiles: {used:?}"
    );
}

/// Winograd work items split by output-channel panels (`compile --threads` above 2) compute
/// every output with the same instructions as one item per tile-row group of the same tile: the
/// same bits, under
/// the bounds check, on every tier, for 1 to 3 threads; every part count from 2 to one per panel,
/// with several ranges (sibling convolutions sharing the kernel) and partial last panels.
/// The first output of `program` compiled in process, run on `x` with 1, 2 and 3 threads.
fn first_output_on_1_to_3_threads(program: Program, x: &Tensor) -> Vec<Vec<f32>> {
    let jit = JitProgram::new(program).unwrap();
    let model = jit.model();
    let mut arena = Arena::new(model.arena_bytes).unwrap();
    (1..=3)
        .map(|threads| {
            let pool = ThreadPool::new(threads);
            model.run(&mut arena, x.data(), &pool).unwrap().remove(0)
        })
        .collect()
}

#[test]
fn winograd_channel_parts_give_the_bits_of_one_part() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1414);
    // Each kernel with a tile of its own (a split may change the tile the cost model prefers).
    let kernels = [
        ([3, 3], [4, 4]),
        ([1, 7], [1, 3]),
        ([7, 1], [2, 1]),
        ([1, 3], [1, 2]),
    ];
    let mut most = 0;
    for case in 0..16 {
        let ([kh, kw], tile) = kernels[case % kernels.len()];
        let (ph, pw) = (kh / 2, kw / 2);
        let (h, w) = (rng.gen_range(3..=12), rng.gen_range(3..=12));
        let ic = 4 * rng.gen_range(1..=5);
        let oc = rng.gen_range(17..=90);
        let n = rng.gen_range(1..=2);
        let residual = rng.gen_bool(0.4);
        let body = conv_graph(ic, oc, [kh, kw], [1, 1], [ph, pw], true, true, residual);
        let g = graph(body.clone());
        let x = input(n, ic, h, w, case as u64);
        let want = interp::run(&g, &x).unwrap();
        for tier in tiers() {
            let run = |parts: Option<usize>| {
                let options = LowerOptions {
                    check_bounds: true,
                    conv: ConvAlgorithm::WinogradTile(tile),
                    tier,
                    winograd_parts: parts,
                    ..LowerOptions::default()
                };
                let program = Program::with_options(&g, n, h, w, &options).unwrap();
                let split = program.steps.iter().find_map(|s| match &s.kernel {
                    Some(Kernel::Winograd(k)) => Some((k.parts, k.panels())),
                    _ => None,
                });
                let (parts, panels) = split.unwrap_or_else(|| panic!("no Winograd\n{body}"));
                (parts, panels, first_output_on_1_to_3_threads(program, &x))
            };
            let (_, panels, one) = run(None);
            let t = Tensor::new(want[0].shape().to_vec(), one[0].clone()).unwrap();
            let err = t.relative_error(&want[0]).unwrap();
            assert!(
                err <= TOLERANCE,
                "case {case} on {}: {err:e}\n{body}",
                tier.name()
            );
            for parts in 2..=panels {
                let (got_parts, _, split) = run(Some(parts));
                assert_eq!(got_parts, parts);
                most = most.max(parts);
                for (threads, y) in split.iter().enumerate() {
                    let same = y
                        .iter()
                        .zip(&one[0])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "case {case} on {}: {parts} parts, {} threads differ from one part\n{body}",
                        tier.name(),
                        threads + 1
                    );
                }
            }
        }
    }
    assert!(most >= 4, "the cases split into at most {most} parts");
}

/// The error Winograd adds, bounded against the direct path at the networks' own shapes: every
/// offered tile on the layer kinds that use it (1×7/7×1 at 17×17 with 192 channels, 3×3 at
/// 35×35 and 147×147, 1×3/3×1 at 8×8 with 384 channels), inputs like post-ReLU activations.
#[test]
fn winograd_error_stays_within_its_bound_of_the_direct_path() {
    /// max |winograd − interpreter| / max |interpreter| allowed: 10× below the network tests'
    /// tolerance. Measured: F(2,·) tiles 0.2–1.4·10⁻⁶, like the direct path's 0.6–1.4·10⁻⁶;
    /// F(4,3) and F(4×4,3×3) up to 3.5·10⁻⁶; F(3,7) up to 6.3·10⁻⁶.
    const WINOGRAD_BOUND: f64 = 1e-5;
    /// Kernel, padding, size, input and output channels, the tiles to try.
    type Case = (
        [usize; 2],
        [usize; 2],
        usize,
        usize,
        usize,
        &'static [[usize; 2]],
    );
    let cases: [Case; 6] = [
        ([1, 7], [0, 3], 17, 192, 224, &[[1, 2], [1, 3]]),
        ([7, 1], [3, 0], 17, 192, 224, &[[2, 1], [3, 1]]),
        ([3, 3], [1, 1], 35, 64, 96, &[[2, 2], [4, 4]]),
        ([3, 3], [0, 0], 49, 32, 32, &[[2, 2], [4, 4]]),
        ([1, 3], [0, 1], 8, 384, 256, &[[1, 2], [1, 4]]),
        ([3, 1], [1, 0], 8, 384, 256, &[[2, 1], [4, 1]]),
    ];
    for ([kh, kw], [ph, pw], size, ic, oc, tiles) in cases {
        let g = graph(conv_graph(
            ic,
            oc,
            [kh, kw],
            [1, 1],
            [ph, pw],
            true,
            false,
            false,
        ));
        // Non-negative inputs, as after a ReLU: the sums do not cancel.
        let mut x = input(1, ic, size, size, 3);
        let data: Vec<f32> = x.data().iter().map(|v| v.abs()).collect();
        x = Tensor::new(x.shape().to_vec(), data).unwrap();
        let direct = compare_with(&g, &x, 2, ConvAlgorithm::Direct);
        for &tile in tiles {
            let err = compare_with(&g, &x, 2, ConvAlgorithm::WinogradTile(tile));
            eprintln!("{kh}×{kw} {size}×{size} {ic}→{oc} tile {tile:?}: {err} (direct {direct})");
            assert!(
                err.err <= WINOGRAD_BOUND,
                "{kh}×{kw} tile {tile:?}: error {err} (direct {direct})"
            );
        }
    }
}

#[test]
fn random_convolutions_match_the_interpreter() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2016);
    for case in 0..60 {
        let ConvCase {
            body,
            shape: [n, ic, h, w],
        } = random_conv(&mut rng, None, 13, 21);
        let g = graph(body.clone());
        let x = input(n, ic, h, w, case);
        let err = compare(&g, &x, 1 + case as usize % 3);
        assert!(err.err <= TOLERANCE, "case {case}: error {err}\n{body}");
        // Split for 16 threads (groups of single units: the last groups may hold the short
        // tile alone), run on 5.
        let err = compare_options(&g, &x, 5, ConvAlgorithm::Auto, 16);
        assert!(
            err.err <= TOLERANCE,
            "case {case}, split for 16: {err}\n{body}"
        );
    }
}

/// Split for 16 threads, 1×1 convolutions over many panels, in place over their residual, in
/// groups of one or two flat tiles with a short last tile, match the interpreter (the groups'
/// rule itself is tested in `lower::tests`).
#[test]
fn split_for_many_threads_in_place_residuals_match_the_interpreter() {
    for (case, (oc, size)) in [(256, 13), (200, 11), (300, 9), (130, 15)]
        .into_iter()
        .enumerate()
    {
        let body = conv_graph(16, oc, [1, 1], [1, 1], [0, 0], true, false, true);
        let g = graph(body.clone());
        let x = input(1, 16, size, size, case as u64);
        for threads in [1, 3] {
            let err = compare_options(&g, &x, threads, ConvAlgorithm::Auto, 16);
            assert!(
                err.err <= TOLERANCE,
                "{oc} channels, {size}×{size}: {err}\n{body}"
            );
        }
    }
}

#[test]
fn concat_tiles_shared_kernels_and_pools_match_the_interpreter() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for case in 0..30 {
        let c = rng.gen_range(1..=11);
        let (a, b, d) = (
            rng.gen_range(1..=10),
            rng.gen_range(1..=10),
            rng.gen_range(1..=10),
        );
        let (h, w) = (rng.gen_range(3..=12), rng.gen_range(3..=12));
        let pk = rng.gen_range(1..=3);
        let ps = rng.gen_range(1..=2);
        let pp = rng.gen_range(0..pk);
        let include = rng.gen_bool(0.3);
        let pool = if rng.gen_bool(0.5) {
            format!("max_pool %0 kernel={pk}x{pk} stride={ps}x{ps} pad={pp}x{pp}")
        } else {
            format!(
                "avg_pool %0 kernel={pk}x{pk} stride={ps}x{ps} pad={pp}x{pp} count_include_pad={include}"
            )
        };
        // Three 1×1 siblings (a shared kernel after the pipeline), two of them tiled with a 3×3
        // conv into one concat, and a pool on its own output.
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
  output %6, %7
}}"#
        );
        let mut g = graph(body.clone());
        let before = g.clone();
        run_pipeline(&mut g, None).unwrap();
        assert!(
            text::print(&g).contains("shared_kernel=") && text::print(&g).contains("tile=0/"),
            "the pipeline should tile and merge:\n{}",
            text::print(&g)
        );
        let x = input(2, c, h, w, case);
        let err = compare(&g, &x, 2);
        assert!(err.err <= TOLERANCE, "case {case}: error {err}\n{body}");
        // And the unoptimized graph's meaning is kept.
        let y0 = interp::run(&before, &x).unwrap();
        let y1 = interp::run(&g, &x).unwrap();
        assert!(y1[0].relative_error(&y0[0]).unwrap() <= 1e-5);
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn every_network_matches_the_interpreter() {
    for model in Model::ALL {
        let mut g = load(model, Weights::Seeded(3), &Options::default()).unwrap();
        run_pipeline(&mut g, None).unwrap();
        for batch in [1, 2] {
            let x = random_input(batch, 107, 5);
            let err = compare(&g, &x, 2);
            eprintln!("{model} batch {batch}: error {err}");
            assert!(err.err <= TOLERANCE, "{model} batch {batch}: error {err}");
        }
    }
}

/// The compile moves a kernel that can wait into a later stage where the cost model predicts
/// it faster (Inception-v4's first reduction: the first branch's 3×3/2 beside the second
/// branch's 3×3, whose two work items cannot fill two threads alone); every kernel computes
/// what it did, so the outputs keep their bits, under the bounds check and on 1–3 threads.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn kernels_moved_to_balance_the_stages_keep_the_outputs_bits() {
    let mut g = load(Model::InceptionV4, Weights::Seeded(3), &Options::default()).unwrap();
    run_pipeline(&mut g, None).unwrap();
    let x = random_input(1, 299, 9);
    let tier = *tiers().last().unwrap();
    let run = |keep_levels: bool| {
        let options = LowerOptions {
            check_bounds: true,
            tier,
            threads: 2,
            keep_levels,
            ..LowerOptions::default()
        };
        let program = Program::with_options(&g, 1, 299, 299, &options).unwrap();
        // Whether the reduction's first branch runs in the stage of the kernel before it.
        let joins = program
            .steps
            .iter()
            .find(|s| s.nodes[0] == "features.10.branch0.conv")
            .map(|s| s.joins);
        (joins, first_output_on_1_to_3_threads(program, &x))
    };
    let (moved, balanced) = run(false);
    let (kept, levels) = run(true);
    assert_eq!(kept, Some(false));
    // The cost model's choice for the AVX-512 tiles (the AVX2 tier's costs differ).
    match tier {
        Tier::V4 => assert_eq!(moved, Some(true)),
        _ => eprintln!("on {}: the first branch moved: {moved:?}", tier.name()),
    }
    for (threads, y) in balanced.iter().chain(&levels).enumerate() {
        assert!(
            y.iter()
                .zip(&levels[0])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "run {threads} differs"
        );
    }
}

/// A convolution made to write one row too far (a wrong tile) is caught by the bounds check after
/// its own stage and named with the kernels it ran with; with the stage's kernels run one by one,
/// after its own step and by itself. (Unchecked, the same write lands outside its buffer, maybe
/// outside the arena: it is not run.)
#[test]
fn the_bounds_check_names_a_kernel_that_writes_out_of_bounds() {
    let g = graph(
        r#"graph "faults" {
  %0 = input channels=3 name="input" block="b"
  %1 = fused_conv %0 in=3 out=8 kernel=3x3 stride=2x2 pad=0x0 bias=true residual=false relu=true name="stem" block="b"
  %2 = fused_conv %1 in=8 out=5 kernel=1x1 stride=1x1 pad=0x0 bias=true residual=false relu=true name="a" block="b" tile=0/12
  %3 = fused_conv %1, %2 in=8 out=7 kernel=1x7 stride=1x1 pad=0x3 bias=true residual=false relu=true name="b" block="b" tile=5
  %4 = fused_conv %3 in=12 out=9 kernel=3x3 stride=1x1 pad=1x1 bias=true residual=false relu=false name="c" block="b"
  output %4
}
"#
        .into(),
    );
    let x = input(2, 3, 15, 13, 1);
    let pool = ThreadPool::new(2);
    for fault in ["stem", "a", "b", "c"] {
        let options = LowerOptions {
            check_bounds: true,
            inject_fault: Some(fault.into()),
            ..LowerOptions::default()
        };
        let program = Program::with_options(&g, 2, 15, 13, &options).unwrap();
        let names: Vec<String> = (program.steps.iter().enumerate())
            .map(|(i, s)| inceptc::codegen::kernel_name(i, &s.nodes[0]))
            .collect();
        let step = program
            .steps
            .iter()
            .position(|s| s.nodes[0] == fault)
            .unwrap();
        // The tiles `a` and `b` of one concatenation run together.
        let first = (0..=step).rev().find(|s| !program.steps[*s].joins).unwrap();
        let mut end = step + 1;
        while program.steps.get(end).is_some_and(|s| s.joins) {
            end += 1;
        }
        assert_eq!(
            end - first,
            1 + ["a", "b"].contains(&fault) as usize,
            "{fault}"
        );
        let jit = JitProgram::new(program).unwrap();
        for order in [StageOrder::Together, StageOrder::OneByOne] {
            let model = inceptc_runtime::exec::Model {
                stages: order,
                ..jit.model()
            };
            let mut arena = Arena::new(model.arena_bytes).unwrap();
            let result = model.run(&mut arena, x.data(), &pool);
            let err = result.expect_err(fault).to_string();
            let (kernels, at) = match order {
                StageOrder::Together => (names[first..end].join("` or `"), first),
                _ => (names[step].clone(), step),
            };
            assert!(
                err.starts_with(&format!(
                    "bounds check: kernel `{kernels}` (step {at}, block b) wrote out of bounds: "
                )),
                "{fault}, {order:?}: {err}"
            );
            assert!(err.contains(" of buffer `"), "{err}");
        }
    }
    // An unknown node is refused when lowering.
    let options = LowerOptions {
        check_bounds: true,
        inject_fault: Some("nope".into()),
        ..LowerOptions::default()
    };
    let err = Program::with_options(&g, 1, 15, 13, &options).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--inject-fault: no fused convolution is named `nope`"
    );
}
