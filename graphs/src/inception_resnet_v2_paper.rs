//! Inception-ResNet-v2 as the paper draws it (Fig. 15): the Inception-v4 stem (Fig. 3, 384
//! channels), 5 × Inception-ResNet-A (Fig. 16), Reduction-A (Fig. 7, k/l/m/n = 256/256/384/384,
//! 1152 channels), 10 × Inception-ResNet-B (Fig. 17), Reduction-B (Fig. 18, 2144 channels),
//! 5 × Inception-ResNet-C (Fig. 19), average pool, dropout (the identity at inference) and the
//! classifier. Residual scales are the released model's 0.17 / 0.10 / 0.20.
//!
//! Where the figures contradict the residual add, the up-projection restores the block input's
//! width: Fig. 17 says 1154 on a 1152-channel input and Fig. 19 says 2048 on 2144; we use 1152 and
//! 2144. No checkpoint exists; names follow the Inception-v4 scheme (`features.N`, `last_linear`).

use inceptc_ir::{Graph, NodeId};

use crate::blocks::*;
use crate::inception_resnet_v2::{BLOCK17, BLOCK35, BLOCK8, MIXED_7A, SCALES};

/// The whole network with a `classes`-way classifier.
pub fn build(classes: usize) -> Graph {
    let (mut b, input) = Builder::new("inception-resnet-v2-paper", "stem");
    let mut x = crate::inception_v4::stem(&mut b, input);
    let mut index = 6;
    let mut stage = |b: &mut Builder,
                     x: NodeId,
                     block: String,
                     f: &dyn Fn(&mut Builder, NodeId, &str) -> NodeId| {
        b.block(block);
        let out = f(b, x, &format!("features.{index}"));
        index += 1;
        out
    };
    let residual = |channels, branches, scale| {
        move |b: &mut Builder, x: NodeId, p: &str| {
            residual_block(
                b,
                x,
                p,
                &ResidualSpec {
                    channels,
                    branches,
                    scale,
                    relu: true,
                },
            )
        }
    };
    for i in 0..5 {
        x = stage(
            &mut b,
            x,
            format!("inception_resnet_a.{i}"),
            &residual(384, BLOCK35, SCALES[0]),
        );
    }
    x = stage(&mut b, x, "reduction_a".into(), &|b, x, p| {
        reduction_a(b, x, p, 384, [256, 256, 384, 384]).0
    });
    for i in 0..10 {
        x = stage(
            &mut b,
            x,
            format!("inception_resnet_b.{i}"),
            &residual(1152, BLOCK17, SCALES[1]),
        );
    }
    x = stage(&mut b, x, "reduction_b".into(), &|b, x, p| {
        reduction_b_resnet(b, x, p, 1152, MIXED_7A).0
    });
    for i in 0..5 {
        x = stage(
            &mut b,
            x,
            format!("inception_resnet_c.{i}"),
            &residual(2144, BLOCK8, SCALES[2]),
        );
    }
    b.block("head");
    let logits = b.classifier_head(x, "global_pool", "last_linear", 2144, classes);
    b.finish(logits)
}
