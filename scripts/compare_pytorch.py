"""Checks `inceptc interpret` and compiled executables against PyTorch on the same random-weight checkpoint and input.

For each public layout it builds the PyTorch model with He-normal convolutions, then sets every
BatchNorm's running statistics to the statistics of a random batch, perturbed (so that activations
stay in a sane range but no statistic is trivial), randomizes the affine BatchNorm parameters, and
saves the state_dict as f32 and bf16 safetensors. PyTorch's output on the bf16 checkpoint is
computed with the bf16-rounded weights in f32, which is what inceptc does with it.

Prints one row per (model, dtype, batch, backend): max |ours - torch| / max |torch|, and fails
above 1e-4; the backend exe-bf16 (an executable compiled with --precision bf16) fails above
1e-2, or where a classifier's top class differs from PyTorch's on any image. Beside exe-bf16 it
prints the error of the bf16 modes of the peers on the same checkpoint and input: PyTorch's own
(torch.autocast on the CPU) and, where openvino is installed (benches/peers.sh installs it),
OpenVINO's INFERENCE_PRECISION_HINT=bf16, so that a bf16 error can be read against what a user
gets elsewhere.
Run it through scripts/compare-pytorch.sh, which sets up the virtual environment.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from safetensors.torch import save_file

TOLERANCE = 1e-4
BF16_TOLERANCE = 1e-2


def timm_model(name):
    import timm
    return lambda: timm.create_model(name, pretrained=False)


def facenet_model(classify):
    def make():
        from facenet_pytorch import InceptionResnetV1
        if classify:
            return InceptionResnetV1(classify=True, num_classes=100)
        return InceptionResnetV1()
    return make


# (label, inceptc --model, extra inceptc flags, constructor, input size)
CASES = [
    ("inception_v4", "inception-v4", [], timm_model("inception_v4"), 299),
    ("inception_resnet_v2", "inception-resnet-v2", [], timm_model("inception_resnet_v2"), 299),
    ("facenet_embedding", "inception-resnet-v1", [], facenet_model(False), 160),
    ("facenet_classify", "inception-resnet-v1", ["--classify"], facenet_model(True), 160),
]


def randomize(model, size, generator):
    """He-normal convolutions and linears; BatchNorm statistics from a random batch, perturbed."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=generator)
            if m.bias is not None:
                torch.nn.init.uniform_(m.bias, -0.1, 0.1, generator=generator)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: running stats = batch stats after one pass
    model.train()
    torch.manual_seed(2016)  # facenet's dropout draws from the global generator in train mode
    with torch.no_grad():
        model(torch.rand(4, 3, size, size, generator=generator) * 2 - 1)
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean += 0.1 * torch.randn(c, generator=generator) * m.running_var.sqrt()
                m.running_var *= 0.75 + 0.5 * torch.rand(c, generator=generator)
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.2 * torch.randn(c, generator=generator))


def run_inceptc(inceptc, backend, model, flags, weights, x, work, target_cpu=None):
    """Runs `inceptc interpret`, or compiles an executable for this batch and size and runs it.
    Returns the output and the seconds the run took (compiling excluded)."""
    xin = os.path.join(work, "x.npy")
    yout = os.path.join(work, "y.npy")
    np.save(xin, x)
    if backend == "interpret":
        start = time.time()
        subprocess.run(
            [inceptc, "interpret", "--model", model, *flags, "--weights", weights, "--input", xin, "--output", yout],
            check=True,
        )
        return np.load(yout), time.time() - start
    exe = os.path.join(work, f"{model}-b{x.shape[0]}-{backend}")
    precision = ["--precision", "bf16"] if backend == "exe-bf16" else []
    if target_cpu:
        precision += ["--target-cpu", target_cpu]
    subprocess.run(
        [inceptc, "-q", "compile", "--model", model, *flags, *precision, "--weights", weights,
         "--batch", str(x.shape[0]), "--image-size", str(x.shape[2]), "-o", exe],
        check=True,
    )
    start = time.time()
    subprocess.run([exe, "--input", xin, "--output", yout], check=True)
    return np.load(yout), time.time() - start


