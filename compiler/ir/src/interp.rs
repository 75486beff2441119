//! The reference interpreter: the numerical oracle for every pass and every generated kernel.
//!
//! Deliberately plain: NCHW tensors, nested loops that follow each op's definition, f64
//! accumulation. The only concessions to speed are that a convolution computes the range of output
//! columns that a kernel tap reaches instead of testing each one, and that output planes are
//! computed in parallel.

use std::collections::HashMap;
use std::ops::Range;

use rayon::prelude::*;
use thiserror::Error;

use crate::graph::{Graph, NodeId};
use crate::op::*;
use crate::quant::{self, Int8Params};
use crate::shape::{infer_shapes, own_shape, Shape, ShapeError};
use crate::tensor::Tensor;

/// Why the interpreter cannot run a graph on an input.
#[derive(Debug, Error)]
pub enum InterpError {
    /// Shapes could not be inferred.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The graph has this many input nodes instead of one.
    #[error("the graph must have exactly one input node, found {0}")]
    Inputs(usize),
    /// The input tensor is not `[N, channels, H, W]`.
    #[error("input tensor has shape {found:?}, expected [N, {channels}, H, W] with N, H, W ≥ 1")]
    InputShape {
        /// The input tensor's shape.
        found: Vec<usize>,
        /// The channels the graph's input takes.
        channels: usize,
    },
    /// This node's parameters are not bound.
    #[error("node `{0}` has no bound weights")]
    Unbound(String),
}

/// Where the interpreter rounds values to the storage precision of an executable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rounding {
    /// Nowhere: f32 values, f64 sums.
    #[default]
    Exact,
    /// Where a bf16 executable stores values: every parameter, the input and every feature map
    /// (each node's value) rounded to bf16, to nearest even; vectors (pooled features, the
    /// head) stay f32, and sums are still f64. Run it on the optimized graph: the executable
    /// rounds the folded weights.
    Bf16,
}

/// `t` with every value rounded to bf16 (nearest even) and widened back.
fn round_bf16(t: &Tensor) -> Tensor {
    let data = t
        .data()
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect();
    Tensor::new(t.shape().to_vec(), data).expect("the same shape")
}

/// Runs `graph` on `input` (NCHW) and returns the values of its outputs, in order.
pub fn run(graph: &Graph, input: &Tensor) -> Result<Vec<Tensor>, InterpError> {
    run_observed(graph, input, &mut |_, _| {})
}

/// [`run`], rounding where an executable of `rounding`'s precision stores values.
pub fn run_rounded(
    graph: &Graph,
    input: &Tensor,
    rounding: Rounding,
) -> Result<Vec<Tensor>, InterpError> {
    match rounding {
        Rounding::Exact => run(graph, input),
        Rounding::Bf16 => run_bf16_amx(graph, input, &|_| false),
    }
}

/// [`run_rounded`] with [`Rounding::Bf16`], except that the convolutions for which `amx` holds
/// sum as an AMX tile does ([`amx_dot_step`]): the values of a bf16 executable whose AMX tiles
/// compute those convolutions (`inceptc::codegen::Program::amx_nodes`).
pub fn run_bf16_amx(
    graph: &Graph,
    input: &Tensor,
    amx: &dyn Fn(NodeId) -> bool,
) -> Result<Vec<Tensor>, InterpError> {
    let mut rounded = graph.clone();
    let ids: Vec<NodeId> = rounded.node_ids().collect();
    for id in ids {
        for p in &mut rounded.node_mut(id).params {
            *p = round_bf16(p);
        }
    }
    evaluate(
        &rounded,
        &round_bf16(input),
        &mut |_, _| {},
        Mode::Bf16(amx),
    )
}

/// Input channels one `tdpbf16ps` sums per output: 16 pairs.
pub const AMX_DOT_CHANNELS: usize = 32;

/// One `tdpbf16ps` step of an accumulator `acc`: `products` are up to [`AMX_DOT_CHANNELS`]
/// products of bf16 values (exact in f32), channel by channel (missing ones are zero). As
/// measured on Sapphire Rapids-class AMX (bit for bit on 320 000 random sums, see
/// `tests/tiles.rs`), the products of even channels are summed in f32 in channel order from
/// zero, those of odd channels likewise, then the two sums are added, and that to `acc`, each
/// addition rounded to nearest even. (Not the sequence of fused multiply-adds its
/// documentation's pseudo-code shows.) Products or sums outside f32's normal range were not
/// measured.
pub fn amx_dot_step(acc: f32, products: &[f32]) -> f32 {
    let (mut even, mut odd) = (0f32, 0f32);
    for pair in products.chunks(2) {
        even += pair[0];
        if let Some(p) = pair.get(1) {
            odd += p;
        }
    }
    acc + (even + odd)
}

