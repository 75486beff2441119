//! Deterministic seeded weights for graphs without a checkpoint.
//!
//! Each tensor draws from its own ChaCha stream keyed by the seed and the tensor's checkpoint key,
//! so the values do not depend on node order. Convolutions get He-normal weights
//! (std = √(2 / fan_in)), which keeps the second moment of ReLU activations constant from layer to
//! layer; BatchNorm statistics stay near the identity (γ ≈ 1, β ≈ 0, mean ≈ 0, var ≈ 1) with a
//! little spread so that folding them is exercised; linear layers get std = √(1 / fan_in).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::graph::Graph;
use crate::op::{FusedConvAttrs, Op};
use crate::tensor::Tensor;

/// The seed used when the user gives none.
pub const DEFAULT_SEED: u64 = 2016;

fn stream(seed: u64, key: &str) -> ChaCha8Rng {
    // FNV-1a over the key, mixed with the seed: stable across platforms and releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    // Normal::new only fails for a non-finite or negative std, which the callers never pass.
    match Normal::new(0.0f32, std) {
        Ok(dist) => (0..n).map(|_| dist.sample(rng)).collect(),
        Err(_) => vec![0.0; n],
    }
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

/// Fills every parameter of `graph` with seeded values (replacing any bound ones).
pub fn seed_weights(graph: &mut Graph, seed: u64) {
    let ids: Vec<_> = graph.node_ids().collect();
    for id in ids {
        let node = graph.node(id);
        let mut params = Vec::new();
        for spec in node.op.param_specs() {
            let mut rng = stream(seed, &node.param_key(spec.role));
            let n: usize = spec.shape.iter().product();
            let values = match (&node.op, spec.role) {
                (Op::Conv2d(a) | Op::FusedConv(FusedConvAttrs { conv: a, .. }), "weight") => {
                    let fan_in = a.in_channels * a.kernel[0] * a.kernel[1];
                    normal(&mut rng, n, (2.0 / fan_in as f32).sqrt())
                }
                (Op::Linear(a), "weight") => {
                    normal(&mut rng, n, (1.0 / a.in_features as f32).sqrt())
                }
                (_, "running_var") => uniform(&mut rng, n, 0.7, 1.3),
                (Op::BatchNorm(_) | Op::BatchNorm1d(_), "weight") => uniform(&mut rng, n, 0.8, 1.2),
                (_, "running_mean") | (Op::BatchNorm(_) | Op::BatchNorm1d(_), "bias") => {
                    uniform(&mut rng, n, -0.2, 0.2)
                }
                // Biases of convolutions and linear layers.
                _ => uniform(&mut rng, n, -0.05, 0.05),
            };
            params.push(
                Tensor::new(spec.shape.clone(), values)
                    .unwrap_or_else(|| Tensor::zeros(spec.shape.clone())),
            );
        }
        graph.node_mut(id).params = params;
    }
}
