//! The verifier: the invariants every graph satisfies between passes.
//!
//! [`verify`] checks, in this order, and reports the first violation with the node's name:
//!
//! 1. **acyclic** — the operand edges form a DAG;
//! 2. **one input** — exactly one `Input` node;
//! 3. **outputs** — at least one output, each naming a node of the graph;
//! 4. **names** — every node has a non-empty name unique in the graph and a non-empty block;
//! 5. **operands** — each node's operand slots are exactly `0..k` and `k` fits the op's arity;
//! 6. **attributes** — channel counts, kernels and strides are ≥ 1, padding is smaller than the
//!    kernel, eps is finite and > 0, scale factors are finite;
//! 7. **types** — operand ranks and channel counts agree with every op (inferred at batch 1 and a
//!    4096×4096 input, so that no window is too large for a sane network);
//! 8. **parameters** — a node's parameters are either all unbound or all bound, with the shapes of
//!    [`crate::Op::param_specs`] and finite values;
//! 9. **storage** — only fused convs and pools are tiled; a tile's destination operand is itself a
//!    tiled node that nothing else reads and that is no output (it is overwritten in place); an
//!    `in_place` fused conv has a residual that is neither the graph's input nor an output, and
//!    whose other readers all precede the conv in every schedule (they are its ancestors); the
//!    members of a shared kernel are at least two 1×1, stride-1, unpadded fused convs without
//!    residual that read the same single operand and have no tile destination.

use std::collections::{BTreeMap, HashSet};

use thiserror::Error;

use crate::graph::{Graph, NodeId};
use crate::op::{FusedConvAttrs, Hw, Op};
use crate::shape::infer_shapes;

/// An invariant the graph breaks; `node` is the offending node's name when there is one.
#[derive(Debug, Error, PartialEq)]
#[error("{}{message}", node.as_ref().map(|n| format!("node `{n}`: ")).unwrap_or_default())]
pub struct VerifyError {
    /// The offending node's name, when there is one.
    pub node: Option<String>,
    /// The broken invariant.
    pub message: String,
}

fn fail<T>(node: Option<&str>, message: impl Into<String>) -> Result<T, VerifyError> {
    Err(VerifyError {
        node: node.map(str::to_string),
        message: message.into(),
    })
}

/// Checks every invariant listed in the module documentation.
pub fn verify(graph: &Graph) -> Result<(), VerifyError> {
    if graph.topo_order().is_none() {
        return fail(None, "the graph has a cycle");
    }
    let inputs = graph.inputs_of_graph();
    if inputs.len() != 1 {
        return fail(
            None,
            format!("expected exactly one input node, found {}", inputs.len()),
        );
    }
    if graph.outputs().is_empty() {
        return fail(None, "the graph has no output");
    }
    if let Some(o) = graph.outputs().iter().find(|o| !graph.contains(**o)) {
        return fail(None, format!("output {o} is not a node of the graph"));
    }
    let mut names = HashSet::new();
    for id in graph.node_ids() {
        check_node(graph, id, &mut names)?;
    }
    infer_shapes(graph, 1, 4096, 4096).map_err(|e| VerifyError {
        node: None,
        message: e.to_string(),
    })?;
    for id in graph.node_ids() {
        check_storage(graph, id)?;
    }
    check_kernels(graph)
}

fn check_storage(graph: &Graph, id: NodeId) -> Result<(), VerifyError> {
    let node = graph.node(id);
    let name = Some(node.name.as_str());
    if let Some(tile) = node.tile {
        if !matches!(node.op, Op::FusedConv(_) | Op::MaxPool(_) | Op::AvgPool(_)) {
            return fail(
                name,
                format!("{} cannot write into a tile", node.op.keyword()),
            );
        }
        if tile.new_buffer.is_none() {
            let inputs = graph.inputs(id);
            let dest = inputs[inputs.len() - 1];
            let d = graph.node(dest);
            if d.tile.is_none() {
                return fail(
                    name,
                    format!("its tile destination `{}` is not a tiled node", d.name),
                );
            }
            if graph.users(dest).len() != 1 || graph.outputs().contains(&dest) {
                return fail(
                    name,
                    format!(
                        "its tile destination `{}` is read elsewhere, but a tile overwrites it",
                        d.name
                    ),
                );
            }
        }
    }
    if let Op::FusedConv(f) = &node.op {
        if f.in_place {
            if !f.residual {
                return fail(name, "in_place without a residual operand");
            }
            let inputs = graph.inputs(id);
            let residual = inputs[1];
            let r = graph.node(residual);
            if residual == inputs[0] {
                return fail(name, "in_place on its own input");
            }
            if matches!(r.op, Op::Input(_)) || graph.outputs().contains(&residual) {
                return fail(
                    name,
                    format!("in_place on `{}`, the graph's input or an output", r.name),
                );
            }
            let ancestors = graph.ancestors(id);
            if let Some(u) = graph
                .users(residual)
                .into_iter()
                .find(|u| *u != id && !ancestors.contains(u))
            {
                return fail(
                    name,
                    format!(
                        "in_place on `{}`, which `{}` may still read afterwards",
                        r.name,
                        graph.node(u).name
                    ),
                );
            }
        }
    }
    Ok(())
}

