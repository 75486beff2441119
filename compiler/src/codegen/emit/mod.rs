//! Cranelift IR for each [`Kernel`]: one function `(arena, weights, begin, end)` that computes
//! work items `begin .. end` with every shape, stride and offset baked in, f32x4 SIMD with
//! explicit `fma`.
//!
//! A convolution's register tile is the kernel's [`Tile`], chosen by lowering. On the AVX-512
//! tier, `conv::conv_by_panels` calls one assembled function per tile and weight panel that also applies
//! the epilogue ([`super::x86::ZmmTile`]). On the AVX2 tier, `seam::conv_tile` accumulates a tile of
//! 8 output channels, through the assembled AVX2 function per tap ([`super::x86::Avx2Tile`]) or
//! as f32x4 Cranelift code with two accumulators per pixel, and the epilogue is Cranelift code.
//! The loops around them and the pools do not care which. The Winograd transforms are assembled
//! too on the AVX-512 tier ([`super::x86::TransformTile`], 16 channels a vector), and f32x4
//! Cranelift code (`winograd::separable`) on the AVX2 tier.
//!
//! One file per kernel family: `conv`, `winograd`, `pool`, `dense`, and `seam`, where
//! kernels call the register tiles.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Endianness, ExtFuncData, ExternalName, FuncRef, Function, InstBuilder,
    MemFlagsData, Signature, StackSlotData, StackSlotKind, UserExternalName, UserFuncName, Value,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};

use super::lower::{
    ConvKernel, ConvRange, GlobalPoolKernel, ItemOrder, Kernel, L2NormKernel, LinearKernel,
    PoolKernel, Split, WinogradKernel, LINEAR_LANES,
};
use super::tile::{Isa, Tile};
use super::winograd::Transform;
use super::x86::{
    AmxTile, Avx2Tile, Data, TileFn, TransformTile, ZmmTile, AMX_CHANNELS, ZMM_UNROLL,
};
use inceptc_runtime::layout::{MapLayout, Precision, VecLayout};

mod conv;
mod dense;
mod pool;
mod seam;
mod winograd;

