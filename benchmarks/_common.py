"""Shared helpers for the benchmark scripts: synthetic data with an OpenHermes-like length mix."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# The ChatML template with TRL's {% generation %} markers around what we train (same text, same labels).
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

WORDS = ("the of and to in is it you that he was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their "
         "time if will way about many then them write would like so these her long make thing see him two has look "
         "more day could go come did number sound no most people my over know water than call first who may down "
         "side been now find any new work part take get place made live where after back little only round man year "
         "def return import class print self value list data function python code error file").split()


def synthetic_sharegpt(path: Path, n: int, seed: int = 0) -> Path:
    """n ShareGPT rows: optional system prompt, 1-4 exchanges, long-tailed lengths (median ~350 words)."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            total = int(np.clip(rng.lognormal(5.8, 0.8), 20, 3000))
            turns = int(rng.integers(1, 5))
            conv = []
            if rng.random() < 0.3:
                conv.append({"from": "system", "value": "You are Hermes, a helpful assistant."})
            for _ in range(turns):
                q = max(3, int(total * 0.3 / turns))
                a = max(3, int(total * 0.7 / turns))
                conv.append({"from": "human", "value": f"#{i} " + " ".join(rng.choice(words, q))})
                conv.append({"from": "gpt", "value": " ".join(rng.choice(words, a))})
            f.write(json.dumps({"conversations": conv}) + "\n")
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timer(results: dict, name: str):
    t = time.perf_counter()
    yield
    results[name] = time.perf_counter() - t


class PeakRSS:
    """Peak resident memory above the level at start, sampled from /proc every 20 ms."""

    def __init__(self) -> None:
        import threading

        self._stop = threading.Event()
        self.start = self._rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return (self.peak - self.start) / 2**20


def embedded_model_folder(path: Path | None, tmp: Path) -> Path:
    """`path` if it exists (e.g. runs/tiny/model after `openhermes train`), else a from-scratch model of
    the embedded default's shape with the ChatML tokens: speed does not depend on what weights learned."""
    if path is not None and path.exists():
        return path
    from openhermes.config import load_recipe
    from openhermes.model.load import load_model, load_tokenizer
    from openhermes.train.base_model import ensure_base_model

    base = ensure_base_model(load_recipe("tiny"))
    tok = load_tokenizer(base, "chatml")
    model, _ = load_model(base, tok)
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    return tmp / "model"


def wider_model_folder(tokenizer_folder: Path, out: Path, hidden: int = 512, layers: int = 8) -> Path:
    """A Mistral-shaped model with random weights (about 28M parameters at the defaults, 40x the embedded
    default's) and the embedded default's tokenizer: big enough that a decode step reads megabytes of weights
    and a long prompt's prefill is real work, as for a 7B model, so serving figures are the model's and not
    the HTTP path's. Speed does not depend on what the weights learned."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tokenizer_folder)
    config.update({"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
                   "num_key_value_heads": hidden // 256, "head_dim": 64, "intermediate_size": hidden * 7 // 2,
                   # random replies re-tokenize longer than they were generated: room for a 20-turn history
                   "max_position_embeddings": 4096})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(out)
    return out


def mistral_tokenizer_folder(out: Path, vocab_size: int = 32000) -> Path:
    """A tokenizer of Mistral-7B's size and layout for a 7B-shaped model with random weights: the embedded
    default's BPE (model/tiny.py: <unk> <s> </s>, 256 byte tokens, merges) with `vocab_size` tokens, learned from
    Python's own sources and docs (text of every kind that is on any machine), plus OpenHermes 2.5's two ChatML
    tokens and template: 32,002 tokens, as OpenHermes 2.5's."""
    import sysconfig
    import tempfile

    from transformers import PreTrainedTokenizerFast

    from openhermes.model.load import load_tokenizer
    from openhermes.model.tiny import train_tokenizer

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    texts = (f.read_text(encoding="utf-8", errors="replace") for f in files)
    base = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(texts, vocab_size), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    with tempfile.TemporaryDirectory() as tmp:  # load_tokenizer adds the ChatML tokens to a saved folder
        base.save_pretrained(tmp)
        tok = load_tokenizer(tmp, "chatml")
    tok.save_pretrained(out)
    return out


def mistral_7b_folder(tokenizer_folder: Path, out: Path, lm_head_scale: float = 10.0) -> Path:
    """Mistral-7B's shape (OpenHermes 2.5's config: 32 layers, hidden 4096, 32 query / 8 KV heads, MLP 14336, the
    tokenizer's vocabulary) with random weights in bf16, made on the GPU. lm_head is scaled up (`lm_head_scale`)
    so that greedy choices have margins bf16 rounding in two engines' different kernels does not flip, as a trained
    model's have; speed does not depend on the weights."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_folder)
    config = MistralConfig(vocab_size=len(tok), hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                           rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight.mul_(lm_head_scale)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and its vector instruction sets (AVX2, AVX-512, AMX): README figures name them."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return model, [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma",)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(folder: Path, *serve_args: str, ready_s: float = 120) -> Iterator[str]:
    """A real `openhermes serve FOLDER` process on a free loopback port, ready (its /health answers);
    yields its URL and stops it afterwards."""
    port = free_port()
    with running_process([sys.executable, "-m", "openhermes.cli", "serve", str(folder), "--port", str(port),
                          *serve_args], port, ready_s) as url:
        yield url


@contextmanager
def running_process(cmd: list[str], port: int, ready_s: float = 120) -> Iterator[str]:
    """A server command listening on loopback `port`, ready within `ready_s` (its /health answers 200); yields
    its URL."""
    import httpx

    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(cmd, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    try:
        for _ in range(int(ready_s / 0.2)):
            if server.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited with {server.returncode}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(60)  # vLLM's server takes a while to free the GPU
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# The simulated users' HTTP client. They share the machine's cores with the server they measure; aiohttp parses
# HTTP in C, httpx (what the openai package uses) in Python, at about twice the CPU time per streamed token.
CLIENTS = ("aiohttp", "httpx")


def http_client(kind: str = "aiohttp", keepalive: bool = True):
    """An async client session (`async with` it); keepalive=False opens a new connection per request."""
    if kind == "httpx":
        import httpx

        return httpx.AsyncClient(timeout=1200, limits=httpx.Limits(max_keepalive_connections=None if keepalive else 0))
    import aiohttp

    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1200),
                                 connector=aiohttp.TCPConnector(limit=0, force_close=not keepalive))


async def stream_lines(client, url: str, body: dict, who: str) -> AsyncIterator[str]:
    """The lines of a streamed POST response, with either client; a status other than 200 stops the benchmark."""
    import httpx

    if isinstance(client, httpx.AsyncClient):
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                raise SystemExit(f"{who}: {r.status_code} {(await r.aread()).decode()[:300]}")
            async for line in r.aiter_lines():
                yield line
        return
    async with client.post(url, json=body) as r:
        if r.status != 200:
            raise SystemExit(f"{who}: {r.status} {(await r.read()).decode()[:300]}")
        async for raw in r.content:
            yield raw.decode().rstrip("\r\n")
