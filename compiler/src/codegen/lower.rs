//! Lowering an optimized, planned graph to a [`Program`]: one [`Kernel`] per schedule step with
//! every shape, stride and arena offset fixed, and the weights packed in the order the kernels read
//! them.

use std::collections::HashMap;

use inceptc_ir::op::{AvgPoolAttrs, Op, PoolAttrs};
use inceptc_ir::{Graph, NodeId, Shape};

use super::tile::{self, Tier, Tile, TileNeeds};
use super::{cost, winograd, CodegenError};
use crate::plan::{plan_guarded, Buffer, MemoryPlan};
use inceptc_runtime::exec::Guard;
use inceptc_runtime::layout::{Layout, MapLayout, VecLayout};
use inceptc_runtime::pack::{self, ConvPacking, Recipe, Segment};

/// Output features per step of a linear layer: one f32x4 vector.
pub const LINEAR_LANES: usize = 4;
/// Alignment of every packed weight segment, in bytes.
pub const WEIGHT_ALIGN: usize = 64;

/// One output range of a convolution kernel: `channels` output channels whose packed weights
/// start at `weights` and bias at `bias` (byte offsets into the weight blob), written to `out`.
///
/// Packed weights: for each panel of the kernel's register tile ([`Tile::panels`]), the taps in
/// order `ky`, `kx`, then the input channels, each a row of the panel's width in floats (zero past
/// its channels); panel `p` starts at `weights + p.first · taps · input channels · 4`. Bias: the
/// channels, zero-padded to [`Tile::padded`].
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
/// 1×1 convs has several). Its units are output rows (image, row), or pixel tiles when `flat`;
/// [`ConvKernel::split`] makes work items of them.
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
    /// The register tile.
    pub register: Tile,
    /// How units and output channels form work items.
    pub split: Split,
}

/// How a direct convolution's work items are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// One work item per unit, covering every output channel (the AVX2 tier).
    Units,
    /// Per range, every weight panel × `groups` groups of units, panel-major: a panel's weights
    /// stay in cache while one thread computes consecutive groups with it, instead of every
    /// unit streaming the whole layer's weights (the AVX-512 tier).
    Panels { groups: usize },
}

/// Work items per range's panel (see [`Split::Panels`]) for `units` units and `panels` panels in
/// all: enough items that each of up to 16 threads gets 4, without splitting a panel's units
/// into groups of fewer than 4.
fn panel_groups(units: usize, panels: usize) -> usize {
    const ITEMS: usize = 64;
    let wanted = ITEMS.div_ceil(panels.max(1));
    wanted.min(units.div_ceil(4)).clamp(1, units.max(1))
}

/// A stride-1 convolution computed in Winograd tiles F(m_y × m_x, r_y × r_x) (see
/// [`super::winograd`]): each work item transforms the input tiles of `group` tile rows of one
/// image into its scratch, multiplies them by the transformed weights one point at a time (a
/// matrix product through [`super::emit`]'s register tile), and transforms the products back,
/// adding bias and residual and applying ReLU.
///
/// Packed weights per range: for each panel of the register tile, for each of the L_y·L_x points,
/// the input channels, each a row of the panel's width in floats. Bias as for [`ConvRange`].
#[derive(Clone, Debug)]
pub struct WinogradKernel {
    pub input: MapLayout,
    pub kernel: [usize; 2],
    pub padding: [usize; 2],
    /// Outputs per tile along y and x (`m`); 1 along an axis with a 1-tap kernel.
    pub tile: [usize; 2],
    pub out_h: usize,
    pub out_w: usize,
    pub ranges: Vec<ConvRange>,
    pub residual: Option<MapLayout>,
    /// Tile rows per work item.
    pub group: usize,
    /// Arena offset of the scratch: work item `i` owns [`WinogradKernel::item_scratch`] bytes
    /// from `scratch + i · item_scratch`.
    pub scratch: usize,
    /// The register tile of the point-wise products.
    pub register: Tile,
}

