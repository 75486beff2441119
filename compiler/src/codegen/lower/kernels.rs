//! The kernels a program runs: one struct per kernel family with every shape, stride, arena
//! offset and register tile fixed, and what lowering decides for them (work split, Winograd group).

use super::*;

/// One output range of a convolution kernel: `channels` output channels whose packed weights
/// start at `weights` and bias at `bias` (byte offsets into the weight blob), written to `out`.
///
/// Packed weights: for each panel of the kernel's register tile ([`Tile::panels`]), the taps in
/// order `ky`, `kx`, then the input channels, each a row of the panel's width in floats (zero past
/// its channels); panel `p` starts at `weights + p.first · taps · input channels · 4`. Bias: the
/// channels, zero-padded to [`Tile::padded`].
#[derive(Clone, Debug)]
pub struct ConvRange {
    /// The node the range computes.
    pub node: String,
    /// Its output channels.
    pub channels: usize,
    /// Whether the epilogue ends with ReLU.
    pub relu: bool,
    /// Byte offset of its packed weights in the weight blob.
    pub weights: usize,
    /// Byte offset of its padded bias in the weight blob.
    pub bias: usize,
    /// Where it writes.
    pub out: MapLayout,
}

/// What a direct and a Winograd convolution share: the input, the kernel's taps and padding, the
/// output map, the output ranges with their epilogue, and the register tile of the products.
#[derive(Clone, Debug)]
pub struct ConvCore {
    /// The operand.
    pub input: MapLayout,
    /// Taps along (height, width).
    pub kernel: [usize; 2],
    /// Zero padding rows and columns on each side.
    pub padding: [usize; 2],
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// The output ranges, each with its weights and epilogue.
    pub ranges: Vec<ConvRange>,
    /// The residual added before ReLU, when there is one.
    pub residual: Option<MapLayout>,
    /// The register tile.
    pub register: Tile,
}

impl ConvCore {
    /// What the cost model and the FLOP count see, at `stride`.
    pub fn shape(&self, stride: [usize; 2]) -> cost::ConvShape {
        cost::ConvShape {
            images: self.input.n,
            in_channels: self.input.channels,
            out_channels: self.ranges.iter().map(|r| r.channels).sum(),
            out: [self.out_h, self.out_w],
            kernel: self.kernel,
            stride,
        }
    }
}

/// A convolution with its epilogue over one or more output ranges (a shared kernel of sibling
/// 1×1 convs has several). Its units are output rows (image, row), or pixel tiles when `flat`;
/// [`ConvKernel::split`] makes work items of them. The shared fields are in [`ConvCore`]
/// (`conv.input` reads through).
#[derive(Clone, Debug)]
pub struct ConvKernel {
    /// The fields a Winograd convolution has too.
    pub core: ConvCore,
    /// Stride along (height, width).
    pub stride: [usize; 2],
    /// A stride-1 convolution one tap wide with no padding along x, over an input with no halo
    /// columns (a 1×1, or a 7×1 reading a map with halo rows only): its units are tiles of
    /// consecutive pixels instead of output rows, which may span rows because each output
    /// pixel's input at every tap lies the same distance further on. They span images too when
    /// the input has no halo at all ([`ConvKernel::flat_run`]).
    pub flat: bool,
    /// How units and output channels form work items.
    pub split: Split,
}

/// How a direct convolution's work items are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// One work item per unit, covering every output channel (the AVX2 tier).
    Units,
    /// Every weight panel × `groups` groups of units, numbered as `order` says (the AVX-512
    /// tier): a thread computes a panel's groups with its weights in cache, instead of every
    /// unit streaming the whole layer's weights.
    Panels {
        /// Groups of consecutive units per panel.
        groups: usize,
        /// How the items are numbered.
        order: ItemOrder,
    },
}

/// The numbering of a [`Split::Panels`] convolution's work items. The pool gives each thread a
/// consecutive share of them (`inceptc_runtime::pool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemOrder {
    /// Range by range, panel by panel, each panel's groups in turn: a thread's share is a part
    /// of the output channels at every pixel, so the threads split the weights between them.
    /// For layers whose weights do not fit in a core's cache.
    PanelMajor,
    /// Group by group, each group's panels of every range in turn: a thread's share is a part
    /// of the image at every output channel, the part it computed in the kernels before, so it
    /// reads activations from its own core's cache and every thread reads all the weights.
    GroupMajor,
}

