//! The weights as an executable stores them, and the layout the kernels read, built from them at
//! start-up. An executable stores every layer's weights as the optimized graph holds them (a
//! convolution's `[out, in, kh, kw]` with BatchNorm and the residual scale folded in, biases, a
//! linear layer's rows), about the size of the checkpoint, and one [`Segment`] per packed
//! segment saying how to make it. [`pack`] lays the convolutions out in the register tile's
//! weight panels and, for Winograd layers, transforms each kernel by `G_y · g · G_xᵀ` in f64.
//! The compiler packs through the same function for in-process code, so the JIT and executables
//! run on the same bytes.

use crate::layout::Precision;

/// One segment of the packed weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Byte offset in the packed weights.
    pub offset: usize,
    /// Float offset of its source in the stored weights.
    pub source: usize,
    /// How the segment is made.
    pub recipe: Recipe,
}

/// How a segment is made from the stored floats at its source.
#[derive(Clone, Debug, PartialEq)]
pub enum Recipe {
    /// `floats` floats as they are.
    Copy {
        /// How many.
        floats: usize,
    },
    /// A convolution's weights in panels.
    Conv(ConvPacking),
}

/// A convolution's `[out, inputs, kernel[0], kernel[1]]` weights laid out in panels: panel
/// `[first, channels, width]` holds, for each of the kernel's `points` (its taps row-major, or
/// the Winograd points) and each input channel, a row of `width` values, of which the first
/// `channels` are output channels `first ..`; the panel starts `first · points · inputs` values
/// into the segment. In bf16 the rows are of channel pairs, `width` × 2 values with the pair's
/// two channels adjacent (`[point][pair][width][2]`, as `vdpbf16ps` reads them), and an odd
/// last input channel is paired with zeros. In int8 they are of quads of s8 weights
/// (`[point][quad][width][4]`, as `vpdpbusd` reads them), from stored integer values.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvPacking {
    /// Output channels.
    pub out: usize,
    /// Input channels.
    pub inputs: usize,
    /// Input channels as packed: `inputs`, or more where the input's pixels are padded (to a
    /// channel pair in bf16, or to the AMX tile's 32 channels); the rest are zero.
    pub padded_inputs: usize,
    /// Taps along (height, width).
    pub kernel: [usize; 2],
    /// Winograd's `G_y` (L_y × kernel[0]) and `G_x` (L_x × kernel[1]), row-major; `None`: the
    /// taps as they are.
    pub transform: Option<[Vec<f64>; 2]>,
    /// `[first, channels, width]` of each panel.
    pub panels: Vec<[usize; 3]>,
    /// What each packed value is.
    pub precision: Precision,
}

impl ConvPacking {
    /// Values per (output, input) channel pair: the taps, or L_y · L_x Winograd points.
    pub fn points(&self) -> usize {
        match &self.transform {
            Some([gy, gx]) => gy.len() / self.kernel[0] * (gx.len() / self.kernel[1]),
            None => self.kernel[0] * self.kernel[1],
        }
    }

    fn source_floats(&self) -> Option<usize> {
        self.out
            .checked_mul(self.inputs)?
            .checked_mul(self.kernel[0])?
            .checked_mul(self.kernel[1])
    }

    /// Input channels per packed row: 1 (f32), a pair (bf16) or a quad (int8).
    fn group(&self) -> usize {
        self.precision.per_dword()
    }

    /// Input channels as packed (see [`ConvPacking::padded_inputs`]).
    pub fn packed_inputs(&self) -> usize {
        self.padded_inputs
    }

    fn packed_bytes(&self) -> Option<usize> {
        let end = self.panels.last().map_or(0, |p| p[0] + p[2]);
        end.checked_mul(self.points())?
            .checked_mul(self.packed_inputs())?
            .checked_mul(self.precision.bytes())
    }

