//! int8 quantization (`inceptc compile --precision int8`): the ranges calibration observes, the
//! u8 parameters of every feature map, the per-output-channel s8 weights and the requantization
//! constants of a convolution. The interpreter's int8 mode and the lowering both take their
//! numbers from here, so that generated code and oracle agree bit for bit.
//!
//! The scheme:
//! - Feature maps are u8, `real = scale · (q − zero)`, one [`Quant`] per value. A value whose
//!   calibrated minimum is not negative (every ReLU output) has zero point 0; others get one.
//!   The nodes of a tiled concatenation write into one buffer and share its parameters.
//! - Weights are s8, symmetric per output channel: `w ≈ scale_k · code`, codes in −127 ..= 127.
//! - A convolution sums `q_x · code` exactly in i32, then requantizes in f32 per output channel:
//!   `q_y = round_even(min(max(acc · M + B [+ R · q_r], L), 255))` with two fused steps; `B`
//!   holds the bias, the input's zero-point compensation and the output's zero point, and the
//!   floor `L` is the output's zero point after a ReLU (real 0), else 0.
//! - Pools and the global pool work on the real values (`(q − zero) · scale` in f32) and quantize
//!   their results; vectors (pooled features, the head) stay f32.

use std::collections::HashMap;

use thiserror::Error;

use crate::graph::{Graph, NodeId};
use crate::interp::{run_observed, InterpError};
use crate::op::Op;
use crate::shape::Shape;
use crate::tensor::Tensor;

pub use inceptc_runtime::layout::Quant;

/// How calibration turns the values it observes into a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Calibration {
    /// The smallest and largest value over all calibration inputs.
    #[default]
    MinMax,
    /// Per input, the 0.01st and 99.99th percentiles of each value; the range spans the most
    /// extreme of them over the inputs. Ignores rare outliers that would waste codes.
    Percentile,
}

impl Calibration {
    /// `minmax` or `percentile`.
    pub fn name(self) -> &'static str {
        match self {
            Calibration::MinMax => "minmax",
            Calibration::Percentile => "percentile",
        }
    }
}

/// The share of values the percentile method leaves out at each end of a value's range.
pub const PERCENTILE_TAIL: f64 = 1e-4;

/// A calibrated range of real values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// The smallest value kept.
    pub min: f32,
    /// The largest value kept.
    pub max: f32,
}

