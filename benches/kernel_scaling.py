#!/usr/bin/env python3
"""Per-kernel times of an inceptc executable on several thread counts, interleaved.

    benches/kernel_scaling.py EXE [--threads 1,2] [--rounds 5] [--runs 5] [--all]

Each round runs `EXE --bench --runs RUNS --threads T --trace FILE` for every thread count T in
turn and reads each kernel's span from the trace (the round's fastest run; kernels that run
together in one stage share a span, named `k14_… + k15_…`); a kernel's time at T is its minimum
over the rounds (the shared machines are noisy: the minimum is the least disturbed
run). Prints the kernels that are not faster on the later thread counts than on the first (all of
them with --all), with their work items, and the whole network's speed-up.

The trace also gives each kernel's thread time (`thread_ms`: the threads' summed time in its work
items). On the last thread count N, what a kernel loses against N-fold speed splits into extra
work (its thread time less its one-thread time: data another core wrote, caches both cores fill)
and waiting (N × its time less its thread time: threads that ran out of items before the
others). `--losses K` lists the K kernels that lose the most, and the totals say which of the
two costs the network its speed-up. Standard library only.
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
    rows = []
    for e in kernels:
        args = e.get("args", {})
        # An executable from before `thread_ms`: every thread taken as busy for the whole span.
        busy = args.get("thread_ms", e["dur"] / 1e3 * threads)
        rows.append((e["name"], e["dur"] / 1e3, args.get("work_items", 0), busy))
    return rows, total / 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exe")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--all", action="store_true", help="list every kernel")
    p.add_argument("--losses", type=int, default=0, metavar="K",
                   help="list the K kernels that lose the most thread time on the last count")
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
                for i, (name, ms, n, busy) in enumerate(rows):
                    key = (i, name)
                    if key not in items:
                        names.append(key)
                        items[key] = n
                    # The fastest round's time and thread time.
                    best[t][key] = min(best[t].get(key, (float("inf"), 0.0)), (ms, busy))
    first = counts[0]
    print(f"{a.exe}: minimum over {a.rounds} interleaved rounds of {a.runs} runs per thread count")
    print("kernel".ljust(44) + "items".rjust(7) + "".join(f"{t} thr ms".rjust(11) for t in counts) +
          "".join(f"  ×{first}→{t}" for t in counts[1:]))
    slower = 0
    for key in names:
        ms = [best[t][key][0] for t in counts]
        ratios = [ms[0] / m if m > 0 else float("inf") for m in ms[1:]]
        not_faster = any(r <= 1.0 for r in ratios)
        slower += not_faster
        if a.all or not_faster:
            print(key[1][:43].ljust(44) + str(items[key]).rjust(7) + "".join(f"{m:11.3f}" for m in ms) +
                  "".join(f"  ×{r:.2f}" for r in ratios) + ("  not faster" if not_faster else ""))
    print(f"network: " + ", ".join(f"{t} thr {whole[t]:.1f} ms" for t in counts) + "; " +
          ", ".join(f"×{whole[first] / whole[t]:.2f} on {t}" for t in counts[1:]))
    print(f"{slower} of {len(names)} kernels not faster on every later thread count than on {first}")
    last = counts[-1]
    if last > first:
        # Against the first count's thread time per thread, scaled to `last` threads.
        def loss(key):
            ms1, busy1 = best[first][key]
            ms, busy = best[last][key]
            extra = busy - busy1
            waiting = last * ms - busy
            return extra, waiting, ms1, ms
        losses = {key: loss(key) for key in names}
        extra = sum(v[0] for v in losses.values())
        waiting = sum(v[1] for v in losses.values())
        busy1 = sum(best[first][key][1] for key in names)
        wall = sum(best[last][key][0] for key in names)
        print(f"on {last} threads, the kernels' minima: {wall:.1f} ms, against {busy1 / last:.1f} ms if "
              f"their work took the thread time it takes on {first} ({busy1:.1f} ms) and no thread waited; "
              f"the work took {extra:+.1f} thread-ms ({100 * extra / busy1:+.1f} %), threads waited "
              f"{waiting:.1f} thread-ms")
        if a.losses:
            print(f"the {a.losses} kernels that lose the most on {last} threads "
                  f"(thread-ms: extra work + waiting)")
            print("kernel".ljust(44) + "items".rjust(7) + f"{first} thr ms".rjust(11) + f"{last} thr ms".rjust(11) +
                  "extra work".rjust(12) + "waiting".rjust(9))
            ranked = sorted(names, key=lambda k: -(losses[k][0] + losses[k][1]))[:a.losses]
            for key in ranked:
                e, w, ms1, ms = losses[key]
                print(key[1][:43].ljust(44) + str(items[key]).rjust(7) + f"{ms1:11.3f}{ms:11.3f}{e:12.3f}{w:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
