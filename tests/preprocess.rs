//! Images preprocessed as timm preprocesses them: inceptc's 8-bit crops against the pixels timm's
//! own eval transform (Pillow's resize, torchvision's crop) produced for the same images, recorded
//! by `scripts/preprocess_reference.py` in `tests/data/preprocess_reference.txt`: synthetic images
//! of every shape class, plain `Image.resize` calls, and small real photos (`tests/data/photos/`,
//! scikit-image's CC0 samples: landscape, portrait, grey, RGBA) read through inceptc's decoder.

use image::RgbImage;
use inceptc_runtime::desc::Preprocess;
use inceptc_runtime::image::crop;
use inceptc_runtime::resample::Filter;

/// The script's formula: (7x² + 3y² + 5xy + 85c + (13x xor 29y)) mod 256.
fn synthetic(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (x, y) = (x as u64, y as u64);
        image::Rgb(std::array::from_fn(|c| {
            ((7 * x * x + 3 * y * y + 5 * x * y + 85 * c as u64 + ((13 * x) ^ (29 * y))) % 256)
                as u8
        }))
    })
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn crops_and_resizes_equal_timm_and_pillow_pixel_for_pixel() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/preprocess_reference.txt"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let (mut cases, mut photos) = (0, 0);
    while let Some(header) = lines.next() {
        let want = hex(lines.next().expect("the pixels after each header"));
        let f: Vec<&str> = header.split(' ').collect();
        let kind = f[0];
        if kind == "photo" {
            // photo FILE SIZE CROP_PCT INTERPOLATION: a real photo, through inceptc's decoder.
            let [_, file, size, crop_pct, interpolation] = f[..] else {
                panic!("bad header {header}");
            };
            let path = format!("{}/tests/data/photos/{file}", env!("CARGO_MANIFEST_DIR"));
            let img = inceptc_runtime::image::load(std::path::Path::new(&path)).unwrap();
            let size: usize = size.parse().unwrap();
            let how = Preprocess::Timm {
                crop_pct: crop_pct.parse().unwrap(),
                interpolation: filter(interpolation),
                mean: [0.5; 3],
                std: [0.5; 3],
            };
            compare(header, &crop(&img, how, [size, size]).into_raw(), &want);
            photos += 1;
            continue;
        }
        let [_, w, h, size, crop_pct, interpolation] = f[..] else {
            panic!("bad header {header}");
        };
        let (w, h, size): (u32, u32, usize) = (
            w.parse().unwrap(),
            h.parse().unwrap(),
            size.parse().unwrap(),
        );
        let interpolation = filter(interpolation);
        if kind == "resize" {
            // Pillow's Image.resize alone: w h → width height (in the size and crop_pct fields).
            let (ow, oh): (u32, u32) = (size as u32, crop_pct.parse().unwrap());
            let got = inceptc_runtime::resample::resize(&synthetic(w, h), ow, oh, interpolation);
            compare(header, &got.into_raw(), &want);
            cases += 1;
            continue;
        }
        let how = match kind {
            "timm" => Preprocess::Timm {
                crop_pct: crop_pct.parse().unwrap(),
                interpolation,
                mean: [0.5; 3],
                std: [0.5; 3],
            },
            "facenet" => Preprocess::Facenet,
            other => panic!("kind {other}"),
        };
        let got = crop(&synthetic(w, h), how, [size, size]).into_raw();
        compare(header, &got, &want);
        cases += 1;
    }
    assert_eq!(cases, 26, "every synthetic case of the script");
    assert_eq!(photos, 10, "every photo case of the script");
}

fn compare(case: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{case}");
    let differ: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    assert!(
        differ.is_empty(),
        "{case}: {} of {} values differ from the reference, the first at {}: {} against {}",
        differ.len(),
        got.len(),
        differ[0],
        got[differ[0]],
        want[differ[0]]
    );
}

fn filter(name: &str) -> Filter {
    match name {
        "bicubic" => Filter::Bicubic,
        "bilinear" => Filter::Bilinear,
        other => panic!("interpolation {other}"),
    }
}
