"""The HTTP stack's share of serving: `openhermes serve` as installed (uvicorn with httptools and uvloop, from
`uvicorn[standard]`) against the same server on uvicorn's fallback (h11 and asyncio), both up, measured in
`--repeats` alternating rounds of chat_workload.py's workload with prefix reuse (8 users, 20 turns, 64-token
streamed replies). Prints each round and the medians' ratio of generated tokens/s and time to first token.

    python benchmarks/serve_http.py [--model runs/tiny/model] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from _common import cpu_model_and_flags, embedded_model_folder, free_port, running_process
from chat_workload import summary, workload

ROOT = Path(__file__).resolve().parents[1]
# `openhermes serve` with uvicorn told to use h11 and asyncio (what it falls back to without httptools/uvloop).
H11_SERVE = ("import sys, uvicorn; run = uvicorn.run; "
             "uvicorn.run = lambda app, **kw: run(app, **{**kw, 'http': 'h11', 'loop': 'asyncio'}); "
             "from openhermes.cli import app; sys.argv[0] = 'openhermes'; app()")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "tiny" / "model")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rounds: dict[str, list[tuple[float, float]]] = {"httptools + uvloop": [], "h11 + asyncio": []}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as servers:
        folder = embedded_model_folder(args.model, Path(tmp))
        urls = {}
        for label, head in (("httptools + uvloop", ["-m", "openhermes.cli"]), ("h11 + asyncio", ["-c", H11_SERVE])):
            port = free_port()
            urls[label] = servers.enter_context(running_process(
                [sys.executable, *head, "serve", str(folder), "--port", str(port), "--max-batch-size", "16"], port))
            asyncio.run(workload(urls[label], 1, 1, 8, round_=-1))  # warm-up
        for r in range(args.repeats):
            print(f"-- round {r + 1} of {args.repeats}")
            for label, url in urls.items():
                results, wall = asyncio.run(workload(url, 8, 20, 64, round_=r))
                rounds[label].append(summary(label, results, wall))
    name, flags = cpu_model_and_flags()
    print(f"CPU: {name} ({' '.join(flags)}); model {folder}")
    (ttft_a, tps_a), (ttft_b, tps_b) = ((statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
                                        for v in rounds.values())
    print(f"medians of {args.repeats}: httptools + uvloop {tps_a:,.0f} tok/s, ttft p50 {ttft_a * 1000:.0f} ms; "
          f"h11 + asyncio {tps_b:,.0f} tok/s, {ttft_b * 1000:.0f} ms -> {tps_a / tps_b:.2f}x the tokens/s")


if __name__ == "__main__":
    main()
