"""The workload roleplay and chat clients make: each turn resends the whole conversation (SillyTavern sends the full
history for every reply). 8 simulated users, each a 20-turn roleplay whose history grows to ~2k tokens, 64-token
replies (`min_tokens` = `max_tokens`: each reply is 64 tokens of text that ends where a chat reply would, so the
next turn resends exactly it), all at once against a real `openhermes serve` process over loopback; with prefix
reuse (the default) and without (`--prefix-cache-mb 0`), both servers up, measured in `--repeats` alternating
rounds (new conversations each round). The users are one aiohttp client in this process (its HTTP parser is C; the
users share the 2 cores with the server, and with httpx, whose parsing is Python, they took 2.0-2.4 s of CPU a
round against 0.7-0.9: `--client httpx`; each round prints it). `--in-process` runs the same conversations
straight on two engines' schedulers in this process (no HTTP, no client sharing the cores): the serving side's
share. Prints time to first
token (p50, p95) and aggregate generated tokens/s per round, and the medians' ratios (targets: TTFT p50 >= 5x
better, tokens/s >= 2x).

What reuse saves is prefill work, so the ratios depend on how much a prefill costs next to a decode step and a
request's fixed cost: on the embedded default a 1k-token prefill is ~36 ms, ~12 decode steps of 8 rows
(benchmarks/decode_costs.py). `--wider`
runs a ~28M-parameter Mistral-shaped model with random weights (speed does not depend on what weights learned),
where prefill is real work, as it is for every model people chat with.

    python benchmarks/chat_workload.py [--model runs/tiny/model] [--users 8] [--turns 20] [--tokens 64] [--wider]
                                       [--repeats 3] [--stream-interval 4] [--in-process]
                                       [--client aiohttp|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from _common import (
    CLIENTS,
    WORDS,
    cpu_model_and_flags,
    embedded_model_folder,
    http_client,
    running_server,
    stream_lines,
    wider_model_folder,
)

ROOT = Path(__file__).resolve().parents[1]


def persona(user: int, round_: int = 0) -> str:
    """A character card's worth of system prompt (~230 tokens), different per user and round."""
    words = [WORDS[(user * 7 + i * 3 + round_ * 13) % len(WORDS)] for i in range(90)]
    return f"You are Aria {user}-{round_}, a knight of the northern march. Persona: " + " ".join(words) + "."


async def conversation(client, url: str, user: int, turns: int, tokens: int, round_: int = 0) -> list[dict]:
    history = [{"role": "system", "content": persona(user, round_)}]
    out = []
    for t in range(turns):
        history.append({"role": "user", "content": f"Turn {t}: I wait, gate {user}."})
        body = {"messages": history, "stream": True, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0,
                "stream_options": {"include_usage": True}}
        start, first, usage, text = time.perf_counter(), None, None, []
        async for line in stream_lines(client, url + "/v1/chat/completions", body, f"user {user} turn {t}"):
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and (piece := chunk["choices"][0]["delta"].get("content")):
                first = first if first is not None else time.perf_counter() - start
                text.append(piece)
            usage = chunk.get("usage") or usage
        history.append({"role": "assistant", "content": "".join(text)})
        out.append({"ttft": first or 0.0, "tokens": usage["completion_tokens"], "prompt": usage["prompt_tokens"]})
    return out


async def workload(url: str, users: int, turns: int, tokens: int, round_: int = 0,
                   client: str = "aiohttp") -> tuple[list[dict], float]:
    start = time.perf_counter()
    async with http_client(client) as session:
        per_user = await asyncio.gather(*(conversation(session, url, u, turns, tokens, round_) for u in range(users)))
    return [r for rs in per_user for r in rs], time.perf_counter() - start


def in_process(scheduler, users: int, turns: int, tokens: int, round_: int = 0) -> tuple[list[dict], float]:
    """The same conversations submitted straight to a Scheduler (no HTTP, no client process): what the engine does
    without the serving side. Each user's next turn is submitted when its reply is done; a user whose next prompt
    would not fit the context window stops there."""
    from openhermes.infer.sampling import PRESETS
    from openhermes.infer.sequence import ContextWindowError, GenerationRequest

    engine = scheduler.engine
    out: list[dict] = []
    finished = threading.Semaphore(0)

    def turn(user: int, t: int, history: list[dict]) -> None:
        history = [*history, {"role": "user", "content": f"Turn {t}: I wait, gate {user}."}]
        try:
            ids = engine.chat_prompt(history) if t < turns else None
        except ContextWindowError:
            ids = None
        if ids is None:
            finished.release()
            return
        start, first = time.perf_counter(), []

        def on_delta(text: str) -> None:
            if text and not first:
                first.append(time.perf_counter() - start)

        def on_done(result) -> None:
            out.append({"ttft": first[0] if first else 0.0, "tokens": result.completion_tokens, "prompt": len(ids)})
            turn(user, t + 1, [*history, {"role": "assistant", "content": result.text}])

        scheduler.submit(GenerationRequest(ids, PRESETS["greedy"], tokens, min_tokens=tokens), on_delta, on_done,
                         lambda message: print(f"user {user} turn {t}: {message}"))

    start = time.perf_counter()
    for u in range(users):
        turn(u, 0, [{"role": "system", "content": persona(u, round_)}])
    for _ in range(users):
        finished.acquire()
    return out, time.perf_counter() - start


