"""Writes tests/data/preprocess_reference.txt: the 8-bit pixels timm's own eval transform (and
facenet-pytorch's face-crop resize) gives for small synthetic RGB images, for
tests/preprocess.rs to compare inceptc's preprocessing with, pixel for pixel.

The images are a formula (the test computes the same one), textured so that every resize rounds
and clamps. Sizes cover upscaling and downscaling, portrait and landscape, odd crop margins
(Python's round half to even), both interpolations, both crop fractions of the networks and
crop fractions above 1 (padding).

Real photos too: small copies of scikit-image's CC0 samples (landscape, portrait, grey, RGBA),
written to tests/data/photos/, each with timm's crop at two sizes, read back through inceptc's own
decoder in the test.

Run once with timm, torch and scikit-image installed (benches/peers.sh's .venv has the first two;
`.venv/bin/pip install scikit-image`):
    .venv/bin/python scripts/preprocess_reference.py
"""

import os
import pathlib

import numpy as np
import skimage
import timm
import torch
from PIL import Image
from timm.data import create_transform

# (kind, width, height, size, crop_pct, interpolation)
CASES = [
    ("timm", 45, 30, 32, 0.875, "bicubic"),
    ("timm", 30, 45, 32, 0.8975, "bicubic"),
    ("timm", 200, 150, 32, 0.875, "bicubic"),
    ("timm", 150, 211, 27, 0.8975, "bilinear"),
    ("timm", 64, 64, 32, 0.875, "bilinear"),
    ("timm", 91, 37, 29, 0.875, "bicubic"),
    ("timm", 37, 36, 31, 0.8975, "bicubic"),
    ("timm", 1000, 23, 21, 0.875, "bicubic"),
    # Margins of 9 and 1: round(4.5) = 4 and round(0.5) = 0 in Python.
    ("timm", 40, 46, 32, 0.875, "bicubic"),
    ("timm", 20, 13, 7, 0.875, "bilinear"),
    # crop_pct above 1: resized smaller than the crop, padded with black (one axis or both).
    ("timm", 45, 30, 32, 1.25, "bicubic"),
    ("timm", 30, 61, 31, 1.1, "bilinear"),
    ("facenet", 50, 70, 16, 1.0, "bilinear"),
    ("facenet", 13, 9, 16, 1.0, "bilinear"),
]

# Image.resize alone, (width, height) -> (width, height): shrinking, growing, one axis each way,
# single rows and columns, and both pass orders (Pillow 13 runs the vertical pass first when the
# height loses more than twice as many pixels as the width).
RESIZES = [
    (30, 61, 28, 56, "bilinear"),
    (61, 30, 56, 28, "bicubic"),
    (40, 90, 37, 20, "bicubic"),
    (90, 40, 20, 37, "bicubic"),
    (17, 13, 40, 3, "bilinear"),
    (1, 50, 9, 7, "bicubic"),
    (50, 1, 7, 9, "bilinear"),
    (23, 29, 23, 11, "bicubic"),
    (23, 29, 7, 29, "bicubic"),
    (64, 64, 21, 19, "bilinear"),
    (9, 9, 31, 30, "bicubic"),
    (33, 100, 30, 30, "bicubic"),
]


def synthetic(width, height):
    """Pixel (x, y, c) = (7x² + 3y² + 5xy + 85c + (13x xor 29y)) mod 256."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    channels = [(7 * x * x + 3 * y * y + 5 * x * y + 85 * c + ((13 * x) ^ (29 * y))) % 256 for c in range(3)]
    return Image.fromarray(np.stack(channels, -1).astype(np.uint8), "RGB")


def timm_pixels(img, size, crop_pct, interpolation):
    transform = create_transform(
        input_size=(3, size, size),
        interpolation=interpolation,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        crop_pct=crop_pct,
    )
    x = transform(img)
    # ToTensor divided k by 255 in f32: times 255, rounded, gives k back.
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def photos():
    """Small copies of scikit-image's sample photos, in the image modes a user's files come in."""
    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    load = lambda f: Image.open(os.path.join(data, f))  # noqa: E731
    return [
        ("chelsea", load("chelsea.png").resize((226, 150), Image.LANCZOS)),
        ("coffee-portrait", load("coffee.png").crop((150, 0, 420, 400)).resize((135, 200), Image.LANCZOS)),
        ("camera-grey", load("camera.png").resize((128, 128), Image.LANCZOS)),
        ("astronaut-rgba", load("astronaut.png").resize((120, 120), Image.LANCZOS).convert("RGBA")),
        ("motorcycle", load("motorcycle_left.png").resize((185, 125), Image.LANCZOS)),
    ]


def main():
    data = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
    out = data / "preprocess_reference.txt"
    (data / "photos").mkdir(parents=True, exist_ok=True)
    lines = [f"# made by scripts/preprocess_reference.py with timm {timm.__version__}, "
             f"torch {torch.__version__}, Pillow {Image.__version__}"]
    for kind, w, h, size, crop_pct, interpolation in CASES:
        img = synthetic(w, h)
        if kind == "timm":
            pixels = timm_pixels(img, size, crop_pct, interpolation)
        else:
            # facenet-pytorch's crop_resize on a PIL image, the box being the whole image.
            pixels = np.asarray(img.resize((size, size), Image.BILINEAR))
        assert pixels.shape == (size, size, 3), pixels.shape
        lines.append(f"{kind} {w} {h} {size} {crop_pct} {interpolation}")
        lines.append(pixels.tobytes().hex())
    for w, h, ow, oh, interpolation in RESIZES:
        filt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
        pixels = np.asarray(synthetic(w, h).resize((ow, oh), filt))
        # The size and crop_pct fields carry the resized width and height.
        lines.append(f"resize {w} {h} {ow} {oh} {interpolation}")
        lines.append(pixels.tobytes().hex())
    for name, img in photos():
        path = data / "photos" / f"{name}.png"
        img.save(path, optimize=True)
        for size, crop_pct in [(64, 0.875), (57, 0.8975)]:
            # Read back as a user's file is: decoded by Pillow, converted to RGB.
            pixels = timm_pixels(Image.open(path).convert("RGB"), size, crop_pct, "bicubic")
            lines.append(f"photo {name}.png {size} {crop_pct} bicubic")
            lines.append(pixels.tobytes().hex())
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