/// Weight bytes up to which a convolution's items are [`ItemOrder::GroupMajor`]: half a core's
/// 2 MiB L2 on the Xeon and Zen 5 machines, so that the weights a thread reads for each of its
/// groups stay in its cache. Measured on the Xeon (2 threads, interleaved runs): bf16
/// Inception-ResNet-v2 took 18.1 ms with this limit, 19.7 ms with every layer panel-major and
/// 18.1–18.5 ms with every layer group-major; f32 Inception-v4 and IR-v2 were slower with every
/// layer group-major (61 and 68 ms against 55–57 and 62–64).
pub const GROUP_MAJOR_WEIGHTS: usize = 1 << 20;

/// Work items per range's panel (see [`Split::Panels`]) for `units` units and `panels` panels in
/// all, for `threads` threads ([`LowerOptions::threads`]): enough items that each of up to 16
/// threads (or of `threads`, if more) gets 4, without splitting a panel's units into groups of
/// fewer than 4 for up to two threads (each group reads the panel's weights again), or of fewer
/// than 1 for more.
pub(super) fn panel_groups(units: usize, panels: usize, threads: usize) -> usize {
    let items = 64.max(4 * threads);
    let least = match threads > 2 {
        true => 1,
        false => 4,
    };
    let wanted = items.div_ceil(panels.max(1));
    let groups = wanted.min(units.div_ceil(least)).clamp(1, units.max(1));
    // No empty group: groups of ⌈units / groups⌉ units, as many as that takes.
    units.max(1).div_ceil(units.div_ceil(groups).max(1))
}

/// A stride-1 convolution computed in Winograd tiles F(m_y × m_x, r_y × r_x) (see
/// [`super::winograd`]): each work item transforms the input tiles of `group` tile rows of one
/// image into its scratch, multiplies them by the transformed weights one point at a time (a
/// matrix product through [`crate::codegen::emit`]'s register tile), and transforms the products back,
/// adding bias and residual and applying ReLU.
///
/// Packed weights per range: for each panel of the register tile, for each of the L_y·L_x points,
/// the input channels, each a row of the panel's width in floats. Bias as for [`ConvRange`].
#[derive(Clone, Debug)]
pub struct WinogradKernel {
    /// The shared fields (`register` is the tile of the point-wise products).
    pub core: ConvCore,
    /// Outputs per tile along y and x (`m`); 1 along an axis with a 1-tap kernel.
    pub tile: [usize; 2],
    /// Tile rows per work item.
    pub group: usize,
    /// Shares of the output channels' panels per tile-row group, ≥ 1: the work items of a group
    /// each transform its input and compute their share of the panels (more items for many
    /// threads, at the cost of transforming the input again).
    pub parts: usize,
    /// Arena offset of the scratch, [`WinogradKernel::item_scratch`] bytes per work item: a
    /// call for items `begin..end` uses the bytes from `scratch + begin · item_scratch` for each
    /// of them in turn (the calls that run at once have different first items).
    pub scratch: usize,
}

/// The fields of [`ConvCore`] read and written as the kernels' own.
macro_rules! through_core {
    ($($kernel:ty),*) => {$(
        impl std::ops::Deref for $kernel {
            type Target = ConvCore;
            fn deref(&self) -> &ConvCore {
                &self.core
            }
        }
        impl std::ops::DerefMut for $kernel {
            fn deref_mut(&mut self) -> &mut ConvCore {
                &mut self.core
            }
        }
    )*};
}
through_core!(ConvKernel, WinogradKernel);

impl ConvKernel {
    /// Output rows, or pixel tiles when `flat`.
    pub fn units(&self) -> usize {
        conv_units(
            &self.input,
            [self.out_h, self.out_w],
            self.flat,
            self.register.pixels,
        )
    }

    /// Consecutive output pixels that flat tiles cover: the whole batch's when the input has no
    /// halo and the output's size (a 1×1), else one image's (halo rows, or the rows below a
    /// taller kernel's last output row, lie between images).
    pub fn flat_run(&self) -> usize {
        flat_run(&self.input, [self.out_h, self.out_w])
    }

    /// What the cost model and the FLOP count see.
    pub fn shape(&self) -> cost::ConvShape {
        self.core.shape(self.stride)
    }
}

