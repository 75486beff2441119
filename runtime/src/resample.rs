//! Resizing as Pillow's `Image.resize` does it on an RGB image, pixel for pixel: the filter
//! widened by the scale when shrinking (antialiasing), weights normalized in f64 and then rounded
//! to 22-bit fixed point, a horizontal pass into u8 rows (only the rows the vertical pass reads),
//! then a vertical pass, each sum rounded and clamped to 0..=255; Pillow 13 runs the vertical pass
//! first when the height loses more than twice as many pixels as the width. timm's eval transform resizes
//! through it (torchvision's `Resize` on a PIL image calls `Image.resize`), and so does
//! facenet-pytorch's face crop. Tested against Pillow's own output in `tests/preprocess.rs`.

use std::borrow::Cow;

use image::RgbImage;

/// The filters timm and facenet-pytorch configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Pillow's `BILINEAR`: the triangle, support 1.
    Bilinear,
    /// Pillow's `BICUBIC`: Keys' cubic with a = −0.5, support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear if x < 1.0 => 1.0 - x,
            Filter::Bicubic if x < 1.0 => (1.5 * x - 2.5) * x * x + 1.0,
            Filter::Bicubic if x < 2.0 => (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5,
            _ => 0.0,
        }
    }
}

/// Fractional bits of the fixed-point weights: 8 bits of pixel and 2 of headroom for the negative
/// lobes' overshoot leave 22 of an i32.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output position along one axis: the first input it reads and its fixed-point
/// weights, one per input read.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Taps {
    /// The taps of outputs `from .. from + count` of `output` along an axis of `input`.
    fn new(input: usize, output: usize, filter: Filter, from: usize, count: usize) -> Taps {
        let scale = input as f64 / output as f64;
        let widen = scale.max(1.0);
        let support = filter.support() * widen;
        // Pillow multiplies by the reciprocal of the widening, not divides.
        let reciprocal = 1.0 / widen;
        let mut first = Vec::with_capacity(count);
        let mut weights = Vec::with_capacity(count);
        for o in from..from + count {
            let center = (o as f64 + 0.5) * scale;
            // Rounded as C's (int) cast does: toward zero, then clamped to the input.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let w: Vec<f64> = (lo..hi)
                .map(|x| filter.weight((x as f64 - center + 0.5) * reciprocal))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let scaled = v * (1 << PRECISION_BITS) as f64;
                    // Away from zero, then truncated: C's (int)(±0.5 + x).
                    (if v < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            first.push(lo);
            weights.push(fixed);
        }
        Taps { first, weights }
    }

    /// The rows (or columns) of the input that these outputs read: `first .. end`.
    fn span(&self) -> (usize, usize) {
        let last = self.first.len() - 1;
        (self.first[0], self.first[last] + self.weights[last].len())
    }
}

/// A fixed-point sum, rounded (its half added up front) and clamped to a u8.
fn clamp(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `img` resized to `width` × `height` with `filter`, as Pillow's `Image.resize` on an RGB image.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    resize_region(img, [width, height], filter, [0, 0], [width, height])
}

/// The `region` (width, height) at `origin` (x, y) of `img` resized to `size` (width, height):
/// the same pixels as cropping [`resize`]'s, computed without the rest, so that memory stays
/// bounded by the region whatever the resized size.
pub fn resize_region(
    img: &RgbImage,
    size: [u32; 2],
    filter: Filter,
    origin: [u32; 2],
    region: [u32; 2],
) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let [ow, oh] = size.map(|v| v as usize);
    let [x0, y0] = origin.map(|v| v as usize);
    let [cw, ch] = region.map(|v| v as usize);
    assert!(
        x0 + cw <= ow && y0 + ch <= oh,
        "the region lies inside the resized image"
    );
    let src = Plane {
        data: Cow::Borrowed(img.as_raw()),
        width: iw,
        top: 0,
        left: 0,
    };
    // Pillow 13 runs the vertical pass first when the height loses more than twice as many
    // pixels as the width; before it, always the horizontal one. A pass whose size stays is
    // skipped.
    let vertical_first = ih > oh && (ih - oh) as i64 > 2 * (iw as i64 - ow as i64);
    let across = (ow != iw).then(|| Taps::new(iw, ow, filter, x0, cw));
    let down = (oh != ih).then(|| Taps::new(ih, oh, filter, y0, ch));
    // What the first pass must produce: the second pass's inputs within the region.
    let rows = down.as_ref().map_or((y0, y0 + ch), Taps::span);
    let columns = across.as_ref().map_or((x0, x0 + cw), Taps::span);
    let out = match vertical_first {
        false => {
            let first = pass(&src, Axis::Horizontal, across.as_ref(), rows, (x0, x0 + cw));
            pass(
                &first,
                Axis::Vertical,
                down.as_ref(),
                (y0, y0 + ch),
                (x0, x0 + cw),
            )
        }
        true => {
            let first = pass(&src, Axis::Vertical, down.as_ref(), (y0, y0 + ch), columns);
            pass(
                &first,
                Axis::Horizontal,
                across.as_ref(),
                (y0, y0 + ch),
                (x0, x0 + cw),
            )
        }
    };
    RgbImage::from_raw(region[0], region[1], out.data.into_owned()).expect("the region's size")
}

