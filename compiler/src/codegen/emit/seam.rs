//! The register-tile seam: where a kernel calls a tile. The AVX-512 tier's assembled `ZmmTile`
//! per weight panel (its pointer tables, epilogue and prefetch), the AVX2 tier's per-tap tile and
//! 128-bit Cranelift accumulators, and the Cranelift epilogue the AVX2 tier and the Winograd
//! output transform share.

use super::*;

/// One range's weights in a register tile's panels.
pub(super) struct RangePanels<'a> {
    pub(super) register: &'a Tile,
    /// Byte offset of the range's packed weights.
    pub(super) weights: usize,
    pub(super) channels: usize,
    /// Rows of a panel: taps (or points) × input channels.
    pub(super) rows: usize,
}

/// Calls `body` with panel `panel` (a run-time index) of `range`: the full panels' tile, or the
/// narrower last panel's, which has a tile of its own.
pub(super) fn for_panel(
    e: &mut Emitter,
    range: &RangePanels,
    panel: Value,
    body: &dyn Fn(&mut Emitter, &ZmmPanel),
) {
    let width = range.register.panel();
    let panels = range.register.panels(range.channels);
    // Channel `first = panel · width`: weights at first · rows dwords (a row is a dword per
    // channel: an f32, a bf16 pair or a u8 quad).
    let first = e.b.ins().imul_imm_s(panel, width as i64);
    let wbase = e.offset(e.weights, range.weights as i64);
    let weights = e.scaled(wbase, panel, (width * range.rows) as i64 * F32);
    let call = |e: &mut Emitter, packed: usize, channels: usize| {
        let panel = ZmmPanel {
            weights,
            first,
            width: packed,
            channels,
            prefetch: None,
        };
        body(e, &panel);
    };
    let last = panels[panels.len() - 1];
    if last.channels == width {
        call(e, width, width);
        return;
    }
    let (full, tail, done) = (e.b.create_block(), e.b.create_block(), e.b.create_block());
    let is_full =
        e.b.ins()
            .icmp_imm_u(IntCC::UnsignedLessThan, panel, (panels.len() - 1) as i64);
    e.b.ins().brif(is_full, full, &[], tail, &[]);
    e.b.switch_to_block(full);
    call(e, width, width);
    e.b.ins().jump(done, &[]);
    e.b.switch_to_block(tail);
    call(e, last.width, last.channels);
    e.b.ins().jump(done, &[]);
    e.b.switch_to_block(done);
}

/// `addresses` stored in a stack slot, one 8-byte pointer each; returns the slot's address.
pub(super) fn pointer_table(e: &mut Emitter, addresses: &[Value]) -> Value {
    let bytes = 8 * addresses.len() as u32;
    let slot =
        e.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes, 3));
    let table = e.b.ins().stack_addr(types::I64, slot, 0);
    for (p, a) in addresses.iter().enumerate() {
        e.store(*a, table, 8 * p as i64);
    }
    table
}

/// What an AVX-512 tile does with its accumulators.
pub(super) struct Epilogue {
    /// Byte offset of the range's bias in the weights; `None`: start from zero.
    pub(super) bias: Option<usize>,
    /// The table of the tile's output pixels (channel 0 of the range).
    pub(super) outputs: Value,
    /// The table of the tile's residual pixels.
    pub(super) residuals: Option<Value>,
    pub(super) relu: bool,
}

/// One weight panel of an AVX-512 tile call.
#[derive(Clone, Copy)]
pub(super) struct ZmmPanel {
    /// Address of the panel's packed weights.
    pub(super) weights: Value,
    /// Its first output channel, from the range's.
    pub(super) first: Value,
    /// Packed channels (a multiple of 16).
    pub(super) width: usize,
    /// Channels stored.
    pub(super) channels: usize,
    /// Where the tile starts prefetching weights into L2, and how far it moves on per channel
    /// loop iteration.
    pub(super) prefetch: Option<(Value, i32)>,
}

/// How `calls` tile calls split the prefetch of `bytes` of weights: each call's share (whole
/// cache lines) and the bytes its prefetch pointer moves on per channel loop iteration, over
/// `iterations` of them (0: the tile has no loop to spread it over, and prefetches nothing). At
/// most 4 lines an iteration: a share beyond that is prefetched in part.
pub(super) fn prefetch_shares(bytes: usize, calls: usize, iterations: usize) -> (usize, i32) {
    let share = bytes.div_ceil(calls).next_multiple_of(64);
    let step = match iterations {
        0 => 0,
        _ => share.div_ceil(iterations).min(256) as i32,
    };
    (share, step)
}