impl ConvKernel {
    /// Output rows, or pixel tiles when `flat`.
    pub fn units(&self) -> usize {
        match self.flat {
            true => (self.input.n * self.out_h * self.out_w).div_ceil(self.register.pixels),
            false => self.input.n * self.out_h,
        }
    }

    /// What the cost model and the FLOP count see.
    pub fn shape(&self) -> cost::ConvShape {
        cost::ConvShape {
            images: self.input.n,
            in_channels: self.input.channels,
            out_channels: self.ranges.iter().map(|r| r.channels).sum(),
            out: [self.out_h, self.out_w],
            kernel: self.kernel,
            stride: self.stride,
        }
    }
}

impl WinogradKernel {
    /// What the cost model and the FLOP count see (those of the direct convolution).
    pub fn shape(&self) -> cost::ConvShape {
        cost::ConvShape {
            images: self.input.n,
            in_channels: self.input.channels,
            out_channels: self.ranges.iter().map(|r| r.channels).sum(),
            out: [self.out_h, self.out_w],
            kernel: self.kernel,
            stride: [1, 1],
        }
    }

    /// Tiles per image along y and x.
    pub fn tiles(&self) -> [usize; 2] {
        [
            self.out_h.div_ceil(self.tile[0]),
            self.out_w.div_ceil(self.tile[1]),
        ]
    }

    /// Points per tile along y and x (`m + r − 1`).
    pub fn points(&self) -> [usize; 2] {
        [
            self.tile[0] + self.kernel[0] - 1,
            self.tile[1] + self.kernel[1] - 1,
        ]
    }

    /// Work items per image.
    pub fn groups(&self) -> usize {
        self.tiles()[0].div_ceil(self.group)
    }

    /// Tiles one work item transforms (the last item of an image may use fewer).
    pub fn item_tiles(&self) -> usize {
        self.group * self.tiles()[1]
    }

    /// Bytes of a work item's transformed input (points × tiles × input channels).
    pub fn input_scratch(&self) -> usize {
        let [ly, lx] = self.points();
        ly * lx * self.item_tiles() * self.input.channels * MapLayout::F32
    }

    /// Offset in a work item's scratch of the staging buffer a two-axis transform passes one
    /// tile's vectors through (points × 4 floats), after the transformed input and the products
    /// of one panel of output channels (points × tiles × [`Tile::panel`]).
    pub fn stage_offset(&self) -> usize {
        let [ly, lx] = self.points();
        self.input_scratch() + ly * lx * self.item_tiles() * self.register.panel() * MapLayout::F32
    }

    /// Bytes of scratch one work item owns (see [`WinogradKernel::stage_offset`]).
    pub fn item_scratch(&self) -> usize {
        let [ly, lx] = self.points();
        (self.stage_offset() + ly * lx * 4 * MapLayout::F32).next_multiple_of(WEIGHT_ALIGN)
    }
}

/// The fraction of `count` items' tiles of `tile` that is filled: `count / (⌈count / tile⌉ · tile)`.
pub fn tile_fill(count: usize, tile: usize) -> f64 {
    count as f64 / (count.div_ceil(tile) * tile) as f64
}

/// [`winograd_group`] for a convolution from `input` to `out` in Winograd tiles `tile`, its
/// products in register tiles `register`.
fn winograd_group_for(
    input: &MapLayout,
    out: &MapLayout,
    tile: [usize; 2],
    register: &Tile,
) -> usize {
    let [th, tw] = [out.h.div_ceil(tile[0]), out.w.div_ceil(tile[1])];
    winograd_group(input.n, th, tw, register.pixels)
}

/// The register tile of a Winograd convolution's products: runs of up to 48 transformed tiles
/// (see [`winograd_group`]), the input channels per step.
fn winograd_register(tier: Tier, input: &MapLayout, out: &MapLayout, out_channels: usize) -> Tile {
    tile::choose(TileNeeds {
        tier,
        in_channels: input.channels,
        steps: input.channels,
        pixel_step: input.channels * MapLayout::F32,
        run: (out.h.div_ceil(2) * out.w.div_ceil(2)).clamp(1, 48),
        out_channels,
    })
}

