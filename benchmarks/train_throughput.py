"""Training throughput: trained tokens (labels != -100) per second on the tiny model, openhermes
(BFD-packed rows, no padding) against TRL's SFTTrainer twice: with its default padded batches, and with
its best CPU setting, packing=True + padding_free=True (its `bfd` packing, position_ids, no padding);
same data, model and hyperparameters, in one process. Target: openhermes >= 1.5x TRL packed. Also peak memory.

    .venv/bin/python benchmarks/train_throughput.py [--steps 80]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

from _common import CHATML_TRAINING_TEMPLATE, PeakRSS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch", type=int, default=8, help="micro batch (rows for openhermes, conversations for TRL)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from openhermes.config import load_recipe
    from openhermes.data.prepare import resolve_dataset_path
    from openhermes.data.readers import read_records
    from openhermes.model.load import use_bf16
    from openhermes.train.base_model import ensure_base_model
    from openhermes.train.run import build

    work = Path(tempfile.mkdtemp(prefix="ohtrain-"))
    recipe = load_recipe("tiny", [f"micro_batch_size={args.batch}", f"max_steps={args.steps}", "logging_steps=1000",
                                  "lr_scheduler=constant", "warmup_steps=0",
                                  "datasets=[{path: 'demo:chat:6000', type: sharegpt}]"])
    ours, tok, prep, counter, _ = build(recipe, work / "ours", show_progress=False)
    with PeakRSS() as mem_ours:
        t = time.perf_counter()
        ours.train()
        dt_ours = time.perf_counter() - t
    rate_ours = counter.trained / dt_ours

    import datasets
    from trl import SFTConfig, SFTTrainer

    base = ensure_base_model(recipe)
    trl_tok = type(tok).from_pretrained(prep.path / "tokenizer")
    trl_tok.chat_template = CHATML_TRAINING_TEMPLATE
    rows = [{"messages": [{"role": m.role, "content": m.content} for m in c.messages]}
            for c in read_records(resolve_dataset_path("demo:chat:6000"), "sharegpt") if hasattr(c, "messages")]

    def run_trl(name: str, **extra) -> tuple[float, float, int]:
        set_seed(recipe.seed)
        model = AutoModelForCausalLM.from_pretrained(base)
        model.resize_token_embeddings(len(tok))
        # The same shape as ours: micro batch 8 of sequence_len (packed: 8 packed rows, which TRL's padding-free
        # collator then lays end to end in one row with position_ids).
        cfg = SFTConfig(output_dir=str(work / name), per_device_train_batch_size=args.batch, max_steps=args.steps,
                        learning_rate=recipe.learning_rate, lr_scheduler_type="constant", max_length=recipe.sequence_len,
                        assistant_only_loss=True, report_to=[], logging_steps=1000, save_strategy="no", use_cpu=True,
                        disable_tqdm=True, seed=recipe.seed, bf16=use_bf16(recipe.bf16), **extra)  # our precision
        trl = SFTTrainer(model=model, args=cfg, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=trl_tok)
        trained = {"n": 0}
        inner = trl.data_collator

        def counting(batch_rows):
            out = inner(batch_rows)
            trained["n"] += int((out["labels"] != -100).sum())
            return out

        trl.data_collator = counting
        with PeakRSS() as mem:
            t = time.perf_counter()
            trl.train()
            dt = time.perf_counter() - t
        return trained["n"] / dt, mem.mb, trained["n"]

    rate_trl, mb_trl, n_trl = run_trl("trl-padded")
    rate_pack, mb_pack, n_pack = run_trl("trl-packed", packing=True, padding_free=True, packing_strategy="bfd")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, micro batch {args.batch}, "
          f"bf16 {use_bf16(recipe.bf16)}")
    print(f"openhermes: {counter.trained:,} trained tokens in {dt_ours:.1f} s = {rate_ours:,.0f} trained tok/s, "
          f"peak RSS +{mem_ours.mb:,.0f} MB")
    print(f"TRL SFTTrainer (padded): {n_trl:,} trained tokens = {rate_trl:,.0f} trained tok/s, peak RSS +{mb_trl:,.0f} MB")
    print(f"TRL SFTTrainer (packing + padding_free, bfd): {n_pack:,} trained tokens = {rate_pack:,.0f} trained tok/s, "
          f"peak RSS +{mb_pack:,.0f} MB")
    print(f"ratio openhermes / TRL padded = {rate_ours / rate_trl:.2f}x")
    print(f"ratio openhermes / TRL packed = {rate_ours / rate_pack:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