/// Calls the AVX-512 tile of `pixels` pixels for `panel`, reading `source` from `input`.
pub(super) fn zmm_call(
    e: &mut Emitter,
    source: &TileSource,
    input: Value,
    panel: &ZmmPanel,
    epilogue: &Epilogue,
    pixels: usize,
) {
    // The u8 tiles always read their requantization table and clamp at its floor.
    let float = source.data != Data::U8S8;
    let tile = match source.amx {
        true => TileFn::Amx(AmxTile {
            pixels,
            vectors: panel.width / 16,
            last_lanes: panel.channels - (panel.width - 16),
            taps: source.grid,
            tap_steps: source.grid_steps.map(|s| s as i32),
            // A step is 16 dwords of a pixel: 32 bf16 channels or 64 u8 ones.
            chunks: source.channels / (AMX_CHANNELS / 2),
            pixel_step: source.pixel_step as i32,
            bias: float && epilogue.bias.is_some(),
            residual: epilogue.residuals.is_some(),
            relu: float && epilogue.relu,
            configures: false,
            prefetch_step: panel.prefetch.map_or(0, |p| p.1),
            data: source.data,
        }),
        false => zmm_tile(source, panel, epilogue, pixels),
    };
    let func = (e.tiles)(tile, e.b.func);
    let bias = match epilogue.bias {
        Some(b) => {
            let base = e.offset(e.weights, b as i64);
            // The u8 tile's requantization table has four floats a channel (see
            // `lower::pack_requant`).
            let per_channel = match source.data {
                Data::U8S8 => 4 * F32,
                Data::F32 | Data::Bf16 => F32,
            };
            e.scaled(base, panel.first, per_channel)
        }
        None => e.int(0),
    };
    // The output and residual values: f32 or bf16.
    let value = match source.data {
        Data::F32 => F32,
        Data::Bf16 => 2,
        Data::U8S8 => 1,
    };
    let first = e.b.ins().imul_imm_s(panel.first, value);
    let residuals = epilogue.residuals.unwrap_or_else(|| e.int(0));
    let args = [
        input,
        panel.weights,
        bias,
        epilogue.outputs,
        residuals,
        first,
        panel.prefetch.map_or_else(|| e.int(0), |p| p.0),
    ];
    e.b.ins().call(func, &args);
}

/// The AVX-512 tile of `pixels` pixels for `panel`.
fn zmm_tile(source: &TileSource, panel: &ZmmPanel, epilogue: &Epilogue, pixels: usize) -> TileFn {
    // The u8 tile always reads its requantization table and clamps at its floor.
    let float = source.data != Data::U8S8;
    TileFn::Zmm(ZmmTile {
        pixels,
        vectors: panel.width / 16,
        last_lanes: panel.channels - (panel.width - 16),
        taps: source.grid,
        tap_steps: source.grid_steps.map(|s| s as i32),
        channels: source.channels,
        pixel_step: source.pixel_step as i32,
        bias: float && epilogue.bias.is_some(),
        residual: epilogue.residuals.is_some(),
        relu: float && epilogue.relu,
        prefetch_step: panel.prefetch.map_or(0, |p| p.1),
        data: source.data,
    })
}

/// Calls `body(block, lanes)` for every block of `width` of `channels` output channels: a loop
/// over the full blocks, then the partial one with its `lanes`.
pub(super) fn for_blocks(
    e: &mut Emitter,
    channels: usize,
    width: usize,
    body: &dyn Fn(&mut Emitter, Value, usize),
) {
    for_blocks_toward(e, channels, width, None, body)
}

/// [`for_blocks`], the full blocks last to first where `reverse` (a run-time flag, if any) is
/// set. Every block computes its own output channels, so the order changes no output's bits;
/// two threads that sweep the same weights from opposite ends each fetch about half from memory
/// and find the rest in the cache the other filled.
pub(super) fn for_blocks_toward(
    e: &mut Emitter,
    channels: usize,
    width: usize,
    reverse: Option<Value>,
    body: &dyn Fn(&mut Emitter, Value, usize),
) {
    let full_blocks = (channels / width) as i64;
    e.for_const(0, full_blocks, 1, |e, i| {
        let block = match reverse {
            Some(reverse) => {
                let last = e.int(full_blocks - 1);
                let back = e.b.ins().isub(last, i);
                e.b.ins().select(reverse, back, i)
            }
            None => i,
        };
        body(e, block, width)
    });
    let rest = channels % width;
    if rest > 0 {
        let block = e.int(full_blocks);
        body(e, block, rest);
    }
}