/// [`ConvKernel::units`] of a convolution over `input` with `out` (rows, columns) output pixels
/// per image, `flat` or not, in tiles of `pixels` pixels.
pub fn conv_units(input: &MapLayout, out: [usize; 2], flat: bool, pixels: usize) -> usize {
    match flat {
        true => {
            let run = flat_run(input, out);
            (input.n * out[0] * out[1] / run) * run.div_ceil(pixels)
        }
        false => input.n * out[0],
    }
}

/// [`ConvKernel::flat_run`] of a convolution over `input` with `out` (rows, columns) output
/// pixels per image.
pub fn flat_run(input: &MapLayout, out: [usize; 2]) -> usize {
    let pixels = out[0] * out[1];
    match input.halo == [0, 0] && [input.h, input.w] == out {
        true => input.n * pixels,
        false => pixels,
    }
}

impl WinogradKernel {
    /// What the cost model and the FLOP count see (those of the direct convolution).
    pub fn shape(&self) -> cost::ConvShape {
        self.core.shape([1, 1])
    }

    /// Tiles per image along y and x.
    pub fn tiles(&self) -> [usize; 2] {
        [
            self.out_h.div_ceil(self.tile[0]),
            self.out_w.div_ceil(self.tile[1]),
        ]
    }

    /// Points per tile along y and x (`m + r − 1`).
    pub fn points(&self) -> [usize; 2] {
        [
            self.tile[0] + self.kernel[0] - 1,
            self.tile[1] + self.kernel[1] - 1,
        ]
    }

    /// Work items per image.
    pub fn groups(&self) -> usize {
        self.tiles()[0].div_ceil(self.group)
    }

    /// Work items in all: per image, each group's [`WinogradKernel::parts`].
    pub fn items(&self) -> usize {
        self.input.n * self.groups() * self.parts
    }

    /// Panels of the register tile over all ranges (what [`WinogradKernel::parts`] shares out).
    pub fn panels(&self) -> usize {
        let width = self.register.panel();
        self.ranges.iter().map(|r| r.channels.div_ceil(width)).sum()
    }

    /// Tiles one work item transforms (the last item of an image may use fewer:
    /// [`Self::last_item_tiles`]).
    pub fn item_tiles(&self) -> usize {
        self.group * self.tiles()[1]
    }

    /// Tiles of an image's last work item: its remaining tile rows, [`Self::item_tiles`] when
    /// the groups divide the rows.
    pub fn last_item_tiles(&self) -> usize {
        let [rows, columns] = self.tiles();
        (rows - (self.groups() - 1) * self.group) * columns
    }

    /// Bytes of a work item's transformed input (points × tiles × input channels).
    pub fn input_scratch(&self) -> usize {
        let [ly, lx] = self.points();
        ly * lx * self.item_tiles() * self.input.channels * MapLayout::F32
    }

    /// Offset in a work item's scratch of the staging buffer a two-axis transform passes one
    /// tile's vectors through (points × 4 floats), after the transformed input and the products
    /// of one panel of output channels (points × tiles × [`Tile::panel`]).
    pub fn stage_offset(&self) -> usize {
        let [ly, lx] = self.points();
        self.input_scratch() + ly * lx * self.item_tiles() * self.register.panel() * MapLayout::F32
    }

    /// Bytes of scratch one work item owns (see [`WinogradKernel::stage_offset`]).
    pub fn item_scratch(&self) -> usize {
        let [ly, lx] = self.points();
        winograd_item_scratch(
            ly * lx,
            self.item_tiles(),
            self.input.channels,
            self.register.panel(),
        )
    }
}

/// [`WinogradKernel::item_scratch`] for `points` points per tile, `tiles` tiles per item,
/// `in_channels` input channels and products `panel` channels wide: the transformed input, one
/// panel's products and the staging buffer, aligned.
pub fn winograd_item_scratch(
    points: usize,
    tiles: usize,
    in_channels: usize,
    panel: usize,
) -> usize {
    (points * (tiles * (in_channels + panel) + 4) * MapLayout::F32).next_multiple_of(WEIGHT_ALIGN)
}

