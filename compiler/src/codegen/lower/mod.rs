//! Lowering an optimized, planned graph to a [`Program`]: one [`Kernel`] per schedule step with
//! every shape, stride and arena offset fixed, and the weights packed in the order the kernels read
//! them. `kernels` defines the kernels, this module lowers the graph to them, and `packing`
//! builds the weight blob.

use std::collections::HashMap;

use inceptc_ir::op::{AvgPoolAttrs, Op, PoolAttrs};
use inceptc_ir::quant::{self, Int8Params};
use inceptc_ir::{Graph, NodeId, Shape};

use super::tile::{self, tile_fill, Tier, Tile, TileNeeds};
use super::x86::AMX_CHANNELS;
use super::{cost, report, winograd, CodegenError};
use crate::plan::{balance, plan_deferred, plan_guarded, Buffer, MemoryPlan, Storage};
use inceptc_runtime::desc::Guard;
use inceptc_runtime::layout::{Layout, MapLayout, Precision, Quant, VecLayout};
use inceptc_runtime::pack::{self, ConvPacking, Recipe, Segment};

mod kernels;
mod packing;

pub use kernels::*;
use packing::*;

/// Accumulators of the u8 tile at most (`x86::Data::U8S8`).
pub const U8_ACCUMULATORS: usize = 28;

/// Output features per step of a linear layer: one f32x4 vector.
pub const LINEAR_LANES: usize = 4;

/// Alignment of every packed weight segment, in bytes.
pub const WEIGHT_ALIGN: usize = 64;

/// One step of the program: its kernel (none for the graph's input), the node names it covers,
/// its block, the halos to clear before it runs (buffers it is the first to write), and whether
/// it runs concurrently with the step before (one stage of the plan).
#[derive(Clone, Debug)]
pub struct Step {
    /// What it computes; `None` for the input step.
    pub kernel: Option<Kernel>,
    /// The graph nodes it covers.
    pub nodes: Vec<String>,
    /// Index into [`Program::blocks`].
    pub block: usize,
    /// Halos to zero before it runs.
    pub clear_halos: Vec<MapLayout>,
    /// Whether it runs in the same stage as the step before: their work items are handed out
    /// from one range.
    pub joins: bool,
}

/// A network ready for code generation at one batch size and input size.
#[derive(Clone, Debug)]
pub struct Program {
    /// The network's name.
    pub name: String,
    /// Images per run.
    pub batch: usize,
    /// Input height and width.
    pub image: [usize; 2],
    /// The steps, in execution order.
    pub steps: Vec<Step>,
    /// Block names; [`Step::block`] indexes them.
    pub blocks: Vec<String>,
    /// Bytes of the arena.
    pub arena_bytes: usize,
    /// The weights an executable stores, from which [`Program::segments`] make the packed ones
    /// the kernels read, at start-up ([`Program::packed_weights`] in process).
    pub stored: Vec<f32>,
    /// How many of the stored values, at the start, are int8 weight codes (which the
    /// executable stores one byte each); 0 outside int8.
    pub codes: usize,
    /// How each packed segment is made from the stored weights.
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
    /// What the feature maps are in the arena.
    pub precision: Precision,
    /// Whether some kernel calls the AMX tile (the executable asks for AMX at start-up).
    pub amx: bool,
}

