//! Lowering an optimized, planned graph to a [`Program`]: one [`Kernel`] per schedule step with
//! every shape, stride and arena offset fixed, and the weights packed in the order the kernels read
//! them.

use std::collections::HashMap;

use inceptc_ir::op::{AvgPoolAttrs, Op, PoolAttrs};
use inceptc_ir::{Graph, NodeId, Shape};

use super::emit::TILE_PIXELS;
use super::CodegenError;
use crate::plan::{plan_guarded, Buffer, MemoryPlan};
use inceptc_runtime::exec::Guard;
use inceptc_runtime::layout::{Layout, MapLayout, VecLayout};

/// Output channels of one register tile of a convolution: two f32x4 vectors.
pub const CONV_LANES: usize = 8;
/// Output features per step of a linear layer: one f32x4 vector.
pub const LINEAR_LANES: usize = 4;
/// Alignment of every packed weight segment, in bytes.
pub const WEIGHT_ALIGN: usize = 64;

/// One output range of a convolution kernel: `channels` output channels whose packed weights
/// start at `weights` and bias at `bias` (byte offsets into the weight blob), written to `out`.
///
/// Packed weights: for each block of [`CONV_LANES`] output channels (the last one zero-padded), the
/// taps in order `ky`, `kx`, then the input channels, each a row of [`CONV_LANES`] floats. Bias:
/// the channels, zero-padded to a multiple of [`CONV_LANES`].
#[derive(Clone, Debug)]
pub struct ConvRange {
    pub node: String,
    pub channels: usize,
    /// Whether the epilogue ends with ReLU.
    pub relu: bool,
    pub weights: usize,
    pub bias: usize,
    pub out: MapLayout,
}

/// A convolution with its epilogue over one or more output ranges (a shared kernel of sibling
/// 1×1 convs has several). Work items are output rows (image, row), or pixel tiles when `flat`.
#[derive(Clone, Debug)]
pub struct ConvKernel {
    pub input: MapLayout,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub out_h: usize,
    pub out_w: usize,
    pub ranges: Vec<ConvRange>,
    pub residual: Option<MapLayout>,
    /// A 1×1, stride-1, unpadded convolution over a halo-free input: work items are tiles of
    /// consecutive pixels of the whole batch instead of output rows.
    pub flat: bool,
}

/// Max or average pooling. Work items are output rows.
#[derive(Clone, Debug)]
pub struct PoolKernel {
    pub input: MapLayout,
    pub window: PoolAttrs,
    /// `None` for max pooling, else whether the divisor counts padding.
    pub average: Option<bool>,
    pub out: MapLayout,
}

/// Mean over the pixels of each channel. Work items are images.
#[derive(Clone, Debug)]
pub struct GlobalPoolKernel {
    pub input: MapLayout,
    pub out: VecLayout,
}

/// `y = x · Wᵀ + b`. Packed weights: for each block of [`LINEAR_LANES`] outputs (zero-padded),
/// the input features in order, each a row of [`LINEAR_LANES`] floats; bias zero-padded likewise.
/// Work items are rows.
#[derive(Clone, Debug)]
pub struct LinearKernel {
    pub input: VecLayout,
    pub out: VecLayout,
    pub weights: usize,
    pub bias: Option<usize>,
}

/// `y = x / max(‖x‖₂, eps)` per row. Work items are rows.
#[derive(Clone, Debug)]
pub struct L2NormKernel {
    pub input: VecLayout,
    pub out: VecLayout,
    pub eps: f32,
}

/// What one step computes.
#[derive(Clone, Debug)]
pub enum Kernel {
    Conv(ConvKernel),
    Pool(PoolKernel),
    GlobalPool(GlobalPoolKernel),
    Linear(LinearKernel),
    L2Norm(L2NormKernel),
}