impl Range {
    fn union(self, other: Range) -> Range {
        Range {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }
}

/// The smallest range [`quant_for`] gives codes to: a value that is constant 0 still gets a
/// positive scale.
const SMALLEST_RANGE: f32 = 1e-6;

/// The u8 parameters for `range`: zero point 0 and `scale = max / 255` when the range is not
/// negative; otherwise the range widened to include 0, over 255 codes, with the zero point at the
/// code of 0.
pub fn quant_for(range: Range) -> Quant {
    let (lo, hi) = (range.min.min(0.0), range.max.max(0.0));
    let scale = ((hi as f64 - lo as f64) / 255.0).max(SMALLEST_RANGE as f64 / 255.0) as f32;
    let zero = (-lo as f64 / scale as f64).round().clamp(0.0, 255.0) as u8;
    Quant { scale, zero }
}

/// Why a graph cannot be quantized.
#[derive(Debug, Error)]
pub enum QuantError {
    /// Calibration had no inputs.
    #[error("calibration needs at least one input")]
    NoInputs,
    /// The interpreter failed on a calibration input.
    #[error(transparent)]
    Interp(#[from] InterpError),
    /// The graph still has ops the pass pipeline removes.
    #[error("node `{node}` ({op}) has no int8 form: quantize the optimized graph (after the pass pipeline)")]
    Unoptimized {
        /// The node's name.
        node: String,
        /// Its op's keyword.
        op: &'static str,
    },
}

/// Records the range of every feature map of `graph` (optimized, weights bound) over `inputs`,
/// by `method`, and widens the ranges of the nodes of each tiled concatenation to their union.
pub fn calibrate(
    graph: &Graph,
    inputs: &[Tensor],
    method: Calibration,
) -> Result<HashMap<NodeId, Range>, QuantError> {
    if inputs.is_empty() {
        return Err(QuantError::NoInputs);
    }
    let mut ranges: HashMap<NodeId, Range> = HashMap::new();
    for input in inputs {
        let mut seen: HashMap<NodeId, Range> = HashMap::new();
        run_observed(graph, input, &mut |id, value| {
            if value.shape().len() == 4 {
                seen.insert(id, observed(value.data(), method));
            }
        })?;
        for (id, r) in seen {
            let merged = ranges.get(&id).map_or(r, |old| old.union(r));
            ranges.insert(id, merged);
        }
    }
    for chain in tile_chains(graph) {
        let union = chain
            .iter()
            .filter_map(|id| ranges.get(id).copied())
            .reduce(Range::union);
        if let Some(union) = union {
            for id in chain {
                ranges.insert(id, union);
            }
        }
    }
    Ok(ranges)
}

/// The range of `values` by `method`.
fn observed(values: &[f32], method: Calibration) -> Range {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    match method {
        Calibration::MinMax => finite.fold(Range { min: 0.0, max: 0.0 }, |r, v| Range {
            min: r.min.min(v),
            max: r.max.max(v),
        }),
        Calibration::Percentile => {
            let mut v: Vec<f32> = finite.collect();
            if v.is_empty() {
                return Range { min: 0.0, max: 0.0 };
            }
            let last = v.len() - 1;
            let k = ((last as f64) * PERCENTILE_TAIL).round() as usize;
            let min = *v.select_nth_unstable_by(k, f32::total_cmp).1;
            let max = *v.select_nth_unstable_by(last - k, f32::total_cmp).1;
            Range { min, max }
        }
    }
}

/// The nodes that write into one buffer, grouped: each tiled node and the destination operand it
/// writes into, and a concatenation and its operands (groups of one are left out).
fn tile_chains(graph: &Graph) -> Vec<Vec<NodeId>> {
    let ids: Vec<NodeId> = graph.node_ids().collect();
    let index: HashMap<NodeId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut parent: Vec<usize> = (0..ids.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for id in &ids {
        let node = graph.node(*id);
        // A tiled node and its destination; a concatenation (which the tiles have written in
        // place) and its operands.
        let joined = match (&node.op, node.tile) {
            (Op::Concat, _) => graph.inputs(*id),
            (
                _,
                Some(crate::graph::Tile {
                    new_buffer: None, ..
                }),
            ) => graph.inputs(*id).last().copied().into_iter().collect(),
            _ => Vec::new(),
        };
        for other in joined {
            let (a, b) = (
                root(&mut parent, index[id]),
                root(&mut parent, index[&other]),
            );
            parent[a] = b;
        }
    }
    let mut groups: HashMap<usize, Vec<NodeId>> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(*id);
    }
    groups.into_values().filter(|g| g.len() > 1).collect()
}

/// What an int8 executable and the interpreter's int8 mode need beyond the graph: the u8
/// parameters of every feature map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Int8Params {
    /// Every feature map's parameters, by node (the input's too).
    pub values: HashMap<NodeId, Quant>,
}

impl Int8Params {
    /// The parameters of `graph`'s feature maps from calibrated `ranges`, checked: every node
    /// has an int8 form. A map with a zero point holds that code in its halo, so padding reads
    /// real 0.
    pub fn new(graph: &Graph, ranges: &HashMap<NodeId, Range>) -> Result<Int8Params, QuantError> {
        let mut values = HashMap::new();
        for id in graph.node_ids() {
            let node = graph.node(id);
            let map = match &node.op {
                Op::Input(_) | Op::FusedConv(_) | Op::MaxPool(_) | Op::AvgPool(_) => true,
                // Written in place by tiled producers, whose parameters it shares.
                Op::Concat if node.tile.is_none() => true,
                Op::GlobalAvgPool | Op::Linear(_) | Op::L2Normalize(_) | Op::Softmax => false,
                other => {
                    return Err(QuantError::Unoptimized {
                        node: node.name.clone(),
                        op: other.keyword(),
                    })
                }
            };
            if map {
                let range = ranges
                    .get(&id)
                    .copied()
                    .unwrap_or(Range { min: 0.0, max: 0.0 });
                values.insert(id, quant_for(range));
            }
        }
        Ok(Int8Params { values })
    }