/// Tile rows per Winograd work item for `tile_rows` × `tile_columns` tiles over `images` images,
/// multiplied in register tiles of `register` tiles: enough tiles per item to fill register tiles,
/// items spread evenly over two threads.
pub fn winograd_group(
    images: usize,
    tile_rows: usize,
    tile_columns: usize,
    register: usize,
) -> usize {
    let time = |group: usize| {
        let tiles = group * tile_columns;
        let fill = tile_fill(tiles, register);
        let items = images * tile_rows.div_ceil(group);
        (items.div_ceil(2) * group) as f64 / fill
    };
    // Fewest tiles wins ties (more items for more threads); at most 48 tiles per item (the
    // scratch grows with them).
    (1..=tile_rows)
        .filter(|g| g * tile_columns <= 48 || *g == 1)
        .min_by(|a, b| time(*a).total_cmp(&time(*b)))
        .unwrap_or(1)
}

/// How convolutions are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// Per layer, whichever the cost model predicts faster ([`super::cost`]).
    #[default]
    Auto,
    /// Direct convolution everywhere.
    Direct,
    /// Winograd wherever a tile applies (stride 1, a 3- or 7-tap axis, input channels a multiple
    /// of 4), the tile the cost model prefers.
    Winograd,
    /// Test-only: Winograd with these outputs per tile (y, x) wherever it applies.
    #[doc(hidden)]
    WinogradTile([usize; 2]),
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

/// `y = x · Wᵀ + b`. Without a register tile (the AVX2 tier): packed weights, for each block of
/// [`LINEAR_LANES`] outputs (zero-padded), the input features in order, each a row of
/// [`LINEAR_LANES`] floats; bias zero-padded likewise; work items are rows. With one (the
/// AVX-512 tier): a 1×1 convolution over the rows as pixels, weights in the tile's panels as
/// [`ConvRange`]'s, a bias always (zeros without one); work items are panels, each over every
/// row.
#[derive(Clone, Debug)]
pub struct LinearKernel {
    pub input: VecLayout,
    pub out: VecLayout,
    pub weights: usize,
    pub bias: Option<usize>,
    pub register: Option<Tile>,
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
    Winograd(WinogradKernel),
    Pool(PoolKernel),
    GlobalPool(GlobalPoolKernel),
    Linear(LinearKernel),
    L2Norm(L2NormKernel),
}

impl Kernel {
    /// How many independent work items the kernel splits into (the range a call covers).
    pub fn items(&self) -> usize {
        match self {
            Kernel::Conv(k) => match k.split {
                Split::Units => k.units(),
                Split::Panels { groups } => {
                    let panels: usize = k
                        .ranges
                        .iter()
                        .map(|r| k.register.panels(r.channels).len())
                        .sum();
                    panels * groups
                }
            },
            Kernel::Winograd(k) => k.input.n * k.groups(),
            Kernel::Pool(k) => k.out.n * k.out.h,
            Kernel::GlobalPool(k) => k.out.n,
            Kernel::Linear(k) => match k.register {
                Some(register) => register.panels(k.out.features).len(),
                None => k.out.n,
            },
            Kernel::L2Norm(k) => k.out.n,
        }
    }