/// [`winograd_group`] for a convolution from `input` to `out` in Winograd tiles `tile`, its
/// products in register tiles `register`.
pub(super) fn winograd_group_for(
    input: &MapLayout,
    out: &MapLayout,
    tile: [usize; 2],
    register: &Tile,
) -> usize {
    let [th, tw] = [out.h.div_ceil(tile[0]), out.w.div_ceil(tile[1])];
    winograd_group(input.n, th, tw, register.pixels)
}

/// The register tile of a Winograd convolution's products: runs of up to 48 transformed tiles
/// (see [`winograd_group`]), the input channels per step.
pub(super) fn winograd_register(
    tier: Tier,
    input: &MapLayout,
    out: &MapLayout,
    out_channels: usize,
) -> Tile {
    tile::choose(TileNeeds {
        tier,
        in_channels: input.channels,
        steps: input.channels,
        pixel_step: input.channels * MapLayout::F32,
        run: (out.h.div_ceil(2) * out.w.div_ceil(2)).clamp(1, 48),
        out_channels,
    })
}

/// Tile rows per Winograd work item for `tile_rows` × `tile_columns` tiles over `images` images,
/// multiplied in register tiles of `register` tiles: enough tiles per item to fill register tiles,
/// items spread evenly over two threads.
pub fn winograd_group(
    images: usize,
    tile_rows: usize,
    tile_columns: usize,
    register: usize,
) -> usize {
    let time = |group: usize| {
        let tiles = group * tile_columns;
        let fill = tile_fill(tiles, register);
        let items = images * tile_rows.div_ceil(group);
        (items.div_ceil(2) * group) as f64 / fill
    };
    // Fewest tiles wins ties (more items for more threads); at most 48 tiles per item (the
    // scratch grows with them).
    (1..=tile_rows)
        .filter(|g| g * tile_columns <= 48 || *g == 1)
        .min_by(|a, b| time(*a).total_cmp(&time(*b)))
        .unwrap_or(1)
}

/// Tile rows per work item and channel parts per group ([`WinogradKernel::parts`]) of a Winograd
/// convolution of `shape` in tiles `tile` with `panels` panels of `register`, for `threads`
/// threads: up to two threads, [`winograd_group`] and one part; beyond, whichever the cost model
/// predicts fastest on that many threads, with at most [`WINOGRAD_SCRATCH`] bytes of scratch.
pub fn winograd_split(
    shape: &cost::ConvShape,
    tile: [usize; 2],
    register: &Tile,
    panels: usize,
    threads: usize,
) -> (usize, usize) {
    let [th, tw] = shape.tiles(tile);
    if threads <= 2 {
        return (winograd_group(shape.images, th, tw, register.pixels), 1);
    }
    let points = (tile[0] + shape.kernel[0] - 1) * (tile[1] + shape.kernel[1] - 1);
    let scratch = |group: usize, parts: usize| {
        let item = winograd_item_scratch(points, group * tw, shape.in_channels, register.panel());
        shape.images * th.div_ceil(group) * parts * item
    };
    let mut best = (f64::INFINITY, (1, 1));
    for group in (1..=th).filter(|g| g * tw <= 48 || *g == 1) {
        for parts in 1..=panels.max(1) {
            if scratch(group, parts) > WINOGRAD_SCRATCH && (group, parts) != (1, 1) {
                continue;
            }
            let work = crate::codegen::report::Work::winograd(shape, tile, group, parts, register);
            let time = work.time(threads);
            // A later candidate must be over 1 % faster: near-ties keep the earlier one, with
            // fewer tile rows a group (smaller scratch) and then fewer parts (fewer transforms
            // again).
            if time < best.0 * 0.99 {
                best = (time, (group, parts));
            }
        }
    }
    best.1
}

/// The most scratch [`winograd_split`] gives a Winograd convolution's work items, in bytes.
pub const WINOGRAD_SCRATCH: usize = 16 << 20;

/// How convolutions are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// Per layer, whichever the cost model predicts faster ([`super::cost`]).
    #[default]
    Auto,
    /// Direct convolution everywhere.
    Direct,
    /// Winograd wherever a tile applies (stride 1, a 3- or 7-tap axis, input channels a multiple
    /// of 4), the tile the cost model prefers.
    Winograd,
    /// Test-only: Winograd with these outputs per tile (y, x) wherever it applies.
    #[doc(hidden)]
    WinogradTile([usize; 2]),
}

