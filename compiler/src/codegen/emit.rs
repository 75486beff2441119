//! Cranelift IR for each [`Kernel`]: one function `(arena, weights, begin, end)` that computes
//! work items `begin .. end` with every shape, stride and offset baked in, f32x4 SIMD with
//! explicit `fma`.
//!
//! A convolution's register tile is the kernel's [`Tile`], chosen by lowering. On the AVX-512
//! tier, [`conv_by_panels`] calls one assembled function per tile and weight panel that also applies
//! the epilogue ([`super::x86::ZmmTile`]). On the AVX2 tier, [`conv_tile`] accumulates a tile of
//! 8 output channels, through the assembled AVX2 function per tap ([`super::x86::Avx2Tile`]) or
//! as f32x4 Cranelift code with two accumulators per pixel, and the epilogue is Cranelift code.
//! The loops around them and the pools do not care which. The Winograd transforms are assembled
//! too on the AVX-512 tier ([`super::x86::TransformTile`], 16 channels a vector), and f32x4
//! Cranelift code ([`separable`]) on the AVX2 tier.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, ExtFuncData, ExternalName, FuncRef, Function, InstBuilder, MemFlagsData,
    Signature, StackSlotData, StackSlotKind, UserExternalName, UserFuncName, Value,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};

use super::lower::{
    ConvKernel, ConvRange, GlobalPoolKernel, Kernel, L2NormKernel, LinearKernel, PoolKernel, Split,
    WinogradKernel, LINEAR_LANES,
};
use super::tile::{Isa, Tile};
use super::winograd::Transform;
use super::x86::{Avx2Tile, TileFn, TransformTile, ZmmTile, ZMM_UNROLL};
use inceptc_runtime::layout::{MapLayout, VecLayout};

/// Output channels per block of the AVX2 tier's tiles (their weight panel).
const BLOCK: usize = 8;

const F32: i64 = 4;
const VEC: i64 = 16;

/// The signature every kernel has: `extern "C" fn(arena: *mut u8, weights: *const u8, begin: u64,
/// end: u64)`.
pub fn kernel_signature(call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..4 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig
}

/// Imports the function of an assembled register tile into the kernel being built (declaring it
/// in the module the first time); see [`super::x86`].
pub type TileImporter<'a> = dyn FnMut(TileFn, &mut Function) -> FuncRef + 'a;

/// The signature of an assembled tile function: [`TileFn::arguments`] 64-bit integers.
pub fn tile_signature(tile: &TileFn, call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..tile.arguments() {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig
}

/// Imports a tile function into `func` by the user name `namespace:index` alone, without a
/// module (listings; and a placeholder when declaring it in the module failed).
pub fn import_tile(
    func: &mut Function,
    namespace: u32,
    index: u32,
    tile: &TileFn,
    call_conv: CallConv,
) -> FuncRef {
    let name = func.declare_imported_user_function(UserExternalName::new(namespace, index));
    let signature = func.import_signature(tile_signature(tile, call_conv));
    func.import_function(ExtFuncData {
        name: ExternalName::user(name),
        signature,
        colocated: true,
        patchable: false,
    })
}

/// Builds the Cranelift function of `kernel`, the `index`-th function of its module; its register
/// tiles call the wide tile functions `tiles` imports.
pub fn function(
    kernel: &Kernel,
    config: TargetFrontendConfig,
    index: u32,
    tiles: &mut TileImporter,
) -> Function {
    let mut func = Function::with_name_signature(
        UserFuncName::user(0, index),
        kernel_signature(config.default_call_conv),
    );
    let mut ctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut func, &mut ctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let params = b.block_params(entry).to_vec();
        let mut e = Emitter {
            b,
            arena: params[0],
            weights: params[1],
            tiles,
        };
        let (begin, end) = (params[2], params[3]);
        match kernel {
            Kernel::Conv(k) => conv(&mut e, k, begin, end),
            Kernel::Winograd(k) => winograd(&mut e, k, begin, end),
            Kernel::Pool(k) => pool(&mut e, k, begin, end),
            Kernel::GlobalPool(k) => global_pool(&mut e, k, begin, end),
            Kernel::Linear(k) => linear(&mut e, k, begin, end),
            Kernel::L2Norm(k) => l2_norm(&mut e, k, begin, end),
        }
        e.b.ins().return_(&[]);
        e.b.seal_all_blocks();
        e.b.finalize(config);
    }
    func
}

/// Memory accesses of kernels: into the arena or the weights, never trapping (the plan keeps every
/// address inside its buffer); alignment is not promised.
fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Loads of memory that does not change while the kernel runs: weights, and activations the kernel
/// reads but never writes (the plan rejects a kernel that writes a buffer it reads, except an
/// in-place residual, which is loaded with [`flags`]). Such loads can be folded into the
/// instruction that uses them.
fn readonly() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_readonly()
}

struct Emitter<'a, 't> {
    b: FunctionBuilder<'a>,
    arena: Value,
    weights: Value,
    tiles: &'t mut TileImporter<'t>,
}

