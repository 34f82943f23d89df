"""Load on a real `openhermes serve` process over loopback, in one run:

N concurrent streaming clients (each sends its share of the requests back to back) against the same
requests sent one at a time. Prints p50/p95 latency, time to first token, aggregate generated
tokens per second, and the ratio (target >= 3x with 8 clients).

    python benchmarks/serve_load.py [--model runs/tiny/model] [--clients 8] [--requests 32] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from _common import embedded_model_folder, running_server

ROOT = Path(__file__).resolve().parents[1]


async def one_request(client: httpx.AsyncClient, url: str, i: int, tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": f"Request {i}: tell me a story."}], "stream": True,
            "max_tokens": tokens, "ignore_eos": True, "temperature": 0, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    usage = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            usage = chunk.get("usage") or usage
    return {"latency": time.perf_counter() - start, "ttft": first or 0.0, "tokens": usage["completion_tokens"]}


async def run(url: str, n_requests: int, clients: int, tokens: int) -> tuple[list[dict], float]:
    queue = list(range(n_requests))
    results: list[dict] = []

    async def worker(client):
        while queue:
            results.append(await one_request(client, url, queue.pop(), tokens))

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return results, time.perf_counter() - start


def summary(name: str, results: list[dict], wall: float) -> float:
    lat = sorted(r["latency"] for r in results)
    ttft = sorted(r["ttft"] for r in results)
    tps = sum(r["tokens"] for r in results) / wall

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    print(f"{name:<14} latency p50 {statistics.median(lat):6.2f} s  p95 {pct(lat, 0.95):6.2f} s   "
          f"ttft p50 {statistics.median(ttft) * 1000:6.0f} ms  p95 {pct(ttft, 0.95) * 1000:6.0f} ms   "
          f"{tps:8,.0f} tok/s")
    return tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "tiny" / "model")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = embedded_model_folder(args.model, Path(tmp))
        with running_server(folder, "--max-batch-size", str(max(16, args.clients))) as url:
            asyncio.run(run(url, 2, 1, 8))  # warm-up
            print(f"model {folder}; {args.requests} requests x {args.tokens} tokens (greedy, eos ignored)")
            seq = summary("one at a time", *asyncio.run(run(url, args.requests, 1, args.tokens)))
            con = summary(f"{args.clients} clients", *asyncio.run(run(url, args.requests, args.clients, args.tokens)))
            print(f"aggregate throughput: {con / seq:.2f}x with {args.clients} concurrent clients (target >= 3x)")

if __name__ == "__main__":
    main()