/// Max or average pooling. Work items are output rows.
#[derive(Clone, Debug)]
pub struct PoolKernel {
    /// The operand.
    pub input: MapLayout,
    /// The window.
    pub window: PoolAttrs,
    /// `None` for max pooling, else whether the divisor counts padding.
    pub average: Option<bool>,
    /// Whether `max(0, ·)` ends an average pool.
    pub relu: bool,
    /// Where it writes.
    pub out: MapLayout,
}

/// Mean over the pixels of each channel. Work items are (image, block of
/// [`GLOBAL_POOL_CHANNELS`] channels), so that a batch of one still splits.
#[derive(Clone, Debug)]
pub struct GlobalPoolKernel {
    /// The operand.
    pub input: MapLayout,
    /// Where it writes: one row of channels per image.
    pub out: VecLayout,
}

/// Channels per work item of a global pool (a multiple of 4: only the last block has a tail).
pub const GLOBAL_POOL_CHANNELS: usize = 64;

impl GlobalPoolKernel {
    /// Channel blocks per image.
    pub fn blocks(&self) -> usize {
        self.input.channels.div_ceil(GLOBAL_POOL_CHANNELS)
    }
}

/// `y = x · Wᵀ + b`. Without a register tile (the AVX2 tier): packed weights, for each block of
/// [`LINEAR_LANES`] outputs (zero-padded), the input features in order, each a row of
/// [`LINEAR_LANES`] floats; bias zero-padded likewise; work items are rows. With one (the
/// AVX-512 tier): a 1×1 convolution over the rows as pixels, weights in the tile's panels as
/// [`ConvRange`]'s, a bias always (zeros without one); work items are panels, each over every
/// row.
#[derive(Clone, Debug)]
pub struct LinearKernel {
    /// The operand.
    pub input: VecLayout,
    /// Where it writes.
    pub out: VecLayout,
    /// Byte offset of the packed weights in the weight blob.
    pub weights: usize,
    /// Byte offset of the padded bias, if any.
    pub bias: Option<usize>,
    /// The register tile (the AVX-512 tier).
    pub register: Option<Tile>,
}

/// `y = x / max(‖x‖₂, eps)` per row. Work items are rows.
#[derive(Clone, Debug)]
pub struct L2NormKernel {
    /// The operand.
    pub input: VecLayout,
    /// Where it writes.
    pub out: VecLayout,
    /// The smallest norm divided by.
    pub eps: f32,
}

/// What one step computes.
#[derive(Clone, Debug)]
pub enum Kernel {
    /// A direct convolution.
    Conv(ConvKernel),
    /// A Winograd convolution.
    Winograd(WinogradKernel),
    /// Max or average pooling.
    Pool(PoolKernel),
    /// Global average pooling.
    GlobalPool(GlobalPoolKernel),
    /// A fully connected layer.
    Linear(LinearKernel),
    /// L2 normalization.
    L2Norm(L2NormKernel),
}

impl Kernel {
    /// How many independent work items the kernel splits into (the range a call covers).
    pub fn items(&self) -> usize {
        match self {
            Kernel::Conv(k) => match k.split {
                Split::Units => k.units(),
                Split::Panels { groups, .. } => {
                    let panels: usize = k
                        .ranges
                        .iter()
                        .map(|r| k.register.panels(r.channels).len())
                        .sum();
                    panels * groups
                }
            },
            Kernel::Winograd(k) => k.items(),
            Kernel::Pool(k) => k.out.n * k.out.h,
            Kernel::GlobalPool(k) => k.out.n * k.blocks(),
            Kernel::Linear(k) => match k.register {
                Some(register) => register.panels(k.out.features).len(),
                None => k.out.n,
            },
            Kernel::L2Norm(k) => k.out.n,
        }
    }

    /// Floating-point operations of one whole call (2 per multiply–add), for throughput figures;
    /// a Winograd convolution counts the direct convolution's.
    pub fn flops(&self) -> u64 {
        match self {
            Kernel::Conv(k) => k.shape().flops(),
            Kernel::Winograd(k) => k.shape().flops(),
            Kernel::Linear(k) => 2 * (k.out.n * k.out.features * k.input.features) as u64,
            _ => 0,
        }
    }
}

impl From<ConvKernel> for Kernel {
    fn from(k: ConvKernel) -> Kernel {
        Kernel::Conv(k)
    }
}