    /// The parameters of map `id` (the default for a node without: not a map).
    pub fn of(&self, id: NodeId) -> Quant {
        self.values.get(&id).copied().unwrap_or_default()
    }
}

/// A convolution's weights quantized per output channel: `weight[k, …] ≈ scales[k] ·
/// codes[k, …]`, codes integers in −127 ..= 127 (held as f32).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedWeights {
    /// The codes, in the weight's layout `[O, I, KH, KW]`.
    pub codes: Vec<f32>,
    /// One scale per output channel.
    pub scales: Vec<f32>,
}

/// `weight` (`out_channels` rows) quantized symmetrically per row: the largest magnitude maps to
/// 127, each value to its nearest code (ties to even).
pub fn quantize_weights(weight: &[f32], out_channels: usize) -> QuantizedWeights {
    let per = weight.len() / out_channels.max(1);
    let mut codes = Vec::with_capacity(weight.len());
    let mut scales = Vec::with_capacity(out_channels);
    for row in weight.chunks(per.max(1)).take(out_channels) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = match amax > 0.0 && amax.is_finite() {
            true => amax / 127.0,
            false => 1.0,
        };
        scales.push(scale);
        codes.extend(row.iter().map(|v| {
            (*v as f64 / scale as f64)
                .round_ties_even()
                .clamp(-127.0, 127.0) as f32
        }));
    }
    QuantizedWeights { codes, scales }
}

/// A convolution's requantization constants, per output channel (see the module
/// documentation): `m` and `b`, and the residual's factor `r` (0 without one).
#[derive(Clone, Debug, PartialEq)]
pub struct Requant {
    /// `scale_x · scale_w[k] / scale_y`.
    pub m: Vec<f32>,
    /// `(bias[k] − zero_x · scale_x · scale_w[k] · Σ codes[k]) / scale_y + zero_y − r · zero_r`.
    pub b: Vec<f32>,
    /// `scale_r / scale_y`.
    pub r: f32,
    /// The smallest code: the output's zero point after a ReLU (real 0), else 0.
    pub floor: f32,
}

/// The requantization of a convolution with weights `w`, optional `bias`, reading `x`, writing
/// `y`, adding a `residual` with its parameters, ending with a ReLU if `relu`; computed in f64
/// and rounded once to f32.
pub fn requant(
    w: &QuantizedWeights,
    bias: Option<&[f32]>,
    x: Quant,
    y: Quant,
    residual: Option<Quant>,
    relu: bool,
) -> Requant {
    let (sx, sy) = (x.scale as f64, y.scale as f64);
    let r = residual.map_or(0.0, |q| q.scale as f64 / sy);
    let zr = residual.map_or(0.0, |q| q.zero as f64);
    let per = w.codes.len() / w.scales.len().max(1);
    let mut m = Vec::with_capacity(w.scales.len());
    let mut b = Vec::with_capacity(w.scales.len());
    for (k, sw) in w.scales.iter().enumerate() {
        let sw = *sw as f64;
        let sum: f64 = w.codes[k * per..][..per].iter().map(|c| *c as f64).sum();
        let bias = bias.map_or(0.0, |b| b[k] as f64);
        m.push((sx * sw / sy) as f32);
        b.push(((bias - x.zero as f64 * sx * sw * sum) / sy + y.zero as f64 - r * zr) as f32);
    }
    Requant {
        m,
        b,
        r: r as f32,
        floor: if relu { y.zero as f32 } else { 0.0 },
    }
}

/// The code of a requantized value: clamped to `floor` ..= 255 (a NaN becomes the floor) and
/// rounded to nearest even, as `vmaxps`, `vminps` and `vcvtps2dq` do it.
pub fn saturate(v: f32, floor: f32) -> f32 {
    match v.is_nan() {
        true => floor,
        false => v.clamp(floor, 255.0).round_ties_even(),
    }
}

