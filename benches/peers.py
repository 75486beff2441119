"""inceptc against ONNX Runtime and OpenVINO, measured side by side: in f32, each engine in f32;
with --precision bf16, inceptc's bf16 executables against OpenVINO's bf16 inference
(INFERENCE_PRECISION_HINT=bf16), with ONNX Runtime f32 timed beside them for scale; with
--precision int8, inceptc's int8 executables against ONNX Runtime's static int8 (QDQ, per-channel
s8 weights, u8 activations, min/max calibration), both calibrated on the same 8 inputs, which are
not the timed ones, with OpenVINO f32 beside them for scale.

For each model: build the timm model with seeded random weights (BatchNorm statistics randomized
as in scripts/compare_pytorch.py), save it as safetensors for `inceptc compile` and export it to
ONNX for the peers; check every engine against PyTorch (max |diff| / max |ref| <= 1e-4 in f32,
1e-2 in bf16, and the same top-1 class in bf16); then time
the engines in interleaved rounds (each round: our executable's --bench over R runs, then R runs of
ONNX Runtime, then R of OpenVINO), same thread count, and print the median latency, ours/peer, peak
RSS and the time from process start to the first output of a fresh process. With several thread
counts, it also prints each engine's speed-ups: from the medians, per round, from each engine's
fastest runs (the least disturbed by a noisy host), and in how many rounds ours was at least each
peer's.
Run it through benches/peers.sh, which sets up the virtual environment.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from compare_pytorch import randomize  # noqa: E402

TOLERANCE = 1e-4
BF16_TOLERANCE = 1e-2
# int8 against PyTorch f32 (seeded weights; ONNX Runtime int8 is held to the same bound).
INT8_TOLERANCE = 1e-1
CALIBRATION_IMAGES = 8
MODELS = {"inception_v4": "inception-v4", "inception_resnet_v2": "inception-resnet-v2"}

FIRST_RESULT = r"""
import sys, time, numpy as np
engine, model, xpath, threads, hint = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
x = np.load(xpath)
if engine == "onnxruntime":
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    s = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
    y = s.run(None, {s.get_inputs()[0].name: x})[0]
else:
    import openvino as ov
    c = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint})
    y = c(x)[0]
