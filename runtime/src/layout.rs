//! How values sit in the arena: feature maps are NHWC with a zero halo, vectors are `[N, F]` rows.
//! Every address a kernel computes comes from here.

/// What one value of a feature map is in the arena (`inceptc compile --precision`). Vectors (the
/// pooled features, the head's outputs) are f32 in every precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// IEEE single precision.
    #[default]
    F32,
    /// bfloat16: f32's sign, exponent and top 7 mantissa bits, rounded to nearest even. Maps
    /// have an even number of channels so that channel pairs fill dwords.
    Bf16,
}

impl Precision {
    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }

    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// `x` as this precision stores it (rounded to nearest even for bf16), widened back to f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }
}

/// A feature map's storage: `n` images of `(h + 2·halo[0]) × (w + 2·halo[1])` pixels of `c_total`
/// channels each, starting `offset` bytes into the arena; the value occupies channels
/// `channel_offset .. channel_offset + channels` of every pixel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    /// Bytes into the arena of the first image's first padded pixel.
    pub offset: usize,
    /// Images.
    pub n: usize,
    /// Height without the halo.
    pub h: usize,
    /// Width without the halo.
    pub w: usize,
    /// Channels of every pixel of the buffer.
    pub c_total: usize,
    /// The value's first channel in the buffer.
    pub channel_offset: usize,
    /// The value's channels.
    pub channels: usize,
    /// Zero rows above and below, and columns left and right.
    pub halo: [usize; 2],
    /// What each value is.
    pub precision: Precision,
}

impl MapLayout {
    /// Bytes per f32 value.
    pub const F32: usize = std::mem::size_of::<f32>();

    /// Bytes per value.
    pub fn value_bytes(&self) -> usize {
        self.precision.bytes()
    }

    /// A pixel's channels, padding included, in dwords: one per f32, one per bf16 pair (bf16
    /// maps have an even count).
    pub fn pixel_dwords(&self) -> usize {
        self.c_total * self.value_bytes() / 4
    }

    /// Channels of every pixel after the value's that only pad it (to a whole dword in bf16, or
    /// to the AMX tile's 32 channels): they stay zero.
    pub fn padding_channels(&self) -> std::ops::Range<usize> {
        (self.channel_offset + self.channels).min(self.c_total)..self.c_total
    }

    /// Bytes from one pixel to the next along a row.
    pub fn pixel_stride(&self) -> usize {
        self.c_total * self.value_bytes()
    }

    /// Bytes from one row to the next.
    pub fn row_stride(&self) -> usize {
        (self.w + 2 * self.halo[1]) * self.pixel_stride()
    }

    /// Bytes from one image to the next.
    pub fn image_stride(&self) -> usize {
        (self.h + 2 * self.halo[0]) * self.row_stride()
    }

    /// Bytes of the whole buffer.
    pub fn bytes(&self) -> usize {
        self.n * self.image_stride()
    }

    /// The arena bytes from `offset` to the map's end, or `None` where the sum overflows (a
    /// description read from a file is checked with it).
    pub fn checked_end(&self) -> Option<usize> {
        let w = self.w.checked_add(self.halo[1].checked_mul(2)?)?;
        let h = self.h.checked_add(self.halo[0].checked_mul(2)?)?;
        let pixel = self.c_total.checked_mul(self.value_bytes())?;
        let bytes = w.checked_mul(pixel)?.checked_mul(h)?.checked_mul(self.n)?;
        self.offset.checked_add(bytes)
    }

    /// Arena offset of channel `channel_offset + c` of pixel `(y, x)` of image `n`; `y` and `x`
    /// may reach into the halo (down to `−halo`).
    pub fn address(&self, n: usize, y: isize, x: isize, c: usize) -> usize {
        let row = (y + self.halo[0] as isize) as usize;
        let col = (x + self.halo[1] as isize) as usize;
        self.offset
            + n * self.image_stride()
            + row * self.row_stride()
            + col * self.pixel_stride()
            + (self.channel_offset + c) * self.value_bytes()
    }
}

/// A batch of vectors: `n` rows of `f_total` floats starting `offset` bytes into the arena; the
/// value occupies features `feature_offset .. feature_offset + features` of each row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VecLayout {
    /// Bytes into the arena of the first row.
    pub offset: usize,
    /// Rows (the batch).
    pub n: usize,
    /// Floats per row of the buffer.
    pub f_total: usize,
    /// The value's first feature in the row.
    pub feature_offset: usize,
    /// The value's features.
    pub features: usize,
}

impl VecLayout {
    /// Bytes from one row to the next.
    pub fn row_stride(&self) -> usize {
        self.f_total * MapLayout::F32
    }

    /// The arena offset just past the vector's rows, or `None` where the sum overflows.
    pub fn checked_end(&self) -> Option<usize> {
        let row = self.f_total.checked_mul(MapLayout::F32)?;
        self.offset.checked_add(self.n.checked_mul(row)?)
    }

    /// The arena offset of feature `f` of row `n`.
    pub fn address(&self, n: usize, f: usize) -> usize {
        self.offset + n * self.row_stride() + (self.feature_offset + f) * MapLayout::F32
    }
}

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A feature map.
    Map(MapLayout),
    /// A batch of vectors.
    Vector(VecLayout),
}

impl Layout {
    /// The value's tensor shape as the user sees it: NCHW for a map, [N, features] for a vector.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Layout::Map(m) => vec![m.n, m.channels, m.h, m.w],
            Layout::Vector(v) => vec![v.n, v.features],
        }
    }
}
