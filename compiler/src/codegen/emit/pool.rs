//! Max and average pooling (a straight-line inner window and a clamped one at the edges) and the
//! global average pool.

use super::*;
use crate::codegen::lower::GLOBAL_POOL_CHANNELS;
use inceptc_runtime::layout::Precision;

/// Max or average pooling, a row per work item. Windows that lie wholly inside the image (every
/// column of an inner row but the edges) take a straight-line path over their taps, 16 channels
/// at a time; the others clamp their window at run time. Both combine the taps in the same order
/// from the same start, so they compute the same values.
pub(super) fn pool(e: &mut Emitter, k: &PoolKernel, begin: Value, end: Value) {
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

/// How a pool holds its values: as f32 (widened from a bf16 map) for average pooling (and only
/// there); for max pooling, as the values' bits made signed integers in the values' order (a negative value's
/// magnitude bits inverted), whose maximum is the maximum value's with no conversion and a
/// single integer instruction (Cranelift's `fmax`, NaN- and zero-exact, is a long sequence).
/// A NaN sorts above +∞ or below −∞ by its sign.
///
/// u8 maps keep codes for max pooling (their order is the values'), in i32 lanes; the result is
/// stored as it is where the output's parameters are the input's, and requantized otherwise.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Lanes {
    Float,
    F32Bits,
    Bf16Bits,
    Codes,
}

impl Lanes {
    pub(super) fn of(k: &PoolKernel) -> Lanes {
        match (k.average, k.input.precision) {
            (None, Precision::Bf16) => Lanes::Bf16Bits,
            (None, Precision::F32) => Lanes::F32Bits,
            (None, Precision::U8) => Lanes::Codes,
            (Some(_), _) => Lanes::Float,
        }
    }

    /// The vector type and its lanes, and the type of one value.
    pub(super) fn types(self) -> (types::Type, i64, types::Type) {
        match self {
            Lanes::Float => (types::F32X4, 4, types::F32),
            Lanes::F32Bits | Lanes::Codes => (types::I32X4, 4, types::I32),
            // One value in an i32, sign-extended: its order is the i16's.
            Lanes::Bf16Bits => (types::I16X8, 8, types::I32),
        }
    }

    /// A tap's values (`ty` from [`Lanes::types`]) at `addr + at`.
    fn load(self, e: &mut Emitter, k: &PoolKernel, ty: types::Type, addr: Value, at: i64) -> Value {
        match self {
            Lanes::Float => e.load_value(ty, &k.input, addr, at),
            Lanes::Codes => e.load_codes(ty == types::I32, addr, at),
            Lanes::F32Bits => {
                let bits = e.load(ty, addr, at);
                ordered(e, ty, 32, bits)
            }
            Lanes::Bf16Bits => {
                let bits = match ty == types::I32 {
                    true => e.b.ins().sload16(types::I32, flags(), addr, at as i32),
                    false => e.load(ty, addr, at),
                };
                ordered(e, ty, 16, bits)
            }
        }
    }

    /// Stores the result `v` at `addr + at`.
    fn store(self, e: &mut Emitter, k: &PoolKernel, v: Value, addr: Value, at: i64) {
        match self {
            Lanes::Float => e.store_value(v, &k.out, addr, at),
            Lanes::Codes if k.out.quant == k.input.quant => e.store_codes(v, addr, at),
            Lanes::Codes => {
                // The maximum's real value, quantized for the output.
                let real = e.dequantize(v, k.input.quant);
                e.store_value(real, &k.out, addr, at)
            }
            Lanes::F32Bits => {
                // The order's map is its own inverse.
                let ty = e.b.func.dfg.value_type(v);
                let bits = ordered(e, ty, 32, v);
                e.store(bits, addr, at);
            }
            Lanes::Bf16Bits => {
                let ty = e.b.func.dfg.value_type(v);
                let bits = ordered(e, ty, 16, v);
                match ty == types::I32 {
                    true => {
                        e.b.ins().istore16(flags(), bits, addr, at as i32);
                    }
                    false => e.store(bits, addr, at),
                }
            }
        }
    }
}

