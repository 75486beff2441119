//! The four networks as graphs: sizes against the published counts, the verifier, the text format's
//! round trip, golden dumps of one block of each kind, and shape inference at odd sizes.

use inceptc_graphs::{build, load, Model, Options, Weights};
use inceptc_ir::{infer_shapes, text, verify, Graph, Shape, ShapeError};
use inceptc_suite::check_golden;

fn graph(model: Model) -> Graph {
    build(model, &Options::default()).expect("builds")
}

fn conv_macs(graph: &Graph, size: usize) -> u64 {
    let shapes = infer_shapes(graph, 1, size, size).expect("shapes");
    inceptc_ir::stats::conv_macs(graph, &shapes)
}

#[test]
fn parameter_counts_match_timm_and_facenet() {
    assert_eq!(graph(Model::InceptionV4).trainable_parameters(), 42_679_816);
    assert_eq!(
        graph(Model::InceptionResnetV2).trainable_parameters(),
        55_843_464
    );
    assert_eq!(
        graph(Model::InceptionResnetV1).trainable_parameters(),
        23_482_624
    );
}

#[test]
fn convolution_macs_match_the_reference_sizes() {
    // DESIGN.md §4: 12.25, 13.15 and 1.42 GMAC of convolution, to two decimals.
    let gmac =
        |m: Model| (conv_macs(&graph(m), m.default_image_size()) as f64 / 1e7).round() / 100.0;
    assert_eq!(gmac(Model::InceptionV4), 12.25);
    assert_eq!(gmac(Model::InceptionResnetV2), 13.15);
    assert_eq!(gmac(Model::InceptionResnetV1), 1.42);
}

#[test]
fn every_network_verifies_with_seeded_weights() {
    for model in Model::ALL {
        let g = load(model, Weights::Seeded(1), &Options::default()).expect("loads");
        assert!(g.is_bound(), "{model}: unbound parameters");
        verify(&g).unwrap_or_else(|e| panic!("{model}: {e}"));
    }
}

#[test]
fn print_parse_print_is_the_identity_for_every_network() {
    for model in Model::ALL {
        let g = graph(model);
        let printed = text::print(&g);
        let parsed = text::parse(&printed).unwrap_or_else(|e| panic!("{model}: {e}"));
        verify(&parsed).unwrap_or_else(|e| panic!("{model} after parsing: {e}"));
        assert_eq!(text::print(&parsed), printed, "{model}");
        assert_eq!(parsed.len(), g.len());
    }
}

#[test]
fn output_shapes_follow_the_head() {
    let out = |g: &Graph, n: usize, s: usize| infer_shapes(g, n, s, s).unwrap()[&g.outputs()[0]];
    assert_eq!(
        out(&graph(Model::InceptionV4), 2, 299),
        Shape::Vector { n: 2, f: 1000 }
    );
    assert_eq!(
        out(&graph(Model::InceptionResnetV2), 1, 299),
        Shape::Vector { n: 1, f: 1000 }
    );
    assert_eq!(
        out(&graph(Model::InceptionResnetV1), 3, 160),
        Shape::Vector { n: 3, f: 512 }
    );
    let classify = build(
        Model::InceptionResnetV1,
        &Options {
            classify: true,
            num_classes: 8631,
        },
    )
    .unwrap();
    assert_eq!(out(&classify, 1, 160), Shape::Vector { n: 1, f: 8631 });
    assert_eq!(classify.node(classify.outputs()[0]).name, "logits");
}