/// [`run`] as an int8 executable computes it, with `params` (see [`crate::quant`]): the input and
/// every feature map as u8 codes, convolutions summing codes times per-channel s8 weight codes
/// exactly and requantizing in f32 in the executable's order, pools and the global pool on the
/// real values in f32 (summed in the generated order), vectors in f32. Map outputs are returned
/// as real values. Run it on the optimized graph.
pub fn run_int8(
    graph: &Graph,
    input: &Tensor,
    params: &Int8Params,
) -> Result<Vec<Tensor>, InterpError> {
    run_int8_observed(graph, input, params, &mut |_, _| {})
}

/// [`run_int8`], calling `observe` with every node's value: a feature map as the real values its
/// codes stand for.
pub fn run_int8_observed(
    graph: &Graph,
    input: &Tensor,
    params: &Int8Params,
    observe: &mut dyn FnMut(NodeId, &Tensor),
) -> Result<Vec<Tensor>, InterpError> {
    let real = |id: NodeId, t: &Tensor| match t.shape().len() {
        4 => Tensor::new(
            t.shape().to_vec(),
            quant::dequantize(t.data(), params.of(id)),
        )
        .expect("the same shape"),
        _ => t.clone(),
    };
    let mut outputs = Vec::new();
    let codes = evaluate(
        graph,
        input,
        &mut |id, t| observe(id, &real(id, t)),
        Mode::Int8(params),
    )?;
    for (o, t) in graph.outputs().iter().zip(codes) {
        outputs.push(real(*o, &t));
    }
    Ok(outputs)
}

