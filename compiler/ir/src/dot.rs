//! Graphviz DOT output: one cluster per block, one box per node labelled with its op, attributes and
//! name, edges from operand to user (labelled with the shape when shapes are given).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::graph::{Graph, NodeId};
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
            "avg pool {}×{}/{}",
            a.window.kernel[0], a.window.kernel[1], a.window.stride[0]
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

/// The graph in DOT, optionally with shapes on the edges.
pub fn to_dot(graph: &Graph, shapes: Option<&HashMap<NodeId, Shape>>) -> String {
    let order = graph
        .topo_order()
        .unwrap_or_else(|| graph.node_ids().collect());
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&graph.name));
    out.push_str("  rankdir=TB;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=8];\n");
    for (i, block) in graph.blocks().iter().enumerate() {
        let _ = writeln!(out, "  subgraph cluster_{i} {{");
        let _ = writeln!(out, "    label=\"{}\"; style=dashed;", escape(block));
        for id in order.iter().filter(|id| graph.node(**id).block == *block) {
            let node = graph.node(*id);
            let _ = writeln!(
                out,
                "    n{} [label=\"{}\\n{}{}\", fillcolor=\"{}\"];",
                id.index(),
                escape(&summary(&node.op)),
                escape(&node.name),
                node.origins
                    .iter()
                    .map(|o| format!("\\n+ {}", escape(o)))
                    .collect::<String>(),
                color(&node.op)
            );
        }
        out.push_str("  }\n");
    }
    for id in &order {
        for input in graph.inputs(*id) {
            let label = shapes
                .and_then(|s| s.get(&input))
                .map(|s| format!(" [label=\"{}\"]", s))
                .unwrap_or_default();
            let _ = writeln!(out, "  n{} -> n{}{};", input.index(), id.index(), label);
        }
    }
    out.push_str("}\n");
    out
}
