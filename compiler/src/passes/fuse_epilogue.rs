//! `fuse-epilogue` — requires the BatchNorms and residual scales folded (so that a conv's epilogue
//! is at most an add and a ReLU). Every `Conv2d` becomes a `FusedConv`; when the conv is read only
//! by an `Add` (and is no graph output), the add's other operand becomes the fused conv's residual,
//! and when the result (the conv's or the add's) is read only by a `Relu` and is no graph output,
//! the ReLU joins the epilogue. The absorbed nodes become origins of the fused conv. Leaves alone
//! adds and ReLUs that follow anything but a single-use conv.

use inceptc_ir::op::{FusedConvAttrs, Op};
use inceptc_ir::{Graph, NodeId};

use super::{Pass, RewriteError};

/// The pass.
pub const PASS: Pass = Pass {
    name: "fuse-epilogue",
    summary: "Conv [→ Add(residual)] [→ Relu] becomes one fused conv with bias, residual and ReLU in its epilogue",
    run,
};

/// The only reader of `id`, if it has exactly one and is no graph output.
fn sole_user(graph: &Graph, id: NodeId) -> Option<NodeId> {
    match graph.users(id)[..] {
        [u] if !graph.outputs().contains(&id) => Some(u),
        _ => None,
    }
}

fn run(graph: &mut Graph) -> Result<usize, RewriteError> {
    let order = graph.topo_order().ok_or(RewriteError::Cycle)?;
    let mut fused = 0;
    for conv in order {
        // Nodes absorbed earlier in this loop are gone.
        if !graph.contains(conv) {
            continue;
        }
        let Op::Conv2d(attrs) = &graph.node(conv).op else {
            continue;
        };
        let attrs = attrs.clone();
        let mut absorbed = Vec::new();
        let mut residual = None;
        let mut tail = conv;
        if let Some(add) = sole_user(graph, conv) {
            let operands = graph.inputs(add);
            if matches!(graph.node(add).op, Op::Add)
                && operands.len() == 2
                && operands[0] != operands[1]
            {
                residual = operands.into_iter().find(|o| *o != conv);
                absorbed.push(add);
                tail = add;
            }
        }
        let relu = sole_user(graph, tail).filter(|u| matches!(graph.node(*u).op, Op::Relu));
        if let Some(r) = relu {
            absorbed.push(r);
            tail = r;
        }
        let mut origins = Vec::new();
        for id in &absorbed {
            let node = graph.node(*id);
            origins.push(node.name.clone());
            origins.extend(node.origins.iter().cloned());
        }
        let inputs: Vec<NodeId> = graph.inputs(conv).into_iter().chain(residual).collect();
        graph.set_inputs(conv, &inputs);
        let node = graph.node_mut(conv);
        node.op = Op::FusedConv(FusedConvAttrs {
            conv: attrs,
            residual: residual.is_some(),
            relu: relu.is_some(),
            in_place: false,
        });
        node.origins.extend(origins);
        graph.replace_uses(tail, conv);
        for id in absorbed.into_iter().rev() {
            graph.remove(id);
        }
        fused += 1;
    }
    Ok(fused)
}
