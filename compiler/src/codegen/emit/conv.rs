//! Direct convolutions: the work split over output rows or flat pixel tiles (AVX2 tier) or over
//! weight panels × groups of them (AVX-512 tier, in either [`ItemOrder`]), and the AVX2 tier's
//! blocks of 8 channels with their epilogue.

use super::*;

/// Addresses of one tile of output pixels.
pub(super) struct TileBases {
    /// Input pixel of the tile's first output pixel at tap (0, 0); the tile's other pixels follow
    /// at `stride · pixel stride` bytes.
    pub(super) input: Value,
    /// Per range, per pixel: channel 0 of the range in the output.
    pub(super) outputs: Vec<Vec<Value>>,
    /// Per pixel: channel 0 of the residual.
    pub(super) residual: Option<Vec<Value>>,
}

/// Where a tile's pixels are: the body of [`for_units`] gets the tile's addresses and pixels.
pub(super) type TileBody<'a> = dyn Fn(&mut Emitter, &TileBases, usize) + 'a;

pub(super) fn conv(e: &mut Emitter, k: &ConvKernel, begin: Value, end: Value) {
    // Lowering splits every AVX-512 convolution by panels; blocks of 8 are the AVX2 tier's.
    debug_assert!(k.register.isa != Isa::Avx512 || k.split != Split::Units);
    match k.split {
        Split::Units => for_units(e, k, begin, end, &|e, bases, pixels| {
            conv_ranges(e, k, bases, pixels)
        }),
        Split::Panels { groups, order } => conv_by_panels(e, k, begin, end, groups, order),
    }
}

/// Calls `body` for every register tile of units `begin .. end` (see [`ConvKernel::units`]).
pub(super) fn for_units(
    e: &mut Emitter,
    k: &ConvKernel,
    begin: Value,
    end: Value,
    body: &TileBody,
) {
    match k.flat {
        true => flat_tiles(e, k, begin, end, body),
        false => row_tiles(e, k, begin, end, body),
    }
}

/// The tiles of output rows `begin .. end` (image-major): full tiles along the row, then the
/// shorter last one.
pub(super) fn row_tiles(
    e: &mut Emitter,
    k: &ConvKernel,
    begin: Value,
    end: Value,
    body: &TileBody,
) {
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

/// A flat convolution ([`ConvKernel::flat`]) computes runs of consecutive output pixels (the
/// whole batch, or each image: [`ConvKernel::flat_run`]): unit `t` of a run is the tile of its
/// pixels `Pt .. Pt + P` (P the register tile's pixels) in (row, column) order, which may span
/// rows (and images in a run of the batch); a run's last tile may be shorter. A 1×1 over a
/// halo-free map is a matrix product over all pixels of the batch; a 7×1 reads, at every tap,
/// the input pixels a fixed number of rows above its output pixels, halo rows included.
pub(super) fn flat_tiles(
    e: &mut Emitter,
    k: &ConvKernel,
    begin: Value,
    end: Value,
    body: &TileBody,
) {
    let input = k.input;
    let run = k.flat_run();
    let tile = k.register.pixels;
    let per_run = run.div_ceil(tile) as i64;
    let rest = run % tile;
    // Input pixel of a run's first output pixel at tap (0, 0): `padding` rows up, in the halo.
    let origin = input.address(0, -(k.padding[0] as isize), 0, 0) as i64;
    let tile_at = |e: &mut Emitter, run_index: Value, index: Value, count: usize| {
        let local = e.b.ins().imul_imm_s(index, tile as i64);
        let before = e.b.ins().imul_imm_s(run_index, run as i64);
        let first = e.b.ins().iadd(before, local);
        let base = e.offset(e.arena, origin);
        let base = e.scaled(base, run_index, input.image_stride() as i64);
        let bases = TileBases {
            input: e.scaled(base, local, input.pixel_stride() as i64),
            outputs: k
                .ranges
                .iter()
                .map(|r| pixel_addresses(e, &r.out, first, count))
                .collect(),
            residual: k.residual.map(|res| pixel_addresses(e, &res, first, count)),
        };
        body(e, &bases, count);
    };
    if per_run == k.units() as i64 {
        // One run (the batch): full tiles, then the short last one when this call reaches it.
        let zero = e.int(0);
        let full_v = e.int(run as i64 / tile as i64);
        let stop = e.b.ins().smin(end, full_v);
        e.for_range(begin, stop, 1, |e, index| tile_at(e, zero, index, tile));
        if rest > 0 {
            // The short tile is unit `full`: this call's when `begin <= full < end`.
            let last = e.b.create_block();
            let done = e.b.create_block();
            let reaches = e.b.ins().icmp(IntCC::SignedGreaterThan, end, full_v);
            let starts = e.b.ins().icmp(IntCC::SignedLessThanOrEqual, begin, full_v);
            let includes = e.b.ins().band(reaches, starts);
            e.b.ins().brif(includes, last, &[], done, &[]);
            e.b.switch_to_block(last);
            tile_at(e, zero, full_v, rest);
            e.b.ins().jump(done, &[]);
            e.b.switch_to_block(done);
        }
        return;
    }
    // A run per image: the unit's image and its tile in the image.
    e.for_range(begin, end, 1, |e, unit| {
        let image = e.b.ins().udiv_imm_u(unit, per_run);
        let start = e.b.ins().imul_imm_s(image, per_run);
        let index = e.b.ins().isub(unit, start);
        if rest == 0 {
            tile_at(e, image, index, tile);
            return;
        }
        let (full, short, done) = (e.b.create_block(), e.b.create_block(), e.b.create_block());
        let last = e.b.ins().icmp_imm_u(IntCC::Equal, index, per_run - 1);
        e.b.ins().brif(last, short, &[], full, &[]);
        e.b.switch_to_block(full);
        tile_at(e, image, index, tile);
        e.b.ins().jump(done, &[]);
        e.b.switch_to_block(short);
        tile_at(e, image, index, rest);
        e.b.ins().jump(done, &[]);
        e.b.switch_to_block(done);
    });
}

/// The AVX-512 tier's split by panels: an item is one panel of one range and one of `groups`
/// groups of units. [`ItemOrder::PanelMajor`] numbers range after range, panel after panel, each
/// panel's groups in turn (consecutive items reuse one weight panel from cache);
/// [`ItemOrder::GroupMajor`] numbers group after group, each group's panels of every range in
/// turn (a thread's share of the items is a part of the image). Each item calls the panel's tile
/// for every tile of its units. The prefetch of the next panel's weights (a share per group, see
/// [`NextPanel`]) is laid out for panel-major items; group-major layers are those whose weights
/// stay in a core's L2 once read (`GROUP_MAJOR_WEIGHTS`).
pub(super) fn conv_by_panels(
    e: &mut Emitter,
    k: &ConvKernel,
    begin: Value,
    end: Value,
    groups: usize,
    order: ItemOrder,
) {
    let units = k.units();
    let per_group = units.div_ceil(groups) as i64;
    let source = TileSource::conv(k);
    let prefetch = NextPanel::new(k, &source);
    // The tiles of group `group` of range `r`'s panel `panel`.
    let run = |e: &mut Emitter, r: usize, panel: Value, group: Value| {
        let range = &k.ranges[r];
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
    };
    let counts: Vec<i64> = k
        .ranges
        .iter()
        .map(|range| k.register.panels(range.channels).len() as i64)
        .collect();
    if order == ItemOrder::GroupMajor {
        let total: i64 = counts.iter().sum();
        e.for_range(begin, end, 1, |e, item| {
            let group = e.b.ins().udiv_imm_u(item, total);
            let before = e.b.ins().imul_imm_s(group, total);
            let j = e.b.ins().isub(item, before);
            let mut start = 0;
            for (r, &count) in counts.iter().enumerate() {
                let (inside, next) = (e.b.create_block(), e.b.create_block());
                let lo =
                    e.b.ins()
                        .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, j, start);
                let hi =
                    e.b.ins()
                        .icmp_imm_s(IntCC::SignedLessThan, j, start + count);
                let both = e.b.ins().band(lo, hi);
                e.b.ins().brif(both, inside, &[], next, &[]);
                e.b.switch_to_block(inside);
                let panel = e.b.ins().iadd_imm_s(j, -start);
                run(e, r, panel, group);
                e.b.ins().jump(next, &[]);
                e.b.switch_to_block(next);
                start += count;
            }
        });
        return;
    }
    let mut start = 0;
    for (r, &panels) in counts.iter().enumerate() {
        let count = panels * groups as i64;
        let (lo, hi) = (e.int(start), e.int(start + count));
        let from = e.b.ins().smax(begin, lo);
        let to = e.b.ins().smin(end, hi);
        e.for_range(from, to, 1, |e, item| {
            let local = e.b.ins().iadd_imm_s(item, -start);
            let panel = e.b.ins().udiv_imm_u(local, groups as i64);
            let before = e.b.ins().imul_imm_s(panel, groups as i64);
            let group = e.b.ins().isub(local, before);
            run(e, r, panel, group);
        });
        start += count;
    }
}

