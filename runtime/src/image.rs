//! Image input: decoding PNG and JPEG (any color type, converted to RGB), and the model's
//! preprocessing into an NCHW float tensor.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::RgbImage;

use crate::desc::Preprocess;

/// An image that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ImageError {
    pub path: String,
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
    Ok(img.to_rgb8())
}

/// The network input for one image, CHW f32 of `[3, size[0], size[1]]`.
pub fn preprocess(img: &RgbImage, how: Preprocess, size: [usize; 2]) -> Vec<f32> {
    let (h, w) = (size[0] as u32, size[1] as u32);
    match how {
        Preprocess::Timm {
            crop_pct,
            mean,
            std,
        } => {
            // timm: the shorter side to ⌊size / crop_pct⌋, then a center crop.
            let scale = (h.max(w) as f32 / crop_pct).floor() as u32;
            let (iw, ih) = (img.width(), img.height());
            let (rw, rh) = if iw <= ih {
                (scale, ((ih as u64 * scale as u64) / iw as u64) as u32)
            } else {
                (((iw as u64 * scale as u64) / ih as u64) as u32, scale)
            };
            let resized = imageops::resize(img, rw.max(w), rh.max(h), FilterType::CatmullRom);
            let top = ((resized.height() - h) as f32 / 2.0).round() as u32;
            let left = ((resized.width() - w) as f32 / 2.0).round() as u32;
            let crop = imageops::crop_imm(&resized, left, top, w, h).to_image();
            to_chw(&crop, |c, v| (v as f32 / 255.0 - mean[c]) / std[c])
        }
        Preprocess::Facenet => {
            let resized = imageops::resize(img, w, h, FilterType::CatmullRom);
            to_chw(&resized, |_, v| (v as f32 - 127.5) / 128.0)
        }
    }
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