/// A Winograd convolution's tile, split and products' register tile (see [`WinogradKernel`]).
struct Winograd {
    tile: [usize; 2],
    group: usize,
    parts: usize,
    register: Tile,
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
    /// What the feature maps are in the arena: f32, or bf16 with bf16 weights, f32
    /// accumulation and direct convolutions only (x86-64-v4).
    pub precision: Precision,
    /// Whether bf16 convolutions whose input channels are a multiple of 32, and int8 ones whose
    /// input channels are a multiple of 64, use the AMX tile (a CPU with AMX-BF16, or AMX-INT8
    /// for int8: `--target-cpu sapphirerapids`, or `native` on one).
    pub amx: bool,
    /// The u8 parameters of every feature map, from calibration (`Precision::U8` only).
    pub int8: Int8Params,
    /// The thread count the work splits are chosen for (`inceptc compile --threads`); up to 2
    /// (and 0, the default) keeps the splits made for two threads.
    pub threads: usize,
    /// Test-only: every Winograd convolution splits its panels in this many parts (at most one
    /// per panel).
    #[doc(hidden)]
    pub winograd_parts: Option<usize>,
    /// Test-only: every convolution split by panels numbers its items this way (else by its
    /// weights' size, see [`GROUP_MAJOR_WEIGHTS`]).
    #[doc(hidden)]
    pub item_order: Option<ItemOrder>,
    /// Test-only: every kernel runs in the stage of its level, none is moved to balance the
    /// stages (see [`crate::plan::balance`]).
    #[doc(hidden)]
    pub keep_levels: bool,
}

