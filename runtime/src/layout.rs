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
    /// Unsigned 8-bit integers, `real = scale · (q − zero)` with each map's [`Quant`]
    /// (`--precision int8`). Maps have a multiple of 4 channels so that quads fill dwords.
    U8,
}

impl Precision {
    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
            Precision::U8 => 1,
        }
    }

    /// Values per dword: 1, a pair or a quad.
    pub fn per_dword(self) -> usize {
        4 / self.bytes()
    }

    /// `f32`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::U8 => "int8",
        }
    }

    /// `x` as this precision stores it (rounded to nearest even for bf16), widened back to f32;
    /// u8 values depend on their map's [`Quant`] ([`Quant::round`]), and are left as they are
    /// here.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 | Precision::U8 => x,
            Precision::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }
}

/// How the bytes of a u8 map stand for real values: `real = scale · (q − zero)`. Maps of other
/// precisions carry the default (scale 1, zero 0) and ignore it.
#[derive(Clone, Copy, Debug)]
pub struct Quant {
    /// The real step between consecutive codes (positive and finite).
    pub scale: f32,
    /// The code of real 0.
    pub zero: u8,
}

impl Default for Quant {
    fn default() -> Quant {
        Quant {
            scale: 1.0,
            zero: 0,
        }
    }
}

/// Equal when the scales' bits and the zero points are (so that the type can be `Eq`).
impl PartialEq for Quant {
    fn eq(&self, other: &Quant) -> bool {
        self.scale.to_bits() == other.scale.to_bits() && self.zero == other.zero
    }
}

impl Eq for Quant {}

impl Quant {
    /// `1 / scale` in f32, by which values are multiplied to quantize them.
    pub fn inverse(self) -> f32 {
        1.0 / self.scale
    }

    /// The code of `x`, as generated code and the interpreter's int8 mode compute it:
    /// `x · inverse + zero` in one fused step, clamped to 0 ..= 255, rounded to nearest even (a
    /// NaN becomes 0).
    pub fn quantize(self, x: f32) -> u8 {
        let v = x.mul_add(self.inverse(), self.zero as f32);
        match v.is_nan() {
            true => 0,
            false => v.clamp(0.0, 255.0).round_ties_even() as u8,
        }
    }

    /// The real value of code `q`: `(q − zero) · scale` in f32.
    pub fn dequantize(self, q: u8) -> f32 {
        (q as f32 - self.zero as f32) * self.scale
    }

    /// `x` quantized and back.
    pub fn round(self, x: f32) -> f32 {
        self.dequantize(self.quantize(x))
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
    /// What a u8 map's codes stand for (the default in other precisions).
    pub quant: Quant,
}

impl MapLayout {
    /// Bytes per f32 value.
    pub const F32: usize = std::mem::size_of::<f32>();

    /// Bytes per value.
    pub fn value_bytes(&self) -> usize {
        self.precision.bytes()
    }

    /// A pixel's channels, padding included, in dwords: one per f32, one per bf16 pair, one
    /// per u8 quad (bf16 maps have an even count, u8 maps a multiple of 4).
    pub fn pixel_dwords(&self) -> usize {
        self.c_total * self.value_bytes() / 4
    }

    /// Channels of every pixel after the value's that only pad it (to a whole dword in bf16 or
    /// int8, or to the AMX tile's 32 channels): they stay zero.
    pub fn padding_channels(&self) -> std::ops::Range<usize> {
        (self.channel_offset + self.channels).min(self.c_total)..self.c_total
    }

    /// The byte the halo holds: the code of real 0 (the zero point) in a u8 map, else 0, so
    /// that a padded convolution reads zeros.
    pub fn halo_byte(&self) -> u8 {
        match self.precision {
            Precision::U8 => self.quant.zero,
            Precision::F32 | Precision::Bf16 => 0,
        }
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