    /// Floating-point operations of one whole call (2 per multiply–add), for throughput figures;
    /// a Winograd convolution counts the direct convolution's.
    pub fn flops(&self) -> u64 {
        match self {
            Kernel::Conv(k) => k.shape().flops(),
            Kernel::Winograd(k) => k.shape().flops(),
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
    /// The weights an executable stores, from which [`Program::segments`] make the packed ones
    /// the kernels read, at start-up ([`Program::packed_weights`] in process).
    pub stored: Vec<f32>,
    pub segments: Vec<Segment>,
    /// Bytes of the packed weights: 64-byte-aligned segments of little-endian f32.
    pub packed_bytes: usize,
    /// Where the runtime writes the NCHW input (converted to NHWC).
    pub input: MapLayout,
    /// Where the outputs are after the last step (each output's whole value), in the graph's
    /// output order.
    pub outputs: Vec<Layout>,
    /// Buffers the runtime watches for out-of-bounds writes (`--check-bounds`); empty otherwise.
    pub guards: Vec<Guard>,
    /// The instruction-set tier of its register tiles.
    pub tier: Tier,
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
    /// Direct or Winograd convolutions.
    pub conv: ConvAlgorithm,
    /// The instruction-set tier of the register tiles.
    pub tier: Tier,
}

impl Program {
    /// The packed weights the kernels read, made from the stored ones as an executable makes
    /// them at start-up.
    pub fn packed_weights(&self) -> Vec<u8> {
        let mut packed = vec![0u8; self.packed_bytes];
        pack::pack(&self.stored, &self.segments, &mut packed)
            .expect("segments the lowering made fit their weights");
        packed
    }

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
            conv: options.conv,
            tier: options.tier,
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
        // Winograd scratch: one region after the buffers, shared by the steps (they run one at a
        // time), as large as the largest step's.
        let scratch = plan.arena_bytes.next_multiple_of(WEIGHT_ALIGN);
        let mut scratch_bytes = 0;
        for step in &mut steps {
            if let Some(Kernel::Winograd(k)) = &mut step.kernel {
                k.scratch = scratch;
                scratch_bytes = scratch_bytes.max(k.item_scratch() * k.input.n * k.groups());
            }
        }
        let arena_bytes = match scratch_bytes {
            0 => plan.arena_bytes,
            b => scratch + b,
        };
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
            arena_bytes,
            packed_bytes: weights.end,
            stored: weights.stored,
            segments: weights.segments,
            input,
            outputs,
            guards,
            tier: options.tier,
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

/// The weights under construction: what an executable stores, and how each packed segment is
/// made from it (see [`inceptc_runtime::pack`]).
#[derive(Default)]
struct WeightBlob {
    stored: Vec<f32>,
    segments: Vec<Segment>,
    /// Bytes of the packed weights so far.
    end: usize,
}

impl WeightBlob {
    /// Appends a segment made by `recipe` from `values`, stored as they are; returns its byte
    /// offset in the packed weights (aligned to [`WEIGHT_ALIGN`]).
    fn push_recipe(&mut self, values: &[f32], recipe: Recipe) -> usize {
        let offset = self.end.next_multiple_of(WEIGHT_ALIGN);
        let floats = recipe
            .packed_floats()
            .expect("a segment the lowering sized");
        let segment = Segment {
            offset,
            source: self.stored.len(),
            recipe,
        };
        self.stored.extend_from_slice(values);
        self.segments.push(segment);
        self.end = offset + 4 * floats;
        offset
    }

    /// Appends `values`, packed as they are.
    fn push(&mut self, values: &[f32]) -> usize {
        let floats = values.len();
        self.push_recipe(values, Recipe::Copy { floats })
    }
}

struct Lowering<'a> {
    graph: &'a Graph,
    plan: &'a MemoryPlan,
    shapes: &'a HashMap<NodeId, Shape>,
    /// See [`LowerOptions::inject_fault`].
    fault: Option<&'a str>,
    conv: ConvAlgorithm,
    tier: Tier,
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

    /// The register tile of a direct convolution and whether it runs flat (see
    /// [`ConvKernel::flat`]).
    fn direct_register(
        &self,
        f: &inceptc_ir::op::FusedConvAttrs,
        input: &MapLayout,
        out: &MapLayout,
        out_channels: usize,
    ) -> (Tile, bool) {
        let needs = TileNeeds {
            tier: self.tier,
            in_channels: input.channels,
            steps: f.conv.kernel[0] * f.conv.kernel[1] * input.channels,
            pixel_step: f.conv.stride[1] * input.pixel_stride(),
            run: out.w,
            out_channels,
        };
        let row = tile::choose(needs);
        let can_flatten = f.conv.kernel == [1, 1]
            && f.conv.stride == [1, 1]
            && f.conv.padding == [0, 0]
            && input.halo == [0, 0];
        if !can_flatten {
            return (row, false);
        }
        match row.isa {
            // Row tiles leave the ends of short rows badly filled (8 pixels in 6-pixel tiles: a
            // 6-tile and a 2-tile); flat tiles fill all but the last. Where rows fill their tiles
            // to 90 % or more, row tiles measured as fast or faster.
            tile::Isa::Sse | tile::Isa::Avx2 => (row, tile_fill(out.w, row.pixels) < 0.9),
            tile::Isa::Avx512 => {
                let run = input.n * out.h * out.w;
                (tile::choose(TileNeeds { run, ..needs }), true)
            }
        }
    }

    /// The Winograd tile (outputs along y and x) for a convolution, its tile rows per work item
    /// and its products' register tile, or `None` for the direct path: by [`ConvAlgorithm`], and
    /// under `Auto` only where the cost model predicts it faster than `direct` (the direct
    /// path's register tile, over runs of `direct_run` pixels).
    fn winograd_tile(
        &self,
        f: &inceptc_ir::op::FusedConvAttrs,
        input: &MapLayout,
        out: &MapLayout,
        out_channels: usize,
        direct: (&Tile, usize),
    ) -> Option<([usize; 2], usize, Tile)> {
        let [ry, rx] = f.conv.kernel;
        let applies = f.conv.stride == [1, 1]
            && [ry, rx] != [1, 1]
            && input.channels.is_multiple_of(4)
            && !winograd::choices(ry).is_empty()
            && !winograd::choices(rx).is_empty();
        if !applies || self.conv == ConvAlgorithm::Direct {
            return None;
        }
        let register = winograd_register(self.tier, input, out, out_channels);
        if let ConvAlgorithm::WinogradTile(t) = self.conv {
            let fits = |m: usize, r: usize| winograd::choices(r).contains(&m);
            return (fits(t[0], ry) && fits(t[1], rx))
                .then(|| (t, winograd_group_for(input, out, t, &register), register));
        }
        let shape = cost::ConvShape {
            images: input.n,
            in_channels: input.channels,
            out_channels,
            out: [out.h, out.w],
            kernel: f.conv.kernel,
            stride: f.conv.stride,
        };
        // Square kernels take square tiles; a 1-tap axis takes 1.
        let tiles = winograd::choices(ry.max(rx))
            .iter()
            .map(|&m| [if ry == 1 { 1 } else { m }, if rx == 1 { 1 } else { m }]);
        let (best, time) = tiles
            .map(|t| {
                let group = winograd_group_for(input, out, t, &register);
                (
                    (t, group, register),
                    cost::winograd_time(&shape, t, group, &register),
                )
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        match self.conv {
            ConvAlgorithm::Winograd => Some(best),
            _ => (time < cost::direct_time(&shape, direct.0, direct.1)).then_some(best),
        }
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
                let input = self.read_map(operand)?;
                let out = self.map(id)?;
                let out_channels: usize = members
                    .iter()
                    .map(|m| match &self.graph.node(*m).op {
                        Op::FusedConv(g) => g.conv.out_channels,
                        _ => 0,
                    })
                    .sum();
                let (register, flat) = self.direct_register(f, &input, &out, out_channels);
                let run = match flat {
                    true => input.n * out.h * out.w,
                    false => out.w,
                };
                let winograd = self.winograd_tile(f, &input, &out, out_channels, (&register, run));
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
                    let packing = match winograd {
                        Some((tile, _, register)) => winograd_packing(&g.conv, tile, &register),
                        None => conv_packing(&g.conv, &register),
                    };
                    let reg = winograd.map_or(register, |w| w.2);
                    ranges.push(ConvRange {
                        node: self.graph.node(*m).name.clone(),
                        channels: g.conv.out_channels,
                        relu: g.relu,
                        weights: blob.push_recipe(weight, Recipe::Conv(packing)),
                        bias: blob.push(&pack_bias(bias, g.conv.out_channels, &reg)),
                        out: self.conv_out(*m)?,
                    });
                }
                let residual = match f.residual {
                    true => Some(self.read_map(self.graph.inputs(id)[1])?),
                    false => None,
                };
                if let Some((tile, group, register)) = winograd {
                    return Ok(Kernel::Winograd(WinogradKernel {
                        input,
                        kernel: f.conv.kernel,
                        padding: f.conv.padding,
                        tile,
                        out_h: out.h,
                        out_w: out.w,
                        ranges,
                        residual,
                        group,
                        scratch: 0,
                        register,
                    }));
                }
                let mut conv = ConvKernel {
                    input,
                    flat,
                    kernel: f.conv.kernel,
                    stride: f.conv.stride,
                    padding: f.conv.padding,
                    out_h: out.h,
                    out_w: out.w,
                    ranges,
                    residual,
                    register,
                    split: Split::Units,
                };
                if register.isa == tile::Isa::Avx512 {
                    let panels = conv
                        .ranges
                        .iter()
                        .map(|r| register.panels(r.channels).len())
                        .sum();
                    conv.split = Split::Panels {
                        groups: panel_groups(conv.units(), panels),
                    };
                }
                conv.into()
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
                let input = self.read_vector(operand)?;
                let weight = self.param(id, "weight")?;
                let bias = match a.bias {
                    true => Some(self.param(id, "bias")?),
                    false => None,
                };
                if self.tier == Tier::V4 {
                    let register = tile::choose(TileNeeds {
                        tier: self.tier,
                        in_channels: a.in_features,
                        steps: a.in_features,
                        pixel_step: input.row_stride(),
                        run: input.n,
                        out_channels: a.out_features,
                    });
                    let packing = ConvPacking {
                        out: a.out_features,
                        inputs: a.in_features,
                        kernel: [1, 1],
                        transform: None,
                        panels: panels_of(a.out_features, &register),
                    };
                    return Ok(Kernel::Linear(LinearKernel {
                        input,
                        out: self.vector(id)?,
                        weights: blob.push_recipe(weight, Recipe::Conv(packing)),
                        bias: Some(blob.push(&pack_bias(bias, a.out_features, &register))),
                        register: Some(register),
                    }));
                }
                let w = pack_linear(weight, a.in_features, a.out_features);
                let bias = bias.map(|b| blob.push(&pad(b, LINEAR_LANES)));
                Kernel::Linear(LinearKernel {
                    input,
                    out: self.vector(id)?,
                    weights: blob.push(&w),
                    bias,
                    register: None,
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

/// A range's bias, padded for `register` (zeros without one).
fn pack_bias(bias: Option<&[f32]>, channels: usize, register: &Tile) -> Vec<f32> {
    let mut b = bias.map_or_else(Vec::new, <[f32]>::to_vec);
    b.resize(register.padded(channels), 0.0);
    b
}

/// How a convolution's `[O, I, KH, KW]` weights are packed for `register`: panels of its tile,
/// taps row-major (the order of [`ConvRange`]).
fn conv_packing(a: &inceptc_ir::op::Conv2dAttrs, register: &Tile) -> ConvPacking {
    ConvPacking {
        out: a.out_channels,
        inputs: a.in_channels,
        kernel: a.kernel,
        transform: None,
        panels: panels_of(a.out_channels, register),
    }
}

/// How a convolution's `[O, I, KH, KW]` weights are transformed for Winograd tile `tile` and
/// packed for `register` (the order of [`WinogradKernel`]).
fn winograd_packing(
    a: &inceptc_ir::op::Conv2dAttrs,
    tile: [usize; 2],
    register: &Tile,
) -> ConvPacking {
    // The lowering offers only tiles `winograd::choices` lists, which all exist.
    let g = |m: usize, r: usize| -> Vec<f64> {
        let t = winograd::Transform::new(m, r).expect("an offered Winograd tile");
        t.g.concat()
    };
    ConvPacking {
        transform: Some([g(tile[0], a.kernel[0]), g(tile[1], a.kernel[1])]),
        ..conv_packing(a, register)
    }
}

/// `register`'s panels of `channels` output channels as [`ConvPacking::panels`] lists them.
fn panels_of(channels: usize, register: &Tile) -> Vec<[usize; 3]> {
    register
        .panels(channels)
        .iter()
        .map(|p| [p.first, p.channels, p.width])
        .collect()
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
