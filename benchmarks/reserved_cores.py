"""`serve --reserved-cores`: decode steps leave cores to the HTTP side (infer/threads.py) against every core for
everything (`--reserved-cores 0`, the default below 4 cores), on chat_workload.py's conversations (8 simulated
SillyTavern users resending their growing history, 64-token replies), with prefix reuse and without. The four
servers stay up and are measured in `--repeats` alternating rounds (new conversations each round); medians and
each setting's ratio against `--reserved-cores 0`.

    python benchmarks/reserved_cores.py [--model runs/tiny/model] [--reserved 1] [--wider] [--repeats 3]
                                        [--client aiohttp|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from _common import CLIENTS, cpu_model_and_flags, embedded_model_folder, running_server, wider_model_folder
from chat_workload import summary, workload

from openhermes.infer.threads import available_cores

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "tiny" / "model")
    ap.add_argument("--reserved", type=int, default=1, help="the --reserved-cores measured against 0")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--wider", action="store_true", help="a ~28M-parameter random Mistral-shaped model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--client", choices=CLIENTS, default="aiohttp", help="the simulated users' HTTP library")
    args = ap.parse_args()
    name, flags = cpu_model_and_flags()
    settings = [(reuse, reserved) for reuse in (True, False) for reserved in (args.reserved, 0)]
    rounds: dict[tuple[bool, int], list[tuple[float, float]]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as servers:
        folder = embedded_model_folder(args.model, Path(tmp))
        if args.wider:
            folder = wider_model_folder(folder, Path(tmp) / "wider")
        urls = {(reuse, reserved): servers.enter_context(running_server(
                    folder, "--max-batch-size", str(max(16, args.users)), "--prefix-cache-mb",
                    "1024" if reuse else "0", "--reserved-cores", str(reserved)))
                for reuse, reserved in settings}
        for url in urls.values():
            asyncio.run(workload(url, 1, 1, 8, -1, args.client))  # warm-up (a conversation no round uses)
        for r in range(args.repeats):
            print(f"-- round {r + 1} of {args.repeats}")
            for (reuse, reserved), url in urls.items():
                label = f"{'reuse' if reuse else 'no reuse'}, reserved {reserved}"
                rounds[(reuse, reserved)].append(summary(label, *asyncio.run(
                    workload(url, args.users, args.turns, args.tokens, r, args.client))))
    print(f"CPU: {name} ({' '.join(flags)}), {available_cores()} cores; model {folder}; {args.users} users x "
          f"{args.turns} turns x {args.tokens} tokens; client {args.client}; medians of {args.repeats} rounds")
    for reuse in (True, False):
        (ttft_r, tps_r), (ttft_0, tps_0) = ((statistics.median(x[0] for x in rounds[(reuse, n)]),
                                             statistics.median(x[1] for x in rounds[(reuse, n)]))
                                            for n in (args.reserved, 0))
        print(f"{'with prefix reuse' if reuse else 'without reuse':<18} --reserved-cores {args.reserved} vs 0: "
              f"{tps_r:,.0f} / {tps_0:,.0f} generated tok/s ({tps_r / tps_0:.2f}x), "
              f"TTFT p50 {ttft_r * 1000:.0f} / {ttft_0 * 1000:.0f} ms ({ttft_0 / ttft_r:.2f}x better)")


if __name__ == "__main__":
    main()
