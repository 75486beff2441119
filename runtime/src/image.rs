//! Image input: decoding PNG and JPEG (any color type, converted to RGB as Pillow's
//! `convert("RGB")` does), and the model's preprocessing into an NCHW float tensor, as timm's eval
//! transform or facenet-pytorch's face crop computes it on a PIL image (resizing through
//! [`crate::resample`]).
//!
//! PNG and JPEG are decoded by the `image` crate (its PNG decoder and zune-jpeg). Conversions
//! follow Pillow: grey is replicated and alpha dropped (not composited); 16-bit channels keep their
//! high byte, except 16-bit grey, whose values Pillow clips to 255 (so a timm user's 16-bit grey
//! photo is mostly white; this matches it, and says so on stderr).

use std::path::Path;

use image::{DynamicImage, RgbImage};

use crate::desc::Preprocess;
use crate::resample::{self, Filter};

/// An image that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ImageError {
    /// The image's path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The largest width or height accepted: a header may declare any size, so the decoder is bounded
/// before it allocates.
pub const MAX_SIDE: u32 = 16384;
/// The most memory a decoder may allocate for one image.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// Decodes a PNG or JPEG file (at most [`MAX_SIDE`] pixels a side); grey, grey+alpha and RGBA images are converted to RGB (alpha is
/// dropped).
pub fn load(path: &Path) -> Result<RgbImage, ImageError> {
    let err = |message: String| ImageError {
        path: path.display().to_string(),
        message,
    };
    if path.is_dir() {
        return Err(err("it is a directory, not an image file".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read the file: {e}")))?;
    decode(path, &bytes)
}

/// Decodes the bytes of an image file read from `path` (named in errors) as [`load`] does.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let err = |message: String| ImageError {
        path: path.display().to_string(),
        message,
    };
    if bytes.is_empty() {
        return Err(err("the file is empty (0 bytes)".into()));
    }
    let format = match image::guess_format(bytes) {
        Ok(f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg)) => f,
        Ok(other) => return Err(err(format!("a {other:?} image; expected PNG or JPEG"))),
        Err(_) => return Err(err("not a PNG or JPEG image".into())),
    };
    if format == image::ImageFormat::Png {
        check_png_palette(bytes).map_err(err)?;
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => err(format!(
            "the image is too large to decode (at most {MAX_SIDE}×{MAX_SIDE} pixels and {} MiB)",
            MAX_DECODE_BYTES >> 20
        )),
        e => err(format!("cannot decode: {e}")),
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(err("the image is empty".into()));
    }
    Ok(to_rgb(img, path))
}

/// Rejects a palette PNG whose palette chunk (PLTE) is not a whole number of RGB entries, which
/// the PNG specification forbids and on which png 0.18's decoder panics as it expands the indices
/// (found by the `image` fuzz target). Walks the chunks up to the first IDAT; a file whose chunk
/// structure is broken is left for the decoder to reject.
fn check_png_palette(bytes: &[u8]) -> Result<(), String> {
    let mut at = 8; // the signature
    let mut indexed = false;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let Some(data) = bytes.get(at + 8..).and_then(|rest| rest.get(..len)) else {
            break;
        };
        match &header[4..] {
            b"IHDR" => indexed = data.get(9) == Some(&3),
            b"PLTE" if indexed && !len.is_multiple_of(3) => {
                return Err(format!(
                    "the PNG's palette chunk (PLTE) is {len} bytes, not a whole number of \
                     3-byte RGB entries"
                ))
            }
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        at += 12 + len;
    }
    Ok(())
}

/// `img` as Pillow's `Image.open(path).convert("RGB")` gives it.
fn to_rgb(img: DynamicImage, path: &Path) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let rgb = |values: Vec<u8>, channels: usize, f: &dyn Fn(&[u8]) -> [u8; 3]| {
        let data = values.chunks_exact(channels).flat_map(f).collect();
        RgbImage::from_raw(w, h, data).expect("the decoded size")
    };
    match img {
        DynamicImage::ImageLuma16(g) => {
            eprintln!(
                "{}: 16-bit grey; values above 255 become 255, as in Pillow's convert(\"RGB\") \
                 that timm's loader applies (scale it to 8 bits first for a usable image)",
                path.display()
            );
            let clipped = g.into_raw().iter().map(|v| (*v).min(255) as u8).collect();
            rgb(clipped, 1, &|p| [p[0]; 3])
        }
        DynamicImage::ImageLumaA16(g) => {
            let high = g.into_raw().iter().map(|v| (v >> 8) as u8).collect();
            rgb(high, 2, &|p| [p[0]; 3])
        }
        DynamicImage::ImageRgb16(c) => {
            let high = c.into_raw().iter().map(|v| (v >> 8) as u8).collect();
            rgb(high, 3, &|p| [p[0], p[1], p[2]])
        }
        DynamicImage::ImageRgba16(c) => {
            let high = c.into_raw().iter().map(|v| (v >> 8) as u8).collect();
            rgb(high, 4, &|p| [p[0], p[1], p[2]])
        }
        other => other.to_rgb8(),
    }
}