/// Where [`evaluate`] rounds.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// f32 values, f64 sums.
    Exact,
    /// [`Rounding::Bf16`]; the convolutions for which the function holds sum as AMX does
    /// ([`run_bf16_amx`]).
    Bf16(&'a dyn Fn(NodeId) -> bool),
    /// [`run_int8`]: maps are u8 codes.
    Int8(&'a Int8Params),
}

/// Like [`run`], and calls `observe` with every node's value as soon as it is computed.
pub fn run_observed(
    graph: &Graph,
    input: &Tensor,
    observe: &mut dyn FnMut(NodeId, &Tensor),
) -> Result<Vec<Tensor>, InterpError> {
    evaluate(graph, input, observe, Mode::Exact)
}

/// [`run_observed`] in `mode`: with [`Mode::Bf16`], every feature map a node computes is rounded
/// to bf16; with [`Mode::Int8`], maps are codes.
fn evaluate(
    graph: &Graph,
    input: &Tensor,
    observe: &mut dyn FnMut(NodeId, &Tensor),
    mode: Mode,
) -> Result<Vec<Tensor>, InterpError> {
    let inputs = graph.inputs_of_graph();
    let [input_id] = inputs.as_slice() else {
        return Err(InterpError::Inputs(inputs.len()));
    };
    let Op::Input(input_attrs) = &graph.node(*input_id).op else {
        return Err(InterpError::Inputs(0));
    };
    let dims = input.shape();
    if dims.len() != 4 || dims[1] != input_attrs.channels || dims.contains(&0) {
        return Err(InterpError::InputShape {
            found: dims.to_vec(),
            channels: input_attrs.channels,
        });
    }
    if let Some(unbound) = graph.node_ids().find(|id| !graph.node(*id).is_bound()) {
        return Err(InterpError::Unbound(graph.node(unbound).name.clone()));
    }
    let shapes = infer_shapes(graph, dims[0], dims[2], dims[3])?;
    let order = graph.topo_order().ok_or(ShapeError::Cycle)?;

    // Remaining reads of each value (operand uses plus one per output), to free values early.
    let mut remaining: HashMap<NodeId, usize> = HashMap::new();
    for id in &order {
        for i in graph.inputs(*id) {
            *remaining.entry(i).or_default() += 1;
        }
    }
    for o in graph.outputs() {
        *remaining.entry(*o).or_default() += 1;
    }
    let mut values: HashMap<NodeId, Tensor> = HashMap::new();
    for id in order {
        let operands: Vec<NodeId> = graph.inputs(id);
        let value = {
            let args: Vec<(&Tensor, Shape)> =
                operands.iter().map(|i| (&values[i], shapes[i])).collect();
            if id == *input_id {
                match mode {
                    Mode::Int8(p) => {
                        let codes = quant::quantize(input.data(), p.of(id));
                        Tensor::new(input.shape().to_vec(), codes).expect("the same shape")
                    }
                    _ => input.clone(),
                }
            } else {
                let at = [dims[0], dims[2], dims[3]];
                let v = eval_node(graph, id, &args, shapes[&id], at, mode)?;
                match (mode, shapes[&id]) {
                    (Mode::Bf16(_), Shape::Map { .. }) => round_bf16(&v),
                    _ => v,
                }
            }
        };
        observe(id, &value);
        for i in operands {
            if let Some(k) = remaining.get_mut(&i) {
                *k -= 1;
                if *k == 0 {
                    values.remove(&i);
                }
            }
        }
        if remaining.get(&id).copied().unwrap_or(0) > 0 {
            values.insert(id, value);
        }
    }
    Ok(graph.outputs().iter().map(|o| values[o].clone()).collect())
}

fn map_dims(shape: Shape) -> [usize; 4] {
    match shape {
        Shape::Map { n, c, h, w } => [n, c, h, w],
        Shape::Vector { n, f } => [n, f, 1, 1],
    }
}

/// Evaluates one node; a tiled node computes its op from its own operands and writes the result
/// into its channel range of a copy of the destination (or of a zero buffer).
fn eval_node(
    graph: &Graph,
    id: NodeId,
    args: &[(&Tensor, Shape)],
    out: Shape,
    input: [usize; 3],
    mode: Mode,
) -> Result<Tensor, ShapeError> {
    let node = graph.node(id);
    let Some(tile) = node.tile else {
        return Ok(eval_in(graph, id, args, out, mode));
    };
    let own = node.own_operands(args.len());
    let own_shapes: Vec<Shape> = args[..own].iter().map(|a| a.1).collect();
    let part_shape = own_shape(graph, id, &own_shapes, input)?;
    let part = eval_in(graph, id, &args[..own], part_shape, mode);
    let mut buffer = match tile.new_buffer {
        Some(_) => vec![0.0; out.elements()],
        None => args[own].0.data().to_vec(),
    };
    let [n, c, h, w] = map_dims(out);
    let pc = part_shape.channels();
    for b in 0..n {
        let dst = &mut buffer[(b * c + tile.offset) * h * w..][..pc * h * w];
        dst.copy_from_slice(&part.data()[b * pc * h * w..][..pc * h * w]);
    }
    Ok(Tensor::new(out.dims(), buffer).unwrap_or_else(|| Tensor::zeros(out.dims())))
}

/// Evaluates one node's op in `mode`.
fn eval_in(graph: &Graph, id: NodeId, args: &[(&Tensor, Shape)], out: Shape, mode: Mode) -> Tensor {
    match mode {
        Mode::Exact => eval(graph, id, args, out, Sums::Exact),
        Mode::Bf16(amx) => match amx(id) {
            true => eval(graph, id, args, out, Sums::Amx),
            false => eval(graph, id, args, out, Sums::Ordered),
        },
        Mode::Int8(p) => eval_int8(graph, id, args, out, p),
    }
}

/// Evaluates one node's op on u8 codes (see [`run_int8`]); the ops an int8 graph does not have
/// (which [`Int8Params::new`] rejects) are evaluated as in f32.
fn eval_int8(
    graph: &Graph,
    id: NodeId,
    args: &[(&Tensor, Shape)],
    out: Shape,
    p: &Int8Params,
) -> Tensor {
    let node = graph.node(id);
    let operands = graph.inputs(id);
    let param = |role: &str| node.param(role).map(Tensor::data);
    // The operand's real values.
    let real = || quant::dequantize(args[0].0.data(), p.of(operands[0]));
    let y = p.of(id);
    let data = match &node.op {
        Op::FusedConv(f) => {
            let w =
                quant::quantize_weights(param("weight").unwrap_or_default(), f.conv.out_channels);
            // The halo holds the input's zero point: pad with it, then convolve unpadded.
            let (x, dims) = pad_codes(
                args[0].0.data(),
                map_dims(args[0].1),
                f.conv.padding,
                p.of(operands[0]).zero as f32,
            );
            let unpadded = Conv2dAttrs {
                padding: [0, 0],
                ..f.conv.clone()
            };
            // Exact sums of codes (integers far below 2^53), rounded once to f32 like vcvtdq2ps.
            let acc = conv2d(&x, dims, &w.codes, None, &unpadded, map_dims(out));
            let residual = f.residual.then(|| p.of(operands[1]));
            let r = quant::requant(&w, param("bias"), p.of(operands[0]), y, residual, f.relu);
            let codes = f.residual.then(|| args[1].0.data());
            let plane = out.elements() / (map_dims(out)[0] * f.conv.out_channels).max(1);
            acc.iter()
                .enumerate()
                .map(|(i, a)| {
                    let k = (i / plane) % f.conv.out_channels;
                    let mut v = a.mul_add(r.m[k], r.b[k]);
                    if let Some(codes) = codes {
                        v = codes[i].mul_add(r.r, v);
                    }
                    quant::saturate(v, r.floor)
                })
                .collect()
        }
        // On the real values, as the bf16 kernels sum them; a map's result quantized.
        Op::MaxPool(_) | Op::AvgPool(_) | Op::GlobalAvgPool => {
            let x = Tensor::new(args[0].0.shape().to_vec(), real()).expect("the same shape");
            let v = eval(graph, id, &[(&x, args[0].1)], out, Sums::Ordered);
            match out {
                Shape::Map { .. } => quant::quantize(v.data(), y),
                Shape::Vector { .. } => return v,
            }
        }
        _ => return eval(graph, id, args, out, Sums::Ordered),
    };
    Tensor::new(out.dims(), data).unwrap_or_else(|| Tensor::zeros(out.dims()))
}

/// NCHW `x` with `padding` rows and columns of `fill` around every plane, and its dims.
fn pad_codes(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    [ph, pw]: [usize; 2],
    fill: f32,
) -> (Vec<f32>, [usize; 4]) {
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let mut out = vec![fill; n * c * hp * wp];
    for plane in 0..n * c {
        for y in 0..h {
            let from = &x[(plane * h + y) * w..][..w];
            out[(plane * hp + y + ph) * wp + pw..][..w].copy_from_slice(from);
        }
    }
    (out, [n, c, hp, wp])
}

/// How [`eval`] sums.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sums {
    /// In f64.
    Exact,
    /// In f32 in the order of the bf16 kernels (see [`conv2d_ordered`]).
    Ordered,
    /// [`Sums::Ordered`], a convolution as the AMX tile sums ([`amx_dot_step`]).
    Amx,
}