/// How the tile calls of one weight panel prefetch the next: the panel's bytes divided in equal
/// shares between the calls that reuse it, each share prefetched `step` bytes per channel loop
/// iteration of a call.
pub(super) struct NextPanel {
    /// Bytes of a full panel.
    pub(super) panel: usize,
    /// Tile calls per unit (tiles along an output row, or one flat tile).
    pub(super) per_unit: usize,
    /// Bytes each call prefetches.
    pub(super) share: usize,
    /// 0 when the tile has no channel loop to spread the prefetch over.
    pub(super) step: i32,
}

impl NextPanel {
    pub(super) fn new(k: &ConvKernel, source: &TileSource) -> NextPanel {
        let panel = k.register.panel() * source.taps.len() * source.channels * F32 as usize;
        let per_unit = match k.flat {
            true => 1,
            false => k.out_w.div_ceil(k.register.pixels),
        };
        let calls = k.units() * per_unit;
        // Channel loop iterations of a call: of ZMM_UNROLL steps, or of 32 channels for AMX.
        let iterations = source.taps.len()
            * match source.amx {
                true => source.channels / (AMX_CHANNELS / 2),
                false => source.channels / ZMM_UNROLL,
            };
        let (share, step) = prefetch_shares(panel, calls, iterations);
        NextPanel {
            panel,
            per_unit,
            share,
            step,
        }
    }
}

/// Addresses of channel 0 of `count` consecutive pixels of `m` starting at flat pixel index `first`
/// (image, row, column order), each split into its image, row and column.
pub(super) fn pixel_addresses(
    e: &mut Emitter,
    m: &MapLayout,
    first: Value,
    count: usize,
) -> Vec<Value> {
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
pub(super) fn conv_ranges(e: &mut Emitter, k: &ConvKernel, bases: &TileBases, pixels: usize) {
    for (r, range) in k.ranges.iter().enumerate() {
        for_blocks(e, range.channels, BLOCK, &|e, block, lanes| {
            conv_block(e, k, range, bases, r, pixels, block, lanes)
        });
    }
}

/// One register tile: `pixels` output pixels × `lanes` (≤ 8) output channels of block `block` of
/// range `r`, then its epilogue.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_block(
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
