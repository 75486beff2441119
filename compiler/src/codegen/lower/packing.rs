//! The weight blob lowering builds: the weights as the graph holds them, with the recipe by which
//! `inceptc_runtime::pack` lays each layer out for its register tile (panels, Winograd transforms).

use super::*;

/// The weights under construction: what an executable stores, and how each packed segment is
/// made from it (see [`inceptc_runtime::pack`]).
#[derive(Default)]
pub(super) struct WeightBlob {
    pub(super) stored: Vec<f32>,
    pub(super) segments: Vec<Segment>,
    /// Bytes of the packed weights so far.
    pub(super) end: usize,
    /// int8 weight codes, stored ahead of `stored` (see [`WeightBlob::finish`]), and the
    /// segments made from them.
    codes: Vec<f32>,
    coded: Vec<bool>,
}

impl WeightBlob {
    /// Appends a segment made by `recipe` from int8 weight `codes`, which the executable stores
    /// one byte each (`WeightsDtype::Int8`); returns its byte offset in the packed weights.
    pub(super) fn push_codes(&mut self, codes: &[f32], recipe: Recipe) -> usize {
        let offset = self.end.next_multiple_of(WEIGHT_ALIGN);
        let bytes = recipe.packed_bytes().expect("a segment the lowering sized");
        self.segments.push(Segment {
            offset,
            source: self.codes.len(),
            recipe,
        });
        self.coded.resize(self.segments.len(), false);
        self.coded[self.segments.len() - 1] = true;
        self.codes.extend_from_slice(codes);
        self.end = offset + bytes;
        offset
    }

    /// The stored values (the codes first, then the rest), how many of them are codes, and
    /// the segments with their sources in that order.
    pub(super) fn finish(self) -> (Vec<f32>, usize, Vec<Segment>) {
        let codes = self.codes.len();
        let mut segments = self.segments;
        for (i, s) in segments.iter_mut().enumerate() {
            if !self.coded.get(i).copied().unwrap_or(false) {
                s.source += codes;
            }
        }
        let mut stored = self.codes;
        stored.extend(self.stored);
        (stored, codes, segments)
    }

    /// Appends a segment made by `recipe` from `values`, stored as they are; returns its byte
    /// offset in the packed weights (aligned to [`WEIGHT_ALIGN`]).
    pub(super) fn push_recipe(&mut self, values: &[f32], recipe: Recipe) -> usize {
        let offset = self.end.next_multiple_of(WEIGHT_ALIGN);
        let bytes = recipe.packed_bytes().expect("a segment the lowering sized");
        let segment = Segment {
            offset,
            source: self.stored.len(),
            recipe,
        };
        self.stored.extend_from_slice(values);
        self.segments.push(segment);
        self.end = offset + bytes;
        offset
    }

    /// Appends `values`, packed as they are.
    pub(super) fn push(&mut self, values: &[f32]) -> usize {
        let floats = values.len();
        self.push_recipe(values, Recipe::Copy { floats })
    }
}

/// `values` zero-padded to a multiple of `lanes`.
pub(super) fn pad(values: &[f32], lanes: usize) -> Vec<f32> {
    let mut v = values.to_vec();
    v.resize(values.len().next_multiple_of(lanes), 0.0);
    v
}

/// A range's bias, padded for `register` (zeros without one).
pub(super) fn pack_bias(bias: Option<&[f32]>, channels: usize, register: &Tile) -> Vec<f32> {
    let mut b = bias.map_or_else(Vec::new, <[f32]>::to_vec);
    b.resize(register.padded(channels), 0.0);
    b
}

/// A range's requantization table for the u8 tile: per panel of `register`, its `M`, `B`, `R`
/// and `L` rows of the panel's packed width (zeros beyond the channels), so that a panel's table
/// starts 4 floats per channel after the range's (the order `x86::Data::U8S8` reads).
pub(super) fn pack_requant(r: &quant::Requant, channels: usize, register: &Tile) -> Vec<f32> {
    let mut table = Vec::with_capacity(4 * register.padded(channels));
    for p in register.panels(channels) {
        let row = |values: &[f32]| {
            let mut v = values[p.first..p.first + p.channels].to_vec();
            v.resize(p.width, 0.0);
            v
        };
        table.extend(row(&r.m));
        table.extend(row(&r.b));
        table.extend(std::iter::repeat_n(r.r, p.width));
        table.extend(std::iter::repeat_n(r.floor, p.width));
    }
    table
}

/// How a convolution's `[O, I, KH, KW]` weights are packed for `register` and reading `input`:
/// panels of its tile, taps row-major, a row per channel of the input's pixels (padding channels
/// too, with zero weights), in the input's precision (the order of [`ConvRange`]).
pub(super) fn conv_packing(
    a: &inceptc_ir::op::Conv2dAttrs,
    register: &Tile,
    input: &MapLayout,
) -> ConvPacking {
    ConvPacking {
        out: a.out_channels,
        inputs: a.in_channels,
        padded_inputs: input.c_total,
        kernel: a.kernel,
        transform: None,
        panels: panels_of(a.out_channels, register),
        precision: input.precision,
    }
}

/// How a convolution's `[O, I, KH, KW]` weights are transformed for Winograd tile `tile` and
/// packed for `register` (the order of [`WinogradKernel`]).
pub(super) fn winograd_packing(
    a: &inceptc_ir::op::Conv2dAttrs,
    tile: [usize; 2],
    register: &Tile,
    input: &MapLayout,
) -> ConvPacking {
    // The lowering offers only tiles `winograd::choices` lists, which all exist.
    let g = |m: usize, r: usize| -> Vec<f64> {
        let t = winograd::Transform::new(m, r).expect("an offered Winograd tile");
        t.g.concat()
    };
    ConvPacking {
        transform: Some([g(tile[0], a.kernel[0]), g(tile[1], a.kernel[1])]),
        ..conv_packing(a, register, input)
    }
}

/// `register`'s panels of `channels` output channels as [`ConvPacking::panels`] lists them.
pub(super) fn panels_of(channels: usize, register: &Tile) -> Vec<[usize; 3]> {
    register
        .panels(channels)
        .iter()
        .map(|p| [p.first, p.channels, p.width])
        .collect()
}

/// Linear weights `[O, I]` in the order of [`LinearKernel`].
pub(super) fn pack_linear(weight: &[f32], inputs: usize, outputs: usize) -> Vec<f32> {
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
