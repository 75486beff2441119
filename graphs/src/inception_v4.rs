//! Inception-v4 (Szegedy et al. 2016, Fig. 9): the stem of Fig. 3, 4 × Inception-A (Fig. 4),
//! Reduction-A (Fig. 7, k/l/m/n = 192/224/256/384), 7 × Inception-B (Fig. 5), Reduction-B
//! (Fig. 8), 3 × Inception-C (Fig. 6), average pool and the classifier.
//!
//! Names follow timm's `inception_v4`: `features.0` … `features.21`, `last_linear`. Branch order
//! inside each concatenation is timm's, which fixes the channel layout the weights expect.

use inceptc_ir::{Graph, NodeId};

use crate::blocks::*;

/// The stem (Fig. 3; timm `features.0` … `features.5`): 3 → 384 channels, 299 → 35 pixels.
pub fn stem(b: &mut Builder, x: NodeId) -> NodeId {
    let x = b.conv_bn_relu(x, "features.0", 3, square(32, 3, 0).stride(2));
    let x = b.conv_bn_relu(x, "features.1", 32, square(32, 3, 0));
    let x = b.conv_bn_relu(x, "features.2", 32, square(64, 3, 1));
    // Mixed3a: max pool ‖ 3×3/2 conv.
    let pool = b.max_pool_3x3_s2(x, "features.3.maxpool");
    let conv = b.conv_bn_relu(x, "features.3.conv", 64, square(96, 3, 0).stride(2));
    let x = b.concat(&[pool, conv], "features.3");
    // Mixed4a: 1×1 → 3×3 ‖ 1×1 → 1×7 → 7×1 → 3×3.
    let (b0, _) = b.branch(
        x,
        "features.4.branch0",
        160,
        &[pointwise(64), square(96, 3, 0)],
    );
    let (b1, _) = b.branch(
        x,
        "features.4.branch1",
        160,
        &[pointwise(64), row(64, 7), column(64, 7), square(96, 3, 0)],
    );
    let x = b.concat(&[b0, b1], "features.4");
    // Mixed5a: 3×3/2 conv ‖ max pool.
    let conv = b.conv_bn_relu(x, "features.5.conv", 192, square(192, 3, 0).stride(2));
    let pool = b.max_pool_3x3_s2(x, "features.5.maxpool");
    b.concat(&[conv, pool], "features.5")
}

/// Inception-A (Fig. 4) on 384 channels.
fn inception_a(b: &mut Builder, x: NodeId, p: &str) -> NodeId {
    let (b0, _) = b.branch(x, &format!("{p}.branch0"), 384, &[pointwise(96)]);
    let (b1, _) = b.branch(
        x,
        &format!("{p}.branch1"),
        384,
        &[pointwise(64), square(96, 3, 1)],
    );
    let (b2, _) = b.branch(
        x,
        &format!("{p}.branch2"),
        384,
        &[pointwise(64), square(96, 3, 1), square(96, 3, 1)],
    );
    let pool = b.avg_pool_3x3_same(x, &format!("{p}.branch3.0"));
    let b3 = b.conv_bn_relu(pool, &format!("{p}.branch3.1"), 384, pointwise(96));
    b.concat(&[b0, b1, b2, b3], p)
}

/// Inception-B (Fig. 5) on 1024 channels.
fn inception_b(b: &mut Builder, x: NodeId, p: &str) -> NodeId {
    let (b0, _) = b.branch(x, &format!("{p}.branch0"), 1024, &[pointwise(384)]);
    let (b1, _) = b.branch(
        x,
        &format!("{p}.branch1"),
        1024,
        &[pointwise(192), row(224, 7), column(256, 7)],
    );
    let (b2, _) = b.branch(
        x,
        &format!("{p}.branch2"),
        1024,
        &[
            pointwise(192),
            column(192, 7),
            row(224, 7),
            column(224, 7),
            row(256, 7),
        ],
    );
    let pool = b.avg_pool_3x3_same(x, &format!("{p}.branch3.0"));
    let b3 = b.conv_bn_relu(pool, &format!("{p}.branch3.1"), 1024, pointwise(128));
    b.concat(&[b0, b1, b2, b3], p)
}