use conv::*;
use dense::*;
use pool::*;
use seam::*;
use winograd::*;

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
        // AMX tiles share one configuration, loaded once per call of the kernel (on the thread
        // that runs it) and released at its end.
        let amx = matches!(kernel, Kernel::Conv(k) if k.register.isa == Isa::Amx);
        if amx {
            let configure = (e.tiles)(TileFn::AmxState(true), e.b.func);
            e.b.ins().call(configure, &[]);
        }
        match kernel {
            Kernel::Conv(k) => conv(&mut e, k, begin, end),
            Kernel::Winograd(k) => winograd(&mut e, k, begin, end),
            Kernel::Pool(k) => pool(&mut e, k, begin, end),
            Kernel::GlobalPool(k) => global_pool(&mut e, k, begin, end),
            Kernel::Linear(k) => linear(&mut e, k, begin, end),
            Kernel::L2Norm(k) => l2_norm(&mut e, k, begin, end),
        }
        if amx {
            let release = (e.tiles)(TileFn::AmxState(false), e.b.func);
            e.b.ins().call(release, &[]);
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

/// Bitcasts between vector types in little-endian lane order (x86's).
fn little() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
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

    /// Loads one value (`ty` F32) or four (F32X4) of map `map` at `addr + offset`, widened to
    /// f32: a bf16's 16 bits become the high half of the f32; a u8 code `q` becomes `(q − zero) ·
    /// scale`, as [`inceptc_runtime::layout::Quant::dequantize`] computes it.
    fn load_value(&mut self, ty: types::Type, map: &MapLayout, addr: Value, offset: i64) -> Value {
        match map.precision {
            Precision::F32 => self.load(ty, addr, offset),
            Precision::Bf16 => {
                let bits = match ty == types::F32 {
                    true => self
                        .b
                        .ins()
                        .uload16(types::I32, flags(), addr, offset as i32),
                    false => self.b.ins().uload16x4(flags(), addr, offset as i32),
                };
                let wide = self.b.ins().ishl_imm_u(bits, 16);
                self.b.ins().bitcast(ty, MemFlagsData::new(), wide)
            }
            Precision::U8 => {
                let codes = self.load_codes(ty == types::F32, addr, offset);
                self.dequantize(codes, map.quant)
            }
        }
    }

    /// u8 codes (an I32, or four in an I32X4) as the real values of a map with parameters `q`
    /// (F32 or F32X4): `(q − zero) · scale`, as [`inceptc_runtime::layout::Quant::dequantize`]
    /// computes it.
    fn dequantize(&mut self, codes: Value, q: inceptc_runtime::layout::Quant) -> Value {
        let ty = match self.b.func.dfg.value_type(codes) == types::I32 {
            true => types::F32,
            false => types::F32X4,
        };
        let v = self.b.ins().fcvt_from_sint(ty, codes);
        let zero = self.f32s(ty, q.zero as f32);
        let scale = self.f32s(ty, q.scale);
        let v = self.b.ins().fsub(v, zero);
        self.b.ins().fmul(v, scale)
    }

    /// One u8 code (`scalar`: an I32) or four (I32X4) at `addr + offset`, zero-extended.
    fn load_codes(&mut self, scalar: bool, addr: Value, offset: i64) -> Value {
        if scalar {
            return self
                .b
                .ins()
                .uload8(types::I32, flags(), addr, offset as i32);
        }
        let quad = self.load(types::I32, addr, offset);
        let v = self.b.ins().scalar_to_vector(types::I32X4, quad);
        let bytes = self.b.ins().bitcast(types::I8X16, little(), v);
        let halves = self.b.ins().uwiden_low(bytes);
        self.b.ins().uwiden_low(halves)
    }

    /// Stores codes 0 ..= 255 (an I32, or four in an I32X4) as bytes at `addr + offset`.
    fn store_codes(&mut self, codes: Value, addr: Value, offset: i64) {
        if self.b.func.dfg.value_type(codes) == types::I32 {
            self.b.ins().istore8(flags(), codes, addr, offset as i32);
            return;
        }
        // The codes are 0 ..= 255: neither saturation changes one.
        let halves = self.b.ins().snarrow(codes, codes);
        let bytes = self.b.ins().unarrow(halves, halves);
        let quads = self.b.ins().bitcast(types::I32X4, little(), bytes);
        let low = self.b.ins().extractlane(quads, 0);
        self.store(low, addr, offset);
    }

    /// Stores `v` (F32 or F32X4) at `addr + offset` as a value of map `map`: bf16 rounded to
    /// nearest even, as `vcvtneps2bf16` and the interpreter round (`(bits + 0x7fff + lsb) >>
    /// 16`; a NaN is not kept, which no pooled value is); a u8 code as
    /// [`inceptc_runtime::layout::Quant::quantize`] computes it (`v · inverse + zero` fused,
    /// clamped to 0 ..= 255, rounded to nearest even; a NaN becomes 0).
    fn store_value(&mut self, v: Value, map: &MapLayout, addr: Value, offset: i64) {
        match map.precision {
            Precision::F32 => return self.store(v, addr, offset),
            Precision::Bf16 => {}
            Precision::U8 => {
                let ty = self.b.func.dfg.value_type(v);
                let inverse = self.f32s(ty, map.quant.inverse());
                let zero = self.f32s(ty, map.quant.zero as f32);
                let q = self.b.ins().fma(v, inverse, zero);
                let low = self.f32s(ty, 0.0);
                let high = self.f32s(ty, 255.0);
                let q = self.b.ins().fmax(q, low);
                let q = self.b.ins().fmin(q, high);
                let q = self.b.ins().nearest(q);
                let int = match ty == types::F32 {
                    true => types::I32,
                    false => types::I32X4,
                };
                let codes = self.b.ins().fcvt_to_sint_sat(int, q);
                return self.store_codes(codes, addr, offset);
            }
        }
        let scalar = self.b.func.dfg.value_type(v) == types::F32;
        let ty = match scalar {
            true => types::I32,
            false => types::I32X4,
        };
        let bits = self.b.ins().bitcast(ty, MemFlagsData::new(), v);
        let high = self.b.ins().ushr_imm_u(bits, 16);
        let one = self.b.ins().iconst(types::I32, 1);
        let half = self.b.ins().iconst(types::I32, 0x7fff);
        let (one, half) = match scalar {
            true => (one, half),
            false => (self.b.ins().splat(ty, one), self.b.ins().splat(ty, half)),
        };
        let lsb = self.b.ins().band(high, one);
        let r = self.b.ins().iadd(bits, half);
        let r = self.b.ins().iadd(r, lsb);
        let r = self.b.ins().ushr_imm_u(r, 16);
        if scalar {
            self.b.ins().istore16(flags(), r, addr, offset as i32);
            return;
        }
        // The four results are below 2^16: the unsigned saturation changes none.
        let halves = self.b.ins().unarrow(r, r);
        let pairs = self.b.ins().bitcast(types::I64X2, little(), halves);
        let low = self.b.ins().extractlane(pairs, 0);
        self.store(low, addr, offset);
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

    /// `v` where `v > 0`, else +0 (a NaN becomes 0, like the interpreter's `f32::max`), in f32
    /// lanes or one f32.
    fn relu(&mut self, v: Value) -> Value {
        let ty = self.b.func.dfg.value_type(v);
        let zero = self.zero(ty);
        let positive = self.b.ins().fcmp(FloatCC::GreaterThan, v, zero);
        if ty == types::F32 {
            return self.b.ins().select(positive, v, zero);
        }
        let mask = self.b.ins().bitcast(ty, MemFlagsData::new(), positive);
        self.b.ins().band(v, mask)
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
