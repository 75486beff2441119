//! Every pass, structurally and numerically: golden before/after cases in `tests/ir/<pass>/`
//! (`<case>.in.txt` is the input, `<case>.out.txt` the blessed result), each also checked with the
//! interpreter, and the whole pipeline on every network against the interpreter.

use inceptc::passes::{run_pass, run_pipeline, PIPELINE};
use inceptc_graphs::{load, Model, Options, Weights};
use inceptc_ir::interp::run;
use inceptc_ir::op::Op;
use inceptc_ir::stats::kernel_count;
use inceptc_ir::{text, Graph, Tensor};
use inceptc_suite::{check_golden, random_input, root};

/// max |after − before| / max |before| allowed for a pass.
const TOLERANCE: f64 = 1e-5;

/// The largest relative error over all outputs of two graphs on one input.
fn max_error(before: &Graph, after: &Graph, x: &Tensor) -> f64 {
    let a = run(before, x).unwrap();
    let b = run(after, x).unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(r, o)| o.relative_error(r).unwrap())
        .fold(0.0, f64::max)
}

fn input_channels(g: &Graph) -> usize {
    match g.node(g.inputs_of_graph()[0]).op {
        Op::Input(ref a) => a.channels,
        _ => unreachable!(),
    }
}

#[test]
fn golden_cases_of_every_pass() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for pass in PIPELINE {
        let dir = root().join("tests/ir").join(pass.name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".in.txt"))
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "pass {} has no golden cases", pass.name);
        for path in inputs {
            cases += 1;
            let source = std::fs::read_to_string(&path).unwrap();
            let mut before =
                text::parse(&source).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            inceptc_ir::init::seed_weights(&mut before, 3);
            let mut after = before.clone();
            run_pass(pass, &mut after).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let golden = path.to_string_lossy().replace(".in.txt", ".out.txt");
            let rel = golden
                .strip_prefix(&format!("{}/", root().display()))
                .unwrap()
                .to_string();
            if let Err(e) = check_golden(rel, &text::print(&after)) {
                failures.push(e);
            }
            let x = {
                let t = random_input(2, 9, 5);
                let c = input_channels(&before);
                Tensor::new(
                    vec![2, c, 9, 9],
                    t.data().iter().cycle().take(2 * c * 81).copied().collect(),
                )
                .unwrap()
            };
            let err = max_error(&before, &after, &x);
            assert!(err <= TOLERANCE, "{}: error {err:e}", path.display());
        }
    }
    assert!(cases >= PIPELINE.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn the_pipeline_preserves_every_network() {
    for model in Model::ALL {
        let before = load(model, Weights::Seeded(11), &Options::default()).unwrap();
        let mut after = before.clone();
        let reports = run_pipeline(&mut after, None).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(reports.len(), PIPELINE.len());
        for id in after.node_ids() {
            let op = &after.node(id).op;
            assert!(
                !matches!(
                    op,
                    Op::BatchNorm(_)
                        | Op::BatchNorm1d(_)
                        | Op::Scale(_)
                        | Op::Relu
                        | Op::Add
                        | Op::Concat
                        | Op::Conv2d(_)
                ),
                "{model}: `{}` ({}) survived the pipeline",
                after.node(id).name,
                op.keyword()
            );
        }
        let err = max_error(&before, &after, &random_input(2, 107, 9));
        assert!(err <= TOLERANCE, "{model}: error {err:e}");
        let printed = text::print(&after);
        let reparsed = text::parse(&printed).unwrap_or_else(|e| panic!("{model}: {e}"));
        inceptc_ir::verify(&reparsed).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(
            text::print(&reparsed),
            printed,
            "{model}: print → parse → print"
        );
        let shapes = |g: &Graph| inceptc_ir::infer_shapes(g, 1, 299, 299).unwrap();
        assert_eq!(
            inceptc_ir::stats::conv_macs(&before, &shapes(&before)),
            inceptc_ir::stats::conv_macs(&after, &shapes(&after)),
            "{model}: the pipeline changed the convolution work"
        );
        eprintln!(
            "{model}: {} → {} nodes, {} → {} kernels, error {err:.2e}",
            before.len(),
            after.len(),
            kernel_count(&before),
            kernel_count(&after)
        );
    }
}