impl Emitter<'_, '_> {
    fn int(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// `base + offset` for a compile-time offset.
    fn offset(&mut self, base: Value, offset: i64) -> Value {
        if offset == 0 {
            base
        } else {
            self.b.ins().iadd_imm_s(base, offset)
        }
    }

    /// `base + index · scale`.
    fn scaled(&mut self, base: Value, index: Value, scale: i64) -> Value {
        let s = self.b.ins().imul_imm_s(index, scale);
        self.b.ins().iadd(base, s)
    }

    fn load(&mut self, ty: types::Type, addr: Value, offset: i64) -> Value {
        self.b.ins().load(ty, flags(), addr, offset as i32)
    }

    fn load_const(&mut self, ty: types::Type, addr: Value, offset: i64) -> Value {
        self.b.ins().load(ty, readonly(), addr, offset as i32)
    }

    fn store(&mut self, v: Value, addr: Value, offset: i64) {
        self.b.ins().store(flags(), v, addr, offset as i32);
    }

    fn var(&mut self, ty: types::Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    fn zero(&mut self, ty: types::Type) -> Value {
        let z = self.b.ins().f32const(0.0);
        if ty == types::F32 {
            z
        } else {
            self.b.ins().splat(ty, z)
        }
    }

    fn f32s(&mut self, ty: types::Type, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        if ty == types::F32 {
            s
        } else {
            self.b.ins().splat(ty, s)
        }
    }

    /// `for i in (start .. end).step_by(step)`, top-tested; `body` gets `i`.
    fn for_range(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        body: impl FnOnce(&mut Self, Value),
    ) {
        let i = self.var(types::I64, start);
        let header = self.b.create_block();
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let iv = self.b.use_var(i);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, iv, end);
        self.b.ins().brif(more, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        body(self, iv);
        let iv = self.b.use_var(i);
        let next = self.b.ins().iadd_imm_s(iv, step);
        self.b.def_var(i, next);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(exit);
    }

    /// [`Emitter::for_range`] over compile-time bounds; nothing when the range is empty.
    fn for_const(&mut self, start: i64, end: i64, step: i64, body: impl FnOnce(&mut Self, Value)) {
        if start >= end {
            return;
        }
        let (s, e) = (self.int(start), self.int(end));
        self.for_range(s, e, step, body);
    }

    /// Address of logical pixel (0, 0), channel `channel_offset`, of image `n` of a map.
    fn map_origin(&mut self, m: &MapLayout, n: Value) -> Value {
        let base = self.offset(self.arena, m.address(0, 0, 0, 0) as i64);
        self.scaled(base, n, m.image_stride() as i64)
    }

    /// Address of feature `feature_offset` of row `n` of a vector batch.
    fn vec_row(&mut self, v: &VecLayout, n: Value) -> Value {
        let base = self.offset(self.arena, v.address(0, 0) as i64);
        self.scaled(base, n, v.row_stride() as i64)
    }

    /// Stores the first `lanes` lanes of `v` at `addr + offset`, one float each (all four as one
    /// store when `lanes` is 4).
    fn store_lanes(&mut self, v: Value, lanes: usize, addr: Value, offset: i64) {
        if lanes == 4 {
            self.store(v, addr, offset);
            return;
        }
        for lane in 0..lanes {
            let x = self.b.ins().extractlane(v, lane as u8);
            self.store(x, addr, offset + lane as i64 * F32);
        }
    }

    /// Splits `item` into (image, row) for maps of `rows` rows.
    fn image_and_row(&mut self, item: Value, rows: usize) -> (Value, Value) {
        let n = self.b.ins().udiv_imm_u(item, rows as i64);
        let start = self.b.ins().imul_imm_s(n, rows as i64);
        let row = self.b.ins().isub(item, start);
        (n, row)
    }
}

/// Addresses of one tile of output pixels.
struct TileBases {
    /// Input pixel of the tile's first output pixel at tap (0, 0); the tile's other pixels follow
    /// at `stride · pixel stride` bytes.
    input: Value,
    /// Per range, per pixel: channel 0 of the range in the output.
    outputs: Vec<Vec<Value>>,
    /// Per pixel: channel 0 of the residual.
    residual: Option<Vec<Value>>,
}

/// Where a tile's pixels are: the body of [`for_units`] gets the tile's addresses and pixels.
type TileBody<'a> = dyn Fn(&mut Emitter, &TileBases, usize) + 'a;

fn conv(e: &mut Emitter, k: &ConvKernel, begin: Value, end: Value) {
    // Lowering splits every AVX-512 convolution by panels; blocks of 8 are the AVX2 tier's.
    debug_assert!(k.register.isa != Isa::Avx512 || k.split != Split::Units);
    match k.split {
        Split::Units => for_units(e, k, begin, end, &|e, bases, pixels| {
            conv_ranges(e, k, bases, pixels)
        }),
        Split::Panels { groups } => conv_by_panels(e, k, begin, end, groups),
    }
}

/// Calls `body` for every register tile of units `begin .. end` (see [`ConvKernel::units`]).
fn for_units(e: &mut Emitter, k: &ConvKernel, begin: Value, end: Value, body: &TileBody) {
    match k.flat {
        true => flat_tiles(e, k, begin, end, body),
        false => row_tiles(e, k, begin, end, body),
    }
}

/// The tiles of output rows `begin .. end` (image-major): full tiles along the row, then the
/// shorter last one.
fn row_tiles(e: &mut Emitter, k: &ConvKernel, begin: Value, end: Value, body: &TileBody) {
    let input = k.input;
    e.for_range(begin, end, 1, |e, item| {
        let (n, oy) = e.image_and_row(item, k.out_h);
        // Input row of output row `oy`, tap row 0: oy·stride − padding (inside the halo).
        let origin = e.map_origin(&input, n);
        let shift = -(k.padding[0] as i64) * input.row_stride() as i64
            - (k.padding[1] as i64) * input.pixel_stride() as i64;
        let origin = e.offset(origin, shift);
        let in_row = e.scaled(origin, oy, (k.stride[0] * input.row_stride()) as i64);
        let out_rows: Vec<Value> = k
            .ranges
            .iter()
            .map(|r| {
                let o = e.map_origin(&r.out, n);
                e.scaled(o, oy, r.out.row_stride() as i64)
            })
            .collect();
        let res_row = k.residual.map(|res| {
            let o = e.map_origin(&res, n);
            e.scaled(o, oy, res.row_stride() as i64)
        });
        let tile = k.register.pixels;
        let full = (k.out_w / tile * tile) as i64;
        let tile_at = |e: &mut Emitter, ox: Value, pixels: usize| {
            let along = |e: &mut Emitter, row: Value, stride: usize| -> Vec<Value> {
                let first = e.scaled(row, ox, stride as i64);
                (0..pixels)
                    .map(|p| e.offset(first, (p * stride) as i64))
                    .collect()
            };
            let bases = TileBases {
                input: e.scaled(in_row, ox, (k.stride[1] * input.pixel_stride()) as i64),
                outputs: k
                    .ranges
                    .iter()
                    .zip(&out_rows)
                    .map(|(r, row)| along(e, *row, r.out.pixel_stride()))
                    .collect(),
                residual: k
                    .residual
                    .zip(res_row)
                    .map(|(res, row)| along(e, row, res.pixel_stride())),
            };
            body(e, &bases, pixels);
        };
        e.for_const(0, full, tile as i64, |e, ox| tile_at(e, ox, tile));
        let rest = k.out_w % tile;
        if rest > 0 {
            let ox = e.int(full);
            tile_at(e, ox, rest);
        }
    });
}

/// A 1×1, stride-1 convolution whose input has no halo is a matrix product over all pixels of the
/// batch: unit `t` is the tile of pixels `Pt .. Pt + P` (P the register tile's pixels) in
/// (image, row, column) order, which may span rows and images; the last tile may be shorter.
fn flat_tiles(e: &mut Emitter, k: &ConvKernel, begin: Value, end: Value, body: &TileBody) {
    let input = k.input;
    let pixels = input.n * k.out_h * k.out_w;
    let tile = k.register.pixels;
    let full = (pixels / tile) as i64;
    let rest = pixels % tile;
    let tile_at = |e: &mut Emitter, index: Value, count: usize| {
        let first = e.b.ins().imul_imm_s(index, tile as i64);
        let base = e.offset(e.arena, input.address(0, 0, 0, 0) as i64);
        let bases = TileBases {
            input: e.scaled(base, first, input.pixel_stride() as i64),
            outputs: k
                .ranges
                .iter()
                .map(|r| pixel_addresses(e, &r.out, first, count))
                .collect(),
            residual: k.residual.map(|res| pixel_addresses(e, &res, first, count)),
        };
        body(e, &bases, count);
    };
    let full_v = e.int(full);
    let stop = e.b.ins().smin(end, full_v);
    e.for_range(begin, stop, 1, |e, index| tile_at(e, index, tile));
    if rest > 0 {
        // The short last tile, when this call's range reaches it.
        let last = e.b.create_block();
        let done = e.b.create_block();
        let reaches = e.b.ins().icmp(IntCC::SignedGreaterThan, end, full_v);
        e.b.ins().brif(reaches, last, &[], done, &[]);
        e.b.switch_to_block(last);
        tile_at(e, full_v, rest);
        e.b.ins().jump(done, &[]);
        e.b.switch_to_block(done);
    }
}

/// The AVX-512 tier's panel-major split: the work items of range `r` are its panels × `groups`
/// groups of units, panel-major after those of the ranges before it, so that consecutive items
/// reuse one weight panel from cache. Each item calls the panel's tile for every tile of its
/// units.
fn conv_by_panels(e: &mut Emitter, k: &ConvKernel, begin: Value, end: Value, groups: usize) {
    let units = k.units();
    let per_group = units.div_ceil(groups) as i64;
    let source = TileSource::conv(k);
    let prefetch = NextPanel::new(k, &source);
    let mut start = 0;
    for (r, range) in k.ranges.iter().enumerate() {
        let count = (k.register.panels(range.channels).len() * groups) as i64;
        let (lo, hi) = (e.int(start), e.int(start + count));
        let from = e.b.ins().smax(begin, lo);
        let to = e.b.ins().smin(end, hi);
        e.for_range(from, to, 1, |e, item| {
            let local = e.b.ins().iadd_imm_s(item, -start);
            let panel = e.b.ins().udiv_imm_u(local, groups as i64);
            let before = e.b.ins().imul_imm_s(panel, groups as i64);
            let group = e.b.ins().isub(local, before);
            let u0 = e.b.ins().imul_imm_s(group, per_group);
            let u1 = e.b.ins().iadd_imm_s(u0, per_group);
            let all = e.int(units as i64);
            let u1 = e.b.ins().smin(u1, all);
            let weights = RangePanels {
                register: &k.register,
                weights: range.weights,
                channels: range.channels,
                rows: source.taps.len() * source.channels,
            };
            for_panel(e, &weights, panel, &|e, panel| {
                // The tile calls of a panel spread the prefetch of the next panel between
                // them, each a share, so that it streams in while this one is reused from cache.
                let start = e.offset(panel.weights, prefetch.panel as i64);
                let skip =
                    e.b.ins()
                        .imul_imm_s(u0, (prefetch.per_unit * prefetch.share) as i64);
                let start = e.b.ins().iadd(start, skip);
                let cursor = e.var(types::I64, start);
                for_units(e, k, u0, u1, &|e, bases, pixels| {
                    let epilogue = Epilogue {
                        bias: Some(range.bias),
                        outputs: pointer_table(e, &bases.outputs[r]),
                        residuals: bases.residual.as_ref().map(|p| pointer_table(e, p)),
                        relu: range.relu,
                    };
                    let at = e.b.use_var(cursor);
                    let panel = ZmmPanel {
                        prefetch: (prefetch.step > 0).then_some((at, prefetch.step)),
                        ..*panel
                    };
                    zmm_call(e, &source, bases.input, &panel, &epilogue, pixels);
                    let next = e.offset(at, prefetch.share as i64);
                    e.b.def_var(cursor, next);
                });
            });
        });
        start += count;
    }
}

/// How the tile calls of one weight panel prefetch the next: the panel's bytes divided in equal
/// shares between the calls that reuse it, each share prefetched `step` bytes per channel loop
/// iteration of a call.
struct NextPanel {
    /// Bytes of a full panel.
    panel: usize,
    /// Tile calls per unit (tiles along an output row, or one flat tile).
    per_unit: usize,
    /// Bytes each call prefetches.
    share: usize,
    /// 0 when the tile has no channel loop to spread the prefetch over.
    step: i32,
}

impl NextPanel {
    fn new(k: &ConvKernel, source: &TileSource) -> NextPanel {
        let panel = k.register.panel() * source.taps.len() * source.channels * F32 as usize;
        let per_unit = match k.flat {
            true => 1,
            false => k.out_w.div_ceil(k.register.pixels),
        };
        let calls = k.units() * per_unit;
        let share = panel.div_ceil(calls).next_multiple_of(64);
        let iterations = source.taps.len() * (source.channels / ZMM_UNROLL);
        let step = match iterations {
            0 => 0,
            // At most 4 lines an iteration: a share beyond that is prefetched in part.
            _ => share.div_ceil(iterations).min(256) as i32,
        };
        NextPanel {
            panel,
            per_unit,
            share,
            step,
        }
    }
}

/// One range's weights in a register tile's panels.
struct RangePanels<'a> {
    register: &'a Tile,
    /// Byte offset of the range's packed weights.
    weights: usize,
    channels: usize,
    /// Rows of a panel: taps (or points) × input channels.
    rows: usize,
}

/// Calls `body` with panel `panel` (a run-time index) of `range`: the full panels' tile, or the
/// narrower last panel's, which has a tile of its own.
fn for_panel(
    e: &mut Emitter,
    range: &RangePanels,
    panel: Value,
    body: &dyn Fn(&mut Emitter, &ZmmPanel),
) {
    let width = range.register.panel();
    let panels = range.register.panels(range.channels);
    // Channel `first = panel · width`: weights at first · rows floats, bias and outputs at first
    // floats.
    let first = e.b.ins().imul_imm_s(panel, width as i64 * F32);
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

/// Addresses of channel 0 of `count` consecutive pixels of `m` starting at flat pixel index `first`
/// (image, row, column order), each split into its image, row and column.
fn pixel_addresses(e: &mut Emitter, m: &MapLayout, first: Value, count: usize) -> Vec<Value> {
    let origin = e.offset(e.arena, m.address(0, 0, 0, 0) as i64);
    let plane = (m.h * m.w) as i64;
    (0..count)
        .map(|p| {
            let i = e.offset(first, p as i64);
            if m.halo == [0, 0] {
                // Pixels of a halo-free map are contiguous across rows and images.
                return e.scaled(origin, i, m.pixel_stride() as i64);
            }
            let n = e.b.ins().udiv_imm_u(i, plane);
            let start = e.b.ins().imul_imm_s(n, plane);
            let r = e.b.ins().isub(i, start);
            let y = e.b.ins().udiv_imm_u(r, m.w as i64);
            let row_start = e.b.ins().imul_imm_s(y, m.w as i64);
            let x = e.b.ins().isub(r, row_start);
            let a = e.scaled(origin, n, m.image_stride() as i64);
            let a = e.scaled(a, y, m.row_stride() as i64);
            e.scaled(a, x, m.pixel_stride() as i64)
        })
        .collect()
}

/// Every output channel block of every range for one tile of `pixels` output pixels (the AVX2
/// tier: the AVX-512 tier splits by panels, see [`conv_by_panels`]).
fn conv_ranges(e: &mut Emitter, k: &ConvKernel, bases: &TileBases, pixels: usize) {
    for (r, range) in k.ranges.iter().enumerate() {
        for_blocks(e, range.channels, BLOCK, &|e, block, lanes| {
            conv_block(e, k, range, bases, r, pixels, block, lanes)
        });
    }
}

/// `addresses` stored in a stack slot, one 8-byte pointer each; returns the slot's address.
fn pointer_table(e: &mut Emitter, addresses: &[Value]) -> Value {
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
struct Epilogue {
    /// Byte offset of the range's bias in the weights; `None`: start from zero.
    bias: Option<usize>,
    /// The table of the tile's output pixels (channel 0 of the range).
    outputs: Value,
    /// The table of the tile's residual pixels.
    residuals: Option<Value>,
    relu: bool,
}

/// One weight panel of an AVX-512 tile call.
#[derive(Clone, Copy)]
struct ZmmPanel {
    /// Address of the panel's packed weights.
    weights: Value,
    /// Byte offset of its channel 0 in the bias and the output and residual pixels.
    first: Value,
    /// Packed channels (a multiple of 16).
    width: usize,
    /// Channels stored.
    channels: usize,
    /// Where the tile starts prefetching weights into L2, and how far it moves on per channel
    /// loop iteration.
    prefetch: Option<(Value, i32)>,
}

/// Calls the AVX-512 tile of `pixels` pixels for `panel`, reading `source` from `input`.
fn zmm_call(
    e: &mut Emitter,
    source: &TileSource,
    input: Value,
    panel: &ZmmPanel,
    epilogue: &Epilogue,
    pixels: usize,
) {
    let tile = TileFn::Zmm(ZmmTile {
        pixels,
        vectors: panel.width / 16,
        last_lanes: panel.channels - (panel.width - 16),
        taps: source.grid,
        tap_steps: source.grid_steps.map(|s| s as i32),
        channels: source.channels,
        pixel_step: source.pixel_step as i32,
        bias: epilogue.bias.is_some(),
        residual: epilogue.residuals.is_some(),
        relu: epilogue.relu,
        prefetch_step: panel.prefetch.map_or(0, |p| p.1),
    });
    let func = (e.tiles)(tile, e.b.func);
    let bias = match epilogue.bias {
        Some(b) => {
            let base = e.offset(e.weights, b as i64);
            e.b.ins().iadd(base, panel.first)
        }
        None => e.int(0),
    };
    let residuals = epilogue.residuals.unwrap_or_else(|| e.int(0));
    let args = [
        input,
        panel.weights,
        bias,
        epilogue.outputs,
        residuals,
        panel.first,
        panel.prefetch.map_or_else(|| e.int(0), |p| p.0),
    ];
    e.b.ins().call(func, &args);
}

/// Calls `body(block, lanes)` for every block of `width` of `channels` output channels: a loop
/// over the full blocks, then the partial one with its `lanes`.
fn for_blocks(
    e: &mut Emitter,
    channels: usize,
    width: usize,
    body: &dyn Fn(&mut Emitter, Value, usize),
) {
    let full_blocks = (channels / width) as i64;
    e.for_const(0, full_blocks, 1, |e, block| body(e, block, width));
    let rest = channels % width;
    if rest > 0 {
        let block = e.int(full_blocks);
        body(e, block, rest);
    }
}

/// One register tile: `pixels` output pixels × `lanes` (≤ 8) output channels of block `block` of
/// range `r`, then its epilogue.
#[allow(clippy::too_many_arguments)]
fn conv_block(
    e: &mut Emitter,
    k: &ConvKernel,
    range: &ConvRange,
    bases: &TileBases,
    r: usize,
    pixels: usize,
    block: Value,
    lanes: usize,
) {
    let vectors = lanes.div_ceil(4);
    let taps = k.kernel[0] * k.kernel[1];
    let block_bytes = (taps * k.input.channels * BLOCK) as i64 * F32;
    let wbase = e.offset(e.weights, range.weights as i64);
    let wptr = e.scaled(wbase, block, block_bytes);
    let bbase = e.offset(e.weights, range.bias as i64);
    let bias = e.scaled(bbase, block, BLOCK as i64 * F32);
    let source = TileSource::conv(k);
    let acc = conv_tile(
        e,
        &k.register,
        &source,
        bases.input,
        wptr,
        Some(bias),
        pixels,
        vectors,
    );

    // Epilogue: residual, ReLU, store (channel block `block` of each pixel).
    let channel = e.b.ins().imul_imm_s(block, BLOCK as i64 * F32);
    for (p, row) in acc.iter().enumerate() {
        let out = e.b.ins().iadd(bases.outputs[r][p], channel);
        let residual = bases
            .residual
            .as_ref()
            .map(|res| e.b.ins().iadd(res[p], channel));
        for (j, a) in row.iter().enumerate() {
            let v = e.b.use_var(*a);
            let valid = (lanes - 4 * j).min(4);
            finish(e, v, valid, residual, range.relu, out, j as i64 * VEC);
        }
    }
}

/// What one register tile reads: per tap, the byte offset of its input pixel from the tile's
/// first and of its weights from the block's (an AVX2 tier block); the same taps as a grid of
/// rows × columns and the bytes between them; the input channels; and the bytes from one of the
/// tile's pixels to the next.
struct TileSource {
    taps: Vec<(i64, i64)>,
    grid: [usize; 2],
    grid_steps: [i64; 2],
    channels: usize,
    pixel_step: i64,
    /// Whether the input is never written while the kernel runs (see [`readonly`]).
    readonly: bool,
}

impl TileSource {
    /// The taps of a direct convolution: row-major, weights as [`ConvRange`] packs them.
    fn conv(k: &ConvKernel) -> TileSource {
        let ic = k.input.channels;
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
            channels: ic,
            pixel_step: (k.stride[1] * k.input.pixel_stride()) as i64,
            readonly: true,
        }
    }
}

/// Where a tile is along one axis: a loop's value (a tile whose reads and writes all fall inside
/// the map and its padding), or a compile-time index (an edge tile, whose points outside the
/// input are zero and whose outputs outside the map are not stored).
#[derive(Clone, Copy)]
enum Coord {
    Loop(Value),
    At(usize),
}

/// One axis of a Winograd kernel.
struct Axis {
    transform: Transform,
    pad: usize,
    input: usize,
    output: usize,
    /// Bytes from one input position to the next along the axis.
    input_step: usize,
    tiles: usize,
    /// The leading tiles that read and write nothing outside the map and its padding.
    full: usize,
}

impl Axis {
    fn new(m: usize, r: usize, pad: usize, input: usize, output: usize, step: usize) -> Axis {
        // The lowering offers only tiles that exist.
        let transform = Transform::new(m, r).expect("an offered Winograd tile");
        let tiles = output.div_ceil(m);
        let len = transform.points();
        let full = (0..tiles)
            .take_while(|t| t * m + m <= output && t * m + len <= input + 2 * pad)
            .count();
        Axis {
            transform,
            pad,
            input,
            output,
            input_step: step,
            tiles,
            full,
        }
    }

    /// Whether point `i` of tile `at` is inside the input (else it is zero).
    fn reads(&self, at: Coord, i: usize) -> bool {
        match at {
            Coord::Loop(_) => true,
            Coord::At(t) => (t * self.transform.m + i)
                .checked_sub(self.pad)
                .is_some_and(|x| x < self.input),
        }
    }

    /// Whether output `o` of tile `at` is inside the map.
    fn writes(&self, at: Coord, o: usize) -> bool {
        match at {
            Coord::Loop(_) => true,
            Coord::At(t) => t * self.transform.m + o < self.output,
        }
    }
}

/// `Σ coefficient · value` over the terms whose value is not known zero (`None`), with adds and
/// subtracts for ±1 (a +1 term first, so that no negation is needed unless every term is −1);
/// `None` when every term is zero.
fn combine(
    e: &mut Emitter,
    terms: impl IntoIterator<Item = (f64, Option<Value>)>,
) -> Option<Value> {
    let mut terms: Vec<(f64, Value)> = terms
        .into_iter()
        .filter_map(|(c, v)| v.filter(|_| c != 0.0).map(|v| (c, v)))
        .collect();
    terms.sort_by_key(|(c, _)| super::winograd::sum_order(*c));
    let mut acc: Option<Value> = None;
    for (c, v) in terms {
        acc = Some(match (acc, c) {
            (None, 1.0) => v,
            (None, -1.0) => e.b.ins().fneg(v),
            (None, _) => {
                let s = e.f32s(types::F32X4, c as f32);
                e.b.ins().fmul(s, v)
            }
            (Some(a), 1.0) => e.b.ins().fadd(a, v),
            (Some(a), -1.0) => e.b.ins().fsub(a, v),
            (Some(a), _) => {
                let s = e.f32s(types::F32X4, c as f32);
                e.b.ins().fma(s, v, a)
            }
        });
    }
    acc
}

/// `base` advanced to tile `at` of `step` bytes: a runtime product or a constant added to `offset`.
fn advance(e: &mut Emitter, base: Value, offset: &mut i64, at: Coord, step: usize) -> Value {
    match at {
        Coord::Loop(t) => e.scaled(base, t, step as i64),
        Coord::At(t) => {
            *offset += (t * step) as i64;
            base
        }
    }
}

/// A Winograd convolution (see [`WinogradKernel`]): per work item (image, group of tile rows),
/// the input transform of every tile into the item's scratch, then per output channel block the
/// point-wise products through [`conv_tile`] and the output transform with the epilogue.
fn winograd(e: &mut Emitter, k: &WinogradKernel, begin: Value, end: Value) {
    let input = k.input;
    let y = Axis::new(
        k.tile[0],
        k.kernel[0],
        k.padding[0],
        input.h,
        k.out_h,
        input.row_stride(),
    );
    let x = Axis::new(
        k.tile[1],
        k.kernel[1],
        k.padding[1],
        input.w,
        k.out_w,
        input.pixel_stride(),
    );
    let ci = input.channels;
    let tiles = k.item_tiles();
    let points = y.transform.points() * x.transform.points();
    let width = k.register.panel();
    // The products read the transformed input: per point, `tiles` pixels of `ci` channels.
    let source = TileSource {
        taps: vec![(0, 0)],
        grid: [1, 1],
        grid_steps: [0, 0],
        channels: ci,
        pixel_step: ci as i64 * F32,
        readonly: false,
    };
    let step = k.register.pixels;
    e.for_range(begin, end, 1, |e, item| {
        let (n, group) = e.image_and_row(item, k.groups());
        let scratch = e.offset(e.arena, k.scratch as i64);
        let v_base = e.scaled(scratch, item, k.item_scratch() as i64);
        let m_base = e.offset(v_base, k.input_scratch() as i64);
        let in_origin = e.map_origin(&input, n);
        for_tiles(e, k, &y, &x, group, &|e, row, ty, tx| {
            input_tile(e, k, &y, &x, in_origin, v_base, row, ty, tx)
        });
        for range in &k.ranges {
            let out_origin = e.map_origin(&range.out, n);
            let res_origin = k.residual.map(|r| e.map_origin(&r, n));
            let block_body = |e: &mut Emitter, block: Value, lanes: usize| {
                // Products: for each point, the item's tiles × the panel's channels, into the
                // scratch (a row of `width` floats per tile).
                let block_bytes = (points * ci * width) as i64 * F32;
                let wbase = e.offset(e.weights, range.weights as i64);
                let wblock = e.scaled(wbase, block, block_bytes);
                // The panel's packed width: a narrower last panel rounds up to the granule.
                let packed = lanes.next_multiple_of(k.register.granule()).min(width);
                // The calls of a point prefetch the weights that follow its own (the next
                // point's, or the next block's), each a share.
                let point_bytes = ci * packed * F32 as usize;
                let share = point_bytes
                    .div_ceil(tiles.div_ceil(step))
                    .next_multiple_of(64);
                let prefetch_step = match ci / ZMM_UNROLL {
                    0 => 0,
                    iterations => share.div_ceil(iterations).min(256) as i32,
                };
                e.for_const(0, points as i64, 1, |e, point| {
                    let wptr = e.scaled(wblock, point, point_bytes as i64);
                    let vp = e.scaled(v_base, point, (tiles * ci) as i64 * F32);
                    let mp = e.scaled(m_base, point, (tiles * width) as i64 * F32);
                    for (call, first) in (0..tiles).step_by(step).enumerate() {
                        let pixels = step.min(tiles - first);
                        let vt = e.offset(vp, (first * ci) as i64 * F32);
                        if k.register.isa == Isa::Avx512 {
                            let rows: Vec<Value> = (0..pixels)
                                .map(|p| e.offset(mp, ((first + p) * width) as i64 * F32))
                                .collect();
                            let epilogue = Epilogue {
                                bias: None,
                                outputs: pointer_table(e, &rows),
                                residuals: None,
                                relu: false,
                            };
                            let panel = ZmmPanel {
                                weights: wptr,
                                first: e.int(0),
                                width: packed,
                                channels: lanes,
                                prefetch: (prefetch_step > 0).then(|| {
                                    let at = (point_bytes + call * share) as i64;
                                    (e.offset(wptr, at), prefetch_step)
                                }),
                            };
                            zmm_call(e, &source, vt, &panel, &epilogue, pixels);
                            continue;
                        }
                        let acc = conv_tile(e, &k.register, &source, vt, wptr, None, pixels, 2);
                        for (p, row) in acc.iter().enumerate() {
                            for (j, a) in row.iter().enumerate() {
                                let v = e.b.use_var(*a);
                                let at = ((first + p) * width + 4 * j) as i64 * F32;
                                e.store(v, mp, at);
                            }
                        }
                    }
                });
                let bbase = e.offset(e.weights, range.bias as i64);
                let bias = e.scaled(bbase, block, width as i64 * F32);
                let channel = e.b.ins().imul_imm_s(block, width as i64 * F32);
                let out = e.b.ins().iadd(out_origin, channel);
                let res = res_origin.map(|r| e.b.ins().iadd(r, channel));
                for_tiles(e, k, &y, &x, group, &|e, row, ty, tx| {
                    output_tile(
                        e, k, range, &y, &x, m_base, bias, out, res, lanes, row, ty, tx,
                    )
                });
            };
            for_blocks(e, range.channels, width, &block_body);
        }
    });
}

/// Calls `body(row, ty, tx)` for every tile of the item's tile rows `group · k.group ..`, `row`
/// counting the item's rows: full tiles in loops, edge tiles at their compile-time index.
fn for_tiles(
    e: &mut Emitter,
    k: &WinogradKernel,
    y: &Axis,
    x: &Axis,
    group: Value,
    body: &dyn Fn(&mut Emitter, usize, Coord, Coord),
) {
    let tile_row = |e: &mut Emitter, row: usize, ty: Coord| {
        e.for_const(0, x.full as i64, 1, |e, tx| {
            body(e, row, ty, Coord::Loop(tx))
        });
        for tx in x.full..x.tiles {
            body(e, row, ty, Coord::At(tx));
        }
    };
    let first = e.b.ins().imul_imm_s(group, k.group as i64);
    for row in 0..k.group {
        let ty = e.offset(first, row as i64);
        let done = e.b.create_block();
        let inside = e.b.create_block();
        let mut next = e.b.create_block();
        let full =
            e.b.ins()
                .icmp_imm_u(IntCC::UnsignedLessThan, ty, y.full as i64);
        e.b.ins().brif(full, inside, &[], next, &[]);
        e.b.switch_to_block(inside);
        tile_row(e, row, Coord::Loop(ty));
        e.b.ins().jump(done, &[]);
        // Edge tile rows, each at its index; tile rows past the last (in an image's last item)
        // fall through to `done`.
        for at in y.full..y.tiles {
            e.b.switch_to_block(next);
            let hit = e.b.create_block();
            next = e.b.create_block();
            let is = e.b.ins().icmp_imm_u(IntCC::Equal, ty, at as i64);
            e.b.ins().brif(is, hit, &[], next, &[]);
            e.b.switch_to_block(hit);
            tile_row(e, row, Coord::At(at));
            e.b.ins().jump(done, &[]);
        }
        e.b.switch_to_block(next);
        e.b.ins().jump(done, &[]);
        e.b.switch_to_block(done);
    }
}

/// The input transform `Bᵀ_y · d · B_x` of one tile, 16 channels at a time in one assembled call
/// on the AVX-512 tier, else 4 at a time, stored as point ξ of the item's tile `row · tiles + tx`:
/// `v_base + (ξ · tiles + tile) · C · 4`.
#[allow(clippy::too_many_arguments)]
fn input_tile(
    e: &mut Emitter,
    k: &WinogradKernel,
    y: &Axis,
    x: &Axis,
    in_origin: Value,
    v_base: Value,
    row: usize,
    ty: Coord,
    tx: Coord,
) {
    let ci = k.input.channels;
    let tiles = k.item_tiles();
    let lx = x.transform.points();
    // Input of point (0, 0): (ty·m_y − pad_y, tx·m_x − pad_x).
    let mut src_off = -((y.pad * y.input_step + x.pad * x.input_step) as i64);
    let src = advance(e, in_origin, &mut src_off, ty, y.transform.m * y.input_step);
    let src = advance(e, src, &mut src_off, tx, x.transform.m * x.input_step);
    let mut dst_off = (row * k.tiles()[1] * ci) as i64 * F32;
    let dst = advance(e, v_base, &mut dst_off, tx, ci * F32 as usize);
    if k.register.isa == Isa::Avx512 {
        let loads = (0..y.transform.points())
            .flat_map(|i| (0..lx).map(move |j| (i, j)))
            .map(|(i, j)| {
                let at = src_off + (i * y.input_step + j * x.input_step) as i64;
                (y.reads(ty, i) && x.reads(tx, j)).then_some(at as i32)
            })
            .collect();
        let stores = (0..y.transform.points() * lx)
            .map(|point| Some((dst_off + (point * tiles * ci) as i64 * F32) as i32))
            .collect();
        let tile = TransformTile {
            y: (y.transform.m, y.transform.r),
            x: (x.transform.m, x.transform.r),
            output: false,
            loads,
            stores,
            vectors: ci / 16,
            last_lanes: ci % 16,
            bias: false,
            residual: false,
            relu: false,
        };
        let zero = e.int(0);
        transform_call(e, tile, [src, dst, zero, zero]);
        return;
    }
    let t_base = e.offset(v_base, k.stage_offset() as i64);
    e.for_const(0, ci as i64 * F32, VEC, |e, c| {
        let from = e.b.ins().iadd(src, c);
        let to = e.b.ins().iadd(dst, c);
        let load = |e: &mut Emitter, i: usize, j: usize| {
            (y.reads(ty, i) && x.reads(tx, j)).then(|| {
                let at = (i * y.input_step + j * x.input_step) as i64;
                e.load_const(types::F32X4, from, src_off + at)
            })
        };
        // Point (a, b) of the tile: v_base + ((a·L_x + b) · tiles + tile) · C · 4.
        let store = |e: &mut Emitter, a: usize, b: usize, v: Option<Value>| {
            let v = v.unwrap_or_else(|| e.zero(types::F32X4));
            let point = a * lx + b;
            e.store(v, to, dst_off + (point * tiles * ci) as i64 * F32);
        };
        separable(e, &y.transform.bt, &x.transform.bt, t_base, &load, &store);
    });
}

/// The output transform `Aᵀ_y · M · A_x` of one tile for one block of output channels, plus bias,
/// residual and ReLU, stored where the tile's outputs fall inside the map (one assembled call on
/// the AVX-512 tier).
#[allow(clippy::too_many_arguments)]
fn output_tile(
    e: &mut Emitter,
    k: &WinogradKernel,
    range: &ConvRange,
    y: &Axis,
    x: &Axis,
    m_base: Value,
    bias: Value,
    out: Value,
    residual: Option<Value>,
    lanes: usize,
    row: usize,
    ty: Coord,
    tx: Coord,
) {
    let tiles = k.item_tiles();
    let width = k.register.panel();
    let lx = x.transform.points();
    let (oy_step, ox_step) = (range.out.row_stride(), range.out.pixel_stride());
    let mut m_off = (row * k.tiles()[1] * width) as i64 * F32;
    let m_at = advance(e, m_base, &mut m_off, tx, width * F32 as usize);
    let mut out_off = 0;
    let out_at = advance(e, out, &mut out_off, ty, y.transform.m * oy_step);
    let out_at = advance(e, out_at, &mut out_off, tx, x.transform.m * ox_step);
    let res_at = residual.map(|r| {
        let mut off = 0;
        let r = advance(e, r, &mut off, ty, y.transform.m * oy_step);
        let r = advance(e, r, &mut off, tx, x.transform.m * ox_step);
        e.offset(r, off)
    });
    let out_at = e.offset(out_at, out_off);
    if k.register.isa == Isa::Avx512 {
        let loads = (0..y.transform.points() * lx)
            .map(|point| Some((m_off + (point * tiles * width) as i64 * F32) as i32))
            .collect();
        let stores = (0..y.transform.m)
            .flat_map(|oy| (0..x.transform.m).map(move |ox| (oy, ox)))
            .map(|(oy, ox)| {
                let at = oy * oy_step + ox * ox_step;
                (y.writes(ty, oy) && x.writes(tx, ox)).then_some(at as i32)
            })
            .collect();
        let tile = TransformTile {
            y: (y.transform.m, y.transform.r),
            x: (x.transform.m, x.transform.r),
            output: true,
            loads,
            stores,
            vectors: lanes / 16,
            last_lanes: lanes % 16,
            bias: true,
            residual: res_at.is_some(),
            relu: range.relu,
        };
        let residual = res_at.unwrap_or_else(|| e.int(0));
        transform_call(e, tile, [m_at, out_at, bias, residual]);
        return;
    }
    let t_base = e.offset(m_base, k.stage_offset() as i64 - k.input_scratch() as i64);
    // One vector of 4 channels `j` (`valid` of them stored): every address moves by j · 16 bytes.
    let vector = |e: &mut Emitter, j: Value, valid: usize| {
        let shift = |e: &mut Emitter, base: Value| e.scaled(base, j, VEC);
        let (m_j, bias_j, out_j) = (shift(e, m_at), shift(e, bias), shift(e, out_at));
        let res_j = res_at.map(|r| shift(e, r));
        let load_m = |e: &mut Emitter, a: usize, b: usize| {
            let point = (a * lx + b) as i64;
            let at = m_off + point * (tiles * width) as i64 * F32;
            Some(e.load(types::F32X4, m_j, at))
        };
        let b0 = e.load(types::F32X4, bias_j, 0);
        let store_y = |e: &mut Emitter, oy: usize, ox: usize, v: Option<Value>| {
            if !(y.writes(ty, oy) && x.writes(tx, ox)) {
                return;
            }
            let v = match v {
                Some(v) => e.b.ins().fadd(v, b0),
                None => b0,
            };
            let at = (oy * oy_step + ox * ox_step) as i64;
            let to = e.offset(out_j, at);
            let res = res_j.map(|r| e.offset(r, at));
            finish(e, v, valid, res, range.relu, to, 0);
        };
        separable(
            e,
            &y.transform.at,
            &x.transform.at,
            t_base,
            &load_m,
            &store_y,
        );
    };
    // Whole vectors in a loop (a panel has up to 16), then the partial one.
    e.for_const(0, (lanes / 4) as i64, 1, |e, j| vector(e, j, 4));
    if !lanes.is_multiple_of(4) {
        let j = e.int((lanes / 4) as i64);
        vector(e, j, lanes % 4);
    }
}

/// Calls the assembled transform `tile` with its four pointers.
fn transform_call(e: &mut Emitter, tile: TransformTile, args: [Value; 4]) {
    let func = (e.tiles)(TileFn::Transform(tile), e.b.func);
    e.b.ins().call(func, &args);
}

/// Where [`separable`] puts entry (row, column) of its result (`None`: known zero).
type TileStore<'a> = dyn Fn(&mut Emitter, usize, usize, Option<Value>) + 'a;

/// `M_y · D · M_xᵀ` for one tile, 4 lanes at a time: `load(i, j)` gives `D`'s entries (`None`:
/// known zero), `store(a, b, v)` takes the result's. Along one axis (the other's matrix is the
/// 1 × 1 identity) each result is stored as soon as it is formed; along two, the products pass
/// through the staging buffer at `stage`, along y one column at a time, then along x one row at a
/// time (a whole tile held in registers spilled).
fn separable(
    e: &mut Emitter,
    my: &[Vec<f64>],
    mx: &[Vec<f64>],
    stage: Value,
    load: &dyn Fn(&mut Emitter, usize, usize) -> Option<Value>,
    store: &TileStore,
) {
    let (ly, lx) = (my[0].len(), mx[0].len());
    let apply = |e: &mut Emitter, row: &[f64], inputs: &[Option<Value>]| {
        combine(e, row.iter().zip(inputs).map(|(c, v)| (*c, *v)))
    };
    if lx == 1 || ly == 1 {
        let along_y = ly > 1;
        let (m, len) = match along_y {
            true => (my, ly),
            false => (mx, lx),
        };
        let d: Vec<Option<Value>> = (0..len)
            .map(|i| match along_y {
                true => load(e, i, 0),
                false => load(e, 0, i),
            })
            .collect();
        for (o, row) in m.iter().enumerate() {
            let v = apply(e, row, &d);
            match along_y {
                true => store(e, o, 0, v),
                false => store(e, 0, o, v),
            }
        }
        return;
    }
    let at = |a: usize, j: usize| (a * lx + j) as i64 * VEC;
    for j in 0..lx {
        let d: Vec<Option<Value>> = (0..ly).map(|i| load(e, i, j)).collect();
        for (a, row) in my.iter().enumerate() {
            let t = apply(e, row, &d).unwrap_or_else(|| e.zero(types::F32X4));
            e.store(t, stage, at(a, j));
        }
    }
    for a in 0..my.len() {
        let t: Vec<Option<Value>> = (0..lx)
            .map(|j| Some(e.load(types::F32X4, stage, at(a, j))))
            .collect();
        for (b, row) in mx.iter().enumerate() {
            let v = apply(e, row, &t);
            store(e, a, b, v);
        }
    }
}

/// The AVX2 tier's micro-kernel seam: accumulates a `pixels` × (4·`vectors`) register tile of
/// `register` ([`Isa::Sse`] or [`Isa::Avx2`]) over all taps and input channels of `source`,
/// starting from the vectors at `init` (the bias) or from zero, and returns the accumulator
/// variables `[pixel][vector]`. `input` is the tile's first input pixel at tap (0, 0); `wptr`
/// the block's packed weights, a row of [`BLOCK`] floats per channel.
#[allow(clippy::too_many_arguments)]
fn conv_tile(
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
fn wide_tile(
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
fn finish(
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
        // v where v > 0, else +0 (NaN becomes 0, like the interpreter's f32::max).
        let zero = e.zero(types::F32X4);
        let positive = e.b.ins().fcmp(FloatCC::GreaterThan, v, zero);
        let mask =
            e.b.ins()
                .bitcast(types::F32X4, MemFlagsData::new(), positive);
        v = e.b.ins().band(v, mask);
    }
    e.store_lanes(v, valid, out, offset);
}

/// Max or average pooling, a row per work item. Windows that lie wholly inside the image (every
/// column of an inner row but the edges) take a straight-line path over their taps, 16 channels
/// at a time; the others clamp their window at run time. Both combine the taps in the same order
/// from the same start, so they compute the same values.
fn pool(e: &mut Emitter, k: &PoolKernel, begin: Value, end: Value) {
    let (input, out, win) = (k.input, k.out, &k.window);
    let [(kh, kw), (sy, sx), (py, px)] = [
        (win.kernel[0], win.kernel[1]),
        (win.stride[0], win.stride[1]),
        (win.padding[0], win.padding[1]),
    ];
    // Columns whose window is inside the image along x: x0 = ox·s − p ≥ 0 and x0 + kw ≤ W.
    let inner_x0 = px.div_ceil(sx).min(out.w);
    let inner_x1 = match (input.w + px).checked_sub(kw) {
        Some(room) => (room / sx + 1).clamp(inner_x0, out.w),
        None => inner_x0,
    };
    e.for_range(begin, end, 1, |e, item| {
        let (n, oy) = e.image_and_row(item, out.h);
        let in_origin = e.map_origin(&input, n);
        let out_origin = e.map_origin(&out, n);
        let out_row = e.scaled(out_origin, oy, out.row_stride() as i64);
        // Window rows inside the image: ky in [max(0, −y0), min(kh, H − y0)), y0 = oy·s − p.
        let y0 = e.b.ins().imul_imm_s(oy, sy as i64);
        let y0 = e.b.ins().iadd_imm_s(y0, -(py as i64));
        let (ky_lo, ky_hi) = clamp_window(e, y0, kh, input.h);
        let wy = e.scaled(in_origin, y0, input.row_stride() as i64);
        let general = |e: &mut Emitter, from: usize, to: usize| {
            e.for_const(from as i64, to as i64, 1, |e, ox| {
                pool_clamped(e, k, wy, out_row, ox, (ky_lo, ky_hi))
            });
        };
        // The row is inner when ky_lo = 0 and ky_hi = kh.
        let top = e.b.ins().icmp_imm_u(IntCC::Equal, ky_lo, 0);
        let bottom = e.b.ins().icmp_imm_u(IntCC::Equal, ky_hi, kh as i64);
        let inner = e.b.ins().band(top, bottom);
        let (fast, slow, done) = (e.b.create_block(), e.b.create_block(), e.b.create_block());
        e.b.ins().brif(inner, fast, &[], slow, &[]);
        e.b.switch_to_block(fast);
        general(e, 0, inner_x0);
        e.for_const(inner_x0 as i64, inner_x1 as i64, 1, |e, ox| {
            pool_inner(e, k, wy, out_row, ox)
        });
        general(e, inner_x1, out.w);
        e.b.ins().jump(done, &[]);
        e.b.switch_to_block(slow);
        general(e, 0, out.w);
        e.b.ins().jump(done, &[]);
        e.b.switch_to_block(done);
    });
}

/// The start of every pooling window: −∞ for max pooling, 0 for average pooling.
fn pool_init(e: &mut Emitter, k: &PoolKernel, ty: types::Type) -> Value {
    match k.average {
        None => e.f32s(ty, f32::NEG_INFINITY),
        Some(_) => e.zero(ty),
    }
}

/// `acc` combined with one tap: max or sum.
fn pool_step(e: &mut Emitter, k: &PoolKernel, acc: Value, v: Value) -> Value {
    match k.average {
        None => e.b.ins().fmax(acc, v),
        Some(_) => e.b.ins().fadd(acc, v),
    }
}

/// Output column `ox` of a pooling row whose window rows start at `wy`, with every tap inside
/// the image: taps unrolled, four vectors of channels per step, then single vectors and floats.
fn pool_inner(e: &mut Emitter, k: &PoolKernel, wy: Value, out_row: Value, ox: Value) {
    let (input, out, win) = (k.input, k.out, &k.window);
    let x0 = e.b.ins().imul_imm_s(ox, win.stride[1] as i64);
    let x0 = e.b.ins().iadd_imm_s(x0, -(win.padding[1] as i64));
    let window = e.scaled(wy, x0, input.pixel_stride() as i64);
    let out_px = e.scaled(out_row, ox, out.pixel_stride() as i64);
    let taps: Vec<i64> = (0..win.kernel[0])
        .flat_map(|ky| {
            (0..win.kernel[1])
                .map(move |kx| (ky * input.row_stride() + kx * input.pixel_stride()) as i64)
        })
        .collect();
    let scale = k
        .average
        .map(|_| 1.0 / (win.kernel[0] * win.kernel[1]) as f32);
    let lanes = |e: &mut Emitter, c: Value, ty: types::Type, vectors: usize| {
        let base = e.b.ins().iadd(window, c);
        let dst = e.b.ins().iadd(out_px, c);
        let bytes = ty.bytes() as i64;
        for v in 0..vectors as i64 {
            let mut acc = pool_init(e, k, ty);
            for &tap in &taps {
                let x = e.load(ty, base, tap + v * bytes);
                acc = pool_step(e, k, acc, x);
            }
            if let Some(s) = scale {
                let s = e.f32s(ty, s);
                acc = e.b.ins().fmul(acc, s);
            }
            e.store(acc, dst, v * bytes);
        }
    };
    let channels = input.channels as i64;
    let wide_end = channels / 16 * 16 * F32;
    let vec_end = channels / 4 * 4 * F32;
    e.for_const(0, wide_end, 4 * VEC, |e, c| lanes(e, c, types::F32X4, 4));
    e.for_const(wide_end, vec_end, VEC, |e, c| lanes(e, c, types::F32X4, 1));
    e.for_const(vec_end, channels * F32, F32, |e, c| {
        lanes(e, c, types::F32, 1)
    });
}

/// Output column `ox` of a pooling row whose window rows start at `wy` and whose taps inside
/// the image are rows `ky_lo .. ky_hi`: the window is clamped at run time.
fn pool_clamped(
    e: &mut Emitter,
    k: &PoolKernel,
    wy: Value,
    out_row: Value,
    ox: Value,
    (ky_lo, ky_hi): (Value, Value),
) {
    let (input, out, win) = (k.input, k.out, &k.window);
    let x0 = e.b.ins().imul_imm_s(ox, win.stride[1] as i64);
    let x0 = e.b.ins().iadd_imm_s(x0, -(win.padding[1] as i64));
    let (kx_lo, kx_hi) = clamp_window(e, x0, win.kernel[1], input.w);
    // Window origin (may lie in or beyond the halo; only in-image taps are read).
    let window = e.scaled(wy, x0, input.pixel_stride() as i64);
    let out_px = e.scaled(out_row, ox, out.pixel_stride() as i64);
    let scale = match k.average {
        None => None,
        Some(true) => Some(e.f32s(types::F32, 1.0 / (win.kernel[0] * win.kernel[1]) as f32)),
        Some(false) => {
            let h = e.b.ins().isub(ky_hi, ky_lo);
            let w = e.b.ins().isub(kx_hi, kx_lo);
            let count = e.b.ins().imul(h, w);
            let count = e.b.ins().fcvt_from_sint(types::F32, count);
            let one = e.f32s(types::F32, 1.0);
            Some(e.b.ins().fdiv(one, count))
        }
    };
    let channels = input.channels;
    let pool_lanes = |e: &mut Emitter, c: Value, ty: types::Type| {
        let init = pool_init(e, k, ty);
        let acc = e.var(ty, init);
        let base = e.b.ins().iadd(window, c);
        e.for_range(ky_lo, ky_hi, 1, |e, ky| {
            let row = e.scaled(base, ky, input.row_stride() as i64);
            e.for_range(kx_lo, kx_hi, 1, |e, kx| {
                let px = e.scaled(row, kx, input.pixel_stride() as i64);
                let v = e.load(ty, px, 0);
                let a = e.b.use_var(acc);
                let r = pool_step(e, k, a, v);
                e.b.def_var(acc, r);
            });
        });
        let mut r = e.b.use_var(acc);
        if let Some(s) = scale {
            let s = if ty == types::F32 {
                s
            } else {
                e.b.ins().splat(ty, s)
            };
            r = e.b.ins().fmul(r, s);
        }
        let dst = e.b.ins().iadd(out_px, c);
        e.store(r, dst, 0);
    };
    let vec_end = (channels / 4 * 4) as i64 * F32;
    e.for_const(0, vec_end, VEC, |e, c| pool_lanes(e, c, types::F32X4));
    e.for_const(vec_end, channels as i64 * F32, F32, |e, c| {
        pool_lanes(e, c, types::F32)
    });
}

/// `[max(0, −origin), min(kernel, size − origin))` for a window starting at `origin`.
fn clamp_window(e: &mut Emitter, origin: Value, kernel: usize, size: usize) -> (Value, Value) {
    let zero = e.int(0);
    let neg = e.b.ins().ineg(origin);
    let lo = e.b.ins().smax(zero, neg);
    let k = e.int(kernel as i64);
    let s = e.int(size as i64);
    let room = e.b.ins().isub(s, origin);
    let hi = e.b.ins().smin(k, room);
    (lo, hi)
}

fn global_pool(e: &mut Emitter, k: &GlobalPoolKernel, begin: Value, end: Value) {
    let (input, out) = (k.input, k.out);
    e.for_range(begin, end, 1, |e, n| {
        let origin = e.map_origin(&input, n);
        let dst = e.vec_row(&out, n);
        let inv = 1.0 / (input.h * input.w) as f32;
        let lanes = |e: &mut Emitter, c: Value, ty: types::Type| {
            let init = e.zero(ty);
            let acc = e.var(ty, init);
            let base = e.b.ins().iadd(origin, c);
            e.for_const(0, input.h as i64, 1, |e, y| {
                let row = e.scaled(base, y, input.row_stride() as i64);
                e.for_const(0, input.w as i64, 1, |e, x| {
                    let px = e.scaled(row, x, input.pixel_stride() as i64);
                    let v = e.load(ty, px, 0);
                    let a = e.b.use_var(acc);
                    let s = e.b.ins().fadd(a, v);
                    e.b.def_var(acc, s);
                });
            });
            let a = e.b.use_var(acc);
            let scale = e.f32s(ty, inv);
            let mean = e.b.ins().fmul(a, scale);
            let at = e.b.ins().iadd(dst, c);
            e.store(mean, at, 0);
        };
        let vec_end = (input.channels / 4 * 4) as i64 * F32;
        e.for_const(0, vec_end, VEC, |e, c| lanes(e, c, types::F32X4));
        e.for_const(vec_end, input.channels as i64 * F32, F32, |e, c| {
            lanes(e, c, types::F32)
        });
    });
}

fn linear(e: &mut Emitter, k: &LinearKernel, begin: Value, end: Value) {
    if let Some(register) = &k.register {
        return linear_tiled(e, k, register, begin, end);
    }
    let (input, out) = (k.input, k.out);
    let inputs = input.features;
    e.for_range(begin, end, 1, |e, n| {
        let x = e.vec_row(&input, n);
        let y = e.vec_row(&out, n);
        let block = |e: &mut Emitter, b: Value, lanes: usize| {
            let init = match k.bias {
                Some(off) => {
                    let base = e.offset(e.weights, off as i64);
                    let at = e.scaled(base, b, VEC);
                    e.load(types::F32X4, at, 0)
                }
                None => e.zero(types::F32X4),
            };
            let acc = e.var(types::F32X4, init);
            let wbase = e.offset(e.weights, k.weights as i64);
            let w0 = e.scaled(wbase, b, (inputs * LINEAR_LANES) as i64 * F32);
            let w = e.var(types::I64, w0);
            let stop = e.offset(x, inputs as i64 * F32);
            e.for_range(x, stop, F32, |e, xp| {
                let s = e.load(types::F32, xp, 0);
                let s = e.b.ins().splat(types::F32X4, s);
                let wv = e.b.use_var(w);
                let wt = e.load(types::F32X4, wv, 0);
                let a = e.b.use_var(acc);
                let r = e.b.ins().fma(s, wt, a);
                e.b.def_var(acc, r);
                let next = e.b.ins().iadd_imm_s(wv, VEC);
                e.b.def_var(w, next);
            });
            let r = e.b.use_var(acc);
            let at = e.scaled(y, b, VEC);
            e.store_lanes(r, lanes, at, 0);
        };
        let full = (out.features / LINEAR_LANES) as i64;
        e.for_const(0, full, 1, |e, b| block(e, b, LINEAR_LANES));
        let rest = out.features % LINEAR_LANES;
        if rest > 0 {
            let b = e.int(full);
            block(e, b, rest);
        }
    });
}

/// A linear layer through the AVX-512 tile: a 1×1 convolution whose pixels are the rows; work
/// item `p` is weight panel `p` over every row, in tiles of the register tile's pixels.
fn linear_tiled(e: &mut Emitter, k: &LinearKernel, register: &Tile, begin: Value, end: Value) {
    let (input, out) = (k.input, k.out);
    let source = TileSource {
        taps: vec![(0, 0)],
        grid: [1, 1],
        grid_steps: [0, 0],
        channels: input.features,
        pixel_step: input.row_stride() as i64,
        readonly: true,
    };
    let weights = RangePanels {
        register,
        weights: k.weights,
        channels: out.features,
        rows: input.features,
    };
    e.for_range(begin, end, 1, |e, panel| {
        for_panel(e, &weights, panel, &|e, panel| {
            let tile = register.pixels;
            for r0 in (0..out.n).step_by(tile) {
                let pixels = tile.min(out.n - r0);
                let row = e.int(r0 as i64);
                let x = e.vec_row(&input, row);
                let outputs: Vec<Value> = (0..pixels)
                    .map(|p| {
                        let r = e.int((r0 + p) as i64);
                        e.vec_row(&out, r)
                    })
                    .collect();
                let epilogue = Epilogue {
                    bias: k.bias,
                    outputs: pointer_table(e, &outputs),
                    residuals: None,
                    relu: false,
                };
                zmm_call(e, &source, x, panel, &epilogue, pixels);
            }
        });
    });
}

fn l2_norm(e: &mut Emitter, k: &L2NormKernel, begin: Value, end: Value) {
    let (input, out) = (k.input, k.out);
    let f = input.features;
    let vec_end = (f / 4 * 4) as i64 * F32;
    e.for_range(begin, end, 1, |e, n| {
        let x = e.vec_row(&input, n);
        let y = e.vec_row(&out, n);
        let zv = e.zero(types::F32X4);
        let acc = e.var(types::F32X4, zv);
        e.for_const(0, vec_end, VEC, |e, c| {
            let at = e.b.ins().iadd(x, c);
            let v = e.load(types::F32X4, at, 0);
            let a = e.b.use_var(acc);
            let r = e.b.ins().fma(v, v, a);
            e.b.def_var(acc, r);
        });
        let a = e.b.use_var(acc);
        let mut sum = e.b.ins().extractlane(a, 0);
        for lane in 1..4u8 {
            let l = e.b.ins().extractlane(a, lane);
            sum = e.b.ins().fadd(sum, l);
        }
        let total = e.var(types::F32, sum);
        e.for_const(vec_end, f as i64 * F32, F32, |e, c| {
            let at = e.b.ins().iadd(x, c);
            let v = e.load(types::F32, at, 0);
            let t = e.b.use_var(total);
            let r = e.b.ins().fma(v, v, t);
            e.b.def_var(total, r);
        });
        let t = e.b.use_var(total);
        let norm = e.b.ins().sqrt(t);
        let eps = e.f32s(types::F32, k.eps);
        // max(norm, eps) that keeps a NaN norm NaN.
        let small = e.b.ins().fcmp(FloatCC::LessThan, norm, eps);
        let d = e.b.ins().select(small, eps, norm);
        let one = e.f32s(types::F32, 1.0);
        let inv = e.b.ins().fdiv(one, d);
        let invv = e.b.ins().splat(types::F32X4, inv);
        e.for_const(0, vec_end, VEC, |e, c| {
            let at = e.b.ins().iadd(x, c);
            let v = e.load(types::F32X4, at, 0);
            let r = e.b.ins().fmul(v, invv);
            let to = e.b.ins().iadd(y, c);
            e.store(r, to, 0);
        });
        e.for_const(vec_end, f as i64 * F32, F32, |e, c| {
            let at = e.b.ins().iadd(x, c);
            let v = e.load(types::F32, at, 0);
            let r = e.b.ins().fmul(v, inv);
            let to = e.b.ins().iadd(y, c);
            e.store(r, to, 0);
        });
    });
}