/// The network input for one image, CHW f32 of `[3, size[0], size[1]]`: [`crop`], then scaled as
/// the preprocessing says.
pub fn preprocess(img: &RgbImage, how: Preprocess, size: [usize; 2]) -> Vec<f32> {
    let pixels = crop(img, how, size);
    match how {
        // torchvision's ToTensor and Normalize, in f32.
        Preprocess::Timm { mean, std, .. } => {
            to_chw(&pixels, |c, v| (v as f32 / 255.0 - mean[c]) / std[c])
        }
        // facenet-pytorch's fixed_image_standardization.
        Preprocess::Facenet => to_chw(&pixels, |_, v| (v as f32 - 127.5) / 128.0),
    }
}

/// The 8-bit pixels the network sees, `size[1]` wide and `size[0]` high.
///
/// timm (`transforms_imagenet_eval` on a square size S, crop_mode "center"): torchvision's
/// `Resize(⌊S / crop_pct⌋)` sets the shorter side to that and the longer to
/// `int(short' · long / short)`, through `Image.resize` with the interpolation; `CenterCrop(S)`
/// takes the crop at `round((side − S) / 2)` (Python's round, half to even), padding with black
/// first should the image be smaller. facenet-pytorch's MTCNN crops a face box and resizes it
/// to the input size with `Image.resize(…, BILINEAR)`; here the whole image is the box.
pub fn crop(img: &RgbImage, how: Preprocess, size: [usize; 2]) -> RgbImage {
    let (h, w) = (size[0] as u32, size[1] as u32);
    match how {
        Preprocess::Timm {
            crop_pct,
            interpolation,
            ..
        } => {
            // The compiler builds square inputs; timm's shorter-side resize is for those.
            // At least a pixel (the description bounds crop_pct, see `desc`).
            let scale = ((h.max(w) as f64 / crop_pct as f64).floor() as u64).max(1);
            let (iw, ih) = (img.width() as u64, img.height() as u64);
            let (short, long) = (iw.min(ih), iw.max(ih));
            // Python's int(scale * long / short): a correctly rounded quotient, truncated.
            let stretched = ((scale * long) as f64 / short as f64) as u64;
            let (rw, rh) = match iw <= ih {
                true => (scale, stretched),
                false => (stretched, scale),
            };
            center_crop(img, [rw as u32, rh as u32], interpolation, w, h)
        }
        Preprocess::Facenet => resample::resize(img, w, h, Filter::Bilinear),
    }
}

/// torchvision's `CenterCrop(w × h)` of `img` resized to `size`, computing only the pixels it
/// keeps: a photo of extreme aspect would otherwise be resized to millions of pixels along its
/// long side.
fn center_crop(img: &RgbImage, size: [u32; 2], filter: Filter, w: u32, h: u32) -> RgbImage {
    let [rw, rh] = size;
    // Smaller than the crop: padded with black, the odd pixel after.
    let (pw, ph) = (rw.max(w), rh.max(h));
    let (left, top) = ((pw - rw) / 2, (ph - rh) / 2);
    // round(d / 2) in Python: half to even.
    let half = |d: u32| match d % 2 == 1 && (d / 2) % 2 == 1 {
        true => d / 2 + 1,
        false => d / 2,
    };
    let (x, y) = (half(pw - w), half(ph - h));
    // The crop's part of the resized image (all of it along a padded axis, where x or y is 0).
    let (x0, y0) = (x.saturating_sub(left), y.saturating_sub(top));
    let (x1, y1) = ((x + w - left).min(rw), (y + h - top).min(rh));
    let kept = resample::resize_region(img, size, filter, [x0, y0], [x1 - x0, y1 - y0]);
    let mut out = RgbImage::new(w, h);
    let at = |origin: u32, pad: u32, crop: u32| (origin + pad - crop) as i64;
    image::imageops::replace(&mut out, &kept, at(x0, left, x), at(y0, top, y));
    out
}

