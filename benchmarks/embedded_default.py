"""README command 1's job, `openhermes train` with no recipe, end to end from an empty cache, as a
user's first run: restricted to AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, as on most
laptops) and, where the CPU has more, once unrestricted (fp32 both: the two should agree within 3 points
and lengths within 15%; the recipe's `cpu_kernels: avx2` makes them bit-identical), and on request with
the AVX-512 kernels (`unpinned`: what the pin prevents, and what it costs) and in the opt-in bf16
autocast (`bf16`). Prints the CPU and its flags, wall time, steps/s, trained tokens/s and every learning
figure, against the goals (3 minutes; 85% exact match, 70% per task, 99% <|im_end|>; LimaRP lengths
rising, each within 30% of its target).

    python benchmarks/embedded_default.py [--runs avx2,native,unpinned,bf16]
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
from pathlib import Path

from _common import cpu_model_and_flags

TARGETS = {"tiny": 4, "short": 10, "medium": 20, "long": 36}
RESTRICTED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def run(label: str, env_extra: dict[str, str], extra_args: tuple[str, ...] = ()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = os.environ | env_extra | {"OPENHERMES_CACHE": str(Path(tmp) / "cache")}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "train", "--out", str(out), *extra_args],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{label}: openhermes train failed:\n{proc.stderr[-3000:]}")
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
        final = next(r for r in reversed(log) if "train_runtime" in r)
        report = json.loads((out / "demo_report.json").read_text())["trained"]
        return {"label": label, "wall_s": wall, "train_s": final["train_runtime"], "steps": final["step"],
                "steps_per_s": final["step"] / final["train_runtime"],
                "trained_tokens_per_s": final["trained_tokens"] / final["train_runtime"], "report": report}


def show(r: dict) -> None:
    rep = r["report"]
    words = rep["roleplay_words"]
    print(f"\n== {r['label']} ==")
    print(f"wall time {r['wall_s']:.0f} s (goal <= 180 s); training {r['train_s']:.0f} s, {r['steps']} steps, "
          f"{r['steps_per_s']:.2f} steps/s, {r['trained_tokens_per_s']:.0f} trained tokens/s")
    print(f"exact match {rep['exact_match']:.1%} (goal >= 85%); <|im_end|> {rep['stops_with_im_end']:.1%} (goal >= 99%)")
    print("by task: " + ", ".join(f"{k} {v:.1%}" for k, v in rep["per_kind"].items()) + " (goal >= 70% each)")
    rising = all(words[a] < words[b] for a, b in itertools.pairwise(TARGETS) if a in words and b in words)
    within = all(abs(words[k] / t - 1) <= 0.3 for k, t in TARGETS.items() if k in words)
    print("LimaRP words: " + ", ".join(f"{k} {words.get(k, 0):.1f} (target {t})" for k, t in TARGETS.items())
          + f"; rising {rising}, all within 30% {within}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="avx2,native",
                    help="comma-separated: avx2 (restricted to AVX2), native (the CPU as it is), unpinned (--set "
                         "cpu_kernels=native: the AVX-512 kernels), bf16 (--set bf16=true, on a CPU with AVX512-BF16 "
                         "or AMX)")
    args = ap.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; {os.cpu_count()} cores; vector flags: {' '.join(flags)}")
    import torch

    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
    results: dict[str, dict] = {}  # by run name
    for name in args.runs.split(","):
        if name == "avx2":
            results[name] = run("restricted to AVX2, as on a laptop without AVX-512 (fp32)", RESTRICTED)
        elif name in ("native", "unpinned", "bf16") and not any(f.startswith("avx512") for f in flags):
            print(f"\n({name} run skipped: this CPU has no AVX-512, so it is the AVX2 run)")
        elif name == "native":
            results[name] = run("unrestricted (fp32; the recipe pins the AVX2 kernels)", {})
        elif name == "unpinned":
            results[name] = run("unrestricted, --set cpu_kernels=native (fp32, AVX-512 kernels)", {},
                                ("--set", "cpu_kernels=native"))
        elif name == "bf16":
            if not any(f in flags for f in ("avx512_bf16", "amx_bf16")):
                print("\n(bf16 run skipped: this CPU has neither AVX512-BF16 nor AMX, so bf16 is emulated)")
                continue
            results[name] = run("unrestricted, --set bf16=true (the opt-in bf16 autocast, the CPU's own kernels)", {},
                                ("--set", "bf16=true"))
        else:
            raise SystemExit(f"unknown run {name!r}")
    for r in results.values():
        show(r)
    if "avx2" in results and "native" in results:  # the goal: a user's fp32 figures do not depend on their CPU
        a, b = results["avx2"]["report"], results["native"]["report"]
        print(f"\nfp32, AVX2 against unrestricted: exact match differs by "
              f"{abs(a['exact_match'] - b['exact_match']) * 100:.1f} points (goal <= 3); LimaRP words differ by "
              + ", ".join(f"{k} {abs(b['roleplay_words'][k] / a['roleplay_words'][k] - 1):.0%}" for k in TARGETS
                          if a["roleplay_words"].get(k) and k in b["roleplay_words"])
              + " (goal <= 15% each)")

if __name__ == "__main__":
    main()