def peer_bf16(model, x, ref, work, classifier):
    """The error of torch.autocast bf16 and, where openvino and onnx are installed, of OpenVINO
    bf16, as "torch / OpenVINO", each max |peer - torch f32| / max |torch f32|, marked "top class
    differs" where a classifier's top class differs from PyTorch f32's on some image."""
    scale = np.abs(ref).max()

    def error(y):
        text = f"{np.abs(y - ref).max() / scale:.2e}"
        if classifier and not (y.argmax(axis=1) == ref.argmax(axis=1)).all():
            text += " (top class differs)"
        return text

    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model(x).float().numpy()
    try:
        import openvino as ov
        import onnx  # noqa: F401 (torch.onnx.export needs it)
    except ImportError:
        return f"{error(autocast)} / not installed"
    path = os.path.join(work, "peer.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"], dynamo=False)
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    return f"{error(autocast)} / {error(compiled(x.numpy())[0])}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inceptc", required=True)
    parser.add_argument("--work", help="keep checkpoints and tensors here (default: a temporary directory)")
    parser.add_argument("--models", help="comma-separated labels, default all: " + ",".join(c[0] for c in CASES))
    parser.add_argument("--target-cpu", help="passed to `inceptc compile` (default: its own, native)")
    parser.add_argument("--backends", default="interpret,exe",
                        help="comma-separated: interpret (the reference interpreter), exe (a compiled "
                             "executable), exe-bf16 (one compiled with --precision bf16)")
    args = parser.parse_args()
    wanted = set(args.models.split(",")) if args.models else None
    work = args.work or tempfile.mkdtemp(prefix="inceptc-compare-")
    os.makedirs(work, exist_ok=True)
    torch.set_grad_enabled(False)
    rows, failed = [], False
    for label, model_name, flags, make, size in CASES:
        if wanted and label not in wanted:
            continue
        generator = torch.Generator().manual_seed(2016)
        model = make()
        randomize(model, size, generator)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        x2 = (torch.rand(2, 3, size, size, generator=generator) * 2 - 1).float()
        for dtype in ("f32", "bf16"):
            if dtype == "bf16":
                state_d = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in state.items()}
                model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_d.items()})
            else:
                state_d = state
                model.load_state_dict(state)
            weights = os.path.join(work, f"{label}.{dtype}.safetensors")
            save_file(state_d, weights)
            for batch in (1, 2):
                x = x2[:batch].contiguous()
                ref = model(x).numpy()
                classifier = label != "facenet_embedding"
                peers = peer_bf16(model, x, ref, work, classifier) if "exe-bf16" in args.backends else ""
                for backend in args.backends.split(","):
                    ours, seconds = run_inceptc(args.inceptc, backend, model_name, flags, weights, x.numpy(), work, args.target_cpu)
                    if ours.shape != ref.shape:
                        err = float("inf")
                    else:
                        err = float(np.abs(ours - ref).max() / np.abs(ref).max())
                    ok = err <= (BF16_TOLERANCE if backend == "exe-bf16" else TOLERANCE)
                    if backend == "exe-bf16" and classifier and ours.shape == ref.shape:
                        ok &= bool((ours.argmax(axis=1) == ref.argmax(axis=1)).all())
                    failed |= not ok
                    peer = peers if backend == "exe-bf16" else ""
                    rows.append((label, dtype, batch, backend, list(ref.shape), float(np.abs(ref).max()), err, seconds, ok, peer))
                    print(f"{label:22} {dtype:5} batch {batch} {backend:9}  rel err {err:.2e}  {'ok' if ok else 'FAIL'}"
                          + (f"  (torch bf16 / OpenVINO bf16: {peer})" if peer else ""), file=sys.stderr)
    print(f"\n| model | weights | batch | inceptc | output | max abs ref | max abs diff / max abs ref | "
          f"torch bf16 / OpenVINO bf16 | run s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, dtype, batch, backend, shape, mref, err, secs, ok, peer in rows:
        print(f"| {label} | {dtype} | {batch} | {backend} | {shape} | {mref:.3g} | {err:.2e}{'' if ok else ' FAIL'} | "
              f"{peer or '-'} | {secs:.1f} |")
    print(f"\ntolerance {TOLERANCE:g} ({BF16_TOLERANCE:g} and the top class for exe-bf16); torch "
          f"{torch.__version__}; work dir {work}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
