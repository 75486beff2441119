//! The schedule and the activation memory plan of an optimized graph, for one batch size and input
//! size.
//!
//! The schedule runs one kernel per step: a node, or all members of a shared kernel
//! (`merge-sibling-1x1`) together. Kernels go level by level (a kernel's level is one more than
//! the highest of the kernels it reads), and within a level in node order, so that branches run
//! in the order the network lists them. Consecutive steps of one level and one block form a
//! *stage* whose kernels run concurrently, their work items handed out from one range (see
//! [`stages`]): the branches of an Inception block fill the threads together where one branch
//! alone cannot. No kernel of a stage writes a buffer another of the stage reads, and two may
//! write one buffer only at different channels (the tiles of a concatenation).
//!
//! Values share buffers where the graph says they may: a tiled node writes into its destination's
//! buffer, an `in_place` fused conv into its residual's. Each buffer is an NHWC tensor with a zero
//! halo as wide as the largest padding of any convolution that reads it, so that kernels need no
//! bounds tests. A buffer lives from the first step of the stage that first writes it to the last
//! step of the stage that last reads it (the graph's outputs live to the end), so that the buffers
//! of the kernels of one stage are live together; buffers whose lifetimes overlap never overlap in
//! the arena. Offsets come from greedy placement (each buffer at the lowest 64-byte-aligned offset, or
//! in the tightest gap, that is free for its whole lifetime) over a few visiting orders, improved
//! by a seeded local search over the order until the arena meets the lower bound (the largest sum
//! of live buffer sizes at one step) or the search budget is spent.

use std::collections::HashMap;
use std::fmt;

use rand::{Rng, SeedableRng};

use inceptc_ir::op::Op;
use inceptc_ir::{infer_shapes, Graph, NodeId, Shape, Tile};
use inceptc_runtime::layout::Precision;

/// Alignment of every buffer in the arena, in bytes.
pub const ALIGN: usize = 64;

/// One buffer of the arena.
#[derive(Clone, Debug)]
pub struct Buffer {
    /// The name of the first value written into it.
    pub name: String,
    /// Its logical shape (for a concatenation buffer, the whole concatenation).
    pub shape: Shape,
    /// Zero rows above and below, zero columns left and right (feature maps only).
    pub halo: [usize; 2],
    /// Size in bytes, guards included, rounded up to [`ALIGN`].
    pub bytes: usize,
    /// Offset in the arena, a multiple of [`ALIGN`].
    pub offset: usize,
    /// Canary bytes before and after the data (`--check-bounds`; 0 otherwise): the data starts
    /// at `offset + guard`.
    pub guard: usize,
    /// First and last step (inclusive) at which the buffer is live.
    pub live: [usize; 2],
    /// The values stored in it, in schedule order.
    pub values: Vec<NodeId>,
    /// What each value of a feature map is (vectors are f32 in every precision).
    pub precision: Precision,
    /// Maps of at least this many channels are padded to a multiple of it (1: none).
    pub granule: usize,
}

/// How feature maps are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storage {
    /// What each value is.
    pub precision: Precision,
    /// Maps of at least this many channels have their pixels padded with zero channels to a
    /// multiple of it (the AMX tile's 32; 1 for none).
    pub granule: usize,
}

impl Default for Storage {
    fn default() -> Storage {
        Storage {
            precision: Precision::F32,
            granule: 1,
        }
    }
}

impl Buffer {
    /// Whether two buffers' lifetimes intersect.
    pub fn lives_with(&self, other: &Buffer) -> bool {
        self.live[0] <= other.live[1] && other.live[0] <= self.live[1]
    }

    /// Where the data starts in the arena (after the leading guard).
    pub fn data_offset(&self) -> usize {
        self.offset + self.guard
    }

    /// Bytes of data: the value (or concatenation) with its halo, without guards or rounding.
    pub fn data_bytes(&self) -> usize {
        let pixels = match self.shape {
            Shape::Map { n, h, w, .. } => n * (h + 2 * self.halo[0]) * (w + 2 * self.halo[1]),
            Shape::Vector { n, .. } => n,
        };
        pixels * self.channels() * self.value_bytes()
    }