impl Kernel {
    /// How many independent work items the kernel splits into (the range a call covers).
    pub fn items(&self) -> usize {
        match self {
            Kernel::Conv(k) if k.flat => (k.input.n * k.out_h * k.out_w).div_ceil(TILE_PIXELS),
            Kernel::Conv(k) => k.input.n * k.out_h,
            Kernel::Pool(k) => k.out.n * k.out.h,
            Kernel::GlobalPool(k) => k.out.n,
            Kernel::Linear(k) => k.out.n,
            Kernel::L2Norm(k) => k.out.n,
        }
    }

    /// Floating-point operations of one whole call (2 per multiply–add), for throughput figures.
    pub fn flops(&self) -> u64 {
        match self {
            Kernel::Conv(k) => {
                let channels: usize = k.ranges.iter().map(|r| r.channels).sum();
                let pixels = k.input.n * k.out_h * k.out_w;
                2 * (pixels * channels * k.input.channels * k.kernel[0] * k.kernel[1]) as u64
            }
            Kernel::Linear(k) => 2 * (k.out.n * k.out.features * k.input.features) as u64,
            _ => 0,
        }
    }
}

/// One step of the program: its kernel (none for the graph's input), the node names it covers,
/// its block, and the halos to clear before it runs (buffers it is the first to write).
#[derive(Clone, Debug)]
pub struct Step {
    pub kernel: Option<Kernel>,
    pub nodes: Vec<String>,
    pub block: usize,
    pub clear_halos: Vec<MapLayout>,
}

/// A network ready for code generation at one batch size and input size.
#[derive(Clone, Debug)]
pub struct Program {
    pub name: String,
    pub batch: usize,
    pub image: [usize; 2],
    pub steps: Vec<Step>,
    /// Block names; [`Step::block`] indexes them.
    pub blocks: Vec<String>,
    pub arena_bytes: usize,
    /// Packed weights, 64-byte-aligned segments of little-endian f32.
    pub weights: Vec<u8>,
    /// Where the runtime writes the NCHW input (converted to NHWC).
    pub input: MapLayout,
    /// Where the outputs are after the last step (each output's whole value), in the graph's
    /// output order.
    pub outputs: Vec<Layout>,
    /// Buffers the runtime watches for out-of-bounds writes (`--check-bounds`); empty otherwise.
    pub guards: Vec<Guard>,
}

/// How to lower.
#[derive(Clone, Debug, Default)]
pub struct LowerOptions {
    /// Put canaries around every buffer and have the runtime check them, and that halos stay
    /// zero, after every step (`inceptc compile --check-bounds`).
    pub check_bounds: bool,
    /// Test-only: the convolution named here writes its output one pixel too far along its rows,
    /// as a wrong tile would — to show that the bounds check catches and names it.
    #[doc(hidden)]
    pub inject_fault: Option<String>,
}

