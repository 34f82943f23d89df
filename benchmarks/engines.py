"""Decode speed of the llama.cpp engine (a GGUF export) against the PyTorch engine on the same model
and prompts, in one process. Greedy, a fixed number of new tokens per prompt (eos ignored), prompts one
at a time (single-stream speed; concurrency is measured by serve_load.py), best of N.

    python benchmarks/engines.py [--model runs/tiny/model] [--tokens 128] [--type f16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import embedded_model_folder

from openhermes.export.gguf import export_gguf
from openhermes.infer.engine import Engine
from openhermes.infer.llamacpp import LlamaCppEngine
from openhermes.infer.sampling import PRESETS
from openhermes.infer.sequence import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["sums", "rain", "Python lists", "the moon"]


def tokens_per_second(engine, prompts, tokens: int, repeats: int) -> tuple[float, list[list[int]]]:
    best = float("inf")
    outputs: list[list[int]] = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [engine.generate([GenerationRequest(p, PRESETS["greedy"], tokens, ignore_eos=True)])[0].token_ids
                   for p in prompts]
        best = min(best, time.perf_counter() - start)
    return tokens * len(prompts) / best, outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "tiny" / "model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--type", default="f16", choices=["f16", "q8_0", "q4_0"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = embedded_model_folder(args.model, Path(tmp))
        gguf = export_gguf(folder, Path(tmp) / f"model-{args.type}.gguf", args.type, progress=False)
        torch_engine = Engine.load(folder, device="cpu")
        cpp_engine = LlamaCppEngine(gguf, n_threads=torch.get_num_threads())
        prompts = [torch_engine.chat_prompt([{"role": "user", "content": f"Tell me about {t}."}]) for t in TOPICS]
        assert prompts == [cpp_engine.chat_prompt([{"role": "user", "content": f"Tell me about {t}."}])
                           for t in TOPICS], "the two engines tokenized the prompts differently"
        for e in (torch_engine, cpp_engine):  # warm-up
            tokens_per_second(e, prompts[:1], 8, 1)
        t_torch, out_torch = tokens_per_second(torch_engine, prompts, args.tokens, args.repeats)
        t_cpp, out_cpp = tokens_per_second(cpp_engine, prompts, args.tokens, args.repeats)
        same = sum(a == b for a, b in zip(out_torch, out_cpp, strict=True))
        print(f"model {folder} ({args.type} GGUF), {torch.get_num_threads()} threads, {len(prompts)} prompts x "
              f"{args.tokens} tokens, greedy")
        print(f"PyTorch engine {t_torch:,.0f} tok/s; llama.cpp engine {t_cpp:,.0f} tok/s -> {t_cpp / t_torch:.2f}x; "
              f"identical greedy outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