/// `codes` of a map with parameters `q` as real values.
pub fn dequantize(codes: &[f32], q: Quant) -> Vec<f32> {
    codes.iter().map(|c| q.dequantize(*c as u8)).collect()
}

/// `values` as codes of a map with parameters `q`.
pub fn quantize(values: &[f32], q: Quant) -> Vec<f32> {
    values.iter().map(|v| q.quantize(*v) as f32).collect()
}

/// Whether `shape` is a feature map.
pub fn is_map(shape: Shape) -> bool {
    matches!(shape, Shape::Map { .. })
}

/// The SQNR in dB of every node's value in int8 (with `params`) against f32, over `inputs`:
/// signal and noise summed over all of them. The interpreter runs both.
pub fn measure_sqnr(
    graph: &Graph,
    inputs: &[Tensor],
    params: &Int8Params,
) -> Result<HashMap<NodeId, f64>, QuantError> {
    let mut sums: HashMap<NodeId, (f64, f64)> = HashMap::new();
    for input in inputs {
        let mut reference: HashMap<NodeId, Tensor> = HashMap::new();
        run_observed(graph, input, &mut |id, t| {
            reference.insert(id, t.clone());
        })?;
        crate::interp::run_int8_observed(graph, input, params, &mut |id, got| {
            let Some(want) = reference.remove(&id) else {
                return;
            };
            let (signal, noise) = sums.entry(id).or_default();
            for (g, w) in got.data().iter().zip(want.data()) {
                *signal += (*w as f64).powi(2);
                *noise += (*g as f64 - *w as f64).powi(2);
            }
        })?;
    }
    Ok(sums
        .into_iter()
        .map(|(id, (signal, noise))| {
            let db = match noise {
                0.0 => f64::INFINITY,
                _ => 10.0 * (signal / noise).log10(),
            };
            (id, db)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_negative_ranges_get_zero_point_zero() {
        let q = quant_for(Range { min: 0.0, max: 5.1 });
        assert_eq!(q.zero, 0);
        assert_eq!(q.quantize(5.1), 255);
        assert_eq!(q.quantize(-1.0), 0);
        let q = quant_for(Range {
            min: -1.0,
            max: 3.0,
        });
        assert_eq!(q.zero, 64);
        assert_eq!(q.quantize(0.0), 64);
        assert!((q.round(-1.0) + 1.0).abs() <= q.scale);
    }

    #[test]
    fn weights_take_their_rows_largest_magnitude_to_127() {
        let w = quantize_weights(&[0.5, -1.0, 0.25, 2.0, 0.0, -0.5], 2);
        assert_eq!(w.scales, vec![1.0 / 127.0, 2.0 / 127.0]);
        assert_eq!(w.codes, vec![64.0, -127.0, 32.0, 127.0, 0.0, -32.0]);
    }

    #[test]
    fn requantization_folds_the_zero_points_into_b() {
        let w = QuantizedWeights {
            codes: vec![1.0, 2.0],
            scales: vec![0.5],
        };
        let x = Quant {
            scale: 0.25,
            zero: 4,
        };
        let y = Quant {
            scale: 2.0,
            zero: 3,
        };
        let r = requant(&w, Some(&[1.0]), x, y, None, false);
        // Real output of codes (q1, q2): (0.25·(q1 − 4)·0.5 + 0.25·(q2 − 4)·1 + 1) / 2 + 3.
        let (q1, q2) = (10.0f32, 7.0f32);
        let want = (0.25 * (q1 - 4.0) * 0.5 + 0.25 * (q2 - 4.0) + 1.0) / 2.0 + 3.0;
        let acc = q1 * 1.0 + q2 * 2.0;
        assert!((acc.mul_add(r.m[0], r.b[0]) - want).abs() < 1e-6);
    }

    #[test]
    fn percentiles_drop_rare_outliers() {
        let mut v: Vec<f32> = (0..100_000).map(|i| (i % 100) as f32 / 100.0).collect();
        v[7] = 1000.0;
        let r = observed(&v, Calibration::Percentile);
        assert!(r.max < 1.0, "{r:?}");
        assert_eq!(observed(&v, Calibration::MinMax).max, 1000.0);
    }
}
