//! The linear head (a register tile over the batch on the AVX-512 tier) and the L2 normalization.

use super::*;

pub(super) fn linear(e: &mut Emitter, k: &LinearKernel, begin: Value, end: Value) {
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
pub(super) fn linear_tiled(
    e: &mut Emitter,
    k: &LinearKernel,
    register: &Tile,
    begin: Value,
    end: Value,
) {
    let (input, out) = (k.input, k.out);
    let source = TileSource {
        taps: vec![(0, 0)],
        grid: [1, 1],
        grid_steps: [0, 0],
        channels: input.features,
        pixel_step: input.row_stride() as i64,
        readonly: true,

        data: Data::F32,
        amx: false,
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

pub(super) fn l2_norm(e: &mut Emitter, k: &L2NormKernel, begin: Value, end: Value) {
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
