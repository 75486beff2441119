"""inceptc's image preprocessing against timm's on real photos, as PNG and as JPEG.

For each photo (scikit-image's CC0 samples, plus portrait, small, grey and RGBA variants made from
them) it runs the inceptc executables of Inception-v4 and Inception-ResNet-v2 (seeded timm
weights) with `--save-input` and `--output`, and compares:
- the preprocessed tensor with timm's `create_transform(**resolve_data_config({}, model=m))`
  applied to `Image.open(path).convert("RGB")`, in u8 steps (max difference, share of exact values);
- the model output with timm's model on timm's tensor (max |diff| / max |ref|).

Not part of CI. Needs torch, timm, safetensors and scikit-image (benches/peers.sh sets up .venv/;
then `.venv/bin/pip install scikit-image`):
    .venv/bin/python benches/preprocess.py --inceptc target/release/inceptc [--work DIR]
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import skimage
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from compare_pytorch import randomize  # noqa: E402

MODELS = {"inception_v4": "inception-v4", "inception_resnet_v2": "inception-resnet-v2"}


def photos(work):
    """(name, PIL image) pairs: the samples as they are, and variants."""
    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    load = lambda f: Image.open(os.path.join(data, f))  # noqa: E731
    coffee, chelsea, astronaut = load("coffee.png"), load("chelsea.png"), load("astronaut.png")
    # Three photos one above the other, 512×1193: tall enough that Pillow 13 resizes it
    # vertically first.
    tall = Image.new("RGB", (512, 512 + 341 + 340))
    tall.paste(astronaut, (0, 0))
    tall.paste(coffee.resize((512, 341), Image.LANCZOS), (0, 512))
    tall.paste(chelsea.resize((512, 340), Image.LANCZOS), (0, 853))
    return [
        ("stacked-tall", tall),
        ("astronaut", astronaut),                                          # 512×512 RGB
        ("chelsea", chelsea),                                              # 451×300: upscaled
        ("coffee", coffee),                                                # 600×400
        ("motorcycle", load("motorcycle_left.png")),                       # landscape
        ("camera-grey", load("camera.png")),                               # 512×512 grey
        ("coffee-portrait", coffee.crop((150, 0, 420, 400))),              # 270×400
        ("chelsea-small", chelsea.resize((180, 120), Image.LANCZOS)),      # below the crop
        ("astronaut-rgba", astronaut.convert("RGBA")),                     # alpha 255
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--inceptc", required=True)
    p.add_argument("--work", default=None)
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="inceptc-preprocess-")
    os.makedirs(work, exist_ok=True)
    files = []
    for name, img in photos(work):
        png = os.path.join(work, f"{name}.png")
        img.save(png)
        files.append((name, "png", png))
        jpg = os.path.join(work, f"{name}.jpg")
        img.convert("RGB" if img.mode == "RGBA" else img.mode).save(jpg, quality=90)
        files.append((name, "jpeg", jpg))
    print(f"timm {timm.__version__}, torch {torch.__version__}, Pillow {Image.__version__}")
    print("| model | photo | format | size | max u8 step | exact | output rel diff |")
    print("|---|---|---|---|---|---|---|")
    for label, model_name in MODELS.items():
        gen = torch.Generator().manual_seed(2016)
        model = timm.create_model(label, pretrained=False)
        randomize(model, 299, gen)
        model.eval()
        weights = os.path.join(work, f"{label}.safetensors")
        if not os.path.exists(weights):
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
        exe = os.path.join(work, label)
        if not os.path.exists(exe):
            subprocess.run([a.inceptc, "-q", "compile", "--model", model_name, "--weights", weights,
                            "-o", exe], check=True)
        transform = create_transform(**resolve_data_config({}, model=model))
        std = 0.5  # both networks: mean and std 0.5, so one u8 step is 1 / (255 · 0.5)
        for name, fmt, path in files:
            x_path, y_path = path + f".{label}.x.npy", path + f".{label}.y.npy"
            subprocess.run([exe, path, "--save-input", x_path, "--output", y_path], check=True,
                           stdout=subprocess.DEVNULL)
            ours_x, ours_y = np.load(x_path)[0], np.load(y_path)[0]
            ref_x = transform(Image.open(path).convert("RGB"))
            with torch.no_grad():
                ref_y = model(ref_x[None]).numpy()[0]
            steps = np.abs(ours_x - ref_x.numpy()) * 255 * std
            rel = np.abs(ours_y - ref_y).max() / np.abs(ref_y).max()
            w, h = Image.open(path).size
            print(f"| {label} | {name} | {fmt} | {w}×{h} | {steps.max():.2f} | "
                  f"{100 * (steps < 0.5).mean():.2f} % | {rel:.1e} |")


if __name__ == "__main__":
    main()
