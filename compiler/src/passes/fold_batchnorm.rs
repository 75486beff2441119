//! `fold-batchnorm` — requires bound weights. A BatchNorm whose operand is a convolution (a
//! BatchNorm1d on a linear layer) that nothing else reads and that is no graph output is folded
//! into it, in f64: `W' = W·γ/√(σ²+ε)`, `b' = (b − μ)·γ/√(σ²+ε) + β`; the producer gains a bias and
//! records the BatchNorm among its origins. Leaves alone a BatchNorm on a shared or non-linear
//! producer.

use inceptc_ir::op::Op;
use inceptc_ir::{Graph, NodeId, Tensor};

use super::Pass;

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

fn run(graph: &mut Graph) -> Result<usize, String> {
    let order = graph.topo_order().ok_or("the graph has a cycle")?;
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

fn fold(graph: &mut Graph, src: NodeId, bn: NodeId) -> Result<(), String> {
    let bn_node = graph.node(bn);
    let (Op::BatchNorm(a) | Op::BatchNorm1d(a)) = &bn_node.op else {
        return Err(format!("node `{}` is not a BatchNorm", bn_node.name));
    };
    let eps = a.eps as f64;
    let param = |role: &str| {
        bn_node
            .param(role)
            .map(|t| t.data().iter().map(|v| *v as f64).collect::<Vec<f64>>())
            .ok_or_else(|| format!("node `{}` has no bound `{role}`", bn_node.name))
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
    let weight = node
        .param("weight")
        .ok_or_else(|| format!("node `{}` has no bound weight", node.name))?;
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
        _ => return Err(format!("node `{}` cannot take a bias", node.name)),
    }
    node.params = vec![
        Tensor::new(weight_shape, new_weight).ok_or("weight size changed")?,
        Tensor::new(vec![channels], new_bias).ok_or("bias size changed")?,
    ];
    node.origins.extend(origins);
    graph.replace_uses(bn, src);
    graph.remove(bn);
    Ok(())
}