/// Evaluates one node's op. Shapes were checked by [`infer_shapes`], so indexing is in bounds.
fn eval(graph: &Graph, id: NodeId, args: &[(&Tensor, Shape)], out: Shape, sums: Sums) -> Tensor {
    let node = graph.node(id);
    let p = |role: &str| node.param(role).map(Tensor::data);
    let x = || args[0].0.data();
    let ordered = sums != Sums::Exact;
    let data = match &node.op {
        Op::FusedConv(f) if ordered => {
            let y = conv2d_ordered(
                x(),
                map_dims(args[0].1),
                p("weight").unwrap_or_default(),
                p("bias"),
                &f.conv,
                map_dims(out),
                sums == Sums::Amx,
            );
            let residual = f.residual.then(|| args[1].0.data());
            y.iter()
                .enumerate()
                .map(|(i, v)| {
                    let v = residual.map_or(*v, |r| v + r[i]);
                    if f.relu {
                        v.max(0.0)
                    } else {
                        v
                    }
                })
                .collect()
        }
        Op::AvgPool(a) if ordered => relu_if(
            a.relu,
            avg_pool_ordered(
                x(),
                map_dims(args[0].1),
                &a.window,
                map_dims(out),
                a.count_include_pad,
            ),
        ),
        Op::GlobalAvgPool if ordered => {
            let [n, c, h, w] = map_dims(args[0].1);
            let inv = 1.0 / (h * w) as f32;
            (0..n * c)
                .map(|plane| x()[plane * h * w..][..h * w].iter().sum::<f32>() * inv)
                .collect()
        }
        Op::Linear(a) if ordered => {
            let (fi, fo) = (a.in_features, a.out_features);
            let (weight, bias) = (p("weight").unwrap_or_default(), p("bias"));
            x().chunks_exact(fi)
                .flat_map(|row| {
                    (0..fo).map(move |k| {
                        let start = bias.map_or(0.0, |b| b[k]);
                        let wk = &weight[k * fi..][..fi];
                        row.iter()
                            .zip(wk)
                            .fold(start, |acc, (a, b)| b.mul_add(*a, acc))
                    })
                })
                .collect()
        }
        Op::Input(_) => x().to_vec(),
        Op::Conv2d(a) => conv2d(
            x(),
            map_dims(args[0].1),
            p("weight").unwrap_or_default(),
            p("bias"),
            a,
            map_dims(out),
        ),
        // The same f32 steps as the unfused Conv2d → Add → Relu, so fusing changes no bit.
        Op::FusedConv(f) => {
            let mut y = conv2d(
                x(),
                map_dims(args[0].1),
                p("weight").unwrap_or_default(),
                p("bias"),
                &f.conv,
                map_dims(out),
            );
            if f.residual {
                for (v, r) in y.iter_mut().zip(args[1].0.data()) {
                    *v += r;
                }
            }
            if f.relu {
                for v in &mut y {
                    *v = v.max(0.0);
                }
            }
            y
        }
        Op::BatchNorm(a) | Op::BatchNorm1d(a) => batch_norm(
            x(),
            map_dims(args[0].1),
            [
                p("weight").unwrap_or_default(),
                p("bias").unwrap_or_default(),
                p("running_mean").unwrap_or_default(),
                p("running_var").unwrap_or_default(),
            ],
            a.eps,
        ),
        Op::Relu => x().iter().map(|v| v.max(0.0)).collect(),
        Op::Scale(s) => x().iter().map(|v| v * s.factor).collect(),
        Op::Add => x()
            .iter()
            .zip(args[1].0.data())
            .map(|(a, b)| a + b)
            .collect(),
        Op::MaxPool(w) => pool(x(), map_dims(args[0].1), w, map_dims(out), Pool::Max),
        Op::AvgPool(a) => relu_if(
            a.relu,
            pool(
                x(),
                map_dims(args[0].1),
                &a.window,
                map_dims(out),
                Pool::Avg {
                    count_include_pad: a.count_include_pad,
                },
            ),
        ),
        Op::Concat => concat(args, map_dims(out)),
        Op::GlobalAvgPool => global_avg_pool(x(), map_dims(args[0].1)),
        Op::Linear(a) => linear(x(), p("weight").unwrap_or_default(), p("bias"), a),
        Op::L2Normalize(a) => rows(x(), out.channels(), |row, y| {
            let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let d = norm.max(a.eps as f64);
            for (o, v) in y.iter_mut().zip(row) {
                *o = (*v as f64 / d) as f32;
            }
        }),
        Op::Softmax => rows(x(), out.channels(), |row, y| {
            let m = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
            let sum: f64 = row.iter().map(|v| (*v as f64 - m).exp()).sum();
            for (o, v) in y.iter_mut().zip(row) {
                *o = ((*v as f64 - m).exp() / sum) as f32;
            }
        }),
    };
    Tensor::new(out.dims(), data).unwrap_or_else(|| Tensor::zeros(out.dims()))
}

