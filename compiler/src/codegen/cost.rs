//! What `inceptc compile --report` prints for every kernel: the operation, the algorithm and
//! register tile chosen, its work items, and a predicted time from a cost model.
//!
//! The model is deliberately simple and calibrated, not derived: a direct convolution runs at a
//! fixed fraction of its register tile's FMA peak for its kind (16, 32 or 64 FLOP per cycle per
//! core for the 128-bit, AVX2 and AVX-512 tiles; on the AVX-512 tier, times the fraction of the
//! tile's ideal rate the layer's shape allows, [`tile::fill`]); a Winograd
//! convolution's point-wise products run at one fraction of that peak and its transforms at a
//! fixed rate of vector instructions; a pool runs at a fixed rate of window taps, a linear layer at
//! a fixed rate of weight bytes. The convolution constants are fitted to the per-kernel minima of
//! four one-thread `OUT --bench --trace` runs of Inception-v4 and Inception-ResNet-v2, built with
//! `--conv direct` and with the default (the Winograd fit: 213 ms measured, 226 ms predicted over
//! 66 kernels, single kernels within 45 %); the pool and linear rates come from an earlier
//! one-thread trace of Inception-v4. The development machine is shared and its speed varies by up
//! to 2× from minute to minute: the constants come from the quietest of the runs.
//!
//! On the AVX-512 tier a layer also streams its weights from memory once per call (the
//! panel-major split keeps each panel in cache), and a Winograd layer whose transformed weights
//! overflow the L2 cache streams them once per work item; that time is added at a fitted rate.
//! Its constants are fitted to the per-kernel minima of two one-thread traces each of
//! Inception-v4 and Inception-ResNet-v2, direct and default, on an AVX-512 Xeon.

use super::tile::{self, tile_fill, Isa, Tile};
use inceptc_runtime::layout::Precision;

/// The clock the predictions assume, in GHz (the development machine's, measured).
pub const CLOCK_GHZ: f64 = 2.98;
/// Fraction of the 128-bit peak the narrow tile reaches (a stem layer with 3 input channels).
const NARROW_EFFICIENCY: f64 = 0.66;

/// Fraction of the AVX2 tile's peak a direct convolution of this shape reaches (fitted by kind).
fn conv_efficiency(kernel: [usize; 2], stride: [usize; 2]) -> f64 {
    match (kernel, stride) {
        (_, s) if s != [1, 1] => 0.70,
        ([1, 1], _) => 0.76,
        ([3, 3], _) => 0.77,
        ([1, 7] | [7, 1], _) => 0.70,
        ([1, 3] | [3, 1], _) => 0.63,
        _ => 0.76,
    }
}

/// Fraction of the AVX-512 tile's peak a direct convolution of this shape reaches at full fill
/// (fitted by kind).
fn conv_efficiency_avx512(kernel: [usize; 2], stride: [usize; 2]) -> f64 {
    match (kernel, stride) {
        (_, s) if s != [1, 1] => 0.82,
        ([1, 1], _) => 0.85,
        ([3, 3], _) => 0.92,
        ([1, 7] | [7, 1], _) => 0.91,
        ([1, 3] | [3, 1], _) => 0.89,
        _ => 0.87,
    }
}

/// Bytes of weights per second one core streams from memory into its caches (fitted).
const WEIGHT_STREAM_BYTES_PER_SECOND: f64 = 12e9;
/// Winograd weights larger than this stream from memory once per work item instead of once per
/// call (fitted; about the L2 cache of the development machine).
const WINOGRAD_WEIGHTS_CACHED: usize = 3 << 20;
/// What the AVX-512 tier's Winograd products take of the AVX2 fit's prediction (fitted, with
/// the transforms' factor below, to the per-layer choices one-thread traces measured faster: see
/// the test `the_avx512_model_picks_what_measured_faster`).
const WINOGRAD_AVX512_SCALE: f64 = 1.2;
/// What its transforms, assembled on zmm vectors of 16 channels, take of the 128-bit ones' (fitted
/// to the Winograd layers of one-thread Inception-v4 traces before and after they went wide).
const WINOGRAD_AVX512_TRANSFORMS: f64 = 0.45;