def summary(name: str, results: list[dict], wall: float) -> tuple[float, float]:
    ttft = sorted(r["ttft"] for r in results)
    tps = sum(r["tokens"] for r in results) / wall
    p95 = ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))]
    print(f"{name:<22} ttft p50 {statistics.median(ttft) * 1000:7.0f} ms  p95 {p95 * 1000:7.0f} ms   "
          f"{tps:7,.0f} generated tok/s   wall {wall:6.1f} s")
    return statistics.median(ttft), tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "tiny" / "model")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--wider", action="store_true", help="a ~28M-parameter random Mistral-shaped model")
    ap.add_argument("--repeats", type=int, default=1, help="rounds, each measuring both servers in turn")
    ap.add_argument("--stream-interval", type=int, default=1, help="the servers' --stream-interval (both)")
    ap.add_argument("--client", choices=CLIENTS, default="aiohttp",
                    help="the simulated users' HTTP client; it shares the cores with the server, and httpx (pure-Python"
                         " HTTP parsing, what the openai package uses) takes twice aiohttp's CPU time")
    ap.add_argument("--in-process", action="store_true",
                    help="the same workload straight on the engine's scheduler in this process: no HTTP, no client")
    args = ap.parse_args()
    name, flags = cpu_model_and_flags()
    rounds: dict[str, list[tuple[float, float]]] = {"with prefix reuse": [], "without": []}
    client_cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as servers:
        folder = embedded_model_folder(args.model, Path(tmp))
        if args.wider:
            folder = wider_model_folder(folder, Path(tmp) / "wider")
        batch = str(max(16, args.users))
        if args.in_process:
            from openhermes.infer.engine import Engine
            from openhermes.infer.scheduler import Scheduler

            targets = {label: Scheduler(Engine.load(folder, device="cpu", prefix_cache_mb=mb), int(batch))
                       for label, mb in (("with prefix reuse", 1024), ("without", 0))}
            for scheduler in targets.values():
                servers.callback(scheduler.stop)

            def run(scheduler, users, turns, tokens, round_):
                return in_process(scheduler, users, turns, tokens, round_)
        else:
            targets = {label: servers.enter_context(running_server(folder, "--max-batch-size", batch,
                                                                   "--prefix-cache-mb", str(mb),
                                                                   "--stream-interval", str(args.stream_interval)))
                       for label, mb in (("with prefix reuse", 1024), ("without", 0))}

            def run(url, users, turns, tokens, round_):
                cpu = time.process_time()  # this process is the users' client only: the servers are processes
                out = asyncio.run(workload(url, users, turns, tokens, round_, args.client))
                client_cpu.append(time.process_time() - cpu)
                return out
        for target in targets.values():
            run(target, 1, 1, 8, -1)  # warm-up (a conversation no round uses)
        for r in range(args.repeats):
            print(f"-- round {r + 1} of {args.repeats}")
            for label, target in targets.items():
                results, wall = run(target, args.users, args.turns, args.tokens, r)
                rounds[label].append(summary(label, results, wall))
                if client_cpu:
                    print(f"{'':<22} the users' client took {client_cpu[-1]:.1f} s of CPU")
    prompts = [r["prompt"] for r in results]
    how = ("in process, no HTTP" if args.in_process
           else f"--stream-interval {args.stream_interval}, client {args.client}")
    print(f"CPU: {name} ({' '.join(flags)}); model {folder}; {args.users} users x {args.turns} turns x {args.tokens} "
          f"tokens; {how}; prompts {min(prompts)}..{max(prompts)} tokens "
          f"(mean {statistics.mean(prompts):.0f})")
    (ttft_w, tps_w), (ttft_c, tps_c) = ((statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
                                        for v in rounds.values())
    print(f"medians of {args.repeats}: ttft p50 {ttft_w * 1000:.0f} ms with reuse, {ttft_c * 1000:.0f} ms without; "
          f"{tps_w:,.0f} / {tps_c:,.0f} generated tok/s")
    print(f"time to first token p50: {ttft_c / ttft_w:.2f}x better (target >= 5x); "
          f"aggregate tokens/s: {tps_w / tps_c:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
