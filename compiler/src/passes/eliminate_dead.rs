//! `eliminate-dead` — requires nothing. Removes every node that no graph output depends on, except
//! the graph's input. Establishes: every remaining node but the input reaches an output.

use std::collections::HashSet;

use inceptc_ir::op::Op;
use inceptc_ir::Graph;

use super::{Pass, RewriteError};

/// The pass.
pub const PASS: Pass = Pass {
    name: "eliminate-dead",
    summary: "removes what no output needs",
    run,
};

fn run(graph: &mut Graph) -> Result<usize, RewriteError> {
    let mut live: HashSet<_> = HashSet::new();
    let mut stack: Vec<_> = graph.outputs().to_vec();
    while let Some(id) = stack.pop() {
        if live.insert(id) {
            stack.extend(graph.inputs(id));
        }
    }
    let dead: Vec<_> = graph
        .node_ids()
        .filter(|id| !live.contains(id) && !matches!(graph.node(*id).op, Op::Input(_)))
        .collect();
    for id in &dead {
        graph.remove(*id);
    }
    Ok(dead.len())
}
