"""Does one client's oversized prompt cost the other clients anything? A real `openhermes serve` (bodies up to
64 MB read, so the prompt checks are what refuses them) measured idle, then with 1 and with 8 prompts of 10 MB in
flight, sent again as soon as answered: /health latency (p50, max) and a plain streamed request's time to first
token (median of several), each as a ratio to the idle figure (goal: within 2x).

Two kinds of 10 MB prompt: `refused` (no truncation: refused before tokenizing, it cannot fit the context) and
`truncated` (`truncation_length` set: the server tokenizes all of it, off the event loop, and keeps its end).

Each flooding client is its own process, apart from the probe's; the table gives the CPU the server and the clients
used (cores busy) while the probe ran. At niceness 0 the clients take the server's cores as equals; at 19 they stand
in for clients on other machines, which is where a server's users and attackers are.

    python benchmarks/oversized_prompts.py [--model runs/tiny/model] [--mb 10] [--pings 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import cpu_model_and_flags, embedded_model_folder, running_server

MB = 2**20


async def ttft(client, url: str) -> float:
    body = {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 4, "stream": True,
            "temperature": 0}
    start = time.perf_counter()
    async with client.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for raw in r.content:
            line = raw.decode()
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return time.perf_counter() - start
    return time.perf_counter() - start


async def probe(url: str, pings: int) -> dict:
    """/health round trips and every 4th a streamed request's time to first token, from a client of its own."""
    import aiohttp

    health, first = [], []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1200)) as client:
        for i in range(pings):
            start = time.perf_counter()
            async with client.get(url + "/health") as r:
                assert r.status == 200
            health.append(time.perf_counter() - start)
            if i % 4 == 0:
                first.append(await ttft(client, url))
            await asyncio.sleep(0.02)
    return {"health_p50": statistics.median(health), "health_max": max(health), "ttft": statistics.median(first)}


ANSWERS = ("200", "400", "413", "closed")  # what the flooding clients count


def flood_client(url: str, body: bytes, route: str, nice: int, stop, counts) -> None:
    """One flooding client in its own process (so its sending does not slow the probe's event loop), resending
    `body` as soon as each answer arrives until `stop` is set; `nice` > 0 stands in for a client on another
    machine (its CPU is not the server's)."""
    import aiohttp

    os.nice(nice)

    async def loop() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1200)) as client:
            while not stop.is_set():
                try:
                    async with client.post(url + route, data=body, headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        key = str(r.status)
                except aiohttp.ClientError:  # a 413 answered mid-upload may close the connection under the client
                    key = "closed"
                with counts.get_lock():
                    counts[ANSWERS.index(key)] += 1

    asyncio.run(loop())


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def measure(url: str, server_pid: int, kind: str, n: int, mb: float, pings: int, nice: int) -> tuple[dict, dict]:
    """The probe's figures with `n` flooding clients, the answers they got, and the CPU the server and the
    flooders used meanwhile (cores busy: CPU seconds over the probe's wall time)."""
    text = "word " * int(mb * MB / 5)
    prompt = {"prompt": text, "max_tokens": 4}
    if kind == "truncated":
        prompt["truncation_length"] = 512
    body = json.dumps(prompt).encode()
    ctx = mp.get_context("spawn")
    stop, counts = ctx.Event(), ctx.Array("i", len(ANSWERS))
    floods = [ctx.Process(target=flood_client, args=(url, body, "/v1/completions", nice, stop, counts))
              for _ in range(n)]
    for f in floods:
        f.start()
    time.sleep(2.0 if n else 0)  # the clients have started and the big bodies are on their way
    server_before, flood_before = cpu_seconds(server_pid), [cpu_seconds(f.pid) for f in floods]
    start = time.perf_counter()
    figures = asyncio.run(probe(url, pings))
    wall = time.perf_counter() - start
    figures["server_cpu"] = (cpu_seconds(server_pid) - server_before) / wall
    figures["flood_cpu"] = sum(cpu_seconds(f.pid) - b for f, b in zip(floods, flood_before, strict=True)) / wall
    stop.set()
    for f in floods:
        f.join()
    return figures, {a: c for a, c in zip(ANSWERS, counts[:], strict=True) if c}


def server_pid() -> int:
    import psutil

    (server,) = [p for p in psutil.Process().children() if "serve" in p.cmdline()]
    return server.pid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("runs/tiny/model"))
    ap.add_argument("--mb", type=float, default=10, help="size of each oversized prompt")
    ap.add_argument("--pings", type=int, default=40, help="/health probes per phase (a streamed request every 4th)")
    ap.add_argument("--max-body-mb", type=float, default=64, help="the server's limit: 64 reads the bodies, so the "
                    "prompt checks refuse them; serve's default 4 answers them 413 from their Content-Length")
    ap.add_argument("--nice", default="0,19", help="the flooding clients' niceness, one table row per value: 0 "
                    "shares the cores with the server as an equal; 19 stands in for clients on other machines")
    args = ap.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; vector flags: {' '.join(flags)}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        folder = embedded_model_folder(args.model, Path(tmp))
        print(f"serve --max-body-mb {args.max_body_mb:g}")
        with running_server(folder, "--max-body-mb", str(args.max_body_mb)) as url:
            pid = server_pid()
            idle, _ = measure(url, pid, "refused", 0, args.mb, args.pings, 0)
            print(f"\n{'phase':<34}{'health p50':>12}{'health max':>12}{'TTFT':>10}{'ratio p50':>11}"
                  f"{'ratio TTFT':>12}{'server CPU':>12}{'clients CPU':>13}  answers")

            def row(label: str, fig: dict, counts: dict) -> None:
                print(f"{label:<34}{fig['health_p50'] * 1e3:>10.1f}ms{fig['health_max'] * 1e3:>10.1f}ms"
                      f"{fig['ttft'] * 1e3:>8.1f}ms{fig['health_p50'] / idle['health_p50']:>10.2f}x"
                      f"{fig['ttft'] / idle['ttft']:>11.2f}x{fig['server_cpu']:>11.2f}c{fig['flood_cpu']:>12.2f}c"
                      f"  {counts}")

            row("idle", idle, {})
            for nice in (int(v) for v in args.nice.split(",")):
                for kind in ("refused", "truncated"):
                    for n in (1, 8):
                        fig, counts = measure(url, pid, kind, n, args.mb, args.pings, nice)
                        row(f"{n} x {args.mb:g} MB {kind}, nice {nice}", fig, counts)


if __name__ == "__main__":
    main()