/// The output positions `o` in `0..out_len` whose input position `o·stride + tap − pad` lies in
/// `0..in_len`.
fn reach(out_len: usize, in_len: usize, tap: usize, stride: usize, pad: usize) -> Range<usize> {
    let lo = if tap >= pad {
        0
    } else {
        (pad - tap).div_ceil(stride)
    };
    let hi = if in_len + pad > tap {
        ((in_len - 1 + pad - tap) / stride + 1).min(out_len)
    } else {
        0
    };
    lo.min(hi)..hi
}

/// Direct convolution: `y[b,k,oy,ox] = bias[k] + Σ_{c,ky,kx} w[k,c,ky,kx] · x[b,c,oy·sh+ky−ph, ox·sw+kx−pw]`
/// with zero outside the image.
fn conv2d(
    x: &[f32],
    [_, c, h, w]: [usize; 4],
    weight: &[f32],
    bias: Option<&[f32]>,
    a: &Conv2dAttrs,
    [_, oc, oh, ow]: [usize; 4],
) -> Vec<f32> {
    let [kh, kw] = a.kernel;
    let [sh, sw] = a.stride;
    let [ph, pw] = a.padding;
    let mut out = vec![0f32; x.len() / (c * h * w) * oc * oh * ow];
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, y)| {
            let (b, k) = (plane / oc, plane % oc);
            let mut acc = vec![bias.map_or(0.0, |bs| bs[k] as f64); oh * ow];
            for ci in 0..c {
                let xc = &x[(b * c + ci) * h * w..][..h * w];
                for ky in 0..kh {
                    let rows = reach(oh, h, ky, sh, ph);
                    for kx in 0..kw {
                        let cols = reach(ow, w, kx, sw, pw);
                        let wv = weight[((k * c + ci) * kh + ky) * kw + kx] as f64;
                        for oy in rows.clone() {
                            let row = &xc[(oy * sh + ky - ph) * w..][..w];
                            let acc_row = &mut acc[oy * ow..][..ow];
                            for ox in cols.clone() {
                                acc_row[ox] += wv * row[ox * sw + kx - pw] as f64;
                            }
                        }
                    }
                }
            }
            for (o, v) in y.iter_mut().zip(acc) {
                *o = v as f32;
            }
        });
    out
}

