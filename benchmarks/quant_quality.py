"""What each GGUF type costs in quality: file size, perplexity and mean KL divergence from the f16 file, measured
through llama.cpp (as its perplexity tool does) on held-out demo conversations.

The model: a from-scratch model of the embedded default's kind at 256 wide (K-quant blocks are 256 values: on
the 128-wide default llama.cpp would fall back to legacy types for every tensor), trained here on the demo chat
data as a language model (train_on_inputs: every token, as the text is then scored, like a base model).
f16/q8_0/q4_0 come from openhermes's numpy writer, the rest from llama.cpp's quantizer. Then the GPTQ and AWQ
folders (AutoRound, 4-bit, group 128, calibrated on the recipe's prepared data), measured by transformers against
the full-precision model on the same text (`--no-folders` skips them).

    .venv/bin/python benchmarks/quant_quality.py [--rows 2000] [--epochs 2] [--iters 200] [--no-folders]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from _common import cpu_model_and_flags

TYPES = ("f16", "q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "q4_0", "IQ4_XS", "Q3_K_M", "Q2_K")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--iters", type=int, default=200, help="AutoRound tuning steps per block (GPTQ/AWQ)")
    ap.add_argument("--no-folders", action="store_true", help="GGUF types only")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import yaml

    from openhermes.config import load_recipe
    from openhermes.data import demo
    from openhermes.data.readers import from_sharegpt
    from openhermes.export.gguf import export_gguf
    from openhermes.export.quality import measure, table
    from openhermes.formats import chatml
    from openhermes.train.run import train

    work = Path(tempfile.mkdtemp(prefix="ohquant-"))
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "base_model": "tiny", "tiny": {"vocab_size": 1024, "hidden_size": 256, "intermediate_size": 768,
                                       "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2},
        "datasets": [{"path": f"demo:chat:{args.rows}", "type": "sharegpt"}], "sequence_len": 1024,
        "sample_packing": True, "train_on_inputs": True, "learning_rate": 0.002, "lr_scheduler": "cosine",
        "warmup_steps": 10, "micro_batch_size": 4, "num_epochs": args.epochs, "logging_steps": 1000, "bf16": False}))
    t = time.perf_counter()
    model = train(load_recipe(recipe), work / "run", show_progress=True, cache=work / "cache").model_dir
    print(f"trained in {time.perf_counter() - t:.0f} s")
    items = [it for it in demo.held_out(train_chat=args.rows, train_roleplay=0) if it.kind != "roleplay"]
    text = "".join(chatml.render(from_sharegpt(it.record)) for it in items)
    files = [export_gguf(model, work / f"model-{q}.gguf", q, progress=False) for q in TYPES]
    results = measure(files, files[0], text)
    name, flags = cpu_model_and_flags()
    print(f"CPU: {name} ({' '.join(flags)}); held-out text: {results[0].tokens} scored tokens")
    print(table(results))
    if not args.no_folders:
        folders(model, recipe, work, text, args.iters)


def folders(model: Path, recipe: Path, work: Path, text: str, iters: int) -> None:
    from transformers import AutoTokenizer

    from openhermes.export.calibration import calibration_windows
    from openhermes.export.weight_only import export_weight_only

    tok = AutoTokenizer.from_pretrained(str(model))
    windows = calibration_windows(recipe, tok, len(tok), samples=128, seq_len=512, cache=work / "cache")
    print(f"\nGPTQ/AWQ through AutoRound: 4-bit, group 128, {len(windows)} calibration windows of 512 tokens, "
          f"{iters} tuning steps per block; measured by transformers against the fp32 model")
    print("| format | weights | perplexity | full model's | mean KL (nats) | KL p99 | same top token | quantize time |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt in ("gptq", "awq"):
        t = time.perf_counter()
        path, q = export_weight_only(model, work / fmt, fmt, windows, calibration=str(recipe), iters=iters,
                                     check_text=text)
        size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        print(f"| {fmt.upper()} | {size / 1e6:.2f} MB | {q['perplexity']:.4f} | {q['reference_perplexity']:.4f} | "
              f"{q['kl_mean']:.5f} | {q['kl_p99']:.5f} | {q['top1_agreement']:.1%} | {time.perf_counter() - t:.0f} s |")


if __name__ == "__main__":
    main()