impl Program {
    /// Lowers `graph` (after the whole pass pipeline, weights bound) for input
    /// `[batch, C, height, width]`.
    pub fn new(
        graph: &Graph,
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<Program, CodegenError> {
        Program::with_options(graph, batch, height, width, &LowerOptions::default())
    }

    /// [`Program::new`] with `options`.
    pub fn with_options(
        graph: &Graph,
        batch: usize,
        height: usize,
        width: usize,
        options: &LowerOptions,
    ) -> Result<Program, CodegenError> {
        let plan = plan_guarded(graph, batch, height, width, options.check_bounds)?;
        if let Some(name) = &options.inject_fault {
            let is_conv = |id: NodeId| matches!(graph.node(id).op, Op::FusedConv(_));
            if !graph
                .node_ids()
                .any(|id| graph.node(id).name == *name && is_conv(id))
            {
                return Err(CodegenError::NoSuchFault(name.clone()));
            }
        }
        let lowering = Lowering {
            graph,
            plan: &plan,
            shapes: &plan.shapes,
            fault: options.inject_fault.as_deref(),
        };
        let mut weights = WeightBlob::default();
        let mut blocks: Vec<String> = Vec::new();
        let mut steps = Vec::with_capacity(plan.steps.len());
        let mut input = None;
        for (s, members) in plan.steps.iter().enumerate() {
            let first = graph.node(members[0]);
            let block = match blocks.iter().position(|b| *b == first.block) {
                Some(i) => i,
                None => {
                    blocks.push(first.block.clone());
                    blocks.len() - 1
                }
            };
            let kernel = match &first.op {
                Op::Input(_) => {
                    input = Some(lowering.map(members[0])?);
                    None
                }
                _ => Some(lowering.kernel(members, &mut weights)?),
            };
            let clear_halos = plan
                .buffers
                .iter()
                .filter(|b| b.live[0] == s && b.halo != [0, 0])
                .filter_map(|b| match buffer_layout(b, 0, b.shape.channels()) {
                    Layout::Map(m) => Some(m),
                    Layout::Vector(_) => None,
                })
                .collect();
            steps.push(Step {
                kernel,
                nodes: members
                    .iter()
                    .map(|m| graph.node(*m).name.clone())
                    .collect(),
                block,
                clear_halos,
            });
        }
        let input = input.ok_or(CodegenError::NoInput)?;
        let outputs = graph
            .outputs()
            .iter()
            .map(|o| match lowering.layout(*o)? {
                Layout::Map(m) => Ok(Layout::Map(m.whole())),
                Layout::Vector(_) => Ok(Layout::Vector(lowering.read_vector(*o)?)),
            })
            .collect::<Result<_, CodegenError>>()?;
        let guards = match options.check_bounds {
            false => Vec::new(),
            true => plan
                .buffers
                .iter()
                .map(|b| Guard {
                    buffer: b.name.clone(),
                    offset: b.data_offset(),
                    bytes: b.data_bytes(),
                    guard: b.guard,
                    live: b.live,
                    halo: match buffer_layout(b, 0, b.shape.channels()) {
                        Layout::Map(m) if m.halo != [0, 0] => Some(m),
                        _ => None,
                    },
                })
                .collect(),
        };
        Ok(Program {
            name: graph.name.clone(),
            batch,
            image: [height, width],
            steps,
            blocks,
            arena_bytes: plan.arena_bytes,
            weights: weights.bytes,
            input,
            outputs,
            guards,
        })
    }
}

/// Channels `channel_offset .. channel_offset + channels` of `buffer`, as a layout.
fn buffer_layout(buffer: &Buffer, channel_offset: usize, channels: usize) -> Layout {
    match buffer.shape {
        Shape::Map { n, c, h, w } => Layout::Map(MapLayout {
            offset: buffer.data_offset(),
            n,
            h,
            w,
            c_total: c,
            channel_offset,
            channels,
            halo: buffer.halo,
        }),
        Shape::Vector { n, f } => Layout::Vector(VecLayout {
            offset: buffer.data_offset(),
            n,
            f_total: f,
            feature_offset: channel_offset,
            features: channels,
        }),
    }
}

/// Packed weights under construction.
#[derive(Default)]
struct WeightBlob {
    bytes: Vec<u8>,
}

impl WeightBlob {
    /// Appends `values` as an aligned segment; returns its byte offset.
    fn push(&mut self, values: &[f32]) -> usize {
        let start = self.bytes.len().next_multiple_of(WEIGHT_ALIGN);
        self.bytes.resize(start, 0);
        for v in values {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        start
    }
}

struct Lowering<'a> {
    graph: &'a Graph,
    plan: &'a MemoryPlan,
    shapes: &'a HashMap<NodeId, Shape>,
    /// See [`LowerOptions::inject_fault`].
    fault: Option<&'a str>,
}

impl Lowering<'_> {
    /// Where `id`'s result is written (its own channel range of its buffer).
    fn layout(&self, id: NodeId) -> Result<Layout, CodegenError> {
        let place = self.plan.placements[&id];
        let buffer = &self.plan.buffers[place.buffer];
        Ok(buffer_layout(buffer, place.channel_offset, place.channels))
    }