/// [`for_blocks`] for the blocks `from .. to` (run-time values within the block count) only.
pub(super) fn for_blocks_between(
    e: &mut Emitter,
    channels: usize,
    width: usize,
    from: Value,
    to: Value,
    body: &dyn Fn(&mut Emitter, Value, usize),
) {
    let full_blocks = (channels / width) as i64;
    let full = e.int(full_blocks);
    let stop = e.b.ins().smin(to, full);
    e.for_range(from, stop, 1, |e, block| body(e, block, width));
    let rest = channels % width;
    if rest > 0 {
        let (last, done) = (e.b.create_block(), e.b.create_block());
        let reaches = e.b.ins().icmp(IntCC::SignedGreaterThan, to, full);
        let starts = e.b.ins().icmp(IntCC::SignedLessThanOrEqual, from, full);
        let includes = e.b.ins().band(reaches, starts);
        e.b.ins().brif(includes, last, &[], done, &[]);
        e.b.switch_to_block(last);
        body(e, full, rest);
        e.b.ins().jump(done, &[]);
        e.b.switch_to_block(done);
    }
}

/// What one register tile reads: per tap, the byte offset of its input pixel from the tile's
/// first and of its weights from the block's (an AVX2 tier block); the same taps as a grid of
/// rows × columns and the bytes between them; the input channel steps (channels, or bf16 pairs);
/// the bytes from one of the tile's pixels to the next; and what the values are.
pub(super) struct TileSource {
    pub(super) taps: Vec<(i64, i64)>,
    pub(super) grid: [usize; 2],
    pub(super) grid_steps: [i64; 2],
    pub(super) channels: usize,
    pub(super) pixel_step: i64,
    /// Whether the input is never written while the kernel runs (see [`readonly`]).
    pub(super) readonly: bool,
    /// The input's and the weights' data types (the output's too on the AVX-512 tier).
    pub(super) data: Data,
    /// Whether the AMX tile sums the products (bf16 and int8).
    pub(super) amx: bool,
}

impl TileSource {
    /// The taps of a direct convolution: row-major, weights as [`ConvRange`] packs them.
    pub(super) fn conv(k: &ConvKernel) -> TileSource {
        let ic = k.input.channels;
        let data = match k.input.precision {
            Precision::F32 => Data::F32,
            Precision::Bf16 => Data::Bf16,
            Precision::U8 => Data::U8S8,
        };
        let taps = (0..k.kernel[0])
            .flat_map(|ky| (0..k.kernel[1]).map(move |kx| (ky, kx)))
            .enumerate()
            .map(|(t, (ky, kx))| {
                let input = (ky * k.input.row_stride() + kx * k.input.pixel_stride()) as i64;
                (input, (t * ic * BLOCK) as i64 * F32)
            })
            .collect();
        TileSource {
            taps,
            grid: k.kernel,
            grid_steps: [k.input.row_stride() as i64, k.input.pixel_stride() as i64],
            // One dword per step: a channel, or a channel pair, over the padding channels too
            // (zero, with zero weights).
            channels: k.input.pixel_dwords(),
            pixel_step: (k.stride[1] * k.input.pixel_stride()) as i64,
            readonly: true,
            data,
            amx: k.register.isa == Isa::Amx,
        }
    }
}

