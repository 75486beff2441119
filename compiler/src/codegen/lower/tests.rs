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

/// Up to two threads, the splits stay those made for two; for 16, Inception-v4's 35×35 Winograd
/// layers and 8×8 direct ones get several times the work items, within the scratch bound, and
/// the cost model predicts them faster on 16 threads than the two-thread split.
#[test]
fn many_threads_split_small_kernels_into_more_items() {
    let shape = ConvShape {
        images: 1,
        in_channels: 192,
        out_channels: 224,
        out: [35, 35],
        kernel: [3, 3],
        stride: [1, 1],
    };
    let register = Tile {
        isa: tile::Isa::Avx512,
        pixels: 12,
        vectors: 2,
    };
    let tile = [4, 4];
    let panels = 224usize.div_ceil(register.panel());
    let two = winograd_split(&shape, tile, &register, panels, 2);
    assert_eq!(two, (winograd_group(1, 9, 9, 12), 1));
    let (group, parts) = winograd_split(&shape, tile, &register, panels, 16);
    let items = |(group, parts): (usize, usize)| 9usize.div_ceil(group) * parts;
    // 15 items (3 groups of 3 tile rows, 5 parts) against 2.
    assert!(
        items((group, parts)) >= 6 * items(two),
        "{group} rows, {parts} parts"
    );
    let time = |(group, parts): (usize, usize)| {
        report::Work::winograd(&shape, tile, group, parts, &register).time(16)
    };
    assert!(time((group, parts)) < 0.5 * time(two));
    let item_bytes = winograd_item_scratch(36, group * 9, 192, register.panel());
    assert!(items((group, parts)) * item_bytes <= WINOGRAD_SCRATCH);
    // 8 rows and 4 panels: 8 items for two threads (groups of 4 rows), 32 for 16.
    assert_eq!(4 * panel_groups(8, 4, 2), 8);
    assert_eq!(4 * panel_groups(8, 4, 16), 32);
}

/// No group of a panel's units is empty, for any thread count: an empty last group would still
/// reach the short last flat tile (`begin .. end` past it) and compute it a second time, which
/// in place over a residual adds the residual twice (found at 16 threads on Inception-ResNet-v2).
#[test]
fn panel_groups_are_never_empty() {
    for units in 1..200 {
        for panels in 1..40 {
            for threads in [0, 1, 2, 3, 16, 64] {
                let groups = panel_groups(units, panels, threads);
                let per = units.div_ceil(groups);
                assert!(
                    groups >= 1 && (groups - 1) * per < units,
                    "{units} units, {panels} panels, {threads} threads: {groups} groups of {per}"
                );
            }
        }
    }
}
