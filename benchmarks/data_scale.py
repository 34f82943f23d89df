"""Data preparation at the card's scale: `prepare` on 100k, 300k and 1M synthetic ShareGPT rows, as `.jsonl`
and as one `.json` array (the hub's openhermes2_5.json is one), each in a fresh process: wall time, rows/s and
peak RSS (the kernel's high-water mark, VmHWM). Goals: peak RSS at 1M rows <= 4 GB and flat in the row count;
time linear in it. The rows are the data pipeline benchmark's (benchmarks/_common.py), the tokenizer a BPE of
Mistral's vocabulary size (32,000) trained on them; all checks on (dedup, refusal filter), BFD packing at 4096.

    python benchmarks/data_scale.py [--rows 100000,300000,1000000] [--formats jsonl,json] [--work DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_model_and_flags, synthetic_sharegpt


def child(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    from openhermes.config import Recipe
    from openhermes.data.prepare import prepare
    from openhermes.model.load import load_tokenizer

    tok = load_tokenizer(args.base, "chatml")
    recipe = Recipe(datasets=[{"path": args.data}], sequence_len=4096, sample_packing=True)
    start = time.perf_counter()
    report = prepare(recipe, tok, out_dir=args.out, cache_dir=Path(args.out).parent / "cache", progress=False).report
    wall = time.perf_counter() - start
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"wall": wall, "peak_rss": hwm, "rows": report["rows"]["rows_in"], "tokens": report["tokens"],
                      "train_rows": report["train_rows"], "efficiency": report["packing_efficiency"]}))


def as_json_array(src: Path, dst: Path, n: int) -> None:
    with open(src, "rb") as f, open(dst, "wb") as out:
        out.write(b"[\n")
        for i, line in enumerate(itertools.islice(f, n)):
            out.write((b",\n" if i else b"") + line.rstrip(b"\n"))
        out.write(b"\n]\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100000,300000,1000000")
    ap.add_argument("--formats", default="jsonl,json")
    ap.add_argument("--work", type=Path, default=None, help="keep the generated data here (reused when present)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base")
    ap.add_argument("--data")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from openhermes.model.tiny import build_base

    sizes = [int(x) for x in args.rows.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="ohscale-"))
    work.mkdir(parents=True, exist_ok=True)
    full = work / f"rows-{max(sizes)}.jsonl"
    if not full.exists():
        synthetic_sharegpt(full, max(sizes))
    base = work / "base"
    if not base.exists():
        with open(full) as f:
            texts = [" ".join(t["value"] for t in json.loads(line)["conversations"])
                     for line in itertools.islice(f, 5000)]
        build_base(base, texts, vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                   num_attention_heads=4, num_key_value_heads=2)
    cpu, flags = cpu_model_and_flags()
    print(f"CPU: {cpu} ({flags})")
    print("| rows | file | size | wall | rows/s | peak RSS | tokens | packed rows |")
    print("|---|---|---|---|---|---|---|---|")
    for n, fmt in itertools.product(sizes, args.formats.split(",")):
        data = work / f"rows-{n}.{fmt}"
        if not data.exists():
            if fmt == "json":
                as_json_array(full, data, n)
            else:
                with open(full, "rb") as f, open(data, "wb") as out:
                    out.writelines(itertools.islice(f, n))
        out = work / f"prepared-{n}-{fmt}"
        subprocess.run(["rm", "-rf", str(out), str(work / "cache")], check=True)
        run = subprocess.run([sys.executable, __file__, "--child", "--base", str(base), "--data", str(data),
                              "--out", str(out)], capture_output=True, text=True)
        if run.returncode:
            print(f"| {n:,} | .{fmt} | failed: {run.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"| {n:,} | .{fmt} | {data.stat().st_size / 2**30:.2f} GB | {r['wall']:.0f} s | {n / r['wall']:,.0f} | "
              f"{r['peak_rss'] / 2**30:.2f} GB | {r['tokens']:,} | {r['train_rows']:,} |", flush=True)
        subprocess.run(["rm", "-rf", str(out)], check=True)


if __name__ == "__main__":
    main()