/// The AVX2 tier's micro-kernel seam: accumulates a `pixels` × (4·`vectors`) register tile of
/// `register` ([`Isa::Sse`] or [`Isa::Avx2`]) over all taps and input channels of `source`,
/// starting from the vectors at `init` (the bias) or from zero, and returns the accumulator
/// variables `[pixel][vector]`. `input` is the tile's first input pixel at tap (0, 0); `wptr`
/// the block's packed weights, a row of [`BLOCK`] floats per channel.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_tile(
    e: &mut Emitter,
    register: &Tile,
    source: &TileSource,
    input: Value,
    wptr: Value,
    init: Option<Value>,
    pixels: usize,
    vectors: usize,
) -> Vec<Vec<Variable>> {
    let ic = source.channels;
    if register.isa == Isa::Avx2 {
        return wide_tile(e, source, input, wptr, init, pixels, vectors);
    }
    let mut acc = Vec::with_capacity(pixels);
    for _ in 0..pixels {
        let mut row = Vec::with_capacity(vectors);
        for j in 0..vectors {
            let b0 = match init {
                Some(bias) => e.load(types::F32X4, bias, j as i64 * VEC),
                None => e.zero(types::F32X4),
            };
            row.push(e.var(types::F32X4, b0));
        }
        acc.push(row);
    }
    // One input channel per iteration: unrolling measured slower. Each FMA leaves its result in
    // the broadcast's register, so the accumulators rotate through the registers and the back
    // edge restores them with register moves (renamed away, but they take front-end slots);
    // unrolled, regalloc2 spilled instead.
    // One induction variable, the input channel's address `x`: channel c of a tap has its weights
    // at wtap + c·32 = (wtap − start·8) + x·8, an x86 scaled-index address.
    for &(tap, wtap_offset) in &source.taps {
        let start = e.offset(input, tap);
        let stop = e.offset(start, ic as i64 * F32);
        let wtap = e.offset(wptr, wtap_offset);
        let start8 = e.b.ins().ishl_imm_u(start, 3);
        let wbase = e.b.ins().isub(wtap, start8);
        // Top-tested even though it runs at least once: tested at the bottom, the loop kept
        // its register rotation (below) and lost the memory-operand broadcasts.
        e.for_range(start, stop, F32, |e, x| {
            let x8 = e.b.ins().ishl_imm_u(x, 3);
            let wv = e.b.ins().iadd(wbase, x8);
            let weights: Vec<Value> = (0..vectors)
                .map(|j| e.load_const(types::F32X4, wv, j as i64 * VEC))
                .collect();
            for (p, row) in acc.iter().enumerate() {
                for (j, a) in row.iter().enumerate() {
                    // A fresh broadcast per FMA: x64's vfmadd213 overwrites its first
                    // multiplicand, so a single-use broadcast there costs no copy and the
                    // accumulator moves into its register.
                    let at = p as i64 * source.pixel_step;
                    let s = match source.readonly {
                        true => e.load_const(types::F32, x, at),
                        false => e.load(types::F32, x, at),
                    };
                    let s = e.b.ins().splat(types::F32X4, s);
                    let old = e.b.use_var(*a);
                    let new = e.b.ins().fma(s, weights[j], old);
                    e.b.def_var(*a, new);
                }
            }
        });
    }
    acc
}

/// [`conv_tile`] through the AVX2 tile function ([`Avx2Tile`]): the accumulators (8 lanes per
/// pixel) start from `init` in a stack slot, one call per tap adds the tap's products, and the
/// result comes back as f32x4 variables.
pub(super) fn wide_tile(
    e: &mut Emitter,
    source: &TileSource,
    input: Value,
    wptr: Value,
    init: Option<Value>,
    pixels: usize,
    vectors: usize,
) -> Vec<Vec<Variable>> {
    let bytes = (pixels * BLOCK) as u32 * F32 as u32;
    let slot =
        e.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes, 5));
    let acc = e.b.ins().stack_addr(types::I64, slot, 0);
    let start: Vec<Value> = (0..2)
        .map(|j| match init {
            Some(bias) => e.load(types::F32X4, bias, j * VEC),
            None => e.zero(types::F32X4),
        })
        .collect();
    for p in 0..pixels {
        for (j, v) in start.iter().enumerate() {
            e.store(*v, acc, (p * BLOCK) as i64 * F32 + j as i64 * VEC);
        }
    }
    let tile = TileFn::Avx2(Avx2Tile {
        pixels,
        pixel_step: source.pixel_step,
    });
    let func = (e.tiles)(tile, e.b.func);
    let count = e.int(source.channels as i64);
    for &(tap, wtap) in &source.taps {
        let at = e.offset(input, tap);
        let w = e.offset(wptr, wtap);
        e.b.ins().call(func, &[at, w, acc, count]);
    }
    (0..pixels)
        .map(|p| {
            (0..vectors)
                .map(|j| {
                    let v = e.load(types::F32X4, acc, (p * BLOCK) as i64 * F32 + j as i64 * VEC);
                    e.var(types::F32X4, v)
                })
                .collect()
        })
        .collect()
}

/// The convolution epilogue for one vector of `valid` (≤ 4) output channels: add the residual at
/// `residual + offset`, apply ReLU, store at `out + offset`.
pub(super) fn finish(
    e: &mut Emitter,
    mut v: Value,
    valid: usize,
    residual: Option<Value>,
    relu: bool,
    out: Value,
    offset: i64,
) {
    if let Some(res_addr) = residual {
        let rv = if valid == 4 {
            e.load(types::F32X4, res_addr, offset)
        } else {
            let mut rv = e.zero(types::F32X4);
            for lane in 0..valid {
                let x = e.load(types::F32, res_addr, offset + lane as i64 * F32);
                rv = e.b.ins().insertlane(rv, x, lane as u8);
            }
            rv
        };
        v = e.b.ins().fadd(v, rv);
    }
    if relu {
        v = e.relu(v);
    }
    e.store_lanes(v, valid, out, offset);
}
