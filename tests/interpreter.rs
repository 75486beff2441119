//! The reference interpreter on whole networks with seeded weights: activations stay in a sane range
//! through every block, batch rows are independent, and facenet's embedding has unit norm.
//! Whole networks are slow in debug builds: these tests run with `cargo test --release`.

use std::collections::HashMap;

use inceptc_graphs::{load, Model, Options, Weights};
use inceptc_ir::interp::{run, run_observed};
use inceptc_ir::{infer_shapes, Graph, NodeId, Tensor};
use inceptc_suite::random_input;

fn seeded(model: Model) -> Graph {
    load(
        model,
        Weights::Seeded(inceptc_ir::init::DEFAULT_SEED),
        &Options::default(),
    )
    .unwrap()
}

fn rms(t: &Tensor) -> f64 {
    (t.data().iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / t.len() as f64).sqrt()
}

/// Root mean square of each block's output, in block order.
fn block_rms(graph: &Graph, x: &Tensor) -> Vec<(String, f64)> {
    let shapes = infer_shapes(graph, x.shape()[0], x.shape()[2], x.shape()[3]).unwrap();
    let stats = inceptc_ir::stats::block_stats(graph, &shapes);
    // Block outputs; for an L2 normalization, whose scale is fixed by definition (its norm is
    // tested below), the value it normalizes.
    let leaves: HashMap<NodeId, String> = graph
        .node_ids()
        .filter(|id| {
            let block = &graph.node(*id).block;
            graph.outputs().contains(id)
                || graph
                    .users(*id)
                    .iter()
                    .any(|u| graph.node(*u).block != *block)
        })
        .map(|id| match graph.node(id).op {
            inceptc_ir::Op::L2Normalize(_) => graph.inputs(id)[0],
            _ => id,
        })
        .map(|id| (id, graph.node(id).block.clone()))
        .collect();
    let mut last: HashMap<String, f64> = HashMap::new();
    run_observed(graph, x, &mut |id, t| {
        if let Some(block) = leaves.get(&id) {
            last.insert(block.clone(), rms(t));
        }
    })
    .unwrap();
    stats
        .into_iter()
        .filter_map(|s| Some((s.block.clone(), *last.get(&s.block)?)))
        .collect()
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn seeded_activations_stay_in_a_sane_range_through_every_block() {
    for model in Model::ALL {
        let g = seeded(model);
        let size = model.default_image_size();
        let blocks = block_rms(&g, &random_input(1, size, 1));
        assert_eq!(
            blocks.len(),
            g.blocks().len(),
            "{model}: every block is observed"
        );
        for (block, r) in blocks {
            eprintln!("{model} {block}: rms {r:.3}");
            assert!(
                r.is_finite() && (0.25..=10.0).contains(&r),
                "{model}: block {block} output has rms {r}"
            );
        }
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn batch_rows_are_computed_independently() {
    for model in [Model::InceptionResnetV1, Model::InceptionV4] {
        let g = seeded(model);
        let x = random_input(2, 96, 7);
        let both = &run(&g, &x).unwrap()[0];
        let per_row = x.len() / 2;
        let k = both.shape()[1];
        for row in 0..2 {
            let xi = Tensor::new(
                vec![1, 3, 96, 96],
                x.data()[row * per_row..][..per_row].to_vec(),
            )
            .unwrap();
            let yi = &run(&g, &xi).unwrap()[0];
            assert_eq!(
                yi.data(),
                &both.data()[row * k..][..k],
                "{model}: row {row}"
            );
        }
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "whole networks run in release mode: cargo test --release"
)]
fn facenet_embeddings_have_unit_norm_and_logits_do_not() {
    let g = seeded(Model::InceptionResnetV1);
    let y = &run(&g, &random_input(3, 160, 3)).unwrap()[0];
    assert_eq!(y.shape(), &[3, 512]);
    for row in y.data().chunks(512) {
        let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    let classify = load(
        Model::InceptionResnetV1,
        Weights::Seeded(1),
        &Options {
            classify: true,
            num_classes: 10,
        },
    )
    .unwrap();
    let y = &run(&classify, &random_input(1, 160, 3)).unwrap()[0];
    assert_eq!(y.shape(), &[1, 10]);
    let norm = y
        .data()
        .iter()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "logits are not normalized");
}
