"""Training speed on a GPU at the cards' scale: a Mistral-7B-shaped model (random weights, 32k + 2 vocabulary),
sequence_len 4096, packed rows of several samples, through openhermes's own trainer (OpenHermesTrainer with the
packed collator, SDPA or flash attention, bf16 autocast, fp32 master weights for the full fine-tune).

Two runs: LoRA r=256 on every linear layer over a bf16 base (the LimaRP card's setup without 8-bit), and a
full fine-tune. Prints trained tokens/s and model FLOPs utilisation against the GPU's dense bf16 peak:
  full: 6 * N FLOPs per token (+ attention 12 * layers * seq * d_model)
  LoRA: 4 * N (forward, and backward to the activations through the frozen base) + attention
A full fine-tune of 7B with AdamW needs 16 bytes per weight: on one 80 GB GPU it runs on fewer layers
(--full-layers, default 8 of 32) and says so; throughput per token scales with the layer count.

    .venv/bin/python benchmarks/train_gpu.py [--steps 20] [--full-layers 8]
    .venv/bin/python benchmarks/train_gpu.py --smoke        # a scaled-down shape on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def packed_rows(n_rows: int, seq: int, vocab: int, seed: int = 0):
    """Rows of 4096 tokens, each packed from samples of 300 to 1500 tokens (OpenHermes-like lengths)."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_rows):
        lens, left = [], seq
        while left > 0:
            n = min(left, int(rng.integers(300, 1500)))
            lens.append(n)
            left -= n
        ids = rng.integers(3, vocab, size=seq).tolist()
        labels = list(ids)
        pos = [p for n in lens for p in range(n)]
        start = 0
        for n in lens:  # the first third of each sample is its prompt: not trained
            labels[start:start + n // 3] = [-100] * (n // 3)
            start += n
        rows.append({"input_ids": ids, "labels": labels, "position_ids": pos, "seq_lens": lens})
    return datasets.Dataset.from_list(rows)


def run(kind: str, layers: int, args, device: str) -> dict:
    import torch
    from transformers import MistralConfig, MistralForCausalLM, TrainingArguments

    from openhermes.model.load import apply_lora, attention_implementation
    from openhermes.train.callbacks import TokenCounter
    from openhermes.train.collate import PackedCollator
    from openhermes.train.run import OpenHermesTrainer

    shape = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 vocab_size=32002, max_position_embeddings=32768, rope_theta=10000.0)
    if args.smoke:
        shape = dict(hidden_size=64, intermediate_size=224, num_attention_heads=4, num_key_value_heads=1,
                     vocab_size=512, max_position_embeddings=4096, rope_theta=10000.0)
    cfg = MistralConfig(num_hidden_layers=layers, sliding_window=None, use_cache=False, tie_word_embeddings=False,
                        **shape)
    attn = args.attention or attention_implementation(args.flash_attention) or "sdpa"
    cfg._attn_implementation = attn
    full = kind == "full"
    torch.manual_seed(0)
    with torch.device(device):
        model = MistralForCausalLM(cfg).to(torch.float32 if full else torch.bfloat16)
    if not full:
        model = apply_lora(model, r=256 if not args.smoke else 8, alpha=16, dropout=0.05, target_linear=True,
                           target_modules=None, added_ids=[])
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_params = sum(p.numel() for p in (model.get_base_model() if not full else model).parameters())
    seq = args.seq
    data = packed_rows(args.steps + 2, seq, cfg.vocab_size)
    counter = TokenCounter()
    targs = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="ohgpu-"), per_device_train_batch_size=1,
                              max_steps=args.steps + 2, learning_rate=2e-5, lr_scheduler_type="constant",
                              bf16=device == "cuda", report_to=[], save_strategy="no", logging_steps=10_000,
                              disable_tqdm=True, remove_unused_columns=False, use_cpu=device != "cuda",
                              optim="adamw_torch_fused" if device == "cuda" else "adamw_torch")
    trainer = OpenHermesTrainer(model=model, args=targs, train_dataset=data, data_collator=PackedCollator(0),
                                token_counter=counter)

    class Clock:  # the first two steps (allocation, kernel selection) are not timed
        t0 = tokens0 = None

    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step == 2:
                if device == "cuda":
                    torch.cuda.synchronize()
                Clock.t0, Clock.tokens0 = time.perf_counter(), (counter.trained, counter.total)

    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Timer())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - Clock.t0
    tokens = counter.total - Clock.tokens0[1]
    trained = counter.trained - Clock.tokens0[0]
    attn_flops = 12 * layers * seq * cfg.hidden_size  # per token, causal attention's matmuls (fwd + bwd)
    per_token = (6 if full else 4) * n_params + attn_flops
    return {"kind": kind, "layers": layers, "params": n_params, "tokens_per_s": tokens / dt,
            "trained_tokens_per_s": trained / dt, "flops_per_s": per_token * tokens / dt, "attention": attn,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--full-layers", type=int, default=8)
    ap.add_argument("--no-flash-attention", dest="flash_attention", action="store_false")
    ap.add_argument("--attention", choices=["sdpa", "flex_attention", "eager"],
                    help="force transformers' attention implementation (default: what flash_attention: true picks)")
    ap.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
                    help="keep every activation (faster, more memory); default: checkpoint each layer")
    ap.add_argument("--only", choices=["lora", "full"], help="run one of the two setups")
    ap.add_argument("--smoke", action="store_true", help="a tiny shape on CPU, a few steps: the script runs")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import torch

    if args.smoke:
        args.steps, args.seq, args.full_layers = 3, 256, 2
        device = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("train_gpu.py measures a CUDA GPU and none is available here (--smoke runs a tiny CPU check)")
    else:
        device = "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke test)"
    peak = peak_flops(name) if device == "cuda" else None
    print(f"device: {name}; torch {torch.__version__}; sequence_len {args.seq}, packed; steps timed: {args.steps}; "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}")
    setups = {"lora": ("lora r=8 (smoke)" if args.smoke else "lora r=256 all-linear", 2 if args.smoke else 32),
              "full": ("full", args.full_layers)}  # kind: (label, layers)
    for kind in [args.only] if args.only else setups:
        label, layers = setups[kind]
        r = run(kind, layers, args, device)
        mfu = f"{r['flops_per_s'] / peak:.1%}" if peak else "n/a (unknown peak)"
        mem = f", peak memory {r['peak_mem_gb']:.1f} GiB" if r["peak_mem_gb"] is not None else ""
        print(f"{label:>22}: {layers} layers, {r['params'] / 1e9:.2f} B params, attention {r['attention']}: "
              f"{r['tokens_per_s']:,.0f} tokens/s ({r['trained_tokens_per_s']:,.0f} trained), "
              f"{r['flops_per_s'] / 1e12:.1f} TFLOP/s, MFU {mfu}{mem}")


if __name__ == "__main__":
    main()
