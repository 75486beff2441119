//! Shape inference: the concrete shape of every node for a given batch and input size, and the
//! output size arithmetic that convolutions and pools share.

use std::collections::HashMap;
use std::fmt;

use thiserror::Error;

use crate::graph::{Graph, NodeId};
use crate::op::{FusedConvAttrs, Hw, Op};

/// The shape of a value: a feature map `[N, C, H, W]` or a batch of vectors `[N, F]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A feature map.
    Map {
        /// Images.
        n: usize,
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
    /// A batch of vectors.
    Vector {
        /// Vectors.
        n: usize,
        /// Features per vector.
        f: usize,
    },
}

impl Shape {
    /// The dimensions: `[N, C, H, W]` or `[N, F]`.
    pub fn dims(&self) -> Vec<usize> {
        match *self {
            Shape::Map { n, c, h, w } => vec![n, c, h, w],
            Shape::Vector { n, f } => vec![n, f],
        }
    }

    /// The number of values.
    pub fn elements(&self) -> usize {
        self.dims().iter().product()
    }

    /// The batch size `N`.
    pub fn batch(&self) -> usize {
        match *self {
            Shape::Map { n, .. } | Shape::Vector { n, .. } => n,
        }
    }

    /// Channels of a map, features of a vector.
    pub fn channels(&self) -> usize {
        match *self {
            Shape::Map { c, .. } => c,
            Shape::Vector { f, .. } => f,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims().iter().map(|d| d.to_string()).collect();
        write!(f, "[{}]", dims.join(", "))
    }
}

/// Why a shape could not be inferred. Each names the node.
#[derive(Debug, Error, PartialEq)]
pub enum ShapeError {
    /// The graph has a cycle.
    #[error("the graph has a cycle")]
    Cycle,
    /// A node has the wrong number of operands.
    #[error("node `{node}` ({op}) expects {expected} operand(s), found {found}")]
    Arity {
        /// The node's name.
        node: String,
        /// Its op's keyword.
        op: &'static str,
        /// The operand count the op takes.
        expected: String,
        /// The operand count it has.
        found: usize,
    },
    /// An operand's shape does not fit the op.
    #[error("node `{node}` ({op}) expects {expected}, found {found}")]
    Mismatch {
        /// The node's name.
        node: String,
        /// Its op's keyword.
        op: &'static str,
        /// What the op takes.
        expected: String,
        /// What it got.
        found: String,
    },
    /// A window does not fit its input: the image is too small for the network.
    #[error(
        "input too small: node `{node}` ({op}) receives {h}×{w} but its {kh}×{kw} window with \
         padding {ph}×{pw} needs at least {min_h}×{min_w}; use a larger image size"
    )]
    TooSmall {
        /// The node's name.
        node: String,
        /// Its op's keyword.
        op: &'static str,
        /// The input's height.
        h: usize,
        /// The input's width.
        w: usize,
        /// The window's height.
        kh: usize,
        /// The window's width.
        kw: usize,
        /// Padding rows on each side.
        ph: usize,
        /// Padding columns on each side.
        pw: usize,
        /// The smallest input height that fits.
        min_h: usize,
        /// The smallest input width that fits.
        min_w: usize,
    },
}

/// Output size of a window op along one axis, `None` if the window does not fit:
/// `⌊(size + 2·pad − kernel) / stride⌋ + 1`.
pub fn window_output(size: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    let padded = size + 2 * pad;
    (padded >= kernel && stride > 0).then(|| (padded - kernel) / stride + 1)
}

/// The shape of every node of `graph` when its input is `[batch, C, height, width]`.
pub fn infer_shapes(
    graph: &Graph,
    batch: usize,
    height: usize,
    width: usize,
) -> Result<HashMap<NodeId, Shape>, ShapeError> {
    let order = graph.topo_order().ok_or(ShapeError::Cycle)?;
    let mut shapes: HashMap<NodeId, Shape> = HashMap::with_capacity(order.len());
    for id in order {
        let operands: Vec<Shape> = graph.inputs(id).iter().map(|i| shapes[i]).collect();
        let shape = node_shape(graph, id, &operands, [batch, height, width])?;
        shapes.insert(id, shape);
    }
    Ok(shapes)
}