    /// Channels of every pixel (features of a vector): the shape's, rounded up to an even
    /// count for a bf16 map so that channel pairs fill dwords (a multiple of 4 for a u8 map, for
    /// quads), and to a multiple of the granule
    /// for a map of at least as many channels.
    pub fn channels(&self) -> usize {
        let granule = |c: usize| match c >= self.granule {
            true => c.next_multiple_of(self.granule),
            false => c,
        };
        match (self.shape, self.precision) {
            (Shape::Map { c, .. }, Precision::Bf16) => granule(c).next_multiple_of(2),
            (Shape::Map { c, .. }, Precision::U8) => granule(c).next_multiple_of(4),
            (Shape::Map { c, .. }, Precision::F32) => granule(c),
            (shape, _) => shape.channels(),
        }
    }

    /// Bytes per value.
    pub fn value_bytes(&self) -> usize {
        match self.shape {
            Shape::Map { .. } => self.precision.bytes(),
            Shape::Vector { .. } => 4,
        }
    }

    /// Whether two buffers' arena ranges intersect.
    pub fn overlaps(&self, other: &Buffer) -> bool {
        self.offset < other.offset + other.bytes && other.offset < self.offset + self.bytes
    }
}

/// Where one node's result goes: its buffer and the channel range it writes (the whole buffer
/// unless the node is a tile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Index into [`MemoryPlan::buffers`].
    pub buffer: usize,
    /// The first channel the node writes.
    pub channel_offset: usize,
    /// Channels it writes.
    pub channels: usize,
}

/// The plan: schedule, buffers, where each value lives, and the arena size.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Images per run.
    pub batch: usize,
    /// Input height and width.
    pub image: [usize; 2],
    /// The kernels in execution order; each step is one node or the members of a shared kernel.
    pub steps: Vec<Vec<NodeId>>,
    /// Each step's level (see the module documentation).
    pub levels: Vec<usize>,
    /// Each step's latest level: the highest at which it could run without delaying a kernel
    /// that reads it (its own level where nothing does, or where it is the graph's output).
    pub latest: Vec<usize>,
    /// The stages: consecutive ranges of steps, covering them all in order, whose kernels run
    /// concurrently.
    pub stages: Vec<std::ops::Range<usize>>,
    /// The arena's buffers.
    pub buffers: Vec<Buffer>,
    /// Where each node's result goes.
    pub placements: HashMap<NodeId, Placement>,
    /// The shape of every value at this batch and size.
    pub shapes: HashMap<NodeId, Shape>,
    /// Bytes of the arena: the end of the highest buffer.
    pub arena_bytes: usize,
    /// The largest sum of sizes of the buffers live at one step: no arena for this schedule and
    /// these buffers can be smaller.
    pub lower_bound: usize,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Shapes could not be inferred.
    #[error(transparent)]
    Shape(#[from] inceptc_ir::ShapeError),
    /// The graph has a cycle.
    #[error("the graph has a cycle")]
    Cycle,
    /// This node reads the buffer it overwrites.
    #[error("node `{0}` reads the buffer it overwrites")]
    Hazard(String),
}

/// The kernels of `graph` in execution order (see the module documentation).
pub fn schedule(graph: &Graph) -> Result<Vec<Vec<NodeId>>, PlanError> {
    Ok(leveled_schedule(graph, &HashMap::new())?
        .into_iter()
        .map(|(_, s)| s)
        .collect())
}