impl Program {
    /// The names of the graph nodes whose convolutions run on AMX tiles: in bf16, an
    /// executable's values are [`inceptc_ir::interp::run_bf16_amx`]'s with these.
    pub fn amx_nodes(&self) -> std::collections::HashSet<String> {
        self.steps
            .iter()
            .filter(
                |s| matches!(&s.kernel, Some(Kernel::Conv(k)) if k.register.isa == tile::Isa::Amx),
            )
            .flat_map(|s| s.nodes.iter().cloned())
            .collect()
    }

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
        if options.precision != Precision::F32 && options.tier != Tier::V4 {
            return Err(CodegenError::Precision {
                precision: options.precision.name(),
                tier: options.tier.name(),
            });
        }
        // AMX reads 16 dwords of a pixel a step (32 bf16 channels, 64 u8 ones): maps of as many
        // channels or more are padded to a multiple.
        let amx = options.amx && matches!(options.precision, Precision::Bf16 | Precision::U8);
        let separated = match options.precision {
            Precision::U8 => separate_zero_points(graph, &options.int8),
            _ => None,
        };
        let graph = separated.as_ref().unwrap_or(graph);
        let storage = Storage {
            precision: options.precision,
            granule: match amx {
                true => AMX_CHANNELS / 2 * options.precision.per_dword(),
                false => 1,
            },
        };
        let plan = plan_guarded(graph, batch, height, width, options.check_bounds, storage)?;
        // Kernels with slack move into a later stage of their block where the cost model
        // predicts the stages faster on the threads the splits are for (two at least), and the
        // plan that makes is kept if it predicts faster in all.
        let threads = options.threads.max(2);
        let works = |plan: &MemoryPlan| -> Result<Vec<Option<report::Work>>, CodegenError> {
            let lowering = Lowering::new(graph, plan, options, amx);
            let mut scratch = WeightBlob::default();
            plan.steps
                .iter()
                .map(|members| match graph.node(members[0]).op {
                    Op::Input(_) => Ok(None),
                    _ => {
                        let k = lowering.kernel(members, &mut scratch)?;
                        Ok(Some(report::Work::of(&k, report::predicted(&k))))
                    }
                })
                .collect()
        };
        let stage_time = |works: &[Option<report::Work>], steps: &[usize]| {
            let stage: Option<Vec<report::Work>> = steps.iter().map(|s| works[*s]).collect();
            stage.map(|stage| report::stage_time(&stage, threads))
        };
        let total = |plan: &MemoryPlan, works: &[Option<report::Work>]| -> f64 {
            plan.stages
                .iter()
                .map(|stage| {
                    let steps: Vec<usize> = stage.clone().collect();
                    stage_time(works, &steps).unwrap_or(0.0)
                })
                .sum()
        };
        let plan = match options.keep_levels {
            true => plan,
            false => {
                let before = works(&plan)?;
                let blocks: Vec<&str> = plan
                    .steps
                    .iter()
                    .map(|m| graph.node(m[0]).block.as_str())
                    .collect();
                let defer = balance(&plan, &blocks, |steps| stage_time(&before, steps));
                match defer.is_empty() {
                    true => plan,
                    false => {
                        let moved = plan_deferred(
                            graph,
                            batch,
                            height,
                            width,
                            options.check_bounds,
                            storage,
                            &defer,
                        )?;
                        let after = works(&moved)?;
                        match total(&moved, &after) < total(&plan, &before) {
                            true => moved,
                            false => plan,
                        }
                    }
                }
            }
        };
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
            fault: options.inject_fault.as_deref(),
            ..Lowering::new(graph, &plan, options, amx)
        };
        let halo_quants = halo_quants(graph, &plan, &options.int8, options.precision)?;
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
                .zip(&halo_quants)
                .filter(|(b, _)| b.live[0] == s && needs_clearing(b))
                .filter_map(|(b, q)| halo_layout(b, *q))
                .collect();
            steps.push(Step {
                kernel,
                nodes: members
                    .iter()
                    .map(|m| graph.node(*m).name.clone())
                    .collect(),
                block,
                clear_halos,
                joins: plan
                    .stages
                    .iter()
                    .any(|stage| stage.start < s && s < stage.end),
            });
        }
        let input = input.ok_or(CodegenError::NoInput)?;
        // Winograd scratch: one region after the buffers, shared by the stages (they run one at
        // a time); the Winograd kernels of a stage take consecutive parts of it.
        let scratch = plan.arena_bytes.next_multiple_of(WEIGHT_ALIGN);
        let mut scratch_bytes = 0;
        for stage in &plan.stages {
            let mut offset = scratch;
            for step in &mut steps[stage.clone()] {
                if let Some(Kernel::Winograd(k)) = &mut step.kernel {
                    k.scratch = offset;
                    offset += (k.item_scratch() * k.items()).next_multiple_of(WEIGHT_ALIGN);
                }
            }
            scratch_bytes = scratch_bytes.max(offset - scratch);
        }
        let arena_bytes = match scratch_bytes {
            0 => plan.arena_bytes,
            b => scratch + b,
        };
        let outputs = graph
            .outputs()
            .iter()
            .map(|o| match lowering.layout(*o)? {
                Layout::Map(_) => Ok(Layout::Map(lowering.read_map(*o)?)),
                Layout::Vector(_) => Ok(Layout::Vector(lowering.read_vector(*o)?)),
            })
            .collect::<Result<_, CodegenError>>()?;
        let guards = match options.check_bounds {
            false => Vec::new(),
            true => plan
                .buffers
                .iter()
                .zip(&halo_quants)
                .map(|(b, q)| Guard {
                    buffer: b.name.clone(),
                    offset: b.data_offset(),
                    bytes: b.data_bytes(),
                    guard: b.guard,
                    live: b.live,
                    halo: halo_layout(b, *q).filter(|_| needs_clearing(b)),
                })
                .collect(),
        };
        let packed_bytes = weights.end;
        let (mut stored, codes, segments) = weights.finish();
        if options.precision == Precision::Bf16 {
            // Every parameter is stored as bf16 (`WeightsDtype::Bf16`): round here, so that
            // in-process code runs on the executable's values.
            stored
                .iter_mut()
                .for_each(|v| *v = Precision::Bf16.round(*v));
        }
        let amx = steps.iter().any(|s| match &s.kernel {
            Some(Kernel::Conv(k)) => k.register.isa == tile::Isa::Amx,
            _ => false,
        });
        Ok(Program {
            name: graph.name.clone(),
            batch,
            image: [height, width],
            steps,
            blocks,
            arena_bytes,
            packed_bytes,
            stored,
            codes,
            segments,
            input,
            outputs,
            guards,
            tier: options.tier,
            precision: options.precision,
            amx,
        })
    }
}