/// [`conv2d`] as the bf16 tiles sum: in f32 from the bias, over the taps row-major (the zero
/// halo's taps add nothing), and over channel pairs, the odd channel's fused product before the
/// even one's, as `vdpbf16ps` adds them (the products of bf16 values are exact in f32). With
/// `amx`, over each tap's channels in blocks of [`AMX_DOT_CHANNELS`] as `tdpbf16ps` adds them
/// ([`amx_dot_step`]).
fn conv2d_ordered(
    x: &[f32],
    [_, c, h, w]: [usize; 4],
    weight: &[f32],
    bias: Option<&[f32]>,
    a: &Conv2dAttrs,
    [_, oc, oh, ow]: [usize; 4],
    amx: bool,
) -> Vec<f32> {
    let [kh, kw] = a.kernel;
    let [sh, sw] = a.stride;
    let [ph, pw] = a.padding;
    let mut out = vec![0f32; x.len() / (c * h * w) * oc * oh * ow];
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, y)| {
            let (b, k) = (plane / oc, plane % oc);
            let mut products = [0f32; AMX_DOT_CHANNELS];
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |bs| bs[k]);
                    for ky in 0..kh {
                        let iy = (oy * sh + ky) as isize - ph as isize;
                        for kx in 0..kw {
                            let ix = (ox * sw + kx) as isize - pw as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let (iy, ix) = (iy as usize, ix as usize);
                            let xv = |ci: usize| x[((b * c + ci) * h + iy) * w + ix];
                            let wv = |ci: usize| weight[((k * c + ci) * kh + ky) * kw + kx];
                            if amx {
                                for first in (0..c).step_by(AMX_DOT_CHANNELS) {
                                    let block = AMX_DOT_CHANNELS.min(c - first);
                                    for (i, p) in products[..block].iter_mut().enumerate() {
                                        *p = xv(first + i) * wv(first + i);
                                    }
                                    acc = amx_dot_step(acc, &products[..block]);
                                }
                                continue;
                            }
                            for pair in (0..c).step_by(2) {
                                if pair + 1 < c {
                                    acc = xv(pair + 1).mul_add(wv(pair + 1), acc);
                                }
                                acc = xv(pair).mul_add(wv(pair), acc);
                            }
                        }
                    }
                    y[oy * ow + ox] = acc;
                }
            }
        });
    out
}

