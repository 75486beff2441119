//! `sink-avg-pool` — requires the epilogues fused. An average pool whose only reader is a 1×1
//! convolution (stride 1, no padding, no residual) trades places with it: the convolution reads
//! the pool's operand, and the pool averages the convolution's result, then applies its ReLU.
//!
//! A 1×1 convolution is the same linear map at every pixel and a mean is a linear combination of
//! pixels, so they commute; the bias commutes too when the divisor counts only the window's
//! cells inside the image (or there is no padding), since the mean of a constant is then that
//! constant. The ReLU stays last. The rewrite is made only where the pool keeps the map's size
//! (stride 1, "same" padding), so that the convolution computes as many pixels as before, and
//! the convolution has fewer output than input channels, so that the pool averages fewer
//! channels. Inception-v4's pooling branches are exactly that: a 3×3 mean over 384, 1024 or 1536
//! channels before a 1×1 convolution to 96, 128 or 256; after the rewrite the mean is over those,
//! and the convolution reads the block input with its siblings (`merge-sibling-1x1` can then give
//! it their kernel).
//!
//! The two nodes keep their places in the graph and exchange their ops, parameters and names:
//! the node that was the pool becomes the convolution (under the convolution's name) and the one
//! that was the convolution becomes the pool, so the block's readers are unchanged. Each keeps
//! its origins: the convolution's still name its ReLU, which the pool now applies.

use inceptc_ir::op::{AvgPoolAttrs, FusedConvAttrs, Op};
use inceptc_ir::{Graph, NodeId};

use super::{Pass, RewriteError};

/// The pass.
pub const PASS: Pass = Pass {
    name: "sink-avg-pool",
    summary: "AvgPool → 1×1 conv (fewer channels out) becomes 1×1 conv → AvgPool with its ReLU",
    run,
};

fn run(graph: &mut Graph) -> Result<usize, RewriteError> {
    let order = graph.topo_order().ok_or(RewriteError::Cycle)?;
    let mut sunk = 0;
    for pool in order {
        let Some((pool_attrs, conv, conv_attrs)) = candidate(graph, pool) else {
            continue;
        };
        let relu = conv_attrs.relu;
        let taken = std::mem::take(&mut graph.node_mut(conv).params);
        let (pool_node, conv_node) = (graph.node(pool).clone(), graph.node(conv).clone());
        let first = graph.node_mut(pool);
        first.op = Op::FusedConv(FusedConvAttrs {
            relu: false,
            ..conv_attrs
        });
        first.params = taken;
        first.name = conv_node.name;
        first.block = conv_node.block;
        first.origins = conv_node.origins;
        let second = graph.node_mut(conv);
        second.op = Op::AvgPool(AvgPoolAttrs { relu, ..pool_attrs });
        second.params = Vec::new();
        second.name = pool_node.name;
        second.block = pool_node.block;
        second.origins = pool_node.origins;
        sunk += 1;
    }
    Ok(sunk)
}

/// The pool's attributes, its reader and the reader's attributes, when `pool` can sink past it.
fn candidate(graph: &Graph, pool: NodeId) -> Option<(AvgPoolAttrs, NodeId, FusedConvAttrs)> {
    let node = graph.node(pool);
    let Op::AvgPool(a) = &node.op else {
        return None;
    };
    let w = &a.window;
    let keeps_size = w.stride == [1, 1]
        && w.kernel[0] == 2 * w.padding[0] + 1
        && w.kernel[1] == 2 * w.padding[1] + 1;
    let bias_commutes = !a.count_include_pad || w.padding == [0, 0];
    if a.relu || !keeps_size || !bias_commutes || node.tile.is_some() {
        return None;
    }
    let [conv] = graph.users(pool)[..] else {
        return None;
    };
    if graph.outputs().contains(&pool) || graph.inputs(conv) != [pool] {
        return None;
    }
    let reader = graph.node(conv);
    let Op::FusedConv(f) = &reader.op else {
        return None;
    };
    let fits = f.conv.kernel == [1, 1]
        && f.conv.stride == [1, 1]
        && f.conv.padding == [0, 0]
        && f.conv.out_channels < f.conv.in_channels
        && !f.residual
        && reader.tile.is_none()
        && reader.shared_kernel.is_none();
    fits.then(|| (a.clone(), conv, f.clone()))
}