/// Reduction-B (Fig. 8) on 1024 channels.
fn reduction_b(b: &mut Builder, x: NodeId, p: &str) -> NodeId {
    let (b0, _) = b.branch(
        x,
        &format!("{p}.branch0"),
        1024,
        &[pointwise(192), square(192, 3, 0).stride(2)],
    );
    let (b1, _) = b.branch(
        x,
        &format!("{p}.branch1"),
        1024,
        &[
            pointwise(256),
            row(256, 7),
            column(320, 7),
            square(320, 3, 0).stride(2),
        ],
    );
    let b2 = b.max_pool_3x3_s2(x, &format!("{p}.branch2"));
    b.concat(&[b0, b1, b2], p)
}

/// Inception-C (Fig. 6) on 1536 channels; two of its branches split into 1×3 ‖ 3×1 pairs whose
/// concatenation is itself concatenated.
fn inception_c(b: &mut Builder, x: NodeId, p: &str) -> NodeId {
    let b0 = b.conv_bn_relu(x, &format!("{p}.branch0"), 1536, pointwise(256));
    let x1 = b.conv_bn_relu(x, &format!("{p}.branch1_0"), 1536, pointwise(384));
    let x1a = b.conv_bn_relu(x1, &format!("{p}.branch1_1a"), 384, row(256, 3));
    let x1b = b.conv_bn_relu(x1, &format!("{p}.branch1_1b"), 384, column(256, 3));
    let b1 = b.concat(&[x1a, x1b], &format!("{p}.branch1"));
    let x2 = b.conv_bn_relu(x, &format!("{p}.branch2_0"), 1536, pointwise(384));
    let x2 = b.conv_bn_relu(x2, &format!("{p}.branch2_1"), 384, column(448, 3));
    let x2 = b.conv_bn_relu(x2, &format!("{p}.branch2_2"), 448, row(512, 3));
    let x2a = b.conv_bn_relu(x2, &format!("{p}.branch2_3a"), 512, row(256, 3));
    let x2b = b.conv_bn_relu(x2, &format!("{p}.branch2_3b"), 512, column(256, 3));
    let b2 = b.concat(&[x2a, x2b], &format!("{p}.branch2"));
    let pool = b.avg_pool_3x3_same(x, &format!("{p}.branch3.0"));
    let b3 = b.conv_bn_relu(pool, &format!("{p}.branch3.1"), 1536, pointwise(256));
    b.concat(&[b0, b1, b2, b3], p)
}

/// The whole network with a `classes`-way classifier.
pub fn build(classes: usize) -> Graph {
    let (mut b, input) = Builder::new("inception-v4", "stem");
    let mut x = stem(&mut b, input);
    let mut index = 6;
    let mut stage =
        |b: &mut Builder, x: NodeId, block: String, f: fn(&mut Builder, NodeId, &str) -> NodeId| {
            b.block(block);
            let out = f(b, x, &format!("features.{index}"));
            index += 1;
            out
        };
    for i in 0..4 {
        x = stage(&mut b, x, format!("inception_a.{i}"), inception_a);
    }
    x = stage(&mut b, x, "reduction_a".into(), |b, x, p| {
        reduction_a(b, x, p, 384, [192, 224, 256, 384]).0
    });
    for i in 0..7 {
        x = stage(&mut b, x, format!("inception_b.{i}"), inception_b);
    }
    x = stage(&mut b, x, "reduction_b".into(), reduction_b);
    for i in 0..3 {
        x = stage(&mut b, x, format!("inception_c.{i}"), inception_c);
    }
    b.block("head");
    let logits = b.classifier_head(x, "global_pool", "last_linear", 1536, classes);
    b.finish(logits)
}