/// Whether a buffer has zeros to keep: a halo, or channels that pad its pixels to whole dwords
/// (see [`MapLayout::padding_channels`]).
fn needs_clearing(b: &Buffer) -> bool {
    b.halo != [0, 0] || b.channels() > b.shape.channels()
}

/// `graph` with every in-place residual convolution whose output's zero point differs from its
/// residual's written to a buffer of its own (a buffer's halo holds one zero point, int8), or
/// `None` when there is none (the graph, weights and all, is copied only then).
fn separate_zero_points(graph: &Graph, int8: &Int8Params) -> Option<Graph> {
    let differs: Vec<NodeId> = graph
        .node_ids()
        .filter(|id| match &graph.node(*id).op {
            Op::FusedConv(f) if f.in_place && f.residual => {
                int8.of(*id).zero != int8.of(graph.inputs(*id)[1]).zero
            }
            _ => false,
        })
        .collect();
    if differs.is_empty() {
        return None;
    }
    let mut g = graph.clone();
    for id in differs {
        if let Op::FusedConv(f) = &mut g.node_mut(id).op {
            f.in_place = false;
        }
    }
    Some(g)
}

/// The u8 parameters whose zero point each buffer's halo holds (int8; the default otherwise):
/// those of the values placed in it, which must agree on the zero point where the buffer has a
/// halo ([`separate_zero_points`] has given the in-place residuals that would not a buffer of
/// their own; anything else that disagrees is refused).
fn halo_quants(
    graph: &Graph,
    plan: &MemoryPlan,
    int8: &Int8Params,
    precision: Precision,
) -> Result<Vec<Quant>, CodegenError> {
    let mut quants: Vec<Option<(Quant, NodeId)>> = vec![None; plan.buffers.len()];
    if precision != Precision::U8 {
        return Ok(vec![Quant::default(); plan.buffers.len()]);
    }
    let mut placed: Vec<(&NodeId, &crate::plan::Placement)> = plan.placements.iter().collect();
    placed.sort_by_key(|(id, _)| graph.node(**id).name.clone());
    for (id, place) in placed {
        let Some(q) = int8.values.get(id).copied() else {
            continue;
        };
        let buffer = &plan.buffers[place.buffer];
        match quants[place.buffer] {
            None => quants[place.buffer] = Some((q, *id)),
            Some((first, other)) if first.zero != q.zero && buffer.halo != [0, 0] => {
                return Err(CodegenError::HaloZeroPoints {
                    buffer: buffer.name.clone(),
                    values: [graph.node(other).name.clone(), graph.node(*id).name.clone()],
                    zeros: [first.zero, q.zero],
                })
            }
            Some(_) => {}
        }
    }
    Ok(quants
        .into_iter()
        .map(|q| q.map_or_else(Quant::default, |(q, _)| q))
        .collect())
}

/// The whole of map buffer `b` with parameters `q` (for its halo), or `None` for a vector.
fn halo_layout(b: &Buffer, q: Quant) -> Option<MapLayout> {
    match buffer_layout(b, 0, b.shape.channels()) {
        Layout::Map(m) => Some(MapLayout { quant: q, ..m }),
        Layout::Vector(_) => None,
    }
}