/// `max(0, v)` of every value when `relu` (a NaN becomes 0, as `f32::max` and the generated
/// code's `maxps` have it).
fn relu_if(relu: bool, mut values: Vec<f32>) -> Vec<f32> {
    if relu {
        values.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    values
}

/// Average pooling as the generated pools sum: in f32 over the window's in-image cells
/// row-major, times the reciprocal of the count in f32.
fn avg_pool_ordered(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    p: &PoolAttrs,
    [_, _, oh, ow]: [usize; 4],
    count_include_pad: bool,
) -> Vec<f32> {
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [ph, pw] = p.padding;
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let xc = &x[plane * h * w..][..h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let (y0, x0) = (
                    (oy * sh) as isize - ph as isize,
                    (ox * sw) as isize - pw as isize,
                );
                let mut sum = 0f32;
                let mut inside = 0usize;
                for y in y0.max(0)..(y0 + kh as isize).min(h as isize) {
                    for x in x0.max(0)..(x0 + kw as isize).min(w as isize) {
                        sum += xc[y as usize * w + x as usize];
                        inside += 1;
                    }
                }
                let count = match count_include_pad {
                    true => kh * kw,
                    false => inside.max(1),
                };
                out.push(sum * (1.0 / count as f32));
            }
        }
    }
    out
}