/// [`schedule`], each step with its level; a unit (keyed by its first member) that `defer` names
/// goes at that level if its inputs would let it run earlier.
fn leveled_schedule(
    graph: &Graph,
    defer: &HashMap<NodeId, usize>,
) -> Result<Vec<(usize, Vec<NodeId>)>, PlanError> {
    // A unit is a kernel: its members, keyed by the smallest member.
    let mut unit_of: HashMap<NodeId, NodeId> = HashMap::new();
    let mut members: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let mut by_kernel: HashMap<&str, NodeId> = HashMap::new();
    for id in graph.node_ids() {
        let key = match &graph.node(id).shared_kernel {
            Some(k) => *by_kernel.entry(k.as_str()).or_insert(id),
            None => id,
        };
        unit_of.insert(id, key);
        members.entry(key).or_default().push(id);
    }
    let mut pending: HashMap<NodeId, usize> = HashMap::new();
    for (key, ms) in &members {
        let mut deps: Vec<NodeId> = ms
            .iter()
            .flat_map(|m| graph.inputs(*m))
            .map(|i| unit_of[&i])
            .filter(|u| u != key)
            .collect();
        deps.sort();
        deps.dedup();
        pending.insert(*key, deps.len());
    }
    // (level, unit): a unit is ready once every unit it reads has run, and its level is known
    // then: one more than the highest level of a unit whose value it reads, and at least the
    // level of the tile whose buffer it writes into (a tile's destination operand is not read:
    // the tiles of a concatenation may run together). A unit becomes ready only once a unit of
    // its level or lower has run, so units run in order of level.
    // A deferred unit goes after the other units of its level: its stage hands out their items
    // first, and its own (a kernel with many items, where it is deferred to fill the threads
    // beside one with few) fill what is left.
    let mut ready: std::collections::BTreeSet<(usize, bool, NodeId)> = pending
        .iter()
        .filter(|(_, k)| **k == 0)
        .map(|(u, _)| (0, false, *u))
        .collect();
    let mut level: HashMap<NodeId, usize> = HashMap::new();
    let mut steps = Vec::with_capacity(members.len());
    while let Some((l, _, unit)) = ready.pop_first() {
        let ms = members[&unit].clone();
        // Each later unit that takes a member's value, and whether it reads it (or only writes
        // into its buffer).
        let mut next: Vec<(NodeId, bool)> = Vec::new();
        for m in &ms {
            for user in graph.users(*m) {
                let inputs = graph.inputs(user);
                let own = graph.node(user).own_operands(inputs.len());
                let reads = inputs[..own].contains(m);
                next.push((unit_of[&user], reads));
            }
        }
        next.retain(|(u, _)| *u != unit);
        next.sort();
        // A unit once, reading if any of its members reads.
        next.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            earlier.1 |= same && later.1;
            same
        });
        for (u, reads) in next {
            let k = pending.get_mut(&u).ok_or(PlanError::Cycle)?;
            *k -= 1;
            let lu = level.entry(u).or_default();
            *lu = (*lu).max(l + reads as usize);
            if *k == 0 {
                let deferred = defer.get(&u).is_some_and(|d| d > lu);
                if deferred {
                    *lu = defer[&u];
                }
                ready.insert((*lu, deferred, u));
            }
        }
        steps.push((l, ms));
    }
    if steps.len() != members.len() {
        return Err(PlanError::Cycle);
    }
    Ok(steps)
}

/// Plans the arena of `graph` for input `[batch, C, height, width]`.
pub fn plan(
    graph: &Graph,
    batch: usize,
    height: usize,
    width: usize,
) -> Result<MemoryPlan, PlanError> {
    plan_guarded(graph, batch, height, width, false, Storage::default())
}

/// [`plan`], with canaries before and after every buffer when `guarded` (`--check-bounds`): at
/// least [`ALIGN`] bytes, and at least one pixel of a feature map, so that a tile that writes one
/// pixel too far lands in them. Feature maps are stored as `storage` says.
pub fn plan_guarded(
    graph: &Graph,
    batch: usize,
    height: usize,
    width: usize,
    guarded: bool,
    storage: Storage,
) -> Result<MemoryPlan, PlanError> {
    plan_deferred(
        graph,
        batch,
        height,
        width,
        guarded,
        storage,
        &HashMap::new(),
    )
}

