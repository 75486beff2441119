//! Graphviz DOT output: one cluster per block, one box per node labelled with its op, attributes,
//! name, the nodes fused into it, its concat tile and shared kernel (and any extra note, such as
//! its place in the memory arena), edges from operand to user (labelled with the shape when shapes
//! are given; a tile's edge from its destination is dashed).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::graph::{Graph, NodeId, Tile};
use crate::op::Op;
use crate::shape::Shape;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn summary(op: &Op) -> String {
    match op {
        Op::Conv2d(a) => format!(
            "conv {}×{}/{} → {}",
            a.kernel[0], a.kernel[1], a.stride[0], a.out_channels
        ),
        Op::FusedConv(f) => format!(
            "conv {}×{}/{} → {}{}{}",
            f.conv.kernel[0],
            f.conv.kernel[1],
            f.conv.stride[0],
            f.conv.out_channels,
            if f.residual { " + residual" } else { "" },
            if f.relu { ", relu" } else { "" }
        ),
        Op::MaxPool(p) => format!("max pool {}×{}/{}", p.kernel[0], p.kernel[1], p.stride[0]),
        Op::AvgPool(a) => format!(
            "avg pool {}×{}/{}{}",
            a.window.kernel[0],
            a.window.kernel[1],
            a.window.stride[0],
            if a.relu { ", relu" } else { "" }
        ),
        Op::Scale(s) => format!("scale {:?}", s.factor),
        Op::Linear(a) => format!("linear → {}", a.out_features),
        other => other.keyword().replace('_', " "),
    }
}

fn color(op: &Op) -> &'static str {
    match op {
        Op::Conv2d(_) | Op::FusedConv(_) | Op::Linear(_) => "#cfe2f3",
        Op::MaxPool(_) | Op::AvgPool(_) | Op::GlobalAvgPool => "#d9ead3",
        Op::Concat => "#fff2cc",
        Op::Add | Op::Scale(_) => "#f4cccc",
        _ => "#eeeeee",
    }
}

/// The lines a node's label gets below its op: name, origins, tile, kernel and note.
fn label_lines(node: &crate::Node, note: Option<&String>) -> String {
    let mut lines = vec![node.name.clone()];
    lines.extend(node.origins.iter().map(|o| format!("+ {o}")));
    match node.tile {
        Some(Tile {
            offset,
            new_buffer: Some(total),
        }) => lines.push(format!("tile @{offset} of a new {total}-channel buffer")),
        Some(Tile { offset, .. }) => lines.push(format!("tile @{offset} into its destination")),
        None => {}
    }
    if let Some(k) = &node.shared_kernel {
        lines.push(format!("kernel {k}"));
    }
    lines.extend(note.cloned());
    lines.iter().map(|l| format!("\\n{}", escape(l))).collect()
}

/// The graph in DOT, optionally with shapes on the edges and a note per node. With `block`, only
/// that block's nodes, and the values from outside it that they read, as grey ellipses.
pub fn to_dot(
    graph: &Graph,
    shapes: Option<&HashMap<NodeId, Shape>>,
    notes: Option<&HashMap<NodeId, String>>,
    block: Option<&str>,
) -> String {
    let order: Vec<NodeId> = graph
        .topo_order()
        .unwrap_or_else(|| graph.node_ids().collect())
        .into_iter()
        .filter(|id| block.is_none_or(|b| graph.node(*id).block == b))
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&graph.name));
    out.push_str("  rankdir=TB;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=8];\n");
    if block.is_some() {
        let mut outside: Vec<NodeId> = order
            .iter()
            .flat_map(|id| graph.inputs(*id))
            .filter(|i| !order.contains(i))
            .collect();
        outside.sort();
        outside.dedup();
        for id in outside {
            let node = graph.node(id);
            let _ = writeln!(
                out,
                "  n{} [label=\"{}\\n({})\", shape=ellipse, style=filled, fillcolor=\"#eeeeee\"];",
                id.index(),
                escape(&node.name),
                escape(&node.block)
            );
        }
    }
    let blocks: Vec<String> = match block {
        Some(b) => vec![b.to_string()],
        None => graph.blocks(),
    };
    for (i, block) in blocks.iter().enumerate() {
        let _ = writeln!(out, "  subgraph cluster_{i} {{");
        let _ = writeln!(out, "    label=\"{}\"; style=dashed;", escape(block));
        for id in order.iter().filter(|id| graph.node(**id).block == *block) {
            let node = graph.node(*id);
            let _ = writeln!(
                out,
                "    n{} [label=\"{}{}\", fillcolor=\"{}\"];",
                id.index(),
                escape(&summary(&node.op)),
                label_lines(node, notes.and_then(|n| n.get(id))),
                color(&node.op)
            );
        }
        out.push_str("  }\n");
    }
    for id in &order {
        let inputs = graph.inputs(*id);
        let own = graph.node(*id).own_operands(inputs.len());
        for (k, input) in inputs.iter().enumerate() {
            let mut attrs = Vec::new();
            if let Some(s) = shapes.and_then(|s| s.get(input)) {
                attrs.push(format!("label=\"{s}\""));
            }
            if k >= own {
                attrs.push("style=dashed".to_string());
            }
            let attrs = if attrs.is_empty() {
                String::new()
            } else {
                format!(" [{}]", attrs.join(", "))
            };
            let _ = writeln!(out, "  n{} -> n{}{attrs};", input.index(), id.index());
        }
    }
    out.push_str("}\n");
    out
}
