"""Does one client's oversized prompt cost the other clients anything? A real `openhermes serve` (bodies up to
64 MB read, so the prompt checks are what refuses them) measured idle, then with 1 and with 8 prompts of 10 MB in
flight, sent again as soon as answered: /health latency (p50, max) and a plain streamed request's time to first
token (median of several), each as a ratio to the idle figure (goal: within 2x).

Two kinds of 10 MB prompt: `refused` (no truncation: refused before tokenizing, it cannot fit the context) and
`truncated` (`truncation_length` set: the server tokenizes all of it, off the event loop, and keeps its end).

    python benchmarks/oversized_prompts.py [--model runs/tiny/model] [--mb 10] [--pings 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def probe(client, url: str, pings: int) -> dict:
    health, first = [], []
    for i in range(pings):
        start = time.perf_counter()
        async with client.get(url + "/health") as r:
            assert r.status == 200
        health.append(time.perf_counter() - start)
        if i % 4 == 0:
            first.append(await ttft(client, url))
        await asyncio.sleep(0.02)
    return {"health_p50": statistics.median(health), "health_max": max(health), "ttft": statistics.median(first)}


async def flood(client, url: str, body: bytes, route: str, stop: asyncio.Event, counts: dict) -> None:
    import aiohttp

    while not stop.is_set():
        try:
            async with client.post(url + route, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                counts[r.status] = counts.get(r.status, 0) + 1
        except aiohttp.ClientError:  # a 413 answered mid-upload may close the connection under the client
            counts["closed"] = counts.get("closed", 0) + 1


async def measure(url: str, kind: str, n: int, mb: float, pings: int) -> tuple[dict, dict]:
    import aiohttp

    text = "word " * int(mb * MB / 5)
    prompt = {"prompt": text, "max_tokens": 4}
    if kind == "truncated":
        prompt["truncation_length"] = 512
    body = json.dumps(prompt).encode()
    counts: dict = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1200)) as client:
        stop = asyncio.Event()
        floods = [asyncio.create_task(flood(client, url, body, "/v1/completions", stop, counts)) for _ in range(n)]
        await asyncio.sleep(1.0 if n else 0)  # the big bodies are on their way
        figures = await probe(client, url, pings)
        stop.set()
        await asyncio.gather(*floods)
    return figures, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("runs/tiny/model"))
    ap.add_argument("--mb", type=float, default=10, help="size of each oversized prompt")
    ap.add_argument("--pings", type=int, default=40, help="/health probes per phase (a streamed request every 4th)")
    ap.add_argument("--max-body-mb", type=float, default=64, help="the server's limit: 64 reads the bodies, so the "
                    "prompt checks refuse them; serve's default 4 answers them 413 from their Content-Length")
    args = ap.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; vector flags: {' '.join(flags)}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = embedded_model_folder(args.model, Path(tmp))
        print(f"serve --max-body-mb {args.max_body_mb:g}")
        with running_server(folder, "--max-body-mb", str(args.max_body_mb)) as url:
            idle, _ = asyncio.run(measure(url, "refused", 0, args.mb, args.pings))
            print(f"\n{'phase':<26}{'health p50':>12}{'health max':>12}{'TTFT':>10}{'ratio p50':>11}{'ratio TTFT':>12}"
                  "  answers")
            print(f"{'idle':<26}{idle['health_p50'] * 1e3:>10.1f}ms{idle['health_max'] * 1e3:>10.1f}ms"
                  f"{idle['ttft'] * 1e3:>8.1f}ms{1:>10.2f}x{1:>11.2f}x")
            for kind in ("refused", "truncated"):
                for n in (1, 8):
                    fig, counts = asyncio.run(measure(url, kind, n, args.mb, args.pings))
                    label = f"{n} x {args.mb:g} MB {kind}"
                    print(f"{label:<26}{fig['health_p50'] * 1e3:>10.1f}ms{fig['health_max'] * 1e3:>10.1f}ms"
                          f"{fig['ttft'] * 1e3:>8.1f}ms{fig['health_p50'] / idle['health_p50']:>10.2f}x"
                          f"{fig['ttft'] / idle['ttft']:>11.2f}x  {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
