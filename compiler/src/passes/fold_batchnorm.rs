//! `fold-batchnorm` — requires bound weights. A BatchNorm whose operand is a convolution (a
//! BatchNorm1d on a linear layer) that nothing else reads and that is no graph output is folded
//! into it, in f64: `W' = W·γ/√(σ²+ε)`, `b' = (b − μ)·γ/√(σ²+ε) + β`; the producer gains a bias and
//! records the BatchNorm among its origins. Leaves alone a BatchNorm on a shared or non-linear
//! producer.

use inceptc_ir::op::Op;
use inceptc_ir::{Graph, NodeId, Tensor};

use super::{Pass, RewriteError};

/// The pass.
pub const PASS: Pass = Pass {
    name: "fold-batchnorm",
    summary: "Conv → BatchNorm (Linear → BatchNorm1d) becomes one conv (linear) with folded weights and bias",
    run,
};

/// The single producer a BatchNorm folds into, if the rewrite is legal.
fn foldable(graph: &Graph, bn: NodeId) -> Option<NodeId> {
    let [src] = graph.inputs(bn)[..] else {
        return None;
    };
    let matches = matches!(
        (&graph.node(bn).op, &graph.node(src).op),
        (Op::BatchNorm(_), Op::Conv2d(_)) | (Op::BatchNorm1d(_), Op::Linear(_))
    );
    let exclusive = graph.users(src) == [bn] && !graph.outputs().contains(&src);
    (matches && exclusive).then_some(src)
}

fn run(graph: &mut Graph) -> Result<usize, RewriteError> {
    let order = graph.topo_order().ok_or(RewriteError::Cycle)?;
    let mut folded = 0;
    for bn in order {
        let Some(src) = foldable(graph, bn) else {
            continue;
        };
        fold(graph, src, bn)?;
        folded += 1;
    }
    Ok(folded)
}

fn fold(graph: &mut Graph, src: NodeId, bn: NodeId) -> Result<(), RewriteError> {
    let bn_node = graph.node(bn);
    let (Op::BatchNorm(a) | Op::BatchNorm1d(a)) = &bn_node.op else {
        return Err(RewriteError::Node {
            node: bn_node.name.clone(),
            problem: "is not a BatchNorm",
        });
    };
    let eps = a.eps as f64;
    let param = |role: &'static str| {
        bn_node
            .param(role)
            .map(|t| t.data().iter().map(|v| *v as f64).collect::<Vec<f64>>())
            .ok_or_else(|| RewriteError::Unbound {
                node: bn_node.name.clone(),
                role,
            })
    };
    let (gamma, beta, mean, var) = (
        param("weight")?,
        param("bias")?,
        param("running_mean")?,
        param("running_var")?,
    );
    let scale: Vec<f64> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + eps).sqrt())
        .collect();
    let mut origins = vec![bn_node.name.clone()];
    origins.extend(bn_node.origins.iter().cloned());

    let node = graph.node(src);
    let weight = node.param("weight").ok_or_else(|| RewriteError::Unbound {
        node: node.name.clone(),
        role: "weight",
    })?;
    let per_channel = weight.len() / scale.len();
    let new_weight: Vec<f32> = weight
        .data()
        .chunks(per_channel)
        .zip(&scale)
        .flat_map(|(w, s)| w.iter().map(move |v| (*v as f64 * s) as f32))
        .collect();
    let old_bias = node.param("bias").map(|b| b.data().to_vec());
    let new_bias: Vec<f32> = (0..scale.len())
        .map(|k| {
            let b = old_bias.as_ref().map_or(0.0, |b| b[k] as f64);
            ((b - mean[k]) * scale[k] + beta[k]) as f32
        })
        .collect();
    let weight_shape = weight.shape().to_vec();
    let channels = scale.len();

    let node = graph.node_mut(src);
    match &mut node.op {
        Op::Conv2d(c) => c.bias = true,
        Op::Linear(l) => l.bias = true,
        _ => {
            return Err(RewriteError::Node {
                node: node.name.clone(),
                problem: "cannot take a bias",
            })
        }
    }
    node.params = vec![
        Tensor::new(weight_shape, new_weight)
            .ok_or(RewriteError::Internal("weight size changed"))?,
        Tensor::new(vec![channels], new_bias).ok_or(RewriteError::Internal("bias size changed"))?,
    ];
    node.origins.extend(origins);
    graph.replace_uses(bn, src);
    graph.remove(bn);
    Ok(())
}