    /// Whether the panels tile `0 .. out` in order, each no wider than its width, and the
    /// transform's matrices have whole rows.
    fn consistent(&self) -> bool {
        let mut next = 0;
        for &[first, channels, width] in &self.panels {
            if first != next || channels == 0 || channels > width {
                return false;
            }
            next = first + channels;
            if channels < width && next != self.out {
                return false;
            }
        }
        let whole = |g: &Vec<f64>, r: usize| r > 0 && g.len().is_multiple_of(r) && !g.is_empty();
        next == self.out
            && self.padded_inputs >= self.inputs
            && self.padded_inputs.is_multiple_of(self.group())
            && self.kernel[0] > 0
            && self.kernel[1] > 0
            && match &self.transform {
                Some([gy, gx]) => whole(gy, self.kernel[0]) && whole(gx, self.kernel[1]),
                None => true,
            }
    }
}

impl Recipe {
    /// Stored floats the segment reads (`None` when the count overflows).
    pub fn source_floats(&self) -> Option<usize> {
        match self {
            Recipe::Copy { floats } => Some(*floats),
            Recipe::Conv(c) => c.source_floats(),
        }
    }

    /// Packed bytes the segment writes (`None` when the count overflows).
    pub fn packed_bytes(&self) -> Option<usize> {
        match self {
            Recipe::Copy { floats } => floats.checked_mul(4),
            Recipe::Conv(c) => c.packed_bytes(),
        }
    }
}

/// Why stored weights could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// This segment does not fit the stored or packed weights.
    #[error("corrupt model: weight segment {0} does not fit the stored or packed weights")]
    OutOfBounds(usize),
    /// This segment's panels are inconsistent.
    #[error("corrupt model: weight segment {0} has inconsistent panels")]
    Panels(usize),
}

/// `G_y · g · G_xᵀ` for a kernel `taps` (kh × kw, row-major), with `G_y` L_y × kh and `G_x`
/// L_x × kw: along x for every kernel row, then along y for every transformed column; L_y · L_x
/// values, row-major.
pub fn transform(gy: &[f64], gx: &[f64], kernel: [usize; 2], taps: &[f64]) -> Vec<f64> {
    let mut rows = Vec::new();
    let mut out = Vec::new();
    transform_into(gy, gx, kernel, taps, &mut rows, &mut out);
    out
}

/// [`transform`] into `out`, with `rows` as scratch (both resized as needed).
fn transform_into(
    gy: &[f64],
    gx: &[f64],
    [kh, kw]: [usize; 2],
    taps: &[f64],
    rows: &mut Vec<f64>,
    out: &mut Vec<f64>,
) {
    let (ly, lx) = (gy.len() / kh, gx.len() / kw);
    rows.resize(kh * lx, 0.0);
    out.resize(ly * lx, 0.0);
    for (ky, row) in taps.chunks(kw).enumerate() {
        for (j, g) in gx.chunks(kw).enumerate() {
            rows[ky * lx + j] = g.iter().zip(row).map(|(a, b)| a * b).sum();
        }
    }
    for j in 0..lx {
        for (i, g) in gy.chunks(kh).enumerate() {
            out[i * lx + j] = g
                .iter()
                .enumerate()
                .map(|(ky, a)| a * rows[ky * lx + j])
                .sum();
        }
    }
}

/// Bytes the packed weights of `segments` take.
pub fn packed_bytes(segments: &[Segment]) -> Option<usize> {
    segments.iter().try_fold(0usize, |end, s| {
        let bytes = s.recipe.packed_bytes()?;
        Some(end.max(s.offset.checked_add(bytes)?))
    })
}

/// Lays `stored` out as `segments` say into `packed` (little-endian f32 or bf16; bytes no segment
/// covers are left as they are). Every segment is checked against both lengths first.
pub fn pack(stored: &[f32], segments: &[Segment], packed: &mut [u8]) -> Result<(), PackError> {
    check(stored.len(), segments, packed.len())?;
    for s in segments {
        let floats = s.recipe.source_floats().unwrap_or(0);
        let source = &stored[s.source..s.source + floats];
        pack_segment(source, &s.recipe, &mut packed[s.offset..]);
    }
    Ok(())
}

