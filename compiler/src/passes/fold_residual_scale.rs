//! `fold-residual-scale` — requires bound weights. A Scale whose operand is a convolution that
//! nothing else reads and that is no graph output is folded into it: `W' = s·W`, `b' = s·b`; the
//! convolution records the Scale among its origins. Leaves alone a Scale on any other producer.

use inceptc_ir::op::Op;
use inceptc_ir::{Graph, Tensor};

use super::{Pass, RewriteError};

/// The pass.
pub const PASS: Pass = Pass {
    name: "fold-residual-scale",
    summary: "Conv → Scale(s) becomes one conv with s·W and s·b",
    run,
};

fn run(graph: &mut Graph) -> Result<usize, RewriteError> {
    let order = graph.topo_order().ok_or(RewriteError::Cycle)?;
    let mut folded = 0;
    for scale in order {
        let Op::Scale(s) = &graph.node(scale).op else {
            continue;
        };
        let factor = s.factor;
        let [src] = graph.inputs(scale)[..] else {
            continue;
        };
        let exclusive = graph.users(src) == [scale] && !graph.outputs().contains(&src);
        if !exclusive || !matches!(graph.node(src).op, Op::Conv2d(_)) {
            continue;
        }
        let mut origins = vec![graph.node(scale).name.clone()];
        origins.extend(graph.node(scale).origins.iter().cloned());
        let node = graph.node_mut(src);
        if !node.is_bound() {
            return Err(RewriteError::Unbound {
                node: node.name.clone(),
                role: "weight",
            });
        }
        for p in &mut node.params {
            let scaled: Vec<f32> = p.data().iter().map(|v| v * factor).collect();
            *p = Tensor::new(p.shape().to_vec(), scaled)
                .ok_or(RewriteError::Internal("parameter size changed"))?;
        }
        node.origins.extend(origins);
        graph.replace_uses(scale, src);
        graph.remove(scale);
        folded += 1;
    }
    Ok(folded)
}
