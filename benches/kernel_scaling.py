#!/usr/bin/env python3
"""Per-kernel times of an inceptc executable on several thread counts, interleaved.

    benches/kernel_scaling.py EXE [--threads 1,2] [--rounds 5] [--runs 5] [--all]

Each round runs `EXE --bench --runs RUNS --threads T --trace FILE` for every thread count T in
turn and reads each kernel's span from the trace (the round's fastest run; kernels that run
together in one stage share a span, named `k14_… + k15_…`); a kernel's time at T is its minimum
over the rounds (the shared machines are noisy: the minimum is the least disturbed
run). Prints the kernels that are not faster on the later thread counts than on the first (all of
them with --all), with their work items, and the whole network's speed-up. Standard library only.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def spans(exe, threads, runs, path):
    subprocess.run([exe, "--bench", "--runs", str(runs), "--threads", str(threads), "--trace", path],
                   check=True, stdout=subprocess.DEVNULL)
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    total = sum(e["dur"] for e in events if e.get("cat") == "block")
    return [(e["name"], e["dur"] / 1e3, e.get("args", {}).get("work_items", 0)) for e in kernels], total / 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exe")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--all", action="store_true", help="list every kernel")
    a = p.parse_args()
    counts = [int(t) for t in a.threads.split(",")]
    best = {t: {} for t in counts}
    whole = {t: float("inf") for t in counts}
    names, items = [], {}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(a.rounds):
            for t in counts:
                rows, total = spans(a.exe, t, a.runs, os.path.join(work, f"t{t}.json"))
                whole[t] = min(whole[t], total)
                for i, (name, ms, n) in enumerate(rows):
                    key = (i, name)
                    if key not in items:
                        names.append(key)
                        items[key] = n
                    best[t][key] = min(best[t].get(key, float("inf")), ms)
    first = counts[0]
    print(f"{a.exe}: minimum over {a.rounds} interleaved rounds of {a.runs} runs per thread count")
    print("kernel".ljust(44) + "items".rjust(7) + "".join(f"{t} thr ms".rjust(11) for t in counts) +
          "".join(f"  ×{first}→{t}" for t in counts[1:]))
    slower = 0
    for key in names:
        ms = [best[t][key] for t in counts]
        ratios = [ms[0] / m if m > 0 else float("inf") for m in ms[1:]]
        not_faster = any(r <= 1.0 for r in ratios)
        slower += not_faster
        if a.all or not_faster:
            print(key[1][:43].ljust(44) + str(items[key]).rjust(7) + "".join(f"{m:11.3f}" for m in ms) +
                  "".join(f"  ×{r:.2f}" for r in ratios) + ("  not faster" if not_faster else ""))
    print(f"network: " + ", ".join(f"{t} thr {whole[t]:.1f} ms" for t in counts) + "; " +
          ", ".join(f"×{whole[first] / whole[t]:.2f} on {t}" for t in counts[1:]))
    print(f"{slower} of {len(names)} kernels not faster on every later thread count than on {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