/// [`plan_guarded`], with the kernels that `defer` names (by their first node) at the level it
/// gives them, so that they run in that level's stage (see [`balance`]). A level past
/// [`MemoryPlan::latest`] delays the kernels that read the deferred one.
pub fn plan_deferred(
    graph: &Graph,
    batch: usize,
    height: usize,
    width: usize,
    guarded: bool,
    storage: Storage,
    defer: &HashMap<NodeId, usize>,
) -> Result<MemoryPlan, PlanError> {
    let shapes = infer_shapes(graph, batch, height, width)?;
    let leveled = leveled_schedule(graph, defer)?;
    let levels: Vec<usize> = leveled.iter().map(|(l, _)| *l).collect();
    let latest = latest_levels(graph, &leveled);
    let steps: Vec<Vec<NodeId>> = leveled.iter().map(|(_, s)| s.clone()).collect();

    let mut buffers: Vec<Buffer> = Vec::new();
    let mut placements: HashMap<NodeId, Placement> = HashMap::new();
    for (s, ms) in steps.iter().enumerate() {
        for &id in ms {
            let node = graph.node(id);
            let inputs = graph.inputs(id);
            let shared = match (&node.op, node.tile) {
                (
                    _,
                    Some(Tile {
                        new_buffer: None, ..
                    }),
                ) => inputs.last().map(|d| placements[d].buffer),
                (Op::FusedConv(f), _) if f.in_place => Some(placements[&inputs[1]].buffer),
                _ => None,
            };
            let buffer = match shared {
                Some(b) => b,
                None => {
                    let mut buffer = Buffer {
                        name: node.name.clone(),
                        shape: shapes[&id],
                        halo: [0, 0],
                        bytes: 0,
                        offset: 0,
                        guard: 0,
                        live: [s, s],
                        values: Vec::new(),
                        precision: storage.precision,
                        granule: storage.granule,
                    };
                    buffer.guard = match (guarded, buffer.shape) {
                        (false, _) => 0,
                        (true, Shape::Map { .. }) => {
                            (buffer.channels() * buffer.value_bytes()).next_multiple_of(ALIGN)
                        }
                        (true, Shape::Vector { .. }) => ALIGN,
                    };
                    buffers.push(buffer);
                    buffers.len() - 1
                }
            };
            buffers[buffer].values.push(id);
            let (channel_offset, channels) = match node.tile {
                Some(t) => (t.offset, own_channels(graph, id, &shapes)),
                None => (0, shapes[&id].channels()),
            };
            placements.insert(
                id,
                Placement {
                    buffer,
                    channel_offset,
                    channels,
                },
            );
        }
    }

    let stages = stages(graph, &leveled, &placements);
    // The steps of each step's stage.
    let mut stage_of = vec![0..0; steps.len()];
    for stage in &stages {
        for s in stage.clone() {
            stage_of[s] = stage.clone();
        }
    }
    for b in &mut buffers {
        b.live = [stage_of[b.live[0]].start, stage_of[b.live[0]].end - 1];
    }

    // Halos, hazards and lifetimes.
    let end = steps.len();
    for (s, ms) in steps.iter().enumerate() {
        for &id in ms {
            let node = graph.node(id);
            let inputs = graph.inputs(id);
            let own = node.own_operands(inputs.len());
            if let Some(conv) = node.op.conv() {
                let b = &mut buffers[placements[&inputs[0]].buffer];
                b.halo = [
                    b.halo[0].max(conv.padding[0]),
                    b.halo[1].max(conv.padding[1]),
                ];
            }
            let out = placements[&id].buffer;
            let in_place_residual = match &node.op {
                Op::FusedConv(f) if f.in_place => Some(inputs[1]),
                _ => None,
            };
            for (k, i) in inputs.iter().enumerate() {
                let b = placements[i].buffer;
                let allowed = k >= own || Some(*i) == in_place_residual;
                if b == out && !allowed {
                    return Err(PlanError::Hazard(node.name.clone()));
                }
                buffers[b].live[1] = buffers[b].live[1].max(stage_of[s].end - 1);
            }
        }
    }
    for o in graph.outputs() {
        buffers[placements[o].buffer].live[1] = end;
    }
    for b in &mut buffers {
        b.bytes = (b.data_bytes() + 2 * b.guard).next_multiple_of(ALIGN);
    }

    let lower_bound = (0..=end)
        .map(|s| {
            buffers
                .iter()
                .filter(|b| b.live[0] <= s && s <= b.live[1])
                .map(|b| b.bytes)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    let arena_bytes = place(&mut buffers, lower_bound);
    Ok(MemoryPlan {
        batch,
        image: [height, width],
        steps,
        levels,
        latest,
        stages,
        buffers,
        placements,
        shapes,
        arena_bytes,
        lower_bound,
    })
}

/// Each step's latest level (see [`MemoryPlan::latest`]): one below the lowest level of a later
/// step that reads one of its members' values, or that level itself for a step that only
/// writes into its buffer (a later tile of a concatenation); its own level if there is none,
/// or if a member is an output of the graph.
fn latest_levels(graph: &Graph, leveled: &[(usize, Vec<NodeId>)]) -> Vec<usize> {
    let mut step_of: HashMap<NodeId, usize> = HashMap::new();
    for (s, (_, members)) in leveled.iter().enumerate() {
        for m in members {
            step_of.insert(*m, s);
        }
    }
    let outputs = graph.outputs();
    leveled
        .iter()
        .enumerate()
        .map(|(s, (level, members))| {
            if members.iter().any(|m| outputs.contains(m)) {
                return *level;
            }
            members
                .iter()
                .flat_map(|m| graph.users(*m).into_iter().map(move |u| (*m, u)))
                .filter(|(_, u)| step_of[u] != s)
                .map(|(m, u)| {
                    let inputs = graph.inputs(u);
                    let own = graph.node(u).own_operands(inputs.len());
                    let reads = inputs[..own].contains(&m);
                    leveled[step_of[&u]].0 - reads as usize
                })
                .min()
                .unwrap_or(*level)
                .max(*level)
        })
        .collect()
}

/// Kernels to run later than their level, within [`MemoryPlan::latest`], where that makes the
/// stages faster: for each step in turn, the level of its block's steps (its own or a later one)
/// whose stage `time` predicts fastest with it, taking the step out of its own (`time` gives a
/// set of steps' time as one stage; where it is `None` for a step, the step stays). A move must
/// gain over 1 % of the two stages' time. Returns the moved steps' first nodes and their levels,
/// for [`plan_deferred`]. Stages are taken as the steps of one level and block: where the plan
/// would split one (a hazard), the prediction is off, so a caller compares the plans it makes.
pub fn balance(
    plan: &MemoryPlan,
    blocks: &[&str],
    time: impl Fn(&[usize]) -> Option<f64>,
) -> HashMap<NodeId, usize> {
    let mut levels = plan.levels.clone();
    let mut moved = HashMap::new();
    let group = |levels: &[usize], level: usize, block: &str| -> Vec<usize> {
        (0..levels.len())
            .filter(|&t| levels[t] == level && blocks[t] == block)
            .collect()
    };
    for s in 0..plan.steps.len() {
        let (level, block) = (levels[s], blocks[s]);
        if plan.latest[s] <= level {
            continue;
        }
        // Its stage with it and without it (`None` for a step without a kernel).
        let here = group(&levels, level, block);
        let rest: Vec<usize> = here.iter().copied().filter(|&t| t != s).collect();
        let (Some(with), Some(without)) = (time(&here), time(&rest)) else {
            continue;
        };
        let mut best: Option<(f64, usize)> = None;
        for later in level + 1..=plan.latest[s] {
            let there = group(&levels, later, block);
            if there.is_empty() {
                continue;
            }
            let joined: Vec<usize> = there.iter().copied().chain([s]).collect();
            let (Some(alone), Some(joined)) = (time(&there), time(&joined)) else {
                continue;
            };
            let (before, after) = (with + alone, without + joined);
            if after < 0.99 * before && best.is_none_or(|(gain, _)| before - after > gain) {
                best = Some((before - after, later));
            }
        }
        if let Some((_, later)) = best {
            levels[s] = later;
            moved.insert(plan.steps[s][0], later);
        }
    }
    moved
}

/// Splits the leveled schedule into stages: maximal runs of consecutive steps of one level and
/// one block, each with a kernel (the input's step stands alone), where no step reads a buffer
/// that another step of the run writes, and steps write one buffer only at different channels.
fn stages(
    graph: &Graph,
    leveled: &[(usize, Vec<NodeId>)],
    placements: &HashMap<NodeId, Placement>,
) -> Vec<std::ops::Range<usize>> {
    // The buffers and channels a step writes, and the buffers it reads (the destination operand of
    // a tile excepted, which it writes into; an in-place residual is read).
    let access = |members: &[NodeId]| {
        let writes: Vec<Placement> = members.iter().map(|m| placements[m]).collect();
        let reads: Vec<usize> = members
            .iter()
            .flat_map(|m| {
                let inputs = graph.inputs(*m);
                let own = graph.node(*m).own_operands(inputs.len());
                inputs.into_iter().take(own)
            })
            .map(|i| placements[&i].buffer)
            .collect();
        (writes, reads)
    };
    let apart = |a: &[Placement], b: &[Placement]| {
        a.iter().all(|p| {
            b.iter().all(|q| {
                p.buffer != q.buffer
                    || p.channel_offset + p.channels <= q.channel_offset
                    || q.channel_offset + q.channels <= p.channel_offset
            })
        })
    };
    let kernel = |members: &[NodeId]| !matches!(graph.node(members[0]).op, Op::Input(_));
    let block = |members: &[NodeId]| graph.node(members[0]).block.as_str();
    let mut stages: Vec<std::ops::Range<usize>> = Vec::new();
    for (s, (level, members)) in leveled.iter().enumerate() {
        let joins = stages.last().is_some_and(|stage| {
            let first = &leveled[stage.start];
            let (writes, reads) = access(members);
            first.0 == *level
                && kernel(&first.1)
                && kernel(members)
                && block(&first.1) == block(members)
                && leveled[stage.clone()].iter().all(|(_, other)| {
                    let (w, r) = access(other);
                    apart(&w, &writes)
                        && !w.iter().any(|p| reads.contains(&p.buffer))
                        && !writes.iter().any(|p| r.contains(&p.buffer))
                })
        });
        match (joins, stages.last_mut()) {
            (true, Some(stage)) => stage.end = s + 1,
            _ => stages.push(s..s + 1),
        }
    }
    stages
}

/// Channels a tiled node computes itself: its op's output before tiling.
fn own_channels(graph: &Graph, id: NodeId, shapes: &HashMap<NodeId, Shape>) -> usize {
    match &graph.node(id).op {
        Op::FusedConv(f) => f.conv.out_channels,
        // Pools keep their input's channels.
        _ => shapes[&graph.inputs(id)[0]].channels(),
    }
}

/// Where each buffer goes in the gaps left by the buffers placed before it that live at the same
/// time.
#[derive(Clone, Copy, Debug)]
enum Fit {
    /// The lowest free offset.
    First,
    /// The smallest free gap that holds it (else on top).
    Best,
}

/// Iterations of the local search over placement orders when no greedy order reaches the lower
/// bound.
const SEARCH_STEPS: usize = 3000;

/// Places every buffer and returns the arena size. Starts from greedy orders (largest first,
/// largest size × lifetime first, first written first), then improves the best order by a seeded
/// local search (swapping two buffers in the order) until the arena meets `lower_bound` or the
/// search budget is spent. Deterministic.
fn place(buffers: &mut [Buffer], lower_bound: usize) -> usize {
    let n = buffers.len();
    let b = &*buffers;
    let by = |key: &dyn Fn(&Buffer) -> (std::cmp::Reverse<usize>, usize)| {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|i| key(&b[*i]));
        order
    };
    let starts = [
        by(&|x| (std::cmp::Reverse(x.bytes), x.live[0])),
        by(&|x| {
            let duration = x.live[1] - x.live[0] + 1;
            (std::cmp::Reverse(x.bytes * duration), x.live[0])
        }),
        by(&|x| (std::cmp::Reverse(usize::MAX - x.live[0]), x.live[1])),
    ];
    let mut best: Option<(usize, Vec<usize>, Fit)> = None;
    for order in starts {
        for fit in [Fit::First, Fit::Best] {
            let arena = place_in_order(buffers, &order, fit);
            if best.as_ref().is_none_or(|(a, _, _)| arena < *a) {
                best = Some((arena, order.clone(), fit));
            }
        }
    }
    let Some((mut arena, mut order, mut fit)) = best else {
        return 0;
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2016);
    for _ in 0..SEARCH_STEPS {
        if arena <= lower_bound || n < 2 {
            break;
        }
        let mut candidate = order.clone();
        let (i, j) = (rng.gen_range(0..n), rng.gen_range(0..n));
        candidate.swap(i, j);
        for f in [Fit::First, Fit::Best] {
            let a = place_in_order(buffers, &candidate, f);
            if a <= arena {
                (arena, order, fit) = (a, candidate.clone(), f);
            }
        }
    }
    let arena_final = place_in_order(buffers, &order, fit);
    log::debug!("memory plan: {arena_final} bytes, lower bound {lower_bound}");
    arena_final
}

/// Places the buffers in `order`, each as `fit` says; returns the arena size.
fn place_in_order(buffers: &mut [Buffer], order: &[usize], fit: Fit) -> usize {
    let mut arena = 0;
    for (k, &i) in order.iter().enumerate() {
        let mut taken: Vec<(usize, usize)> = order[..k]
            .iter()
            .filter(|p| buffers[**p].lives_with(&buffers[i]))
            .map(|p| (buffers[*p].offset, buffers[*p].offset + buffers[*p].bytes))
            .collect();
        taken.sort_unstable();
        let size = buffers[i].bytes;
        // Free gaps between the taken ranges, (start, length); above the last one all is free.
        let mut gaps = Vec::new();
        let mut cursor = 0;
        for (start, stop) in taken {
            if start > cursor {
                gaps.push((cursor, start - cursor));
            }
            cursor = cursor.max(stop.next_multiple_of(ALIGN));
        }
        let fits = gaps.into_iter().filter(|(_, len)| *len >= size);
        let offset = match fit {
            Fit::Best => fits.min_by_key(|(_, len)| *len).map(|(o, _)| o),
            Fit::First => fits.map(|(o, _)| o).next(),
        }
        .unwrap_or(cursor);
        buffers[i].offset = offset;
        arena = arena.max(offset + size);
    }
    arena
}

impl MemoryPlan {
    /// Two buffers that are live at the same step and share arena bytes, if any.
    pub fn overlapping_buffers(&self) -> Option<(&Buffer, &Buffer)> {
        for (i, a) in self.buffers.iter().enumerate() {
            for b in &self.buffers[i + 1..] {
                if a.lives_with(b) && a.overlaps(b) {
                    return Some((a, b));
                }
            }
        }
        None
    }

    /// The arena size over the lower bound.
    pub fn ratio(&self) -> f64 {
        self.arena_bytes as f64 / self.lower_bound.max(1) as f64
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>12} {:>10} {:>9}  {:<26} {:>6}  buffer",
            "offset", "bytes", "live", "shape", "halo"
        )?;
        let mut order: Vec<&Buffer> = self.buffers.iter().collect();
        order.sort_by_key(|b| (b.live[0], b.offset));
        for b in order {
            writeln!(
                f,
                "{:>12} {:>10} {:>9}  {:<26} {:>6}  {}{}",
                b.offset,
                b.bytes,
                format!("{}-{}", b.live[0], b.live[1]),
                b.shape.to_string(),
                format!("{}x{}", b.halo[0], b.halo[1]),
                b.name,
                if b.values.len() > 1 {
                    format!(" (+{} values)", b.values.len() - 1)
                } else {
                    String::new()
                }
            )?;
        }
        writeln!(
            f,
            "batch {} at {}×{}: {} steps in {} stages, {} buffers, arena {} bytes ({:.2} MiB), \
             lower bound {} bytes, ratio {:.3}",
            self.batch,
            self.image[0],
            self.image[1],
            self.steps.len(),
            self.stages.len(),
            self.buffers.len(),
            self.arena_bytes,
            self.arena_bytes as f64 / (1 << 20) as f64,
            self.lower_bound,
            self.ratio()
        )
    }
}