/// The bits of `width`-bit floats (f32 in i32 lanes; bf16 sign-extended in an i32, or in i16x8
/// lanes) as signed integers in the values' order: `x ^ ((x >> (width − 1) arithmetic) &
/// magnitude bits)`, its own inverse.
fn ordered(e: &mut Emitter, ty: types::Type, width: i64, x: Value) -> Value {
    let sign = e.b.ins().sshr_imm_u(x, width - 1);
    let magnitude = match ty.is_vector() {
        // Each lane's sign, shifted right once: all magnitude bits, or 0.
        true => e.b.ins().ushr_imm_u(sign, 1),
        false => e.b.ins().band_imm_u(sign, (1i64 << (width - 1)) - 1),
    };
    e.b.ins().bxor(x, magnitude)
}

/// The start of every pooling window: 0 for average pooling, the least ordered bits (below
/// −∞) for max pooling.
pub(super) fn pool_init(e: &mut Emitter, k: &PoolKernel, ty: types::Type) -> Value {
    let least = match Lanes::of(k) {
        Lanes::Float => return e.zero(ty),
        // bf16 bits sign-extended in an i32 or in i16 lanes.
        Lanes::Bf16Bits => i16::MIN as i64,
        Lanes::F32Bits => i32::MIN as i64,
        // Codes are 0 ..= 255.
        Lanes::Codes => 0,
    };
    let lane = match ty.is_vector() {
        true => ty.lane_type(),
        false => ty,
    };
    let least = e.b.ins().iconst(lane, least);
    match ty.is_vector() {
        true => e.b.ins().splat(ty, least),
        false => least,
    }
}

/// `acc` combined with one tap: the sum, or the maximum of ordered bits.
pub(super) fn pool_step(e: &mut Emitter, k: &PoolKernel, acc: Value, v: Value) -> Value {
    match Lanes::of(k) {
        Lanes::Float => e.b.ins().fadd(acc, v),
        Lanes::Bf16Bits | Lanes::F32Bits | Lanes::Codes => e.b.ins().smax(acc, v),
    }
}

/// Output column `ox` of a pooling row whose window rows start at `wy`, with every tap inside
/// the image: taps unrolled, four vectors of channels per step, then single vectors and floats.
pub(super) fn pool_inner(e: &mut Emitter, k: &PoolKernel, wy: Value, out_row: Value, ox: Value) {
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
    // Channel offsets `c` are in bytes of the map's values (input and output alike).
    let value = input.value_bytes() as i64;
    let mode = Lanes::of(k);
    let (vector, per_vector, single) = mode.types();
    let lanes = |e: &mut Emitter, c: Value, ty: types::Type, vectors: i64| {
        let base = e.b.ins().iadd(window, c);
        let dst = e.b.ins().iadd(out_px, c);
        let bytes = ty.lane_count() as i64 * value;
        for v in 0..vectors {
            let mut acc = pool_init(e, k, ty);
            for &tap in &taps {
                let x = mode.load(e, k, ty, base, tap + v * bytes);
                acc = pool_step(e, k, acc, x);
            }
            if let Some(s) = scale {
                let s = e.f32s(ty, s);
                acc = e.b.ins().fmul(acc, s);
            }
            if k.relu {
                acc = e.relu(acc);
            }
            mode.store(e, k, acc, dst, v * bytes);
        }
    };
    // 16 channels a step, then single vectors, then single values.
    let channels = input.channels as i64;
    let wide_end = channels / 16 * 16 * value;
    let vec_end = channels / per_vector * per_vector * value;
    e.for_const(0, wide_end, 16 * value, |e, c| {
        lanes(e, c, vector, 16 / per_vector)
    });
    e.for_const(wide_end, vec_end, per_vector * value, |e, c| {
        lanes(e, c, vector, 1)
    });
    e.for_const(vec_end, channels * value, value, |e, c| {
        lanes(e, c, single, 1)
    });
}