    fn map(&self, id: NodeId) -> Result<MapLayout, CodegenError> {
        match self.layout(id)? {
            Layout::Map(m) => Ok(m),
            Layout::Vector(_) => Err(self.unexpected(id, "a feature map")),
        }
    }

    fn vector(&self, id: NodeId) -> Result<VecLayout, CodegenError> {
        match self.layout(id)? {
            Layout::Vector(v) => Ok(v),
            Layout::Map(_) => Err(self.unexpected(id, "a vector")),
        }
    }

    /// Where convolution `id` writes: its layout, one pixel further for an injected fault.
    fn conv_out(&self, id: NodeId) -> Result<MapLayout, CodegenError> {
        let mut m = self.map(id)?;
        if self.fault == Some(self.graph.node(id).name.as_str()) {
            m.offset += m.pixel_stride();
        }
        Ok(m)
    }

    /// What a reader of `id` sees: the whole value, all channels of its buffer.
    fn read_map(&self, id: NodeId) -> Result<MapLayout, CodegenError> {
        Ok(self.map(id)?.whole())
    }

    fn read_vector(&self, id: NodeId) -> Result<VecLayout, CodegenError> {
        let v = self.vector(id)?;
        Ok(VecLayout {
            feature_offset: 0,
            features: v.f_total,
            ..v
        })
    }

    fn unexpected(&self, id: NodeId, what: &str) -> CodegenError {
        CodegenError::Layout {
            node: self.graph.node(id).name.clone(),
            expected: what.to_string(),
            found: self.shapes[&id].to_string(),
        }
    }

    fn param(&self, id: NodeId, role: &str) -> Result<&[f32], CodegenError> {
        let node = self.graph.node(id);
        node.param(role)
            .map(|t| t.data())
            .ok_or_else(|| CodegenError::Unbound(node.name.clone()))
    }

    fn kernel(&self, members: &[NodeId], blob: &mut WeightBlob) -> Result<Kernel, CodegenError> {
        let id = members[0];
        let node = self.graph.node(id);
        let operand = self.graph.inputs(id).first().copied();
        let operand = operand.ok_or_else(|| CodegenError::Unsupported {
            node: node.name.clone(),
            op: node.op.keyword(),
        })?;
        Ok(match &node.op {
            Op::FusedConv(f) => {
                let mut ranges = Vec::with_capacity(members.len());
                for m in members {
                    let Op::FusedConv(g) = &self.graph.node(*m).op else {
                        return Err(CodegenError::Unsupported {
                            node: self.graph.node(*m).name.clone(),
                            op: self.graph.node(*m).op.keyword(),
                        });
                    };
                    let weight = self.param(*m, "weight")?;
                    let bias = match g.conv.bias {
                        true => Some(self.param(*m, "bias")?),
                        false => None,
                    };
                    let (w, b) = pack_conv(weight, bias, &g.conv);
                    ranges.push(ConvRange {
                        node: self.graph.node(*m).name.clone(),
                        channels: g.conv.out_channels,
                        relu: g.relu,
                        weights: blob.push(&w),
                        bias: blob.push(&b),
                        out: self.conv_out(*m)?,
                    });
                }
                let out = ranges[0].out;
                let residual = match f.residual {
                    true => Some(self.read_map(self.graph.inputs(id)[1])?),
                    false => None,
                };
                let input = self.read_map(operand)?;
                let out_w = ranges[0].out.w;
                // Row tiles leave the ends of short rows (8 pixels: a 6-tile and a 2-tile) badly
                // filled; flat tiles fill all but the last. Where rows fill their tiles to 90 %
                // or more, row tiles measured as fast or faster (35×35, 17×17).
                let row_fill = out_w as f64 / (out_w.div_ceil(TILE_PIXELS) * TILE_PIXELS) as f64;
                let flat = f.conv.kernel == [1, 1]
                    && f.conv.stride == [1, 1]
                    && f.conv.padding == [0, 0]
                    && input.halo == [0, 0]
                    && row_fill < 0.9;
                ConvKernel {
                    input,
                    flat,
                    kernel: f.conv.kernel,
                    stride: f.conv.stride,
                    padding: f.conv.padding,
                    out_h: out.h,
                    out_w: out.w,
                    ranges,
                    residual,
                }
                .into()
            }
            Op::MaxPool(p) => Kernel::Pool(PoolKernel {
                input: self.read_map(operand)?,
                window: p.clone(),
                average: None,
                out: self.map(id)?,
            }),
            Op::AvgPool(AvgPoolAttrs {
                window,
                count_include_pad,
            }) => Kernel::Pool(PoolKernel {
                input: self.read_map(operand)?,
                window: window.clone(),
                average: Some(*count_include_pad),
                out: self.map(id)?,
            }),
            Op::GlobalAvgPool => Kernel::GlobalPool(GlobalPoolKernel {
                input: self.read_map(operand)?,
                out: self.vector(id)?,
            }),
            Op::Linear(a) => {
                let w = pack_linear(self.param(id, "weight")?, a.in_features, a.out_features);
                let bias = match a.bias {
                    true => Some(blob.push(&pad(self.param(id, "bias")?, LINEAR_LANES))),
                    false => None,
                };
                Kernel::Linear(LinearKernel {
                    input: self.read_vector(operand)?,
                    out: self.vector(id)?,
                    weights: blob.push(&w),
                    bias,
                })
            }
            Op::L2Normalize(a) => Kernel::L2Norm(L2NormKernel {
                input: self.read_vector(operand)?,
                out: self.vector(id)?,
                eps: a.eps,
            }),
            other => {
                return Err(CodegenError::Unsupported {
                    node: node.name.clone(),
                    op: other.keyword(),
                })
            }
        })
    }
}