#[test]
fn block_outputs_have_the_papers_grid_sizes() {
    let g = graph(Model::InceptionV4);
    let shapes = infer_shapes(&g, 1, 299, 299).unwrap();
    let stats = inceptc_ir::stats::block_stats(&g, &shapes);
    let output = |block: &str| {
        stats
            .iter()
            .find(|s| s.block == block)
            .and_then(|s| s.output)
            .unwrap()
    };
    assert_eq!(
        output("stem"),
        Shape::Map {
            n: 1,
            c: 384,
            h: 35,
            w: 35
        }
    );
    assert_eq!(
        output("reduction_a"),
        Shape::Map {
            n: 1,
            c: 1024,
            h: 17,
            w: 17
        }
    );
    assert_eq!(
        output("reduction_b"),
        Shape::Map {
            n: 1,
            c: 1536,
            h: 8,
            w: 8
        }
    );
    let paper = graph(Model::InceptionResnetV2Paper);
    let shapes = infer_shapes(&paper, 1, 299, 299).unwrap();
    let stats = inceptc_ir::stats::block_stats(&paper, &shapes);
    let c = |block: &str| {
        stats
            .iter()
            .find(|s| s.block == block)
            .unwrap()
            .output
            .unwrap()
            .channels()
    };
    assert_eq!(
        (c("stem"), c("reduction_a"), c("reduction_b")),
        (384, 1152, 2144)
    );
}

#[test]
fn the_smallest_input_is_75_pixels() {
    for model in Model::ALL {
        let g = graph(model);
        assert!(infer_shapes(&g, 1, 75, 75).is_ok(), "{model} at 75");
        match infer_shapes(&g, 1, 74, 74) {
            Err(ShapeError::TooSmall { node, .. }) => assert!(!node.is_empty()),
            other => panic!("{model} at 74: expected TooSmall, got {other:?}"),
        }
    }
}

#[test]
fn names_equal_checkpoint_prefixes() {
    let g = graph(Model::InceptionV4);
    for name in [
        "features.0.conv",
        "features.3.maxpool",
        "features.6.branch3.1.conv",
        "features.19.branch2_3b.bn",
        "last_linear",
    ] {
        assert!(g.find(name).is_some(), "inception-v4 lacks `{name}`");
    }
    let g = graph(Model::InceptionResnetV2);
    for name in [
        "mixed_5b.branch1.1.conv",
        "repeat.9.conv2d",
        "repeat_2.8.branch1.2.bn",
        "block8.conv2d",
        "conv2d_7b.conv",
        "classif",
    ] {
        assert!(g.find(name).is_some(), "inception-resnet-v2 lacks `{name}`");
    }
    let g = graph(Model::InceptionResnetV1);
    for name in [
        "conv2d_4b.conv",
        "repeat_3.4.conv2d",
        "mixed_7a.branch2.2.conv",
        "last_bn",
        "normalize",
    ] {
        assert!(g.find(name).is_some(), "inception-resnet-v1 lacks `{name}`");
    }
}

/// One block of each kind per network, printed with shapes at the model's own size.
#[test]
fn golden_dumps_of_one_block_of_each_kind() {
    let cases: &[(Model, &[&str])] = &[
        (
            Model::InceptionV4,
            &[
                "stem",
                "inception_a.0",
                "reduction_a",
                "inception_b.0",
                "reduction_b",
                "inception_c.0",
                "head",
            ],
        ),
        (
            Model::InceptionResnetV2,
            &[
                "stem",
                "inception_resnet_a.0",
                "reduction_a",
                "inception_resnet_b.0",
                "reduction_b",
                "inception_resnet_c.0",
                "inception_resnet_c.9",
                "head",
            ],
        ),
        (
            Model::InceptionResnetV1,
            &[
                "stem",
                "inception_resnet_a.0",
                "reduction_a",
                "inception_resnet_b.0",
                "reduction_b",
                "inception_resnet_c.0",
                "inception_resnet_c.5",
                "head",
            ],
        ),
        (
            Model::InceptionResnetV2Paper,
            &[
                "inception_resnet_a.0",
                "reduction_a",
                "inception_resnet_b.0",
                "reduction_b",
                "inception_resnet_c.0",
                "head",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (model, blocks) in cases {
        let g = graph(*model);
        let size = model.default_image_size();
        let shapes = infer_shapes(&g, 1, size, size).unwrap();
        for block in *blocks {
            let dump = text::print_with(
                &g,
                &text::PrintOptions {
                    shapes: Some(&shapes),
                    block: Some(block),
                },
            );
            assert!(dump.lines().count() > 3, "{model}: block {block} is empty");
            if let Err(e) = check_golden(format!("tests/ir/networks/{model}/{block}.txt"), &dump) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