fn check_kernels(graph: &Graph) -> Result<(), VerifyError> {
    let mut kernels: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    for id in graph.node_ids() {
        if let Some(k) = &graph.node(id).shared_kernel {
            kernels.entry(k.as_str()).or_default().push(id);
        }
    }
    for (kernel, members) in kernels {
        let first = graph.node(members[0]);
        let name = Some(first.name.as_str());
        if members.len() < 2 {
            return fail(name, format!("kernel `{kernel}` has only one member"));
        }
        let operand = graph.inputs(members[0]);
        for m in &members {
            let node = graph.node(*m);
            let ok = match &node.op {
                Op::FusedConv(f) => {
                    f.conv.kernel == [1, 1]
                        && f.conv.stride == [1, 1]
                        && f.conv.padding == [0, 0]
                        && !f.residual
                        && node.tile.is_none_or(|t| t.new_buffer.is_some())
                }
                _ => false,
            };
            if !ok {
                return fail(
                    Some(&node.name),
                    format!(
                        "member of kernel `{kernel}` but not a 1×1 stride-1 unpadded fused conv \
                         without residual or tile destination"
                    ),
                );
            }
            if graph.inputs(*m) != operand || operand.len() != 1 {
                return fail(
                    Some(&node.name),
                    format!(
                        "member of kernel `{kernel}` but does not read the same single operand \
                         as `{}`",
                        first.name
                    ),
                );
            }
        }
    }
    Ok(())
}

fn check_node<'g>(
    graph: &'g Graph,
    id: NodeId,
    names: &mut HashSet<&'g str>,
) -> Result<(), VerifyError> {
    let node = graph.node(id);
    let name = Some(node.name.as_str());
    if node.name.is_empty() {
        return fail(None, format!("node {id} has an empty name"));
    }
    if !names.insert(node.name.as_str()) {
        return fail(name, "the name is used by more than one node");
    }
    if node.block.is_empty() {
        return fail(name, "the node belongs to no block");
    }
    let slots = graph.input_slots(id);
    if slots.iter().enumerate().any(|(i, s)| i != *s) {
        return fail(
            name,
            format!("operand slots {slots:?} are not 0..{}", slots.len()),
        );
    }
    let needs_dest = node.tile.is_some_and(|t| t.new_buffer.is_none());
    let own = slots.len().saturating_sub(needs_dest as usize);
    if !node.op.arity().accepts(own) || (needs_dest && slots.is_empty()) {
        return fail(
            name,
            format!(
                "{} takes {} operand(s){}, found {}",
                node.op.keyword(),
                node.op.arity(),
                if needs_dest {
                    " plus a tile destination"
                } else {
                    ""
                },
                slots.len()
            ),
        );
    }
    check_attributes(&node.op).or_else(|m| fail(name, m))?;
    check_params(graph, id)
}

fn check_window(kernel: Hw, stride: Hw, padding: Hw) -> Result<(), String> {
    if kernel.contains(&0) || stride.contains(&0) {
        return Err(format!(
            "kernel {}×{} and stride {}×{} must be at least 1",
            kernel[0], kernel[1], stride[0], stride[1]
        ));
    }
    if padding[0] >= kernel[0] || padding[1] >= kernel[1] {
        return Err(format!(
            "padding {}×{} must be smaller than the kernel {}×{}",
            padding[0], padding[1], kernel[0], kernel[1]
        ));
    }
    Ok(())
}

fn check_attributes(op: &Op) -> Result<(), String> {
    let positive = |what: &str, v: usize| {
        if v == 0 {
            Err(format!("{what} must be at least 1"))
        } else {
            Ok(())
        }
    };
    let eps_ok = |eps: f32| {
        if eps.is_finite() && eps > 0.0 {
            Ok(())
        } else {
            Err(format!("eps must be finite and positive, found {eps}"))
        }
    };
    match op {
        Op::Input(a) => positive("channels", a.channels),
        Op::Conv2d(a) | Op::FusedConv(FusedConvAttrs { conv: a, .. }) => {
            positive("in channels", a.in_channels)?;
            positive("out channels", a.out_channels)?;
            check_window(a.kernel, a.stride, a.padding)
        }
        Op::BatchNorm(a) | Op::BatchNorm1d(a) => {
            positive("channels", a.channels)?;
            eps_ok(a.eps)
        }
        Op::MaxPool(p) => check_window(p.kernel, p.stride, p.padding),
        Op::AvgPool(a) => check_window(a.window.kernel, a.window.stride, a.window.padding),
        Op::Scale(s) if !s.factor.is_finite() => {
            Err(format!("scale factor must be finite, found {}", s.factor))
        }
        Op::Linear(a) => {
            positive("in features", a.in_features)?;
            positive("out features", a.out_features)
        }
        Op::L2Normalize(a) => eps_ok(a.eps),
        _ => Ok(()),
    }
}

fn check_params(graph: &Graph, id: NodeId) -> Result<(), VerifyError> {
    let node = graph.node(id);
    let name = Some(node.name.as_str());
    let specs = node.op.param_specs();
    if node.params.is_empty() {
        return Ok(());
    }
    if node.params.len() != specs.len() {
        return fail(
            name,
            format!(
                "{} parameter tensors bound, the op owns {}",
                node.params.len(),
                specs.len()
            ),
        );
    }
    for (spec, tensor) in specs.iter().zip(&node.params) {
        if tensor.shape() != spec.shape.as_slice() {
            return fail(
                name,
                format!(
                    "parameter `{}` has shape {:?}, expected {:?}",
                    spec.role,
                    tensor.shape(),
                    spec.shape
                ),
            );
        }
        if let Some(i) = tensor.first_non_finite() {
            return fail(
                name,
                format!(
                    "parameter `{}` holds {} at index {i}",
                    spec.role,
                    tensor.data()[i]
                ),
            );
        }
    }
    Ok(())
}