impl From<ConvKernel> for Kernel {
    fn from(k: ConvKernel) -> Kernel {
        Kernel::Conv(k)
    }
}

/// `values` zero-padded to a multiple of `lanes`.
fn pad(values: &[f32], lanes: usize) -> Vec<f32> {
    let mut v = values.to_vec();
    v.resize(values.len().next_multiple_of(lanes), 0.0);
    v
}

/// Conv weights `[O, I, KH, KW]` in the order of [`ConvRange`]; bias padded (zeros without one).
fn pack_conv(
    weight: &[f32],
    bias: Option<&[f32]>,
    a: &inceptc_ir::op::Conv2dAttrs,
) -> (Vec<f32>, Vec<f32>) {
    let (o, i, kh, kw) = (a.out_channels, a.in_channels, a.kernel[0], a.kernel[1]);
    let blocks = o.div_ceil(CONV_LANES);
    let mut packed = vec![0.0; blocks * kh * kw * i * CONV_LANES];
    let mut at = 0;
    for b in 0..blocks {
        for ky in 0..kh {
            for kx in 0..kw {
                for ci in 0..i {
                    for lane in 0..CONV_LANES {
                        let co = b * CONV_LANES + lane;
                        if co < o {
                            packed[at] = weight[((co * i + ci) * kh + ky) * kw + kx];
                        }
                        at += 1;
                    }
                }
            }
        }
    }
    let bias = match bias {
        Some(b) => pad(b, CONV_LANES),
        None => vec![0.0; blocks * CONV_LANES],
    };
    (packed, bias)
}

/// Linear weights `[O, I]` in the order of [`LinearKernel`].
fn pack_linear(weight: &[f32], inputs: usize, outputs: usize) -> Vec<f32> {
    let blocks = outputs.div_ceil(LINEAR_LANES);
    let mut packed = vec![0.0; blocks * inputs * LINEAR_LANES];
    for b in 0..blocks {
        for k in 0..inputs {
            for lane in 0..LINEAR_LANES {
                let o = b * LINEAR_LANES + lane;
                if o < outputs {
                    packed[(b * inputs + k) * LINEAR_LANES + lane] = weight[o * inputs + k];
                }
            }
        }
    }
    packed
}