/// Channels `channel_offset .. channel_offset + channels` of `buffer`, as a layout.
fn buffer_layout(buffer: &Buffer, channel_offset: usize, channels: usize) -> Layout {
    match buffer.shape {
        Shape::Map { n, h, w, .. } => Layout::Map(MapLayout {
            offset: buffer.data_offset(),
            n,
            h,
            w,
            c_total: buffer.channels(),
            channel_offset,
            channels,
            halo: buffer.halo,
            precision: buffer.precision,
            quant: Quant::default(),
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

struct Lowering<'a> {
    graph: &'a Graph,
    plan: &'a MemoryPlan,
    shapes: &'a HashMap<NodeId, Shape>,
    /// See [`LowerOptions::inject_fault`].
    fault: Option<&'a str>,
    conv: ConvAlgorithm,
    tier: Tier,
    precision: Precision,
    /// Whether bf16 and int8 convolutions may use AMX tiles.
    amx: bool,
    /// See [`LowerOptions::int8`].
    int8: &'a Int8Params,
    /// See [`LowerOptions::threads`].
    threads: usize,
    /// See [`LowerOptions::winograd_parts`].
    winograd_parts: Option<usize>,
    /// See [`LowerOptions::item_order`].
    item_order: Option<ItemOrder>,
}

impl<'a> Lowering<'a> {
    /// The lowering of `graph`'s kernels in `plan` as `options` say, with AMX tiles where
    /// `amx`; no fault injected.
    fn new(
        graph: &'a Graph,
        plan: &'a MemoryPlan,
        options: &'a LowerOptions,
        amx: bool,
    ) -> Lowering<'a> {
        Lowering {
            graph,
            plan,
            shapes: &plan.shapes,
            fault: None,
            conv: options.conv,
            tier: options.tier,
            precision: options.precision,
            amx,
            int8: &options.int8,
            threads: options.threads,
            winograd_parts: options.winograd_parts,
            item_order: options.item_order,
        }
    }
}

impl Lowering<'_> {
    /// Where `id`'s result is written (its own channel range of its buffer), with its u8
    /// parameters in int8.
    fn layout(&self, id: NodeId) -> Result<Layout, CodegenError> {
        let place = self.plan.placements[&id];
        let buffer = &self.plan.buffers[place.buffer];
        let mut layout = buffer_layout(buffer, place.channel_offset, place.channels);
        if let Layout::Map(m) = &mut layout {
            if m.precision == Precision::U8 {
                m.quant =
                    self.int8.values.get(&id).copied().ok_or_else(|| {
                        CodegenError::Uncalibrated(self.graph.node(id).name.clone())
                    })?;
            }
        }
        Ok(layout)
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

    /// What a reader of `id` sees: the whole value, all channels of its buffer (without the
    /// padding channel of an odd bf16 count).
    fn read_map(&self, id: NodeId) -> Result<MapLayout, CodegenError> {
        let buffer = &self.plan.buffers[self.plan.placements[&id].buffer];
        Ok(MapLayout {
            channel_offset: 0,
            channels: buffer.shape.channels(),
            ..self.map(id)?
        })
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
            // A step is a dword of input: a channel, or a bf16 pair.
            steps: f.conv.kernel[0] * f.conv.kernel[1] * input.pixel_dwords(),
            pixel_step: f.conv.stride[1] * input.pixel_stride(),
            run: out.w,
            out_channels,
        };
        // One tap wide, stride 1, no padding or halo along x: consecutive output pixels read
        // consecutive input pixels at every tap, across rows (see `ConvKernel::flat`).
        let can_flatten = f.conv.kernel[1] == 1
            && f.conv.stride == [1, 1]
            && f.conv.padding[1] == 0
            && input.halo[1] == 0;
        let flat_run = kernels::flat_run(input, [out.h, out.w]);
        // AMX sums 16 dwords of input a step (32 bf16 or 64 u8 channels): layers with other
        // counts take the zmm tile.
        if self.amx && input.pixel_dwords().is_multiple_of(AMX_CHANNELS / 2) {
            return match can_flatten {
                true => (tile::amx(flat_run, out_channels), true),
                false => (tile::amx(out.w, out_channels), false),
            };
        }
        let row = tile::choose(needs);
        if !can_flatten {
            return (row, false);
        }
        match row.isa {
            // Row tiles leave the ends of short rows badly filled (8 pixels in 6-pixel tiles: a
            // 6-tile and a 2-tile); flat tiles fill all but the last. Where rows fill their tiles
            // to 90 % or more, row tiles measured as fast or faster.
            tile::Isa::Sse | tile::Isa::Avx2 => (row, tile_fill(out.w, row.pixels) < 0.9),
            tile::Isa::Avx512 | tile::Isa::Amx => (
                tile::choose(TileNeeds {
                    run: flat_run,
                    ..needs
                }),
                true,
            ),
        }
    }

    /// The Winograd tile (outputs along y and x) for a convolution, its tile rows per work item,
    /// its channel parts and its products' register tile, or `None` for the direct path: by
    /// [`ConvAlgorithm`], and under `Auto` only where the cost model predicts it faster than
    /// `direct` (the direct path's register tile, over runs of `direct_run` pixels, in
    /// `direct_items` work items) on the thread count the splits are for.
    fn winograd_tile(
        &self,
        f: &inceptc_ir::op::FusedConvAttrs,
        input: &MapLayout,
        out: &MapLayout,
        out_channels: usize,
        (direct, direct_run, direct_items): (&Tile, usize, usize),
    ) -> Option<Winograd> {
        let [ry, rx] = f.conv.kernel;
        let applies = f.conv.stride == [1, 1]
            && [ry, rx] != [1, 1]
            && input.channels.is_multiple_of(4)
            && !winograd::choices(ry).is_empty()
            && !winograd::choices(rx).is_empty();
        // bf16 convolutions are direct: their transforms would round in bf16 at every point.
        if !applies || self.conv == ConvAlgorithm::Direct || self.precision != Precision::F32 {
            return None;
        }
        let register = winograd_register(self.tier, input, out, out_channels);
        let shape = cost::ConvShape {
            images: input.n,
            in_channels: input.channels,
            out_channels,
            out: [out.h, out.w],
            kernel: f.conv.kernel,
            stride: f.conv.stride,
        };
        let panels = out_channels.div_ceil(register.panel());
        let threads = self.threads.max(1);
        // The tile `t` with its split, and its predicted time on `threads` threads.
        let with = |t: [usize; 2]| {
            let (group, parts) = match self.winograd_parts {
                Some(parts) => (
                    winograd_group_for(input, out, t, &register),
                    parts.clamp(1, panels),
                ),
                None => winograd_split(&shape, t, &register, panels, self.threads),
            };
            let work = report::Work::winograd(&shape, t, group, parts, &register);
            let time = match threads > 2 {
                true => work.time(threads),
                false => work.one,
            };
            let split = Winograd {
                tile: t,
                group,
                parts,
                register,
            };
            (split, time)
        };
        if let ConvAlgorithm::WinogradTile(t) = self.conv {
            let fits = |m: usize, r: usize| winograd::choices(r).contains(&m);
            return (fits(t[0], ry) && fits(t[1], rx)).then(|| with(t).0);
        }
        // Square kernels take square tiles; a 1-tap axis takes 1.
        let tiles = winograd::choices(ry.max(rx))
            .iter()
            .map(|&m| [if ry == 1 { 1 } else { m }, if rx == 1 { 1 } else { m }]);
        let (best, time) = tiles.map(with).min_by(|a, b| a.1.total_cmp(&b.1))?;
        let direct = cost::direct_time(&shape, direct, direct_run, self.precision);
        let direct = match threads > 2 {
            true => report::parallel_time(direct, direct_items, threads),
            false => direct,
        };
        match self.conv {
            ConvAlgorithm::Winograd => Some(best),
            _ => (time < direct).then_some(best),
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
                let register = match (input.precision, register.isa) {
                    // The u8 zmm tile's requantization needs four registers after the
                    // accumulators.
                    (Precision::U8, tile::Isa::Avx512) => Tile {
                        pixels: register.pixels.min(U8_ACCUMULATORS / register.vectors),
                        ..register
                    },
                    _ => register,
                };
                let run = match flat {
                    true => kernels::flat_run(&input, [out.h, out.w]),
                    false => out.w,
                };
                let direct_items = {
                    let units = conv_units(&input, [out.h, out.w], flat, register.pixels);
                    match register.isa {
                        tile::Isa::Avx512 | tile::Isa::Amx => {
                            let panels = register.panels(out_channels).len();
                            panels * panel_groups(units, panels, self.threads)
                        }
                        tile::Isa::Sse | tile::Isa::Avx2 => units,
                    }
                };
                let winograd = self.winograd_tile(
                    f,
                    &input,
                    &out,
                    out_channels,
                    (&register, run, direct_items),
                );
                let residual = match f.residual {
                    true => Some(self.read_map(self.graph.inputs(id)[1])?),
                    false => None,
                };
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
                    let packing = match &winograd {
                        Some(w) => winograd_packing(&g.conv, w.tile, &w.register, &input),
                        None => conv_packing(&g.conv, &register, &input),
                    };
                    let reg = winograd.as_ref().map_or(register, |w| w.register);
                    let out = self.conv_out(*m)?;
                    let oc = g.conv.out_channels;
                    let (weights, bias) = match input.precision {
                        // Weight codes, and the requantization table in the bias's place.
                        Precision::U8 => {
                            let w = quant::quantize_weights(weight, oc);
                            let r = residual.map(|r| r.quant);
                            let table = quant::requant(&w, bias, input.quant, out.quant, r, g.relu);
                            let codes = blob.push_codes(&w.codes, Recipe::Conv(packing));
                            (codes, blob.push(&pack_requant(&table, oc, &reg)))
                        }
                        _ => (
                            blob.push_recipe(weight, Recipe::Conv(packing)),
                            blob.push(&pack_bias(bias, oc, &reg)),
                        ),
                    };
                    ranges.push(ConvRange {
                        node: self.graph.node(*m).name.clone(),
                        channels: oc,
                        relu: g.relu,
                        weights,
                        bias,
                        out,
                    });
                }
                let core = |register| ConvCore {
                    input,
                    kernel: f.conv.kernel,
                    padding: f.conv.padding,
                    out_h: out.h,
                    out_w: out.w,
                    ranges,
                    residual,
                    register,
                };
                if let Some(w) = winograd {
                    let mut k = WinogradKernel {
                        core: core(w.register),
                        tile: w.tile,
                        group: w.group,
                        parts: 1,
                        scratch: 0,
                    };
                    k.parts = w.parts.min(k.panels());
                    return Ok(Kernel::Winograd(k));
                }
                let mut conv = ConvKernel {
                    core: core(register),
                    flat,
                    stride: f.conv.stride,
                    split: Split::Units,
                };
                if matches!(register.isa, tile::Isa::Avx512 | tile::Isa::Amx) {
                    let panels = conv
                        .ranges
                        .iter()
                        .map(|r| register.panels(r.channels).len())
                        .sum();
                    let shape = conv.shape();
                    let taps = shape.kernel[0] * shape.kernel[1];
                    let weights =
                        shape.in_channels * shape.out_channels * taps * conv.input.value_bytes();
                    let order = self
                        .item_order
                        .unwrap_or(match weights <= GROUP_MAJOR_WEIGHTS {
                            true => ItemOrder::GroupMajor,
                            false => ItemOrder::PanelMajor,
                        });
                    conv.split = Split::Panels {
                        groups: panel_groups(conv.units(), panels, self.threads),
                        order,
                    };
                }
                conv.into()
            }
            Op::MaxPool(p) => Kernel::Pool(PoolKernel {
                input: self.read_map(operand)?,
                window: p.clone(),
                average: None,
                relu: false,
                out: self.map(id)?,
            }),
            Op::AvgPool(AvgPoolAttrs {
                window,
                count_include_pad,
                relu,
            }) => Kernel::Pool(PoolKernel {
                input: self.read_map(operand)?,
                window: window.clone(),
                average: Some(*count_include_pad),
                relu: *relu,
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
                        padded_inputs: a.in_features,
                        kernel: [1, 1],
                        transform: None,
                        panels: panels_of(a.out_features, &register),
                        // The pooled features are f32 in every precision.
                        precision: Precision::F32,
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

#[cfg(test)]
mod tests;