/// What the cost of a convolution depends on.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    /// Images in the batch.
    pub images: usize,
    /// Input channels.
    pub in_channels: usize,
    /// All output ranges together.
    pub out_channels: usize,
    /// Output height and width.
    pub out: [usize; 2],
    /// Taps along (height, width).
    pub kernel: [usize; 2],
    /// Stride along (height, width).
    pub stride: [usize; 2],
}

impl ConvShape {
    /// Floating-point operations of the direct convolution (2 per multiply–add).
    pub fn flops(&self) -> u64 {
        let pixels = self.images * self.out[0] * self.out[1];
        2 * (pixels * self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]) as u64
    }

    /// Rows and columns of Winograd tiles of `tile` outputs (y, x) over the output.
    pub fn tiles(&self, tile: [usize; 2]) -> [usize; 2] {
        [self.out[0].div_ceil(tile[0]), self.out[1].div_ceil(tile[1])]
    }
}

/// FLOP per second of one core at `register`'s peak.
fn peak(register: &Tile) -> f64 {
    register.peak_flop_per_cycle() * CLOCK_GHZ * 1e9
}

/// Fraction of the AMX peak that the AMX tile reaches over a layer (an estimate: its calls
/// configure the tiles, and finish on zmm registers).
const AMX_EFFICIENCY: f64 = 0.3;

/// Predicted one-core time of the direct convolution in register tiles `register` over runs of
/// `run` output pixels (a row, or the whole batch of a flat convolution), on values of
/// `precision`. The efficiencies are fitted to f32 code; bf16 and int8 scale the peak by their
/// instructions' products (`vdpbf16ps` 2×, `vpdpbusd` 4× an f32 FMA; `tdpbusd` 2× `tdpbf16ps`)
/// and the weight stream by their bytes, and are otherwise unfitted.
pub fn direct_time(shape: &ConvShape, register: &Tile, run: usize, precision: Precision) -> f64 {
    let steps = shape.kernel[0] * shape.kernel[1] * shape.in_channels;
    let efficiency = match register.isa {
        Isa::Sse => NARROW_EFFICIENCY,
        Isa::Avx2 => conv_efficiency(shape.kernel, shape.stride),
        Isa::Avx512 => {
            conv_efficiency_avx512(shape.kernel, shape.stride)
                * tile::fill(register, run, steps, shape.out_channels)
        }
        Isa::Amx => AMX_EFFICIENCY * tile_fill(run, register.pixels),
    };
    let products = match (register.isa, precision) {
        (Isa::Avx512, Precision::Bf16) | (Isa::Amx, Precision::U8) => 2.0,
        (Isa::Avx512, Precision::U8) => 4.0,
        _ => 1.0,
    };
    let compute = shape.flops() as f64 / (efficiency * products * peak(register));
    match register.isa {
        Isa::Avx512 | Isa::Amx => {
            let bytes = steps * register.padded(shape.out_channels) * precision.bytes();
            compute + bytes as f64 / WEIGHT_STREAM_BYTES_PER_SECOND
        }
        Isa::Sse | Isa::Avx2 => compute,
    }
}

/// Fraction of the AVX2 tile's peak the point-wise products of a Winograd convolution reach with
/// full register tiles (fitted).
const WINOGRAD_PRODUCT_EFFICIENCY: f64 = 0.79;
/// Vector instructions per cycle of the input and output transforms (loads, stores, adds, FMAs;
/// fitted).
const TRANSFORM_OPS_PER_CYCLE: f64 = 1.0;

/// Predicted one-core time of a Winograd convolution with `tile` outputs per tile (y, x) and
/// `group` tile rows per work item, its products in register tiles `register`: the point-wise
/// products at the register tile's fill, plus the transforms, counted in vector instructions.
pub fn winograd_time(shape: &ConvShape, tile: [usize; 2], group: usize, register: &Tile) -> f64 {
    winograd_split_time(shape, tile, group, 1, register)
}

