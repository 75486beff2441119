//! Statistics for `inceptc info` and the tests: per-block parameters, multiply–accumulates and
//! output shape, convolution MACs, kernel counts.

use std::collections::HashMap;

use crate::graph::{Graph, NodeId};
use crate::shape::{node_macs, Shape};

/// The cost and output of one block.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockStats {
    /// The block's name.
    pub block: String,
    /// Trainable parameters of the block's nodes.
    pub parameters: u64,
    /// Multiply–accumulates of the block's convolutions and linear layers.
    pub macs: u64,
    /// The shape of the value the block hands on: the last of its nodes (in topological order)
    /// that is read outside the block or is a graph output.
    pub output: Option<Shape>,
}

/// Multiply–accumulates of the graph's convolutions alone, the measure published sizes quote.
pub fn conv_macs(graph: &Graph, shapes: &HashMap<NodeId, Shape>) -> u64 {
    graph
        .node_ids()
        .filter(|id| graph.node(*id).op.conv().is_some())
        .filter_map(|id| Some(node_macs(&graph.node(id).op, shapes.get(&id)?)))
        .sum()
}

/// The kernels a graph runs: every node but the input, with the members of a shared kernel
/// (`merge-sibling-1x1`) counted once.
pub fn kernel_count(graph: &Graph) -> usize {
    let mut shared = std::collections::HashSet::new();
    graph
        .node_ids()
        .filter(|id| {
            let node = graph.node(*id);
            !matches!(node.op, crate::Op::Input(_))
                && node
                    .shared_kernel
                    .as_ref()
                    .is_none_or(|k| shared.insert(k.clone()))
        })
        .count()
}

/// Statistics of every block, in the order of [`Graph::blocks`].
pub fn block_stats(graph: &Graph, shapes: &HashMap<NodeId, Shape>) -> Vec<BlockStats> {
    let order = graph.topo_order().unwrap_or_default();
    graph
        .blocks()
        .into_iter()
        .map(|block| {
            let members: Vec<NodeId> = order
                .iter()
                .copied()
                .filter(|id| graph.node(*id).block == block)
                .collect();
            let mut leaves = members.iter().filter(|id| {
                graph.outputs().contains(id)
                    || graph
                        .users(**id)
                        .iter()
                        .any(|u| graph.node(*u).block != block)
            });
            BlockStats {
                parameters: members
                    .iter()
                    .map(|id| graph.node(*id).op.trainable_parameters())
                    .sum(),
                macs: members
                    .iter()
                    .filter_map(|id| Some(node_macs(&graph.node(*id).op, shapes.get(id)?)))
                    .sum(),
                output: leaves.next_back().and_then(|id| shapes.get(id).copied()),
                block,
            }
        })
        .collect()
}