/// Checks every segment against `stored` stored floats and `packed` packed bytes, and its panels.
pub fn check(stored: usize, segments: &[Segment], packed: usize) -> Result<(), PackError> {
    for (i, s) in segments.iter().enumerate() {
        let fits = s
            .recipe
            .source_floats()
            .and_then(|n| s.source.checked_add(n))
            .is_some_and(|end| end <= stored)
            && s.recipe
                .packed_bytes()
                .and_then(|n| n.checked_add(s.offset))
                .is_some_and(|end| end <= packed);
        if !fits {
            return Err(PackError::OutOfBounds(i));
        }
        if let Recipe::Conv(c) = &s.recipe {
            if !c.consistent() {
                return Err(PackError::Panels(i));
            }
        }
    }
    Ok(())
}

/// Packs one segment, checked by [`check`], from `source` (its [`Recipe::source_floats`] stored
/// floats) into `dst`, the packed weights from the segment's offset on.
pub fn pack_segment(source: &[f32], recipe: &Recipe, dst: &mut [u8]) {
    match recipe {
        Recipe::Copy { .. } => {
            for (d, v) in dst.chunks_exact_mut(4).zip(source) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        Recipe::Conv(c) => pack_conv(source, c, dst),
    }
}

fn pack_conv(source: &[f32], c: &ConvPacking, dst: &mut [u8]) {
    let taps = c.kernel[0] * c.kernel[1];
    let points = c.points();
    let (group, inputs) = (c.group(), c.packed_inputs());
    // Padding channels and lanes stay zero.
    dst[..c.packed_bytes().unwrap_or(0)].fill(0);
    let (mut g, mut rows, mut u) = (vec![0.0f64; taps], Vec::new(), Vec::new());
    for &[first, channels, width] in &c.panels {
        let base = first * points * inputs;
        for lane in 0..channels {
            let co = first + lane;
            for ci in 0..c.inputs {
                let at = (co * c.inputs + ci) * taps;
                let put = |dst: &mut [u8], q: usize, v: f32| {
                    let row = (q * inputs + ci) / group;
                    let i = base + (row * width + lane) * group + ci % group;
                    match c.precision {
                        Precision::F32 => dst[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes()),
                        Precision::Bf16 => dst[2 * i..2 * i + 2]
                            .copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                        // Quantized weights: integers in −127 ..= 127, stored as f32.
                        Precision::U8 => dst[i] = (v.clamp(-128.0, 127.0) as i8) as u8,
                    }
                };
                match &c.transform {
                    Some([gy, gx]) => {
                        for (t, w) in g.iter_mut().zip(&source[at..at + taps]) {
                            *t = *w as f64;
                        }
                        transform_into(gy, gx, c.kernel, &g, &mut rows, &mut u);
                        for (q, v) in u.iter().enumerate() {
                            put(dst, q, *v as f32);
                        }
                    }
                    None => {
                        for (q, v) in source[at..at + taps].iter().enumerate() {
                            put(dst, q, *v);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn conv_weights_go_into_panels_tap_major() {
        // 3 outputs, 2 inputs, 1×2 taps: w[co][ci][t] = 100co + 10ci + t.
        let stored: Vec<f32> = (0..3)
            .flat_map(|co| {
                (0..2).flat_map(move |ci| (0..2).map(move |t| (100 * co + 10 * ci + t) as f32))
            })
            .collect();
        let c = ConvPacking {
            out: 3,
            inputs: 2,
            padded_inputs: 2,
            kernel: [1, 2],
            transform: None,
            panels: vec![[0, 2, 2], [2, 1, 4]],
            precision: Precision::F32,
        };
        let s = [Segment {
            offset: 0,
            source: 0,
            recipe: Recipe::Conv(c),
        }];
        let mut out = vec![0u8; packed_bytes(&s).unwrap()];
        pack(&stored, &s, &mut out).unwrap();
        let got = floats(&out);
        // Panel 0: rows (t, ci) of 2 lanes; panel 1 from float 2·2·2 = 8: rows of 4, one lane.
        assert_eq!(&got[..8], &[0., 100., 10., 110., 1., 101., 11., 111.]);
        assert_eq!(
            &got[8..],
            &[200., 0., 0., 0., 210., 0., 0., 0., 201., 0., 0., 0., 211., 0., 0., 0.]
        );
    }

    #[test]
    fn bf16_weights_go_into_rows_of_channel_pairs_with_a_zero_partner_for_an_odd_channel() {
        // 2 outputs, 3 inputs, 1×2 taps: w[co][ci][t] = 100co + 10ci + t (exact in bf16 up
        // to 256; 201 and 211 round to even).
        let stored: Vec<f32> = (0..2)
            .flat_map(|co| {
                (0..3).flat_map(move |ci| (0..2).map(move |t| (100 * co + 10 * ci + t) as f32))
            })
            .collect();
        let c = ConvPacking {
            out: 2,
            inputs: 3,
            padded_inputs: 4,
            kernel: [1, 2],
            transform: None,
            panels: vec![[0, 2, 4]],
            precision: Precision::Bf16,
        };
        assert_eq!(c.packed_inputs(), 4);
        let s = [Segment {
            offset: 0,
            source: 0,
            recipe: Recipe::Conv(c),
        }];
        // 2 taps × 2 pairs × 4 lanes × 2 values × 2 bytes.
        assert_eq!(packed_bytes(&s), Some(64));
        let mut out = vec![0xffu8; 64];
        pack(&stored, &s, &mut out).unwrap();
        let got: Vec<f32> = out
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        #[rustfmt::skip]
        let want = [
            // tap 0, pair (0, 1): lanes 0..4 × (ci 0, ci 1); pair (2, pad).
            0., 10., 100., 110., 0., 0., 0., 0.,
            20., 0., 120., 0., 0., 0., 0., 0.,
            // tap 1.
            1., 11., 101., 111., 0., 0., 0., 0.,
            21., 0., 121., 0., 0., 0., 0., 0.,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_transform_applies_g_along_both_axes() {
        // G = [[1], [2]] along y, [[1, 1]] along x: out[i] = G_y[i] · (g00 + g01).
        let got = transform(&[1.0, 2.0], &[1.0, 1.0], [1, 2], &[3.0, 4.0]);
        assert_eq!(got, vec![7.0, 14.0]);
    }

    #[test]
    fn segments_that_do_not_fit_are_refused() {
        let s = [Segment {
            offset: 8,
            source: 2,
            recipe: Recipe::Copy { floats: 4 },
        }];
        let mut out = vec![0u8; 24];
        assert!(matches!(
            pack(&[0.0; 5], &s, &mut out),
            Err(PackError::OutOfBounds(0))
        ));
        assert!(pack(&[0.0; 6], &s, &mut out).is_ok());
        let mut short = vec![0u8; 23];
        assert!(pack(&[0.0; 6], &s, &mut short).is_err());
        let bad = [Segment {
            offset: 0,
            source: 0,
            recipe: Recipe::Conv(ConvPacking {
                out: 3,
                inputs: 1,
                padded_inputs: 1,
                kernel: [1, 1],
                transform: None,
                panels: vec![[0, 2, 2], [1, 2, 2]],
                precision: Precision::F32,
            }),
        }];
        assert!(matches!(
            pack(&[0.0; 3], &bad, &mut [0u8; 64]),
            Err(PackError::Panels(0))
        ));
        let huge = [Segment {
            offset: usize::MAX - 3,
            source: 0,
            recipe: Recipe::Copy { floats: 1 },
        }];
        assert!(packed_bytes(&huge).is_none());
        assert!(pack(&[0.0], &huge, &mut [0u8; 64]).is_err());
    }
}
