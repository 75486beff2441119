//! Inception-ResNet-v2 in the released TF-slim layout (timm `inception_resnet_v2`): a stem ending in
//! `Mixed_5b` (320 channels, 35×35), 10 × Inception-ResNet-A (`repeat`, scale 0.17, cf. Fig. 16),
//! Reduction-A (`mixed_6a`, Fig. 7 with k/l/m/n = 256/256/384/384), 20 × Inception-ResNet-B
//! (`repeat_1`, scale 0.10, cf. Fig. 17), Reduction-B (`mixed_7a`, cf. Fig. 18), 9 ×
//! Inception-ResNet-C (`repeat_2`, scale 0.20, cf. Fig. 19), a final block (`block8`, scale 1.0, no
//! ReLU), `conv2d_7b` to 1536 channels, average pool and the classifier `classif`.

use inceptc_ir::{Graph, NodeId};

use crate::blocks::*;

/// The TF-slim stem ([`slim_stem`]), `maxpool_5a`, then `mixed_5b` (320 channels).
fn stem(b: &mut Builder, x: NodeId) -> NodeId {
    let x = slim_stem(b, x);
    let x = b.max_pool_3x3_s2(x, "maxpool_5a");
    let (b0, _) = b.branch(x, "mixed_5b.branch0", 192, &[pointwise(96)]);
    let (b1, _) = b.branch(
        x,
        "mixed_5b.branch1",
        192,
        &[pointwise(48), square(64, 5, 2)],
    );
    let (b2, _) = b.branch(
        x,
        "mixed_5b.branch2",
        192,
        &[pointwise(64), square(96, 3, 1), square(96, 3, 1)],
    );
    let pool = b.avg_pool_3x3_same(x, "mixed_5b.branch3.0");
    let b3 = b.conv_bn_relu(pool, "mixed_5b.branch3.1", 192, pointwise(64));
    b.concat(&[b0, b1, b2, b3], "mixed_5b")
}

pub(crate) const BLOCK35: &[&[ConvSpec]] = &[
    &[pointwise(32)],
    &[pointwise(32), square(32, 3, 1)],
    &[pointwise(32), square(48, 3, 1), square(64, 3, 1)],
];
pub(crate) const BLOCK17: &[&[ConvSpec]] = &[
    &[pointwise(192)],
    &[pointwise(128), row(160, 7), column(192, 7)],
];
pub(crate) const BLOCK8: &[&[ConvSpec]] = &[
    &[pointwise(192)],
    &[pointwise(192), row(224, 3), column(256, 3)],
];
pub(crate) const MIXED_7A: [&[usize]; 3] = [&[256, 384], &[256, 288], &[256, 288, 320]];

/// Residual scales of the released model (constructor constants, not in the checkpoint).
pub const SCALES: [f32; 3] = [0.17, 0.10, 0.20];

/// The whole network with a `classes`-way classifier.
pub fn build(classes: usize) -> Graph {
    let (mut b, input) = Builder::new("inception-resnet-v2", "stem");
    let mut x = stem(&mut b, input);
    let repeat =
        |b: &mut Builder, x: NodeId, count: usize, kind: &str, module: &str, spec: ResidualSpec| {
            (0..count).fold(x, |x, i| {
                b.block(format!("{kind}.{i}"));
                residual_block(b, x, &format!("{module}.{i}"), &spec)
            })
        };
    x = repeat(
        &mut b,
        x,
        10,
        "inception_resnet_a",
        "repeat",
        ResidualSpec {
            channels: 320,
            branches: BLOCK35,
            scale: SCALES[0],
            relu: true,
        },
    );
    b.block("reduction_a");
    let (mut x, c) = reduction_a(&mut b, x, "mixed_6a", 320, [256, 256, 384, 384]);
    debug_assert_eq!(c, 1088);
    x = repeat(
        &mut b,
        x,
        20,
        "inception_resnet_b",
        "repeat_1",
        ResidualSpec {
            channels: 1088,
            branches: BLOCK17,
            scale: SCALES[1],
            relu: true,
        },
    );
    b.block("reduction_b");
    let (mut x, c) = reduction_b_resnet(&mut b, x, "mixed_7a", 1088, MIXED_7A);
    debug_assert_eq!(c, 2080);
    x = repeat(
        &mut b,
        x,
        9,
        "inception_resnet_c",
        "repeat_2",
        ResidualSpec {
            channels: 2080,
            branches: BLOCK8,
            scale: SCALES[2],
            relu: true,
        },
    );
    b.block("inception_resnet_c.9");
    let x = residual_block(
        &mut b,
        x,
        "block8",
        &ResidualSpec {
            channels: 2080,
            branches: BLOCK8,
            scale: 1.0,
            relu: false,
        },
    );
    b.block("head");
    let x = b.conv_bn_relu(x, "conv2d_7b", 2080, pointwise(1536));
    let logits = b.classifier_head(x, "global_pool", "classif", 1536, classes);
    b.finish(logits)
}