/// The shape of one node's value given its operands' shapes; `input` is `[batch, height, width]`
/// of the graph's input. For a tiled node this is the whole buffer it writes into.
pub fn node_shape(
    graph: &Graph,
    id: NodeId,
    operands: &[Shape],
    input: [usize; 3],
) -> Result<Shape, ShapeError> {
    let node = graph.node(id);
    let own = node.own_operands(operands.len());
    let shape = own_shape(graph, id, &operands[..own], input)?;
    let Some(tile) = node.tile else {
        return Ok(shape);
    };
    let mismatch = |expected: String, found: String| ShapeError::Mismatch {
        node: node.name.clone(),
        op: node.op.keyword(),
        expected,
        found,
    };
    let Shape::Map { n, c, h, w } = shape else {
        return Err(mismatch(
            "a feature map to tile into a buffer".into(),
            shape.to_string(),
        ));
    };
    let buffer = match (tile.new_buffer, operands.get(own)) {
        (Some(total), _) => Shape::Map { n, c: total, h, w },
        (None, Some(dest)) => *dest,
        (None, None) => {
            return Err(ShapeError::Arity {
                node: node.name.clone(),
                op: node.op.keyword(),
                expected: "a destination operand after its own".into(),
                found: operands.len(),
            })
        }
    };
    match buffer {
        Shape::Map {
            n: bn,
            c: bc,
            h: bh,
            w: bw,
        } if (bn, bh, bw) == (n, h, w) && tile.offset + c <= bc => Ok(buffer),
        _ => Err(mismatch(
            format!(
                "a destination [{n}, ≥{}, {h}, {w}] for channels {}..{}",
                tile.offset + c,
                tile.offset,
                tile.offset + c
            ),
            buffer.to_string(),
        )),
    }
}