print(float(np.abs(y).max()))
"""


def quantize_ort(onnx_path, calibration, batch, work):
    """ONNX Runtime's static int8 of `onnx_path`: QDQ, per-channel s8 weights, u8 activations,
    min/max ranges over `calibration` (images [1, 3, H, W], tiled to the batch)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": np.repeat(c, batch, axis=0)} for c in calibration])

        def get_next(self):
            return next(self.items, None)

    out = onnx_path.replace(".onnx", "-int8.onnx")
    quantize_static(onnx_path, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def cpu_model():
    """The CPU's model name and its vector extensions, as lscpu reports them."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "unknown").strip()
    flags = fields.get("Flags", "").split()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return f"{name} ({', '.join(f for f in wanted if f in flags)}), {os.cpu_count()} CPUs"


def rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def fresh_process(cmd):
    """Wall time (s) and peak RSS (KiB) of one fresh process, start to exit, measured by GNU time
    (a child forked from this large Python process would inherit its high-water mark)."""
    out = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], check=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True).stderr.strip().splitlines()[-1]
    wall, rss = out.split()
    return float(wall), int(rss)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inceptc", required=True)
    p.add_argument("--models", default="inception_v4,inception_resnet_v2")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", default="2",
                   help="thread counts, comma-separated: with several (1,2), every engine runs at each in "
                        "the same interleaved rounds and a second table gives the speed-ups over the first")
    p.add_argument("--compile-threads", type=int,
                   help="inceptc compile --threads (the splits' thread count; default: the compiler's)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--target-cpu", default="native", help="inceptc's tier (native, x86-64-v4, x86-64-v3)")
    p.add_argument("--precision", default="f32", choices=("f32", "bf16", "int8"),
                   help="inceptc's --precision; OpenVINO's INFERENCE_PRECISION_HINT in bf16; ONNX "
                        "Runtime static int8 in int8")
    p.add_argument("--work")
    a = p.parse_args()
    counts = [int(t) for t in a.threads.split(",")]
    top = counts[-1]
    work = a.work or tempfile.mkdtemp(prefix="inceptc-peers-")
    os.makedirs(work, exist_ok=True)
    torch.set_grad_enabled(False)
    torch.set_num_threads(top)
    import onnxruntime as ort
    import openvino as ov
    import timm

    rows, scaling, failed = [], [], False
    for label in a.models.split(","):
        gen = torch.Generator().manual_seed(2016)
        model = timm.create_model(label, pretrained=False)
        randomize(model, 299, gen)
        weights = os.path.join(work, f"{label}.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
        for batch in [int(b) for b in a.batches.split(",")]:
            x = (torch.rand(batch, 3, 299, 299, generator=gen) * 2 - 1).float()
            ref = model(x).numpy()
            xpath = os.path.join(work, f"{label}-b{batch}-x.npy")
            np.save(xpath, x.numpy())
            onnx_path = os.path.join(work, f"{label}-b{batch}.onnx")
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(model, (x,), onnx_path, input_names=["x"], output_names=["y"],
                                  opset_version=17, dynamo=False)
            exe = os.path.join(work, f"{label}-b{batch}")
            calibration = []
            int8 = a.precision == "int8"
            if int8:
                calibration = [(torch.rand(1, 3, 299, 299, generator=gen) * 2 - 1).float().numpy()
                               for _ in range(CALIBRATION_IMAGES)]
                cpath = os.path.join(work, f"{label}-calibration.npy")
                np.save(cpath, np.concatenate(calibration))
                onnx_path = quantize_ort(onnx_path, calibration, batch, work)
            extra = ["--calibrate", cpath] if int8 else []
            if a.compile_threads:
                extra += ["--threads", str(a.compile_threads)]
            subprocess.run([a.inceptc, "-q", "compile", "--model", MODELS[label], "--weights", weights,
                            "--batch", str(batch), "--target-cpu", a.target_cpu, "--precision", a.precision,
                            "-o", exe] + extra, check=True)
            ypath = os.path.join(work, f"{label}-b{batch}-y.npy")
            subprocess.run([exe, "--input", xpath, "--output", ypath, "--threads", str(top)], check=True)
            ov_hint = "f32" if int8 else a.precision
            ov_path = onnx_path.replace("-int8.onnx", ".onnx")
            xn = x.numpy()
            # Per thread count: ONNX Runtime's session and OpenVINO's compiled model (both fix their
            # threads when made).
            runners = {}
            for t in counts:
                so = ort.SessionOptions()
                so.intra_op_num_threads = t
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
                compiled = ov.Core().compile_model(ov_path, "CPU", {"INFERENCE_NUM_THREADS": t,
                                                                     "INFERENCE_PRECISION_HINT": ov_hint})
                runners[t] = (lambda s=sess: s.run(None, {"x": xn})[0],
                              lambda c=compiled: c(xn)[0])
            run_ort, run_ov = runners[top]
            outputs = {"inceptc": np.load(ypath), "onnxruntime": run_ort(), "openvino": run_ov()}
            errs = {e: rel_err(y, ref) for e, y in outputs.items()}
            for engine, err in errs.items():
                top1 = float((outputs[engine].argmax(axis=1) == ref.argmax(axis=1)).mean())
                if int8:
                    # inceptc and ONNX Runtime in int8, OpenVINO in f32.
                    quantized = engine != "openvino"
                    ok = err <= (INT8_TOLERANCE if quantized else TOLERANCE)
                else:
                    # ONNX Runtime runs f32 in f32 and bf16 mode.
                    reduced = a.precision != "f32" and engine != "onnxruntime"
                    ok = err <= (BF16_TOLERANCE if reduced else TOLERANCE)
                    if reduced:
                        ok &= top1 == 1.0
                failed |= not ok
                print(f"{label} batch {batch} {engine}: rel err {err:.2e}, top-1 as PyTorch on {top1:.0%} "
                      f"{'ok' if ok else 'FAIL'}", file=sys.stderr)
            times = {(e, t): [] for e in ("inceptc", "onnxruntime", "openvino") for t in counts}
            # Each round's median per engine and thread count, for the per-round speed-ups.
            per_round = {(e, t): [] for e in ("inceptc", "onnxruntime", "openvino") for t in counts}
            # Each engine's fastest run at each thread count: the run the host's noise disturbed least.
            fastest = {(e, t): float("inf") for e in ("inceptc", "onnxruntime", "openvino") for t in counts}
            for _ in range(a.rounds):
                for t in counts:
                    out = subprocess.run([exe, "--bench", "--json", "--runs", str(a.runs), "--threads", str(t)],
                                         check=True, capture_output=True, text=True).stdout
                    report = json.loads(out)["end_to_end"]
                    times[("inceptc", t)].append(report["median_ms"])
                    fastest[("inceptc", t)] = min(fastest[("inceptc", t)], report["min_ms"])
                    per_round[("inceptc", t)].append(times[("inceptc", t)][-1])
                    for engine, fn in zip(("onnxruntime", "openvino"), runners[t]):
                        runs = []
                        for _ in range(a.runs):
                            start = time.perf_counter()
                            fn()
                            runs.append((time.perf_counter() - start) * 1e3)
                        times[(engine, t)] += runs
                        fastest[(engine, t)] = min([fastest[(engine, t)], *runs])
                        per_round[(engine, t)].append(float(np.median(runs)))
            first = {
                "inceptc": fresh_process([exe, "--input", xpath, "--output", ypath, "--threads", str(top)]),
                "onnxruntime": fresh_process([sys.executable, "-c", FIRST_RESULT, "onnxruntime", onnx_path, xpath,
                                              str(top), "f32"]),
                "openvino": fresh_process([sys.executable, "-c", FIRST_RESULT, "openvino", ov_path, xpath,
                                           str(top), ov_hint]),
            }
            medians = {k: float(np.median(t)) for k, t in times.items()}
            scaling.append((label, batch, medians, per_round, fastest))
            med = {e: medians[(e, top)] for e in ("inceptc", "onnxruntime", "openvino")}
            rows.append((label, batch, med, first, errs))
            print(f"{label} batch {batch}: " + ", ".join(f"{e} {m:.1f} ms" for e, m in med.items()), file=sys.stderr)

    engines = {"int8": "inceptc and ONNX Runtime (static QDQ) in int8, OpenVINO in f32",
               "bf16": "inceptc and OpenVINO in bf16, ONNX Runtime in f32"}.get(a.precision, "every engine in f32")
    print(f"\n{engines}; {top} threads, {a.rounds} "
          f"interleaved rounds of {a.runs} runs; inceptc --target-cpu {a.target_cpu}; onnxruntime {ort.__version__}, "
          f"openvino {ov.__version__}, torch {torch.__version__}")
    print(f"CPU: {cpu_model()}\n")
    print("| model | batch | inceptc ms | onnxruntime ms | openvino ms | ours/ORT | ours/OV | "
          "first result s (ours / ORT / OV) | peak RSS MiB (ours / ORT / OV) | rel err (ours / ORT / OV) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, batch, med, first, errs in rows:
        f = " / ".join(f"{first[e][0]:.2f}" for e in ("inceptc", "onnxruntime", "openvino"))
        r = " / ".join(f"{first[e][1] / 1024:.0f}" for e in ("inceptc", "onnxruntime", "openvino"))
        e = " / ".join(f"{errs[k]:.1e}" for k in ("inceptc", "onnxruntime", "openvino"))
        print(f"| {label} | {batch} | {med['inceptc']:.1f} | {med['onnxruntime']:.1f} | {med['openvino']:.1f} | "
              f"{med['inceptc'] / med['onnxruntime']:.2f} | {med['inceptc'] / med['openvino']:.2f} | {f} | {r} | {e} |")
    if len(counts) > 1:
        first_count = counts[0]

        def round_speedups(per_round, engine, t):
            """Each round's own speed-up of `engine` from the first thread count to `t`."""
            return [a1 / an for a1, an in zip(per_round[(engine, first_count)], per_round[(engine, t)])]

        print(f"\nMedians at each thread count, same interleaved rounds; speed-up over {first_count} thread(s) "
              f"from the medians, and each round's own speed-up (the round's {first_count}-thread median over its "
              f"N-thread median): their median and, in brackets, their middle half (25th–75th percentile), "
              f"which shows how much the host's noise moves a speed-up\n")
        print("| model | batch | engine | " + " | ".join(f"{t} thr ms" for t in counts) + " | " +
              " | ".join(f"speed-up {first_count}→{t} | per round" for t in counts[1:]) + " |")
        print("|---|---|---|" + "---|" * (len(counts) + 2 * (len(counts) - 1)))
        for label, batch, medians, per_round, _ in scaling:
            for engine in ("inceptc", "onnxruntime", "openvino"):
                ms = [medians[(engine, t)] for t in counts]
                cells = []
                for t, m in zip(counts[1:], ms[1:]):
                    q1, q2, q3 = np.percentile(round_speedups(per_round, engine, t), [25, 50, 75])
                    cells.append(f"×{ms[0] / m:.2f} | ×{q2:.2f} [{q1:.2f}–{q3:.2f}]")
                print(f"| {label} | {batch} | {engine} | " + " | ".join(f"{m:.1f}" for m in ms) + " | " +
                      " | ".join(cells) + " |")
        # The engines ran in the same rounds, so a round's speed-ups met the same noise: count the
        # rounds in which ours was at least each peer's.
        print()
        for label, batch, _, per_round, fastest in scaling:
            for t in counts[1:]:
                best = ", ".join(f"{e} ×{fastest[(e, first_count)] / fastest[(e, t)]:.2f}"
                                 for e in ("inceptc", "onnxruntime", "openvino"))
                print(f"{label} batch {batch}: speed-up {first_count}→{t} from each engine's fastest runs: {best}")
                own = {e: round_speedups(per_round, e, t) for e in ("inceptc", "onnxruntime", "openvino")}
                n = len(own["inceptc"])
                wins = ", ".join(f"{peer}'s in {sum(o >= p for o, p in zip(own['inceptc'], own[peer]))} of {n}"
                                 for peer in ("onnxruntime", "openvino"))
                print(f"{label} batch {batch}: inceptc's speed-up {first_count}→{t} in a round was at least {wins} rounds")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