/// A block of RGB pixels of a resize's input, intermediate or output: `width` pixels a row, its
/// first pixel at (`left`, `top`) of the full image it is part of.
struct Plane<'a> {
    data: Cow<'a, [u8]>,
    width: usize,
    top: usize,
    left: usize,
}

impl Plane<'_> {
    fn at(&self, x: usize, y: usize, c: usize) -> u8 {
        self.data[3 * ((y - self.top) * self.width + x - self.left) + c]
    }
}

/// One pass along `axis` over `src`, producing the outputs `rows` × `columns` (`taps` `None`:
/// this axis keeps its size, the pixels are copied).
fn pass(
    src: &Plane,
    axis: Axis,
    taps: Option<&Taps>,
    rows: (usize, usize),
    columns: (usize, usize),
) -> Plane<'static> {
    let width = columns.1 - columns.0;
    let mut data = Vec::with_capacity(3 * width * (rows.1 - rows.0));
    for y in rows.0..rows.1 {
        for x in columns.0..columns.1 {
            for c in 0..3 {
                data.push(match taps {
                    None => src.at(x, y, c),
                    Some(t) => {
                        // The output's index along the axis, within the taps' outputs.
                        let o = match axis {
                            Axis::Horizontal => x - columns.0,
                            Axis::Vertical => y - rows.0,
                        };
                        let mut sum = 1i32 << (PRECISION_BITS - 1);
                        for (i, w) in t.weights[o].iter().enumerate() {
                            let v = match axis {
                                Axis::Horizontal => src.at(t.first[o] + i, y, c),
                                Axis::Vertical => src.at(x, t.first[o] + i, c),
                            };
                            sum += v as i32 * w;
                        }
                        clamp(sum)
                    }
                });
            }
        }
    }
    Plane {
        data: Cow::Owned(data),
        width,
        top: rows.0,
        left: columns.0,
    }
}

#[derive(Clone, Copy)]
enum Axis {
    Horizontal,
    Vertical,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_widen_when_shrinking() {
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for (input, output) in [(300, 333), (640, 341), (7, 3), (3, 7)] {
                let taps = Taps::new(input, output, filter, 0, output);
                for w in &taps.weights {
                    let sum: i32 = w.iter().sum();
                    assert!(
                        (sum - (1 << PRECISION_BITS)).abs() <= w.len() as i32,
                        "{sum}"
                    );
                }
                let widest = taps.weights.iter().map(Vec::len).max().unwrap();
                let support = filter.support() * (input as f64 / output as f64).max(1.0);
                assert!(widest <= 2 * support.ceil() as usize + 1);
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_the_same_size_is_a_copy() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([12, 200, 255]));
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            let out = resize(&img, 51, 11, filter);
            assert!(out.pixels().all(|p| p.0 == [12, 200, 255]));
        }
        assert_eq!(resize(&img, 37, 23, Filter::Bicubic), img);
    }

    #[test]
    fn a_region_is_the_crop_of_the_whole_resize() {
        let img = RgbImage::from_fn(23, 17, |x, y| {
            image::Rgb([(x * 11) as u8, (y * 13) as u8, (x * y) as u8])
        });
        for (size, origin, region) in [
            ([40, 30], [3, 5], [20, 21]),
            ([11, 30], [0, 2], [11, 9]),
            ([23, 9], [4, 0], [7, 9]),
            ([40, 17], [9, 3], [30, 14]),
        ] {
            let whole = resize(&img, size[0], size[1], Filter::Bicubic);
            let want =
                image::imageops::crop_imm(&whole, origin[0], origin[1], region[0], region[1])
                    .to_image();
            assert_eq!(
                resize_region(&img, size, Filter::Bicubic, origin, region),
                want,
                "{size:?}"
            );
        }
    }
}
