//! The register tile: which instructions compute a convolution's innermost block and how large
//! that block is. Lowering chooses one [`Tile`] per convolution kernel ([`choose`]) and stores it
//! in the kernel; the weight packing, the emitter, the work-item count, the cost model and
//! `--report` read it from there and never recompute it.
//!
//! A tile is `pixels` output pixels × `vectors` vectors of output channels. The output channels of
//! a range are cut into weight panels of [`Tile::panel`] channels; the last panel of a range may
//! be narrower ([`Tile::panels`]). Three families, by [`Isa`]:
//! - [`Isa::Sse`]: f32x4 Cranelift code, 2 vectors (8 channels) per panel; for layers with fewer
//!   than [`AVX2_MIN_CHANNELS`] input channels on the AVX2 tier.
//! - [`Isa::Avx2`]: an assembled function ([`super::x86::Avx2Tile`]) per tap with one 256-bit
//!   accumulator per pixel, 8 channels per panel.
//! - [`Isa::Avx512`]: one assembled call per tile and panel ([`super::x86::ZmmTile`]) covering every
//!   tap and input channel and the epilogue, `vectors` zmm registers of 16 channels per pixel.

/// The instruction-set tier code is generated for (`inceptc compile --target-cpu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// x86-64-v3: AVX2 and FMA.
    #[default]
    V3,
    /// x86-64-v4: AVX-512 F, BW, CD, DQ and VL on top of v3.
    V4,
}

impl Tier {
    /// The best tier this machine runs.
    pub fn native() -> Tier {
        match inceptc_runtime::exec::missing_features(inceptc_runtime::exec::Tier::V4).is_empty() {
            true => Tier::V4,
            false => Tier::V3,
        }
    }

    /// Every tier, lowest first.
    pub const ALL: [Tier; 2] = [Tier::V3, Tier::V4];

    /// The runtime's name for the features this tier needs.
    pub fn runtime(self) -> inceptc_runtime::exec::Tier {
        match self {
            Tier::V3 => inceptc_runtime::exec::Tier::V3,
            Tier::V4 => inceptc_runtime::exec::Tier::V4,
        }
    }

    /// Whether this machine runs code of this tier.
    pub fn runs_here(self) -> bool {
        inceptc_runtime::exec::missing_features(self.runtime()).is_empty()
    }

    /// `x86-64-v3` or `x86-64-v4`.
    pub fn name(self) -> &'static str {
        self.runtime().name()
    }
}

/// The instructions of a register tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// 128-bit Cranelift code.
    Sse,
    /// The assembled 256-bit tile, called per tap.
    Avx2,
    /// The assembled 512-bit tile, called once per tile and panel.
    Avx512,
    /// The assembled AMX tile ([`super::x86::AmxTile`], bf16 or int8), called once per tile and
    /// panel:
    /// up to 32 pixels in two tile-register blocks of 16.
    Amx,
}

/// Input channels from which the AVX2 tier calls the AVX2 tile (below, the call and the
/// accumulators' round trip through memory cost more than the 128-bit tile loses).
pub const AVX2_MIN_CHANNELS: usize = 8;
/// Output pixels of a full AVX2 tile (one ymm accumulator each; 12 of the 16 registers).
pub const AVX2_PIXELS: usize = 12;
/// Output pixels of a full 128-bit tile.
pub const SSE_PIXELS: usize = 6;

/// One register tile: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// The instruction set.
    pub isa: Isa,
    /// Output pixels of a full tile.
    pub pixels: usize,
    /// Vectors of output channels per pixel of a full panel.
    pub vectors: usize,
}

/// Output channels `first .. first + channels` of a range, whose packed weights are `width`
/// channels wide (`channels` rounded up to the tile's granule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Panel {
    /// The first output channel.
    pub first: usize,
    /// Output channels.
    pub channels: usize,
    /// Packed width (channels rounded up).
    pub width: usize,
}

impl Tile {
    /// Lanes of one vector.
    pub fn lanes(&self) -> usize {
        match self.isa {
            Isa::Sse => 4,
            Isa::Avx2 => 8,
            Isa::Avx512 | Isa::Amx => 16,
        }
    }

    /// Output channels of a full weight panel.
    pub fn panel(&self) -> usize {
        self.lanes() * self.vectors
    }

    /// What a narrower last panel is rounded up to: a whole vector on the AVX-512 tier, a whole
    /// panel of 8 on the others.
    pub fn granule(&self) -> usize {
        match self.isa {
            Isa::Avx512 | Isa::Amx => 16,
            Isa::Sse | Isa::Avx2 => 8,
        }
    }

    /// The panels of a range of `channels` output channels: full panels, then the rest.
    pub fn panels(&self, channels: usize) -> Vec<Panel> {
        let full = channels / self.panel();
        let mut panels: Vec<Panel> = (0..full)
            .map(|i| Panel {
                first: i * self.panel(),
                channels: self.panel(),
                width: self.panel(),
            })
            .collect();
        let rest = channels % self.panel();
        if rest > 0 {
            panels.push(Panel {
                first: full * self.panel(),
                channels: rest,
                width: rest.next_multiple_of(self.granule()),
            });
        }
        panels
    }

