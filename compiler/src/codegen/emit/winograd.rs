//! Winograd convolutions: per work item the input transform of its tiles, the point-wise products
//! through the tile seam, and the output transform with the epilogue; assembled transforms on the
//! AVX-512 tier, f32x4 Cranelift code on the AVX2 tier.

use super::*;

/// Where a tile is along one axis: a loop's value (a tile whose reads and writes all fall inside
/// the map and its padding), or a compile-time index (an edge tile, whose points outside the
/// input are zero and whose outputs outside the map are not stored).
#[derive(Clone, Copy)]
pub(super) enum Coord {
    Loop(Value),
    At(usize),
}

/// One axis of a Winograd kernel.
pub(super) struct Axis {
    pub(super) transform: Transform,
    pub(super) pad: usize,
    pub(super) input: usize,
    pub(super) output: usize,
    /// Bytes from one input position to the next along the axis.
    pub(super) input_step: usize,
    pub(super) tiles: usize,
    /// The leading tiles that read and write nothing outside the map and its padding.
    pub(super) full: usize,
}

impl Axis {
    pub(super) fn new(
        m: usize,
        r: usize,
        pad: usize,
        input: usize,
        output: usize,
        step: usize,
    ) -> Axis {
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
    pub(super) fn reads(&self, at: Coord, i: usize) -> bool {
        match at {
            Coord::Loop(_) => true,
            Coord::At(t) => (t * self.transform.m + i)
                .checked_sub(self.pad)
                .is_some_and(|x| x < self.input),
        }
    }

    /// Whether output `o` of tile `at` is inside the map.
    pub(super) fn writes(&self, at: Coord, o: usize) -> bool {
        match at {
            Coord::Loop(_) => true,
            Coord::At(t) => t * self.transform.m + o < self.output,
        }
    }
}

/// `Σ coefficient · value` over the terms whose value is not known zero (`None`), with adds and
/// subtracts for ±1 (a +1 term first, so that no negation is needed unless every term is −1);
/// `None` when every term is zero.
pub(super) fn combine(
    e: &mut Emitter,
    terms: impl IntoIterator<Item = (f64, Option<Value>)>,
) -> Option<Value> {
    let mut terms: Vec<(f64, Value)> = terms
        .into_iter()
        .filter_map(|(c, v)| v.filter(|_| c != 0.0).map(|v| (c, v)))
        .collect();
    terms.sort_by_key(|(c, _)| crate::codegen::winograd::sum_order(*c));
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
pub(super) fn advance(
    e: &mut Emitter,
    base: Value,
    offset: &mut i64,
    at: Coord,
    step: usize,
) -> Value {
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
pub(super) fn winograd(e: &mut Emitter, k: &WinogradKernel, begin: Value, end: Value) {
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

        data: Data::F32,
        amx: false,
    };
    let step = k.register.pixels;
    // Panels before each range's, over all ranges.
    let starts: Vec<usize> = k
        .ranges
        .iter()
        .scan(0, |before, r| {
            let start = *before;
            *before += r.channels.div_ceil(width);
            Some(start)
        })
        .collect();
    let panels = k.panels();
    e.for_range(begin, end, 1, |e, item| {
        // Item `(n · groups + group) · parts + part`: the parts of a group are consecutive.
        let (n, group_part) = e.image_and_row(item, k.groups() * k.parts);
        let (group, part) = e.image_and_row(group_part, k.parts);
        // The scratch of the call's first item serves all its items, one after another: it
        // stays in the core's cache from item to item (each item's own would be cold).
        let scratch = e.offset(e.arena, k.scratch as i64);
        let v_base = e.scaled(scratch, begin, k.item_scratch() as i64);
        let m_base = e.offset(v_base, k.input_scratch() as i64);
        let in_origin = e.map_origin(&input, n);
        for_tiles(e, k, &y, &x, group, &|e, row, ty, tx| {
            input_tile(e, k, &y, &x, in_origin, v_base, row, ty, tx)
        });
        // The part's panels: `part · panels / parts ..` the next part's first.
        let share = |e: &mut Emitter, part: Value| {
            let scaled = e.b.ins().imul_imm_s(part, panels as i64);
            e.b.ins().udiv_imm_u(scaled, k.parts as i64)
        };
        // The items of the second thread's share on two threads (and those after it on one)
        // sweep the weight blocks last to first (see [`for_blocks_toward`]).
        let second = inceptc_runtime::pool::shares(&[k.items()], 2)[1].start;
        let reverse =
            e.b.ins()
                .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, item, second as i64);
        let first = share(e, part);
        let next = e.b.ins().iadd_imm_s(part, 1);
        let last = share(e, next);
        // An image's last group has tiles for only its remaining tile rows: its products leave
        // out the tiles past them (their results would never be read).
        let short = k.last_item_tiles();
        let last_group = (short < tiles).then(|| {
            e.b.ins()
                .icmp_imm_u(IntCC::Equal, group, k.groups() as i64 - 1)
        });
        for (range, start) in k.ranges.iter().zip(&starts) {
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
                let (share, prefetch_step) =
                    prefetch_shares(point_bytes, tiles.div_ceil(step), ci / ZMM_UNROLL);
                e.for_const(0, points as i64, 1, |e, point| {
                    let wptr = e.scaled(wblock, point, point_bytes as i64);
                    let vp = e.scaled(v_base, point, (tiles * ci) as i64 * F32);
                    let mp = e.scaled(m_base, point, (tiles * width) as i64 * F32);
                    for (call, first) in (0..tiles).step_by(step).enumerate() {
                        let pixels = step.min(tiles - first);
                        let vt = e.offset(vp, (first * ci) as i64 * F32);
                        // The register tile of this call's first `pixels` tiles.
                        let product = |e: &mut Emitter, pixels: usize| {
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
                                return;
                            }
                            let acc = conv_tile(e, &k.register, &source, vt, wptr, None, pixels, 2);
                            for (p, row) in acc.iter().enumerate() {
                                for (j, a) in row.iter().enumerate() {
                                    let v = e.b.use_var(*a);
                                    let at = ((first + p) * width + 4 * j) as i64 * F32;
                                    e.store(v, mp, at);
                                }
                            }
                        };
                        // In the last group, a call past its tiles is skipped and one across
                        // their end is narrowed to them.
                        let Some(last) = last_group.filter(|_| first + pixels > short) else {
                            product(e, pixels);
                            continue;
                        };
                        let (full, narrow, after) =
                            (e.b.create_block(), e.b.create_block(), e.b.create_block());
                        e.b.ins().brif(last, narrow, &[], full, &[]);
                        e.b.switch_to_block(full);
                        product(e, pixels);
                        e.b.ins().jump(after, &[]);
                        e.b.switch_to_block(narrow);
                        if first < short {
                            product(e, short - first);
                        }
                        e.b.ins().jump(after, &[]);
                        e.b.switch_to_block(after);
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
            match k.parts {
                1 => for_blocks_toward(e, range.channels, width, Some(reverse), &block_body),
                _ => {
                    // The range's panels in the part: `first − start .. last − start`, clamped.
                    let count = range.channels.div_ceil(width) as i64;
                    let clamp = |e: &mut Emitter, panel: Value| {
                        let local = e.b.ins().iadd_imm_s(panel, -(*start as i64));
                        let zero = e.int(0);
                        let all = e.int(count);
                        let local = e.b.ins().smax(local, zero);
                        e.b.ins().smin(local, all)
                    };
                    let (from, to) = (clamp(e, first), clamp(e, last));
                    for_blocks_between(e, range.channels, width, from, to, &block_body);
                }
            }
        }
    });
}

/// Calls `body(row, ty, tx)` for every tile of the item's tile rows `group · k.group ..`, `row`
/// counting the item's rows: full tiles in loops, edge tiles at their compile-time index.
pub(super) fn for_tiles(
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
pub(super) fn input_tile(
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
pub(super) fn output_tile(
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
pub(super) fn transform_call(e: &mut Emitter, tile: TransformTile, args: [Value; 4]) {
    let func = (e.tiles)(TileFn::Transform(tile), e.b.func);
    e.b.ins().call(func, &args);
}

/// Where [`separable`] puts entry (row, column) of its result (`None`: known zero).
pub(super) type TileStore<'a> = dyn Fn(&mut Emitter, usize, usize, Option<Value>) + 'a;

/// `M_y · D · M_xᵀ` for one tile, 4 lanes at a time: `load(i, j)` gives `D`'s entries (`None`:
/// known zero), `store(a, b, v)` takes the result's. Along one axis (the other's matrix is the
/// 1 × 1 identity) each result is stored as soon as it is formed; along two, the products pass
/// through the staging buffer at `stage`, along y one column at a time, then along x one row at a
/// time (a whole tile held in registers spilled).
pub(super) fn separable(
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
