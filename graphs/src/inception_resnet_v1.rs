//! Inception-ResNet-v1 (paper Fig. 15 with the stem of Fig. 14, Inception-ResNet-A/B/C of Figs. 10,
//! 11 and 13, Reduction-A of Fig. 7 with k/l/m/n = 192/192/256/384 and Reduction-B of Fig. 12) in
//! facenet-pytorch's `InceptionResnetV1` layout: 5 × `repeat_1` (scale 0.17), `mixed_6a`, 10 ×
//! `repeat_2` (0.10), `mixed_7a`, 5 × `repeat_3` (0.20), `block8` (scale 1.0, no ReLU).
//!
//! The head is facenet's: average pool → (dropout, the identity) → `last_linear` (1792 → 512, no
//! bias) → `last_bn` (BatchNorm1d) → L2 normalization, giving the 512-d embedding; or, with
//! `classify`, → `logits` (a linear layer with bias) instead of the normalization.

use inceptc_ir::op::{BatchNormAttrs, L2NormalizeAttrs, LinearAttrs, Op};
use inceptc_ir::{Graph, NodeId};

use crate::blocks::*;

/// Width of the embedding.
pub const EMBEDDING: usize = 512;

fn stem(b: &mut Builder, x: NodeId) -> NodeId {
    let x = slim_stem(b, x);
    b.conv_bn_relu(x, "conv2d_4b", 192, square(256, 3, 0).stride(2))
}

const BLOCK35: &[&[ConvSpec]] = &[
    &[pointwise(32)],
    &[pointwise(32), square(32, 3, 1)],
    &[pointwise(32), square(32, 3, 1), square(32, 3, 1)],
];
const BLOCK17: &[&[ConvSpec]] = &[
    &[pointwise(128)],
    &[pointwise(128), row(128, 7), column(128, 7)],
];
const BLOCK8: &[&[ConvSpec]] = &[
    &[pointwise(192)],
    &[pointwise(192), row(192, 3), column(192, 3)],
];

/// The whole network: the embedding, or with `classes = Some(k)` facenet's `logits` classifier.
pub fn build(classes: Option<usize>) -> Graph {
    let (mut b, input) = Builder::new("inception-resnet-v1", "stem");
    let x = stem(&mut b, input);
    let stage = |b: &mut Builder,
                 x: NodeId,
                 count: usize,
                 kind: &str,
                 module: &str,
                 channels: usize,
                 branches,
                 scale| {
        (0..count).fold(x, |x, i| {
            b.block(format!("{kind}.{i}"));
            residual_block(
                b,
                x,
                &format!("{module}.{i}"),
                &ResidualSpec {
                    channels,
                    branches,
                    scale,
                    relu: true,
                },
            )
        })
    };
    let x = stage(
        &mut b,
        x,
        5,
        "inception_resnet_a",
        "repeat_1",
        256,
        BLOCK35,
        0.17,
    );
    b.block("reduction_a");
    let (x, c) = reduction_a(&mut b, x, "mixed_6a", 256, [192, 192, 256, 384]);
    debug_assert_eq!(c, 896);
    let x = stage(
        &mut b,
        x,
        10,
        "inception_resnet_b",
        "repeat_2",
        896,
        BLOCK17,
        0.10,
    );
    b.block("reduction_b");
    let (x, c) = reduction_b_resnet(
        &mut b,
        x,
        "mixed_7a",
        896,
        [&[256, 384], &[256, 256], &[256, 256, 256]],
    );
    debug_assert_eq!(c, 1792);
    let x = stage(
        &mut b,
        x,
        5,
        "inception_resnet_c",
        "repeat_3",
        1792,
        BLOCK8,
        0.20,
    );
    b.block("inception_resnet_c.5");
    let x = residual_block(
        &mut b,
        x,
        "block8",
        &ResidualSpec {
            channels: 1792,
            branches: BLOCK8,
            scale: 1.0,
            relu: false,
        },
    );
    b.block("head");
    let pooled = b.add(Op::GlobalAvgPool, &[x], "avgpool_1a");
    let linear = b.add(
        Op::Linear(LinearAttrs {
            in_features: 1792,
            out_features: EMBEDDING,
            bias: false,
        }),
        &[pooled],
        "last_linear",
    );
    let bn = b.add(
        Op::BatchNorm1d(BatchNormAttrs {
            channels: EMBEDDING,
            eps: BN_EPS,
        }),
        &[linear],
        "last_bn",
    );
    let out = match classes {
        Some(k) => b.add(
            Op::Linear(LinearAttrs {
                in_features: EMBEDDING,
                out_features: k,
                bias: true,
            }),
            &[bn],
            "logits",
        ),
        // F.normalize(x, p=2, dim=1): eps 1e-12.
        None => b.add(
            Op::L2Normalize(L2NormalizeAttrs { eps: 1e-12 }),
            &[bn],
            "normalize",
        ),
    };
    b.finish(out)
}