    /// `channels` rounded up to whole panels' widths: how long a range's packed bias is.
    pub fn padded(&self, channels: usize) -> usize {
        channels.next_multiple_of(self.granule())
    }

    /// Peak FLOP per cycle per core of the tile's instructions (two FMA ports; one `tdpbf16ps`
    /// of 16 × 16 × 32 every 16 cycles).
    pub fn peak_flop_per_cycle(&self) -> f64 {
        match self.isa {
            Isa::Amx => 1024.0,
            _ => 4.0 * self.lanes() as f64,
        }
    }

    /// How `--report` names it: `6 px × 64 ch avx512`.
    pub fn describe(&self) -> String {
        let isa = match self.isa {
            Isa::Sse => "sse",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        };
        format!("{} px × {} ch {isa}", self.pixels, self.panel())
    }
}

/// AVX2 tile pixels for inputs `pixel_step` bytes apart: [`AVX2_PIXELS`], or half of it where the
/// pixels' addresses would crowd the same sets of a 64-set, 8-way L1 cache (more than 4 of the 12
/// in one set; a step of 4096 bytes puts all of them in one) and evict each other every channel.
pub fn avx2_pixels(pixel_step: usize) -> usize {
    let mut per_set = [0usize; 64];
    for p in 0..AVX2_PIXELS {
        per_set[(p * pixel_step / 64) % 64] += 1;
    }
    match per_set.iter().max() {
        Some(&most) if most > 4 => AVX2_PIXELS / 2,
        _ => AVX2_PIXELS,
    }
}

/// The AVX-512 shapes: vectors and the most pixels whose accumulators, weight vectors and
/// broadcast fit in 32 zmm registers.
const ZMM_SHAPES: [(usize, usize); 4] = [(4, 6), (3, 9), (2, 14), (1, 30)];

/// Cycles of one input-channel step of an `m` × `n` zmm tile: two FMAs, two loads per cycle, and
/// each accumulator's FMA chain of 4 cycles' latency.
fn zmm_step_cycles(m: usize, n: usize) -> f64 {
    let (m, n) = (m as f64, n as f64);
    (m * n / 2.0).max((m + n) / 2.0).max(4.0)
}

/// Cycles a call costs beyond its steps (entry, epilogue and the call in the kernel's loop).
const ZMM_CALL_CYCLES: f64 = 40.0;

/// Balanced pixel tiles for a run of `run` pixels with at most `most` per tile: `(pixels of a full
/// tile, full tiles, pixels of the last partial tile or 0)`.
fn split(run: usize, most: usize) -> (usize, usize, usize) {
    let tiles = run.div_ceil(most).max(1);
    let m = run.div_ceil(tiles);
    (m, run / m, run % m)
}

/// Predicted cycles of the AVX-512 tiles of `vectors` over runs of `run` output pixels (a row,
/// or all pixels of a flat convolution), `steps` input-channel steps per call, `channels`
/// output channels; returns (cycles, pixels of a full tile).
fn zmm_cost(
    vectors: usize,
    most: usize,
    run: usize,
    steps: usize,
    channels: usize,
) -> (f64, usize) {
    let (m, full, rest) = split(run, most);
    let tile = Tile {
        isa: Isa::Avx512,
        pixels: m,
        vectors,
    };
    let per_panel = |n: usize| {
        let call = |pixels: usize| steps as f64 * zmm_step_cycles(pixels, n) + ZMM_CALL_CYCLES;
        full as f64 * call(m) + if rest > 0 { call(rest) } else { 0.0 }
    };
    let cycles = tile
        .panels(channels)
        .iter()
        .map(|p| per_panel(p.width / 16))
        .sum();
    (cycles, m)
}

/// What the choice of a convolution's tile looks at.
#[derive(Clone, Copy, Debug)]
pub struct TileNeeds {
    /// The code's tier.
    pub tier: Tier,
    /// Input channels of the convolution.
    pub in_channels: usize,
    /// Input channel steps per call: taps × input channels.
    pub steps: usize,
    /// Bytes between the input pixels of consecutive output pixels.
    pub pixel_step: usize,
    /// Output pixels in one run of uniformly spaced pixels (a row, or a flat batch).
    pub run: usize,
    /// Output channels of the widest range.
    pub out_channels: usize,
}

/// The register tile for a convolution (or a Winograd kernel's products).
pub fn choose(needs: TileNeeds) -> Tile {
    match needs.tier {
        Tier::V3 if needs.in_channels < AVX2_MIN_CHANNELS => Tile {
            isa: Isa::Sse,
            pixels: SSE_PIXELS,
            vectors: 2,
        },
        Tier::V3 => Tile {
            isa: Isa::Avx2,
            pixels: avx2_pixels(needs.pixel_step),
            vectors: 1,
        },
        Tier::V4 => {
            let (vectors, pixels, _) = ZMM_SHAPES
                .iter()
                .map(|&(n, most)| {
                    let (cycles, m) = zmm_cost(n, most, needs.run, needs.steps, needs.out_channels);
                    (n, m, cycles)
                })
                .min_by(|a, b| a.2.total_cmp(&b.2))
                .expect("shapes to choose from");
            Tile {
                isa: Isa::Avx512,
                pixels,
                vectors,
            }
        }
    }
}

