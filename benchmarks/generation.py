"""Decode speed of the openhermes engine, in one process:

1. engine vs transformers' own `model.generate` (same model, prompt, greedy, same token count);
   target >= 1.0x;
2. 8 prompts batched vs the same 8 one at a time through the engine; target >= 3x aggregate.

    python benchmarks/generation.py [--model runs/tiny/model] [--tokens 128] [--repeats 3]

Without --model (or when it is missing) a from-scratch model of the embedded default's shape is
built: speed does not depend on what the weights learned, and every run decodes a fixed number
of tokens (eos ignored).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import embedded_model_folder

from openhermes.infer.engine import Engine
from openhermes.infer.sampling import PRESETS
from openhermes.infer.sequence import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def scaled(folder: Path, shape: str, device: str, dtype: torch.dtype) -> Engine:
    """A random model of another size with the folder's tokenizer and architecture (for GPU figures:
    the embedded default is too small to show a GPU's speed). shape = hidden,layers,heads,kv_heads,ffn."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hidden, layers, heads, kv, ffn = (int(x) for x in shape.split(","))
    cfg = AutoConfig.from_pretrained(folder)
    cfg.update({"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                "num_key_value_heads": kv, "intermediate_size": ffn, "head_dim": hidden // heads})
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return Engine(model, AutoTokenizer.from_pretrained(folder), name=f"random {shape}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "tiny" / "model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shape", help="hidden,layers,heads,kv_heads,ffn: a random model of this size instead, "
                    "e.g. 4096,32,32,8,14336 for Mistral 7B's")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        folder = embedded_model_folder(args.model, Path(tmp))
        engine = scaled(folder, args.shape, device, dtype) if args.shape else Engine.load(folder)
        where = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} CPU threads"
        print(f"model: {engine.name} ({sum(p.numel() for p in engine.model.parameters()) / 1e6:,.0f}M parameters, "
              f"{dtype}), {where}, {args.tokens} new tokens per prompt")
        topics = ["sums", "a poem about rain", "Python lists", "the moon", "tea", "sorting", "a dragon", "trains"]
        prompts = [engine.chat_prompt([{"role": "user", "content": f"Tell me about {t}."}]) for t in topics]
        prompts = (prompts * (args.batch // len(prompts) + 1))[: args.batch]
        greedy = PRESETS["greedy"]

        def request(p):
            return GenerationRequest(p, greedy, args.tokens, ignore_eos=True)

        one = torch.tensor([prompts[0]], device=engine.device)
        gen_cfg = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                       pad_token_id=engine.tokenizer.pad_token_id)
        with torch.inference_mode():
            engine.model.generate(one, **gen_cfg)  # warm-up
        engine.generate([request(prompts[0])])
        t_hf = best_of(args.repeats, lambda: engine.model.generate(one, **gen_cfg))
        t_ours = best_of(args.repeats, lambda: engine.generate([request(prompts[0])]))
        hf_tps, our_tps = args.tokens / t_hf, args.tokens / t_ours
        print(f"single prompt: engine {our_tps:,.0f} tok/s, transformers generate {hf_tps:,.0f} tok/s "
              f"-> {our_tps / hf_tps:.2f}x (target >= 1.0x)")

        t_seq = best_of(args.repeats, lambda: [engine.generate([request(p)]) for p in prompts])
        t_batch = best_of(args.repeats, lambda: engine.generate([request(p) for p in prompts]))
        total = args.tokens * len(prompts)
        print(f"{len(prompts)} prompts: batched {total / t_batch:,.0f} tok/s, one at a time {total / t_seq:,.0f} "
              f"tok/s -> {t_seq / t_batch:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