/// [`winograd_time`] with the output channels' panels split in `parts` shares, each a work item
/// of its own that transforms its tile rows' input again.
pub fn winograd_split_time(
    shape: &ConvShape,
    tile: [usize; 2],
    group: usize,
    parts: usize,
    register: &Tile,
) -> f64 {
    let t = winograd_parts(shape, tile, group, register);
    t.products + t.transforms + (parts - 1) as f64 * t.input_transforms + t.streaming
}

/// A Winograd convolution's predicted time in its parts.
#[derive(Clone, Copy, Debug)]
pub struct WinogradParts {
    /// The point-wise products in the register tiles.
    pub products: f64,
    /// The input and output transforms.
    pub transforms: f64,
    /// The input transforms' share of `transforms`.
    pub input_transforms: f64,
    /// Streaming the transformed weights from memory.
    pub streaming: f64,
}

/// [`winograd_time`] in its parts.
pub fn winograd_parts(
    shape: &ConvShape,
    tile: [usize; 2],
    group: usize,
    register: &Tile,
) -> WinogradParts {
    let [ly, lx] = [tile[0] + shape.kernel[0] - 1, tile[1] + shape.kernel[1] - 1];
    let points = (ly * lx) as f64;
    let [th, tw] = shape.tiles(tile);
    let per_image = image_product_tiles(shape, register, [th, tw], group);
    // The transforms run for the tiles there are.
    let tiles = (shape.images * th * tw) as f64;
    let co = register.padded(shape.out_channels) as f64;
    let ci = shape.in_channels as f64;
    let products = 2.0 * points * shape.images as f64 * per_image * ci * co
        / (WINOGRAD_PRODUCT_EFFICIENCY * peak(register));
    // Per tile and 4 channels: input loads, both transform passes, stores; products stored and
    // loaded, both inverse passes, the epilogue.
    let input_ops = (ly * lx + ly * ly * lx + ly * lx * lx) as f64 + points;
    let output_ops = 2.0 * points
        + (tile[0] * ly * lx + tile[0] * tile[1] * lx) as f64
        + 3.0 * (tile[0] * tile[1]) as f64;
    let input_share = ci * input_ops / (ci * input_ops + co * output_ops);
    let transform_ops = tiles * (ci / 4.0 * input_ops + co / 4.0 * output_ops);
    let transforms = transform_ops / (TRANSFORM_OPS_PER_CYCLE * CLOCK_GHZ * 1e9);
    match register.isa {
        Isa::Avx512 => {
            let bytes = ly * lx * shape.in_channels * register.padded(shape.out_channels) * 4;
            let items = shape.images * th.div_ceil(group);
            let streams = match bytes > WINOGRAD_WEIGHTS_CACHED {
                true => items,
                false => 1,
            };
            WinogradParts {
                products: WINOGRAD_AVX512_SCALE * products,
                transforms: WINOGRAD_AVX512_TRANSFORMS * transforms,
                input_transforms: WINOGRAD_AVX512_TRANSFORMS * transforms * input_share,
                streaming: (bytes * streams) as f64 / WEIGHT_STREAM_BYTES_PER_SECOND,
            }
        }
        Isa::Sse | Isa::Avx2 | Isa::Amx => WinogradParts {
            products,
            transforms,
            input_transforms: transforms * input_share,
            streaming: 0.0,
        },
    }
}

/// The products of one image's work items of `group` rows of its `th × tw` tiles, in
/// [`filled_tiles`]: an image's last group multiplies only the register tiles that hold its
/// remaining rows.
fn image_product_tiles(
    shape: &ConvShape,
    register: &Tile,
    [th, tw]: [usize; 2],
    group: usize,
) -> f64 {
    (th / group) as f64 * filled_tiles(shape, register, group * tw)
        + filled_tiles(shape, register, (th % group) * tw)
}

