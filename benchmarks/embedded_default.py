"""README command 1's job, `openhermes train` with no recipe, end to end from an empty cache, over several seeds
and every kernel mode this CPU offers: is what the embedded default learns a result, or one CPU's rounding?

Kernel modes: `avx2` (the recipe's `cpu_kernels: avx2`: PyTorch's AVX2 kernels, fp32), `native` (`--set
cpu_kernels=native`: the CPU's best kernels, AVX-512 where it has them, fp32), `bf16` (`--set bf16=true`: the
opt-in bf16 autocast, on a CPU with AVX512-BF16 or AMX). Each run is a fresh `openhermes train` with its own
empty cache (`--set seed=S`: the base model's initialisation and the data order). Prints, for each run and as the
worst case over all runs: exact match per task, the <|im_end|> rate, the four LimaRP mean lengths, wall time and
training time, against the goals (every task >= 95%, <|im_end|> >= 99%, lengths strictly rising and each within
15% of 4 / 10 / 20 / 36 words, wall time <= 180 s).

    python benchmarks/embedded_default.py [--seeds 1,2,3,4,5] [--modes avx2,native,bf16] [--jobs 2] [--set key=value ...]

`--jobs N` runs N at once, each on cores/N threads: the learning figures are as valid (another thread count is
one more rounding), but the wall times are then those of a shared machine; time README command 1 alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import cpu_model_and_flags

TARGETS = {"tiny": 4, "short": 10, "medium": 20, "long": 36}
GOALS = {"task": 0.95, "im_end": 0.99, "length": 0.15, "wall_s": 180}
MODES = {"avx2": ("--set", "cpu_kernels=avx2"), "native": ("--set", "cpu_kernels=native"),
         "bf16": ("--set", "bf16=true", "--set", "cpu_kernels=native")}


def run(mode: str, seed: int, extra: list[str], threads: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = os.environ | {"OPENHERMES_CACHE": str(Path(tmp) / "cache")}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        args = [*MODES[mode], "--set", f"seed={seed}", *itertools.chain.from_iterable(("--set", s) for s in extra)]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "train", "--out", str(out), *args],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{mode} seed {seed}: openhermes train failed:\n{proc.stderr[-3000:]}")
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
        final = next(r for r in reversed(log) if "train_runtime" in r)
        report = json.loads((out / "demo_report.json").read_text())["trained"]
        return {"mode": mode, "seed": seed, "wall_s": wall, "train_s": final["train_runtime"], "steps": final["step"],
                "report": report}


def row(label: str, tasks: dict[str, float], im_end: float, words: dict[str, float], wall: float, train: float) -> str:
    return (f"{label:<14}" + "".join(f"{tasks.get(k, 0):>8.1%}" for k in ("add", "code", "copy", "lookup"))
            + f"{im_end:>8.1%}" + "".join(f"{words.get(k, 0):>7.1f}" for k in TARGETS) + f"{wall:>7.0f}{train:>7.0f}")


def worst(results: list[dict]) -> dict:
    """Per figure, the value furthest from its goal over all runs (lengths: the largest relative miss)."""
    reps = [r["report"] for r in results]
    tasks = {k: min(rep["per_kind"][k] for rep in reps) for k in reps[0]["per_kind"]}
    words = {k: max((rep["roleplay_words"][k] for rep in reps), key=lambda w, t=TARGETS[k]: abs(w / t - 1))
             for k in TARGETS}
    return {"tasks": tasks, "im_end": min(rep["stops_with_im_end"] for rep in reps), "words": words,
            "wall_s": max(r["wall_s"] for r in results), "train_s": max(r["train_s"] for r in results),
            "rising": all(all(rep["roleplay_words"][a] < rep["roleplay_words"][b]
                              for a, b in itertools.pairwise(TARGETS)) for rep in reps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated recipe seeds")
    ap.add_argument("--modes", default="avx2,native,bf16", help="comma-separated kernel modes: avx2, native, bf16 "
                    "(native and bf16 are skipped where the CPU has nothing beyond AVX2 / no bf16 instructions)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, each on cores/jobs threads (wall times are "
                    "then a shared machine's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override for every run (repeatable)")
    args = ap.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; {os.cpu_count()} cores; vector flags: {' '.join(flags)}")
    import torch

    print(f"torch {torch.__version__}, best capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; overrides: {' '.join(args.overrides) or 'none'}")
    modes = []
    for mode in args.modes.split(","):
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if mode != "avx2" and not any(f.startswith("avx512") for f in flags):
            print(f"({mode} skipped: this CPU has no AVX-512, so its kernels are the avx2 run's)")
        elif mode == "bf16" and not any(f in flags for f in ("avx512_bf16", "amx_bf16")):
            print("(bf16 skipped: this CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated)")
        else:
            modes.append(mode)
    if not modes:
        raise SystemExit("no kernel mode left to run on this CPU: add avx2 to --modes")
    header = (f"{'run':<14}" + "".join(f"{k:>8}" for k in ("add", "code", "copy", "lookup")) + f"{'im_end':>8}"
              + "".join(f"{k:>7}" for k in TARGETS) + f"{'wall':>7}{'train':>7}")
    print("\n" + header)
    runs = list(itertools.product(modes, [int(s) for s in args.seeds.split(",")]))
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    with ThreadPoolExecutor(args.jobs) as pool:
        results = []
        for r in pool.map(lambda ms: run(*ms, args.overrides, threads), runs):
            results.append(r)
            rep = r["report"]
            print(row(f"{r['mode']} seed {r['seed']}", rep["per_kind"], rep["stops_with_im_end"],
                      rep["roleplay_words"], r["wall_s"], r["train_s"]), flush=True)
    w = worst(results)
    print(row("worst case", w["tasks"], w["im_end"], w["words"], w["wall_s"], w["train_s"]))
    lengths_ok = w["rising"] and all(abs(w["words"][k] / t - 1) <= GOALS["length"] for k, t in TARGETS.items())
    print(f"\ngoals over {len(results)} runs: every task >= {GOALS['task']:.0%}: "
          f"{min(w['tasks'].values()) >= GOALS['task']}; <|im_end|> >= {GOALS['im_end']:.0%}: "
          f"{w['im_end'] >= GOALS['im_end']}; lengths rising and within {GOALS['length']:.0%}: {lengths_ok}; "
          f"wall <= {GOALS['wall_s']} s: {w['wall_s'] <= GOALS['wall_s']}"
          + (f" (not a goal test here: {args.jobs} runs at once, {threads} threads each)" if threads else ""))


if __name__ == "__main__":
    main()
