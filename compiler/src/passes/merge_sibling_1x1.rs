//! `merge-sibling-1x1` — requires the epilogues fused and concats tiled. Sibling 1×1 convolutions
//! (stride 1, no padding, no residual) that read the same value as their only operand and have no
//! tile destination (a tile that starts a buffer is fine) are given one shared kernel: code
//! generation computes them as one convolution with their output channels side by side, reading
//! the input once, and writes each member's range to that member's own destination (its buffer
//! or its concat tile). The kernel is named after the members' common name prefix, e.g.
//! `features.5.1x1`. Values and operands do not change, so the interpreter is unaffected.
//! Leaves alone a lone 1×1 conv and every conv with another kernel shape.

use std::collections::HashSet;

use inceptc_ir::op::Op;
use inceptc_ir::{Graph, NodeId};

use super::{Pass, RewriteError};

/// The pass.
pub const PASS: Pass = Pass {
    name: "merge-sibling-1x1",
    summary:
        "sibling 1×1 convs on one input become one kernel writing each range to its destination",
    run,
};

fn run(graph: &mut Graph) -> Result<usize, RewriteError> {
    let order = graph.topo_order().ok_or(RewriteError::Cycle)?;
    let mut names: HashSet<String> = graph
        .node_ids()
        .filter_map(|id| graph.node(id).shared_kernel.clone())
        .collect();
    let mut merged = 0;
    for source in order {
        let members: Vec<NodeId> = graph
            .users(source)
            .into_iter()
            .filter(|u| mergeable(graph, source, *u))
            .collect();
        if members.len() < 2 {
            continue;
        }
        let name = unique(&mut names, kernel_name(graph, &members));
        for m in &members {
            graph.node_mut(*m).shared_kernel = Some(name.clone());
        }
        merged += members.len();
    }
    Ok(merged)
}

/// Whether `id` is a 1×1 conv that can share a kernel with other readers of `source`.
fn mergeable(graph: &Graph, source: NodeId, id: NodeId) -> bool {
    let node = graph.node(id);
    let Op::FusedConv(f) = &node.op else {
        return false;
    };
    f.conv.kernel == [1, 1]
        && f.conv.stride == [1, 1]
        && f.conv.padding == [0, 0]
        && !f.residual
        && node.shared_kernel.is_none()
        && node.tile.is_none_or(|t| t.new_buffer.is_some())
        && graph.inputs(id) == [source]
}

/// `<common prefix of the members' names, up to a dot>.1x1`.
fn kernel_name(graph: &Graph, members: &[NodeId]) -> String {
    let names: Vec<&str> = members
        .iter()
        .map(|m| graph.node(*m).name.as_str())
        .collect();
    let first = names[0];
    let mut common = first.len();
    for other in &names[1..] {
        common = common.min(
            first
                .bytes()
                .zip(other.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    match first[..common].rfind('.') {
        Some(dot) => format!("{}.1x1", &first[..dot]),
        None => format!("{first}.1x1"),
    }
}

fn unique(names: &mut HashSet<String>, base: String) -> String {
    let mut name = base.clone();
    let mut k = 2;
    while names.contains(&name) {
        name = format!("{base}.{k}");
        k += 1;
    }
    names.insert(name.clone());
    name
}