/// `count` tiles over their register tiles' fill: what the point-wise products of a Winograd
/// work item of `count` tiles cost, in tiles (0 for none).
fn filled_tiles(shape: &ConvShape, register: &Tile, count: usize) -> f64 {
    if count == 0 {
        return 0.0;
    }
    let fill = match register.isa {
        Isa::Avx512 => tile::fill(register, count, shape.in_channels, shape.out_channels),
        Isa::Sse | Isa::Avx2 | Isa::Amx => tile_fill(count, register.pixels),
    };
    count as f64 / fill
}

/// The predicted one-core times of a Winograd convolution's work items (see
/// [`winograd_split_time`], whose total they share out): an item of a full group of `group`
/// tile rows, and an item of an image's last group, which holds fewer rows where `group` does
/// not divide them (then it multiplies fewer register tiles and transforms fewer tiles; the
/// same as a full one otherwise). Each of the `parts` items of a group transforms the group's
/// input and its share of the output channels; every item streams an equal share of the
/// weights.
pub fn winograd_item_times(
    shape: &ConvShape,
    tile: [usize; 2],
    group: usize,
    parts: usize,
    register: &Tile,
) -> (f64, f64) {
    let t = winograd_parts(shape, tile, group, register);
    let [th, tw] = shape.tiles(tile);
    let (images, parts) = (shape.images as f64, parts.max(1) as f64);
    let items = images * th.div_ceil(group) as f64 * parts;
    let last_tiles = match th % group {
        0 => group * tw,
        rows => rows * tw,
    };
    let per_image = image_product_tiles(shape, register, [th, tw], group);
    let output_transforms = t.transforms - t.input_transforms;
    let item = |tiles: usize| {
        let share = tiles as f64 / (images * (th * tw) as f64);
        t.products * filled_tiles(shape, register, tiles) / (images * per_image * parts)
            + t.input_transforms * share
            + output_transforms * share / parts
            + t.streaming / items
    };
    (item(group * tw), item(last_tiles))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::tile::Isa;

    #[test]
    fn weights_that_stream_per_work_item_cost_more() {
        let shape = ConvShape {
            images: 1,
            in_channels: 512,
            out_channels: 512,
            out: [8, 8],
            kernel: [1, 3],
            stride: [1, 1],
        };
        let register = Tile {
            isa: Isa::Avx512,
            pixels: 8,
            vectors: 3,
        };
        // F(4,3): 6 points × 512 × 512 × 4 bytes = 6 MiB, over the cached size: two work items
        // stream them twice.
        let one = winograd_time(&shape, [1, 4], 8, &register);
        let two = winograd_time(&shape, [1, 4], 4, &register);
        assert!(two > one + 4e-4, "{one} {two}");
    }

    #[test]
    fn winograd_items_share_the_kernels_time_and_a_short_last_group_costs_less() {
        let register = Tile {
            isa: Isa::Avx512,
            pixels: 12,
            vectors: 4,
        };
        // Reduction-A's 3×3 256→256 at 35×35 in F(4,3): 9 tile rows, in groups of 5 (the last
        // holds 4) and of 3 (all full); two images; one part and three.
        let shape = ConvShape {
            images: 2,
            in_channels: 256,
            out_channels: 256,
            out: [35, 35],
            kernel: [3, 3],
            stride: [1, 1],
        };
        for parts in [1, 3] {
            for (group, groups) in [(5, 2), (3, 3)] {
                let (full, last) = winograd_item_times(&shape, [4, 4], group, parts, &register);
                let total = winograd_split_time(&shape, [4, 4], group, parts, &register);
                let sum = 2.0 * parts as f64 * ((groups - 1) as f64 * full + last);
                assert!((sum - total).abs() < 1e-9 * total, "{sum} {total}");
                match group {
                    5 => assert!(last < 0.9 * full && last > 0.7 * full, "{full} {last}"),
                    _ => assert_eq!(full, last),
                }
            }
        }
    }
}
