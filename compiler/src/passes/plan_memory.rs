//! `plan-memory` — requires the epilogues fused. Marks every fused conv whose residual it may
//! overwrite as `in_place`: the residual is neither the graph's input nor an output, is not the
//! conv's own input, and all its other readers are ancestors of the conv (so every schedule runs
//! them first). The arena itself depends on the batch and image size and is computed from the
//! marked graph by [`crate::plan::plan`] (`inceptc plan` prints it). Leaves alone every other node.

use inceptc_ir::op::Op;
use inceptc_ir::Graph;

use super::{Pass, RewriteError};

/// The pass.
pub const PASS: Pass = Pass {
    name: "plan-memory",
    summary:
        "residual convs update their residual in place; liveness-based arena offsets (inceptc plan)",
    run,
};

fn run(graph: &mut Graph) -> Result<usize, RewriteError> {
    let mut marked = 0;
    let ids: Vec<_> = graph.node_ids().collect();
    for id in ids {
        let Op::FusedConv(f) = &graph.node(id).op else {
            continue;
        };
        if !f.residual || f.in_place {
            continue;
        }
        let inputs = graph.inputs(id);
        let residual = inputs[1];
        let legal = residual != inputs[0]
            && !matches!(graph.node(residual).op, Op::Input(_))
            && !graph.outputs().contains(&residual)
            && {
                let ancestors = graph.ancestors(id);
                graph
                    .users(residual)
                    .iter()
                    .all(|u| *u == id || ancestors.contains(u))
            };
        if legal {
            if let Op::FusedConv(f) = &mut graph.node_mut(id).op {
                f.in_place = true;
                marked += 1;
            }
        }
    }
    Ok(marked)
}