/// The shape of what the node's op computes from its own operands (`operands` excludes a tile
/// destination), before any tiling.
pub fn own_shape(
    graph: &Graph,
    id: NodeId,
    operands: &[Shape],
    input: [usize; 3],
) -> Result<Shape, ShapeError> {
    let node = graph.node(id);
    let op = node.op.keyword();
    let mismatch = |expected: String, found: String| ShapeError::Mismatch {
        node: node.name.clone(),
        op,
        expected,
        found,
    };
    if !node.op.arity().accepts(operands.len()) {
        return Err(ShapeError::Arity {
            node: node.name.clone(),
            op,
            expected: node.op.arity().to_string(),
            found: operands.len(),
        });
    }
    let map = |i: usize| match operands[i] {
        Shape::Map { n, c, h, w } => Ok((n, c, h, w)),
        other => Err(mismatch(
            "a feature map [N, C, H, W]".into(),
            other.to_string(),
        )),
    };
    let vector = |i: usize| match operands[i] {
        Shape::Vector { n, f } => Ok((n, f)),
        other => Err(mismatch("a vector batch [N, F]".into(), other.to_string())),
    };
    let channels = |expected: usize, found: usize| {
        if expected == found {
            Ok(())
        } else {
            Err(mismatch(
                format!("{expected} input channels"),
                format!("{found}"),
            ))
        }
    };
    let window = |h: usize, w: usize, kernel: Hw, stride: Hw, padding: Hw| match (
        window_output(h, kernel[0], stride[0], padding[0]),
        window_output(w, kernel[1], stride[1], padding[1]),
    ) {
        (Some(oh), Some(ow)) => Ok((oh, ow)),
        _ => Err(ShapeError::TooSmall {
            node: node.name.clone(),
            op,
            h,
            w,
            kh: kernel[0],
            kw: kernel[1],
            ph: padding[0],
            pw: padding[1],
            min_h: kernel[0].saturating_sub(2 * padding[0]).max(1),
            min_w: kernel[1].saturating_sub(2 * padding[1]).max(1),
        }),
    };
    Ok(match &node.op {
        Op::Input(a) => Shape::Map {
            n: input[0],
            c: a.channels,
            h: input[1],
            w: input[2],
        },
        Op::Conv2d(a) => {
            let (n, c, h, w) = map(0)?;
            channels(a.in_channels, c)?;
            let (oh, ow) = window(h, w, a.kernel, a.stride, a.padding)?;
            Shape::Map {
                n,
                c: a.out_channels,
                h: oh,
                w: ow,
            }
        }
        Op::FusedConv(f) => {
            let a = &f.conv;
            let (n, c, h, w) = map(0)?;
            channels(a.in_channels, c)?;
            let (oh, ow) = window(h, w, a.kernel, a.stride, a.padding)?;
            let out = Shape::Map {
                n,
                c: a.out_channels,
                h: oh,
                w: ow,
            };
            if f.residual && operands[1] != out {
                return Err(mismatch(
                    format!("a residual of the output's shape {out}"),
                    operands[1].to_string(),
                ));
            }
            out
        }
        Op::BatchNorm(a) => {
            let (_, c, _, _) = map(0)?;
            channels(a.channels, c)?;
            operands[0]
        }
        Op::BatchNorm1d(a) => {
            let (_, f) = vector(0)?;
            channels(a.channels, f)?;
            operands[0]
        }
        Op::Relu | Op::Scale(_) => operands[0],
        Op::MaxPool(p) | Op::AvgPool(crate::op::AvgPoolAttrs { window: p, .. }) => {
            let (n, c, h, w) = map(0)?;
            let (oh, ow) = window(h, w, p.kernel, p.stride, p.padding)?;
            Shape::Map { n, c, h: oh, w: ow }
        }
        Op::Concat => {
            let (n, _, h, w) = map(0)?;
            let mut total = 0;
            for (i, operand) in operands.iter().enumerate() {
                let (ni, ci, hi, wi) = map(i)?;
                if (ni, hi, wi) != (n, h, w) {
                    return Err(mismatch(
                        format!("operands of equal batch and size ({n}×?×{h}×{w})"),
                        format!("operand {i} is {operand}"),
                    ));
                }
                total += ci;
            }
            Shape::Map { n, c: total, h, w }
        }
        Op::Add => {
            if operands[0] != operands[1] {
                return Err(mismatch(
                    format!("two operands of one shape ({})", operands[0]),
                    operands[1].to_string(),
                ));
            }
            operands[0]
        }
        Op::GlobalAvgPool => {
            let (n, c, _, _) = map(0)?;
            Shape::Vector { n, f: c }
        }
        Op::Linear(a) => {
            let (n, f) = vector(0)?;
            channels(a.in_features, f)?;
            Shape::Vector {
                n,
                f: a.out_features,
            }
        }
        Op::L2Normalize(_) | Op::Softmax => {
            vector(0)?;
            operands[0]
        }
    })
}

/// Multiply–accumulates of one node given its value's shape: convolutions and linear layers; zero
/// for everything else. (A tiled conv's value is its whole buffer; only its own channels count.)
pub fn node_macs(op: &Op, output: &Shape) -> u64 {
    match (op, output) {
        (
            Op::Conv2d(a) | Op::FusedConv(FusedConvAttrs { conv: a, .. }),
            Shape::Map { n, h, w, .. },
        ) => {
            (*n * a.out_channels * *h * *w) as u64
                * (a.in_channels * a.kernel[0] * a.kernel[1]) as u64
        }
        (Op::Linear(a), Shape::Vector { n, f }) => (*n * *f) as u64 * a.in_features as u64,
        _ => 0,
    }
}
