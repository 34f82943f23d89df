"""Load on a real `openhermes serve` process over loopback, in one run:

N concurrent streaming clients (each sends its share of the requests back to back) against the same
requests sent one at a time. Prints p50/p95 latency, time to first token, aggregate generated
tokens per second, and the ratio (target >= 3x with 8 clients).

`--engine llama.cpp` serves the model as an f16 GGUF (exported first) with `--parallel CLIENTS`; with
`--llama-server PATH` the same concurrent load also goes to llama.cpp's own server on the same GGUF
(`-np CLIENTS`, same threads and context per sequence; build it with scripts/build_llama_server.sh).
`--repeats N` measures both servers in N alternating rounds (both stay up) and prints medians, so the
machine's speed drift reaches both alike. `--wider` serves a ~160M-parameter Mistral-shaped model with random
weights instead of the embedded default: the tiny model decodes a token in a fraction of a millisecond, so its
figures measure the HTTP path; a bigger model's step is mostly its weights' work, as a 7B model's is, and that is
what batching shares. The clients are one aiohttp session in this process (`--client httpx`: the openai
package's library, twice the CPU time per streamed token on the cores the server needs).

`--engine vllm` (a CUDA GPU and the vllm extra) measures, one server at a time on the same GPU and model: our
torch engine, our server with `--engine vllm`, and with `--vllm-serve` vLLM's own `vllm serve`; `--check-greedy N`
first sends N greedy requests to each and counts the replies equal to our torch engine's. `--mistral-7b TOKENIZER`
serves a Mistral-7B-shaped model with random weights (made on the GPU, _common.mistral_7b_folder) with that
tokenizer folder. `--requests-alone N` sends N requests one at a time (default: --requests).

    python benchmarks/serve_load.py [--model runs/tiny/model] [--clients 8] [--requests 32] [--tokens 64]
                                    [--engine torch|llama.cpp] [--llama-server PATH] [--wider] [--repeats N]
                                    [--client aiohttp|httpx] [--stream-interval N]
                                    [--engine vllm [--vllm-serve] [--mistral-7b TOKENIZER] [--check-greedy N]]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from _common import (
    CLIENTS,
    cpu_model_and_flags,
    embedded_model_folder,
    free_port,
    http_client,
    mistral_7b_folder,
    running_process,
    running_server,
    stream_lines,
    wider_model_folder,
)

from openhermes.infer.threads import available_cores

ROOT = Path(__file__).resolve().parents[1]
_RUNS = itertools.count(1)


async def one_request(client, url: str, i: str, tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": f"Request {i}: tell me a story."}], "stream": True,
            "max_tokens": tokens, "ignore_eos": True, "temperature": 0, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    usage = None
    async for line in stream_lines(client, url + "/v1/chat/completions", body, f"request {i}"):
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[6:])
        if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - start
        usage = chunk.get("usage") or usage
    if usage["completion_tokens"] != tokens:
        raise SystemExit(f"{url}: {usage['completion_tokens']} tokens instead of {tokens} (eos not ignored?)")
    return {"latency": time.perf_counter() - start, "ttft": first or 0.0, "tokens": usage["completion_tokens"]}


async def run(url: str, n_requests: int, clients: int, tokens: int, keepalive: bool = True,
              client: str = "aiohttp") -> tuple[list[dict], float]:
    # Every request's text is new: llama-server keeps earlier prompts' KV in host memory (--cache-ram), so a prompt
    # sent again would be a cache hit there and not here, which is not what clients do.
    nonce = next(_RUNS)
    queue = [f"{nonce}.{i}" for i in range(n_requests)]
    results: list[dict] = []

    async def worker(client):
        while queue:
            results.append(await one_request(client, url, queue.pop(), tokens))

    start = time.perf_counter()
    # keepalive=False: a new connection per request (llama-server closes kept-alive streaming connections
    # without notice now and then, which the next request on them would fail on)
    async with http_client(client, keepalive) as session:
        await asyncio.gather(*(worker(session) for _ in range(clients)))
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


def measure(url: str, args, label: str, keepalive: bool = True) -> tuple[float, float]:
    """(one-at-a-time tok/s, concurrent tok/s) against a ready server."""
    asyncio.run(run(url, 2, 1, 8, keepalive, args.client))  # warm-up
    alone = args.requests_alone or args.requests
    seq = summary(f"{label}, 1 client", *asyncio.run(run(url, alone, 1, args.tokens, keepalive, args.client)))
    con = summary(f"{label}, {args.clients} clients", *asyncio.run(run(url, args.requests, args.clients,
                                                                           args.tokens, keepalive, args.client)))
    return seq, con


async def greedy_replies(url: str, n: int, tokens: int = 32) -> list[str]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> str:
            body = {"messages": [{"role": "user", "content": f"Greedy check {i}: tell me a story."}],
                    "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
            async with session.post(url + "/v1/chat/completions", json=body) as r:
                if r.status != 200:
                    raise SystemExit(f"{url}: greedy request {i} answered {r.status}: {await r.text()}")
                return (await r.json())["choices"][0]["message"]["content"]
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def compare_vllm(folder: Path, args) -> None:
    """Our torch engine, our server on vLLM, and vLLM's own server, one after another on the same GPU."""
    batch = str(max(16, args.clients))
    servers = [("openhermes torch", lambda: running_server(folder, "--device", "cuda", "--max-batch-size", batch,
                                                           ready_s=300)),
               ("openhermes vllm", lambda: running_server(folder, "--engine", "vllm", "--max-batch-size", batch,
                                                          "--gpu-memory-utilization", "0.85", ready_s=900))]
    if args.vllm_serve:
        port = free_port()
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--port", str(port),
               "--gpu-memory-utilization", "0.85", "--max-num-seqs", batch, "--enable-prefix-caching", "--dtype", "bfloat16"]
        servers.append(("vllm serve", lambda: running_process(cmd, port, ready_s=900)))
    figures, replies = {}, {}
    for label, start in servers:
        t0 = time.perf_counter()
        with start() as url:
            print(f"{label}: ready in {time.perf_counter() - t0:.0f} s", flush=True)
            if args.check_greedy:
                replies[label] = asyncio.run(greedy_replies(url, args.check_greedy))
            figures[label] = measure(url, args, label)
    if replies:
        ref = replies["openhermes torch"]
        for label, got in replies.items():
            same = sum(a == b for a, b in zip(ref, got, strict=True))
            print(f"greedy replies equal to our torch engine's: {label} {same}/{len(ref)}")
        if len(replies) > 2:
            same = sum(a == b for a, b in zip(replies["openhermes vllm"], replies["vllm serve"], strict=True))
            print(f"greedy replies, our vllm engine vs vllm serve: {same}/{len(ref)}")
    torch_seq, torch_con = figures["openhermes torch"]
    ours_seq, ours_con = figures["openhermes vllm"]
    print(f"openhermes vllm vs openhermes torch: 1 client {ours_seq / torch_seq:.2f}x, {args.clients} clients "
          f"{ours_con / torch_con:.2f}x tok/s")
    if "vllm serve" in figures:
        ref_seq, ref_con = figures["vllm serve"]
        print(f"openhermes vllm vs vllm serve: 1 client {ours_seq / ref_seq:.2f}x, {args.clients} clients "
              f"{ours_con / ref_con:.2f}x tok/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "tiny" / "model")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--engine", choices=["torch", "llama.cpp", "vllm"], default="torch")
    ap.add_argument("--vllm-serve", action="store_true", help="with --engine vllm: also vLLM's own server")
    ap.add_argument("--mistral-7b", type=Path, metavar="TOKENIZER",
                    help="a Mistral-7B-shaped model with random weights and this tokenizer folder (a CUDA GPU)")
    ap.add_argument("--check-greedy", type=int, default=0, help="with --engine vllm: greedy replies compared")
    ap.add_argument("--requests-alone", type=int, default=0, help="requests sent one at a time (default: --requests)")
    ap.add_argument("--llama-server", type=Path, help="llama.cpp's llama-server binary (with --engine llama.cpp)")
    ap.add_argument("--wider", action="store_true", help="a ~160M-parameter random Mistral-shaped model")
    ap.add_argument("--client", choices=CLIENTS, default="aiohttp",
                    help="the clients' HTTP library (they share the cores with the server; httpx takes about twice "
                         "aiohttp's CPU time per token)")
    ap.add_argument("--stream-interval", type=int, default=1, help="our server's --stream-interval")
    ap.add_argument("--repeats", type=int, default=1, help="llama.cpp: rounds, each measuring both servers in turn")
    args = ap.parse_args()
    interval = ("--stream-interval", str(args.stream_interval))  # ours only: llama-server streams every token
    name, flags = cpu_model_and_flags()
    threads = available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        folder = embedded_model_folder(args.model, Path(tmp))
        if args.wider:
            folder = wider_model_folder(folder, Path(tmp) / "wider", hidden=1024, layers=12)
        if args.mistral_7b:
            folder = mistral_7b_folder(args.mistral_7b, Path(tmp) / "mistral-7b")
        print(f"CPU: {name} ({' '.join(flags)}), {threads} threads; model {folder}; {args.requests} requests x "
              f"{args.tokens} tokens (greedy, eos ignored); client {args.client}; our --stream-interval "
              f"{args.stream_interval}")
        if args.engine == "vllm":
            import torch

            print(f"GPU: {torch.cuda.get_device_name()}")
            compare_vllm(folder, args)
            return
        if args.engine == "torch":
            with running_server(folder, "--max-batch-size", str(max(16, args.clients)), *interval) as url:
                seq, con = measure(url, args, "openhermes torch")
            print(f"aggregate throughput: {con / seq:.2f}x with {args.clients} concurrent clients (target >= 3x)")
            return
        from openhermes.export.gguf import export_gguf

        gguf = export_gguf(folder, Path(tmp) / "model-f16.gguf", "f16", progress=False)
        with ExitStack() as servers:
            ours = servers.enter_context(running_server(gguf, "--engine", "llama.cpp", "--parallel", str(args.clients),
                                                        *interval))
            ref = None
            if args.llama_server is not None:
                from gguf import GGUFReader

                window = int(GGUFReader(gguf).get_field("llama.context_length").contents())
                port = free_port()
                cmd = [str(args.llama_server), "-m", str(gguf), "--port", str(port), "-np", str(args.clients),
                       "-c", str(window * args.clients), "-t", str(threads), "-tb", str(threads), "--no-webui",
                       "--log-disable"]
                ref = servers.enter_context(running_process(cmd, port))
            # Both servers stay up and are measured in turns, so the machine's drift reaches both alike.
            rounds = []
            for r in range(args.repeats):
                print(f"-- round {r + 1} of {args.repeats}")
                seq, con = measure(ours, args, "openhermes llama.cpp", keepalive=False)
                ref_seq, ref_con = measure(ref, args, "llama-server", keepalive=False) if ref else (None, None)
                rounds.append((seq, con, ref_seq, ref_con))
        med = [statistics.median(x) if x[0] is not None else None for x in zip(*rounds, strict=True)]
        print(f"aggregate throughput (median of {args.repeats}): {med[1] / med[0]:.2f}x with {args.clients} concurrent "
              f"clients (target >= 3x); per round: {', '.join(f'{c / s:.2f}x' for s, c, _, _ in rounds)}")
        if ref is not None:
            print(f"llama-server: {med[3] / med[2]:.2f}x; openhermes llama.cpp engine vs llama-server, "
                  f"{args.clients} clients: {med[1] / med[3]:.2f}x (1 client: {med[0] / med[2]:.2f}x); per round: "
                  f"{', '.join(f'{c / rc:.2f}x' for _, c, _, rc in rounds)}")

if __name__ == "__main__":
    main()