/// The AMX tile for runs of `run` pixels and `out_channels` output channels: tiles of 32 pixels
/// (the whole run where it is shorter) and the rest, so that only the last tile of a run has a
/// partial block of 16 (which loads a configuration of its own); panels of 32 channels (16 where
/// there are no more).
pub fn amx(run: usize, out_channels: usize) -> Tile {
    Tile {
        isa: Isa::Amx,
        pixels: run.min(32),
        vectors: match out_channels {
            0..=16 => 1,
            _ => 2,
        },
    }
}

/// The fraction of the peak that AVX-512 tile `tile` reaches on runs of `run` pixels with
/// `steps` channel steps per call and `channels` output channels (1.0 for the assembled tile's
/// ideal; the cost model multiplies it by its fitted efficiency). The AVX2 tier's cost model
/// counts filled tiles instead ([`tile_fill`]).
pub fn fill(tile: &Tile, run: usize, steps: usize, channels: usize) -> f64 {
    debug_assert_eq!(tile.isa, Isa::Avx512, "{tile:?}");
    let (cycles, _) = zmm_cost(tile.vectors, tile.pixels, run, steps, channels);
    let ideal = (run * steps * channels.div_ceil(16)) as f64 / 2.0;
    ideal / cycles
}

/// The fraction of `count` items' tiles of `tile` that is filled: `count / (⌈count / tile⌉ · tile)`.
pub fn tile_fill(count: usize, tile: usize) -> f64 {
    count as f64 / (count.div_ceil(tile) * tile) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_pixels_that_would_share_cache_sets_get_half_a_tile() {
        // 1024 channels: 4096 bytes apart, all in one set; 1536: two sets.
        assert_eq!(avx2_pixels(4096), 6);
        assert_eq!(avx2_pixels(6144), 6);
        // 1088, 384 and 192 channels spread over many sets.
        assert_eq!(avx2_pixels(4352), 12);
        assert_eq!(avx2_pixels(1536), 12);
        assert_eq!(avx2_pixels(768), 12);
    }

    #[test]
    fn panels_cover_the_channels_with_a_narrower_last_one() {
        let t = Tile {
            isa: Isa::Avx512,
            pixels: 6,
            vectors: 4,
        };
        let p = t.panels(96);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].first, p[0].channels, p[0].width), (0, 64, 64));
        assert_eq!((p[1].first, p[1].channels, p[1].width), (64, 32, 32));
        let p = t.panels(21);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].first, p[0].channels, p[0].width), (0, 21, 32));
        assert_eq!(t.padded(21), 32);
        let p = t.panels(69);
        assert_eq!((p[1].first, p[1].channels, p[1].width), (64, 5, 16));
        let avx2 = Tile {
            isa: Isa::Avx2,
            pixels: 12,
            vectors: 1,
        };
        assert_eq!(avx2.panels(21).len(), 3);
        assert_eq!(avx2.panels(21)[2].width, 8);
    }

    #[test]
    fn avx512_tiles_fit_the_registers_and_follow_the_rows() {
        let needs = |run, out_channels| TileNeeds {
            tier: Tier::V4,
            in_channels: 1088,
            steps: 1088,
            pixel_step: 4352,
            run,
            out_channels,
        };
        for (run, oc) in [
            (17, 192),
            (8, 256),
            (35, 96),
            (289, 384),
            (3, 16),
            (1, 1001),
        ] {
            let t = choose(needs(run, oc));
            assert_eq!(t.isa, Isa::Avx512);
            assert!(t.pixels * t.vectors + t.vectors < 32, "{t:?}");
            assert!(t.pixels <= run, "{t:?} for a run of {run}");
        }
        // A 17-pixel row of 192 channels keeps both FMA ports busy (6 + 6 + 5 pixels × 4
        // vectors, or 9 + 8 × 3 vectors).
        let t = choose(needs(17, 192));
        assert!(t.vectors >= 3, "{t:?}");
        assert!(fill(&t, 17, 1088, 192) > 0.95, "{t:?}");
        // A single 16-channel vector is all a 16-channel layer can use.
        assert_eq!(choose(needs(289, 16)).vectors, 1);
    }

    #[test]
    fn the_avx2_tier_keeps_its_tiles() {
        let needs = |in_channels, pixel_step| TileNeeds {
            tier: Tier::V3,
            in_channels,
            steps: in_channels,
            pixel_step,
            run: 17,
            out_channels: 64,
        };
        assert_eq!(choose(needs(3, 12)).isa, Isa::Sse);
        let t = choose(needs(1024, 4096));
        assert_eq!((t.isa, t.pixels, t.panel()), (Isa::Avx2, 6, 8));
    }
}