fn to_chw(img: &RgbImage, f: impl Fn(usize, u8) -> f32) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0.0; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            out[(c * h + y as usize) * w + x as usize] = f(c, p.0[c]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timm_crops_the_center_and_normalizes() {
        // A 40×20 image, left half black, right half white; 16×16 input at crop_pct 0.8: the
        // shorter side becomes 20, the crop keeps the middle 16 columns.
        let img = RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let how = Preprocess::Timm {
            crop_pct: 0.8,
            interpolation: Filter::Bicubic,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let x = preprocess(&img, how, [16, 16]);
        assert_eq!(x.len(), 3 * 16 * 16);
        assert!((x[0] + 1.0).abs() < 1e-6, "left edge is black → −1");
        assert!((x[15] - 1.0).abs() < 1e-6, "right edge is white → 1");
        let facenet = preprocess(&img, Preprocess::Facenet, [8, 8]);
        assert!((facenet[0] + 127.5 / 128.0).abs() < 1e-6);
    }

    /// A 2×2 palette PNG with `palette` as its PLTE chunk (red first) and a tRNS chunk of `alpha`.
    fn palette_png(palette: &[u8], alpha: &[u8]) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= b as u32;
                for _ in 0..8 {
                    crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
                }
            }
            !crc
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            png.extend((data.len() as u32).to_be_bytes());
            let body = [kind, data].concat();
            png.extend(&body);
            png.extend(crc32(&body).to_be_bytes());
        };
        chunk(b"IHDR", &[0, 0, 0, 2, 0, 0, 0, 2, 8, 3, 0, 0, 0]);
        chunk(b"PLTE", palette);
        chunk(b"tRNS", alpha);
        // Two rows of filter 0 and two index-0 pixels, as a stored (uncompressed) zlib stream.
        let rows = [0u8, 0, 0, 0, 0, 0];
        let mut idat = vec![0x78, 0x01, 1, 6, 0, !6, 0xFF];
        idat.extend(rows);
        let (mut a, mut b) = (1u32, 0u32);
        for r in rows {
            a = (a + r as u32) % 65521;
            b = (b + a) % 65521;
        }
        idat.extend(((b << 16) | a).to_be_bytes());
        chunk(b"IDAT", &idat);
        chunk(b"IEND", &[]);
        png
    }

    #[test]
    fn a_palette_of_partial_entries_is_an_error_not_a_panic() {
        let path = Path::new("palette.png");
        let img = decode(path, &palette_png(&[255, 0, 0], &[128])).expect("a valid palette PNG");
        assert_eq!(img.get_pixel(1, 1).0, [255, 0, 0]);
        // More alpha values than entries: png ignores the tRNS chunk; the image decodes.
        decode(path, &palette_png(&[255, 0, 0], &[128, 64])).expect("an overlong tRNS");
        let e = decode(path, &palette_png(&[255, 0, 0, 7], &[128]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("palette.png") && e.contains("PLTE") && e.contains("4 bytes"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod conversions {
    use super::*;
    use image::{ImageBuffer, ImageFormat, Luma, Rgb};

    fn png<P: image::PixelWithColorType>(img: &ImageBuffer<P, Vec<P::Subpixel>>) -> Vec<u8>
    where
        [P::Subpixel]: image::EncodableLayout,
    {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, ImageFormat::Png).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn sixteen_bit_images_convert_as_pillow_does() {
        // Values measured with Pillow 13: 16-bit grey is clipped to 255, 16-bit RGB keeps the
        // high byte.
        let values = [
            0u16, 127, 128, 255, 256, 383, 32767, 32768, 65279, 65280, 65535,
        ];
        let grey = ImageBuffer::from_fn(values.len() as u32, 1, |x, _| Luma([values[x as usize]]));
        let got = decode(Path::new("g16.png"), &png(&grey)).unwrap();
        let want = [0u8, 127, 128, 255, 255, 255, 255, 255, 255, 255, 255];
        assert_eq!(got.pixels().map(|p| p.0[0]).collect::<Vec<_>>(), want);
        let rgb = ImageBuffer::from_fn(values.len() as u32, 1, |x, _| {
            let v = values[x as usize];
            Rgb([v, 65535 - v, v])
        });
        let got = decode(Path::new("rgb16.png"), &png(&rgb)).unwrap();
        let want = [0u8, 0, 0, 0, 1, 1, 127, 128, 254, 255, 255];
        assert_eq!(got.pixels().map(|p| p.0[0]).collect::<Vec<_>>(), want);
        assert_eq!(got.get_pixel(0, 0).0, [0, 255, 0]);
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in bytes {
            crc ^= *b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A PNG whose header declares `width`×`height` RGB pixels and whose data is one empty chunk.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        png.extend_from_slice(&0u32.to_be_bytes());
        png.extend_from_slice(b"IEND");
        png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
        png
    }

    #[test]
    fn an_extreme_aspect_is_cropped_without_resizing_all_of_it() {
        // timm would stretch the long side to 341 · 16000 pixels; only the crop is computed.
        let img = RgbImage::from_fn(1, 16000, |_, y| image::Rgb([(y % 256) as u8, 0, 255]));
        let how = Preprocess::Timm {
            crop_pct: 0.875,
            interpolation: Filter::Bicubic,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let start = std::time::Instant::now();
        let x = preprocess(&img, how, [299, 299]);
        assert_eq!(x.len(), 3 * 299 * 299);
        assert!(start.elapsed().as_secs() < 5);
    }

    #[test]
    fn a_header_declaring_huge_dimensions_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.png");
        std::fs::write(&path, png_header(1_000_000, 1_000_000)).unwrap();
        let start = std::time::Instant::now();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("huge.png") && e.contains("too large"), "{e}");
        assert!(start.elapsed().as_secs() < 5);
        // Within the side limit but over the allocation bound.
        std::fs::write(&path, png_header(16000, 16000)).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("too large") || e.contains("cannot decode"),
            "{e}"
        );
    }
}
