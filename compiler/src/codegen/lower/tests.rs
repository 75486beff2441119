//! The cost model's per-layer choices against what traces measured.

use super::*;
use crate::codegen::cost::{direct_time, winograd_time, ConvShape};
use crate::codegen::tile::choose;

/// (direct time, best Winograd time) of a stride-1 layer on one 299×299 image's map.
fn times(tier: Tier, kernel: [usize; 2], ci: usize, co: usize, size: usize) -> (f64, f64) {
    let shape = ConvShape {
        images: 1,
        in_channels: ci,
        out_channels: co,
        out: [size, size],
        kernel,
        stride: [1, 1],
    };
    let needs = TileNeeds {
        tier,
        in_channels: ci,
        steps: kernel[0] * kernel[1] * ci,
        pixel_step: 4 * ci,
        run: size,
        out_channels: co,
    };
    let direct = direct_time(&shape, &choose(needs), size, Precision::F32);
    let register = choose(TileNeeds {
        steps: ci,
        run: (size.div_ceil(2) * size.div_ceil(2)).clamp(1, 48),
        ..needs
    });
    let r = kernel[0].max(kernel[1]);
    let wino = winograd::choices(r)
        .iter()
        .map(|&m| {
            let tile = [
                if kernel[0] == 1 { 1 } else { m },
                if kernel[1] == 1 { 1 } else { m },
            ];
            let [th, tw] = [size.div_ceil(tile[0]), size.div_ceil(tile[1])];
            let group = winograd_group(1, th, tw, register.pixels);
            winograd_time(&shape, tile, group, &register)
        })
        .fold(f64::MAX, f64::min);
    (direct, wino)
}

#[test]
fn the_avx512_model_picks_what_measured_faster() {
    // Per-kernel minima of three one-thread traces each of Inception-v4 built --conv direct
    // and --conv winograd on an AVX-512 Xeon, with the wide transforms (direct / Winograd,
    // ms over the network's layers of the shape): Winograd won on 17×17 1×7/7×1 (12.1 / 8.8,
    // 5.2 / 3.5), on 35×35 3×3 (5.3 / 2.6, 4.8 / 2.2) and 147×147 32→64 (4.7 / 3.6); direct on
    // 147×147 32→32 (2.3 / 2.6) and on every 8×8 1×3/3×1 layer (1.5 / 3.0, 0.7 / 0.8,
    // 0.9 / 1.2, 1.2 / 1.6), whose transformed weights stream from memory for few outputs.
    let wins = |kernel, ci, co, size| {
        let (direct, wino) = times(Tier::V4, kernel, ci, co, size);
        wino < direct
    };
    assert!(wins([1, 7], 192, 224, 17));
    assert!(wins([7, 1], 192, 192, 17));
    assert!(wins([3, 3], 64, 96, 35));
    assert!(wins([3, 3], 192, 224, 35));
    assert!(wins([3, 3], 32, 64, 147));
    assert!(!wins([3, 3], 32, 32, 147));
    assert!(!wins([1, 3], 448, 512, 8));
    assert!(!wins([3, 1], 384, 256, 8));
    assert!(!wins([1, 3], 512, 256, 8));
    assert!(!wins([3, 1], 384, 448, 8));
}