/// Output column `ox` of a pooling row whose window rows start at `wy` and whose taps inside
/// the image are rows `ky_lo .. ky_hi`: the window is clamped at run time.
pub(super) fn pool_clamped(
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
    let channels = input.channels as i64;
    let value = input.value_bytes() as i64;
    let mode = Lanes::of(k);
    let (vector, per_vector, single) = mode.types();
    let pool_lanes = |e: &mut Emitter, c: Value, ty: types::Type| {
        let init = pool_init(e, k, ty);
        let acc = e.var(ty, init);
        let base = e.b.ins().iadd(window, c);
        e.for_range(ky_lo, ky_hi, 1, |e, ky| {
            let row = e.scaled(base, ky, input.row_stride() as i64);
            e.for_range(kx_lo, kx_hi, 1, |e, kx| {
                let px = e.scaled(row, kx, input.pixel_stride() as i64);
                let v = mode.load(e, k, ty, px, 0);
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
        if k.relu {
            r = e.relu(r);
        }
        let dst = e.b.ins().iadd(out_px, c);
        mode.store(e, k, r, dst, 0);
    };
    let vec_end = channels / per_vector * per_vector * value;
    e.for_const(0, vec_end, per_vector * value, |e, c| {
        pool_lanes(e, c, vector)
    });
    e.for_const(vec_end, channels * value, value, |e, c| {
        pool_lanes(e, c, single)
    });
}

/// `[max(0, −origin), min(kernel, size − origin))` for a window starting at `origin`.
pub(super) fn clamp_window(
    e: &mut Emitter,
    origin: Value,
    kernel: usize,
    size: usize,
) -> (Value, Value) {
    let zero = e.int(0);
    let neg = e.b.ins().ineg(origin);
    let lo = e.b.ins().smax(zero, neg);
    let k = e.int(kernel as i64);
    let s = e.int(size as i64);
    let room = e.b.ins().isub(s, origin);
    let hi = e.b.ins().smin(k, room);
    (lo, hi)
}

/// The mean over every pixel of a map, into an f32 vector: work items are (image, block of
/// [`GLOBAL_POOL_CHANNELS`] channels); channel offsets `c` are in bytes of the map's values.
pub(super) fn global_pool(e: &mut Emitter, k: &GlobalPoolKernel, begin: Value, end: Value) {
    let (input, out) = (k.input, k.out);
    let value = input.value_bytes() as i64;
    let block_bytes = GLOBAL_POOL_CHANNELS as i64 * value;
    let all = input.channels as i64 * value;
    // Channels below this are summed four at a time, the rest one at a time: that happens in the
    // last block only, the block size being a multiple of 4.
    let vec_end = (input.channels / 4 * 4) as i64 * value;
    e.for_range(begin, end, 1, |e, item| {
        let (n, block) = e.image_and_row(item, k.blocks());
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
                    let v = e.load_value(ty, &input, px, 0);
                    let a = e.b.use_var(acc);
                    let s = e.b.ins().fadd(a, v);
                    e.b.def_var(acc, s);
                });
            });
            let a = e.b.use_var(acc);
            let scale = e.f32s(ty, inv);
            let mean = e.b.ins().fmul(a, scale);
            // The vector's f32 features: 4 / value bytes per byte of the map's.
            let c_out = match value {
                F32 => c,
                _ => e.b.ins().imul_imm_s(c, F32 / value),
            };
            let at = e.b.ins().iadd(dst, c_out);
            e.store(mean, at, 0);
        };
        // The block's channels, in bytes: [c0, c1).
        let c0 = e.b.ins().imul_imm_s(block, block_bytes);
        let c1 = e.b.ins().iadd_imm_s(c0, block_bytes);
        let limit = e.int(all);
        let c1 = e.b.ins().smin(c1, limit);
        let vec_limit = e.int(vec_end);
        let vectors_end = e.b.ins().smin(c1, vec_limit);
        e.for_range(c0, vectors_end, 4 * value, |e, c| lanes(e, c, types::F32X4));
        let tail = e.b.ins().smax(c0, vec_limit);
        e.for_range(tail, c1, value, |e, c| lanes(e, c, types::F32));
    });
}