fn batch_norm(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    [g, b, m, v]: [&[f32]; 4],
    eps: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for bi in 0..n {
        for ci in 0..c {
            let scale = g[ci] as f64 / (v[ci] as f64 + eps as f64).sqrt();
            let start = (bi * c + ci) * h * w;
            for i in start..start + h * w {
                out[i] = ((x[i] as f64 - m[ci] as f64) * scale + b[ci] as f64) as f32;
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Pool {
    Max,
    Avg { count_include_pad: bool },
}

/// Max pooling ignores padded cells; average pooling divides by the in-image cells of the window,
/// or with `count_include_pad` by its cells inside the padded image.
fn pool(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    p: &PoolAttrs,
    [_, _, oh, ow]: [usize; 4],
    kind: Pool,
) -> Vec<f32> {
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [ph, pw] = p.padding;
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let xc = &x[plane * h * w..][..h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                // Window in padded coordinates, clipped to the padded image.
                let (y0, x0) = (oy * sh, ox * sw);
                let (y1, x1) = ((y0 + kh).min(h + 2 * ph), (x0 + kw).min(w + 2 * pw));
                let mut max = f32::NEG_INFINITY;
                let mut sum = 0f64;
                let mut inside = 0usize;
                for py in y0..y1 {
                    for px in x0..x1 {
                        if py < ph || px < pw || py - ph >= h || px - pw >= w {
                            continue;
                        }
                        let v = xc[(py - ph) * w + (px - pw)];
                        max = max.max(v);
                        sum += v as f64;
                        inside += 1;
                    }
                }
                out.push(match kind {
                    Pool::Max => max,
                    Pool::Avg { count_include_pad } => {
                        let count = if count_include_pad {
                            (y1 - y0) * (x1 - x0)
                        } else {
                            inside
                        };
                        (sum / count.max(1) as f64) as f32
                    }
                });
            }
        }
    }
    out
}

fn concat(args: &[(&Tensor, Shape)], [n, _, h, w]: [usize; 4]) -> Vec<f32> {
    let mut out = Vec::with_capacity(args.iter().map(|(t, _)| t.len()).sum());
    for b in 0..n {
        for (t, s) in args {
            let per_batch = s.channels() * h * w;
            out.extend_from_slice(&t.data()[b * per_batch..][..per_batch]);
        }
    }
    out
}

fn global_avg_pool(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    (0..n * c)
        .map(|plane| {
            let s: f64 = x[plane * h * w..][..h * w].iter().map(|v| *v as f64).sum();
            (s / (h * w) as f64) as f32
        })
        .collect()
}

fn linear(x: &[f32], weight: &[f32], bias: Option<&[f32]>, a: &LinearAttrs) -> Vec<f32> {
    let (fi, fo) = (a.in_features, a.out_features);
    let mut out = Vec::with_capacity(x.len() / fi * fo);
    for row in x.chunks_exact(fi) {
        for k in 0..fo {
            let wk = &weight[k * fi..][..fi];
            let dot: f64 = row.iter().zip(wk).map(|(a, b)| *a as f64 * *b as f64).sum();
            out.push((dot + bias.map_or(0.0, |b| b[k] as f64)) as f32);
        }
    }
    out
}

/// Applies `f` to each row of a `[N, F]` batch.
fn rows(x: &[f32], features: usize, f: impl Fn(&[f32], &mut [f32])) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (row, y) in x.chunks_exact(features).zip(out.chunks_exact_mut(features)) {
        f(row, y);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition of a convolution with a bounds test per tap, to check [`conv2d`]'s ranges.
    fn conv_by_definition(
        x: &[f32],
        [n, c, h, w]: [usize; 4],
        weight: &[f32],
        a: &Conv2dAttrs,
        [_, oc, oh, ow]: [usize; 4],
    ) -> Vec<f32> {
        let mut out = vec![0f32; n * oc * oh * ow];
        for b in 0..n {
            for k in 0..oc {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0f64;
                        for ci in 0..c {
                            for ky in 0..a.kernel[0] {
                                for kx in 0..a.kernel[1] {
                                    let iy =
                                        (oy * a.stride[0] + ky) as isize - a.padding[0] as isize;
                                    let ix =
                                        (ox * a.stride[1] + kx) as isize - a.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    s += weight
                                        [((k * c + ci) * a.kernel[0] + ky) * a.kernel[1] + kx]
                                        as f64
                                        * x[((b * c + ci) * h + iy as usize) * w + ix as usize]
                                            as f64;
                                }
                            }
                        }
                        out[((b * oc + k) * oh + oy) * ow + ox] = s as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn conv_tap_ranges_match_the_definition() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (kh, kw, sh, sw, ph, pw, h, w) in [
            (3, 3, 1, 1, 1, 1, 5, 6),
            (3, 3, 2, 2, 0, 0, 7, 9),
            (1, 7, 1, 1, 0, 3, 4, 5),
            (7, 1, 1, 1, 3, 0, 5, 3),
            (5, 5, 2, 1, 2, 2, 6, 5),
            (3, 1, 2, 2, 1, 0, 1, 2),
        ] {
            let (n, c, oc) = (2, 3, 5);
            let a = Conv2dAttrs {
                in_channels: c,
                out_channels: oc,
                kernel: [kh, kw],
                stride: [sh, sw],
                padding: [ph, pw],
                bias: false,
            };
            let oh = crate::shape::window_output(h, kh, sh, ph).unwrap();
            let ow = crate::shape::window_output(w, kw, sw, pw).unwrap();
            let x: Vec<f32> = (0..n * c * h * w).map(|_| next()).collect();
            let wt: Vec<f32> = (0..oc * c * kh * kw).map(|_| next()).collect();
            let fast = conv2d(&x, [n, c, h, w], &wt, None, &a, [n, oc, oh, ow]);
            let slow = conv_by_definition(&x, [n, c, h, w], &wt, &a, [n, oc, oh, ow]);
            for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                assert!(
                    (f - s).abs() <= 1e-6,
                    "{kh}x{kw}/{sh}x{sw} pad {ph}x{pw} on {h}x{w}: index {i}: {f} vs {s}"
                );
            }
        }
    }

    #[test]
    fn reach_covers_exactly_the_in_image_positions() {
        for out_len in 1..6 {
            for in_len in 1..8 {
                for tap in 0..5 {
                    for stride in 1..3 {
                        for pad in 0..3 {
                            let r = reach(out_len, in_len, tap, stride, pad);
                            for o in 0..out_len {
                                let i = (o * stride + tap) as isize - pad as isize;
                                let inside = i >= 0 && i < in_len as isize;
                                assert_eq!(
                                    r.contains(&o),
                                    inside,
                                    "o={o} in={in_len} tap={tap} s={stride} p={pad}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn avg_pool_excludes_padding_from_the_divisor_unless_asked() {
        // 2×2 image, 3×3 window, stride 1, padding 1: the corner window sees all four cells.
        let x = [1.0, 2.0, 3.0, 4.0];
        let p = PoolAttrs {
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
        };
        let exclude = pool(
            &x,
            [1, 1, 2, 2],
            &p,
            [1, 1, 2, 2],
            Pool::Avg {
                count_include_pad: false,
            },
        );
        assert_eq!(exclude, vec![2.5; 4]);
        let include = pool(
            &x,
            [1, 1, 2, 2],
            &p,
            [1, 1, 2, 2],
            Pool::Avg {
                count_include_pad: true,
            },
        );
        assert_eq!(include, vec![10.0 / 9.0; 4]);
        let max = pool(
            &[-1.0, -2.0, -3.0, -4.0],
            [1, 1, 2, 2],
            &p,
            [1, 1, 2, 2],
            Pool::Max,
        );
        assert_eq!(max, vec![-1.0; 4], "padding must never win a max pool");
    }
}
