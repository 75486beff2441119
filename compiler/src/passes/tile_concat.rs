//! `tile-concat` — requires the epilogues fused (so that the producers of a concatenation are fused
//! convs and pools). A concat whose operands are themselves concats read by nothing else is first
//! flattened (Inception-C's concat of concats); then every concat whose operands are all fused
//! convs or pools, each read only by that concat, appearing once and no graph output, disappears:
//! its operands become a chain of tiled nodes that write straight into their channel range of one
//! buffer (the first starts the buffer, each next one takes the previous as its destination), and
//! the concat's readers read the last of them. Establishes: no copy for those concatenations.
//! Leaves alone a concat with any other operand (the graph's input, an op of another kind, a
//! value read elsewhere), which stays a copying `Concat`.

use std::collections::HashMap;

use inceptc_ir::op::Op;
use inceptc_ir::{infer_shapes, Graph, NodeId, Tile};

use super::{Pass, RewriteError};

/// The pass.
pub const PASS: Pass = Pass {
    name: "tile-concat",
    summary: "producers of a concat write straight into their channel range; the concat disappears",
    run,
};

fn run(graph: &mut Graph) -> Result<usize, RewriteError> {
    let flattened = flatten(graph)?;
    // Channel counts do not depend on the input size; this size only has to fit every window.
    let shapes = infer_shapes(graph, 1, 4096, 4096)?;
    let channels: HashMap<NodeId, usize> = shapes
        .iter()
        .map(|(id, shape)| (*id, shape.channels()))
        .collect();
    let order = graph.topo_order().ok_or(RewriteError::Cycle)?;
    let mut tiled = 0;
    for concat in order {
        if !matches!(graph.node(concat).op, Op::Concat) {
            continue;
        }
        let operands = graph.inputs(concat);
        if operands
            .iter()
            .all(|o| tileable(graph, concat, &operands, *o))
        {
            tile(graph, concat, &operands, &channels);
            tiled += 1;
        }
    }
    Ok(flattened + tiled)
}

/// Whether `id` can write into its range of `concat`'s buffer.
fn tileable(graph: &Graph, concat: NodeId, operands: &[NodeId], id: NodeId) -> bool {
    let node = graph.node(id);
    matches!(node.op, Op::FusedConv(_) | Op::MaxPool(_) | Op::AvgPool(_))
        && node.tile.is_none()
        && graph.users(id) == [concat]
        && operands.iter().filter(|o| **o == id).count() == 1
        && !graph.outputs().contains(&id)
}

/// Replaces `concat` by a chain of tiles over its operands.
fn tile(graph: &mut Graph, concat: NodeId, operands: &[NodeId], channels: &HashMap<NodeId, usize>) {
    let total = operands.iter().map(|o| channels[o]).sum();
    let mut offset = 0;
    let mut previous: Option<NodeId> = None;
    for &id in operands {
        let tile = match previous {
            None => Tile {
                offset,
                new_buffer: Some(total),
            },
            Some(dest) => {
                let mut inputs = graph.inputs(id);
                inputs.push(dest);
                graph.set_inputs(id, &inputs);
                Tile {
                    offset,
                    new_buffer: None,
                }
            }
        };
        graph.node_mut(id).tile = Some(tile);
        offset += channels[&id];
        previous = Some(id);
    }
    let last = operands[operands.len() - 1];
    let gone = graph.node(concat).clone();
    graph.replace_uses(concat, last);
    let node = graph.node_mut(last);
    node.origins.push(gone.name);
    node.origins.extend(gone.origins);
    graph.remove(concat);
}

/// Splices every concat that only another concat reads (once) into that concat's operand list.
fn flatten(graph: &mut Graph) -> Result<usize, RewriteError> {
    let order = graph.topo_order().ok_or(RewriteError::Cycle)?;
    let mut flattened = 0;
    for outer in order {
        if !matches!(graph.node(outer).op, Op::Concat) {
            continue;
        }
        let operands = graph.inputs(outer);
        let mut spliced = Vec::with_capacity(operands.len());
        let mut inner_nodes = Vec::new();
        for &o in &operands {
            let inner = graph.node(o);
            let only_here = matches!(inner.op, Op::Concat)
                && graph.users(o) == [outer]
                && operands.iter().filter(|x| **x == o).count() == 1
                && !graph.outputs().contains(&o);
            if only_here {
                spliced.extend(graph.inputs(o));
                inner_nodes.push(o);
            } else {
                spliced.push(o);
            }
        }
        if inner_nodes.is_empty() {
            continue;
        }
        graph.set_inputs(outer, &spliced);
        for inner in inner_nodes {
            let gone = graph
                .remove(inner)
                .ok_or(RewriteError::Internal("a concat vanished while flattening"))?;
            let node = graph.node_mut(outer);
            node.origins.push(gone.name);
            node.origins.extend(gone.origins);
            flattened += 1;
        }
    }
    Ok(flattened)
}
