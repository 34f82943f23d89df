"""Training step time with logits only at trained positions (openhermes' trainer) against the full-vocabulary
loss over every position (transformers' own forward), on the embedded default's model and packed demo batches,
in one process, alternating blocks of steps so that a noisy machine slows both alike. A step is the loss, its
backward and an AdamW update. Prints ms/step for each and the ratio.

    .venv/bin/python benchmarks/trained_logits.py [--steps 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from _common import cpu_model_and_flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="steps per block")
    ap.add_argument("--rounds", type=int, default=5, help="blocks of each kind, alternating")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import torch

    from openhermes.config import load_recipe
    from openhermes.train.run import build

    recipe = load_recipe("tiny", ["max_steps=1"])
    trainer, *_ = build(recipe, Path(tempfile.mkdtemp(prefix="ohlogits-")), show_progress=False)
    model = trainer.model
    model.train()
    batches = list(itertools.islice(trainer.get_train_dataloader(), args.steps))
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: every block sees the same weights

    def trained_positions(b):
        return trainer.compute_loss(model, b, num_items_in_batch=int((b["labels"][:, 1:] != -100).sum()))

    def every_position(b):
        return model(**b, num_items_in_batch=int((b["labels"][:, 1:] != -100).sum())).loss

    def block(loss_fn) -> float:
        start = time.perf_counter()
        for b in batches:
            loss_fn(b).backward()
            opt.step()
            opt.zero_grad()
        return (time.perf_counter() - start) / len(batches) * 1000

    block(trained_positions), block(every_position)  # warm-up
    ours, full = [], []
    for _ in range(args.rounds):
        ours.append(block(trained_positions))
        full.append(block(every_position))
    cpu, flags = cpu_model_and_flags()
    print(f"CPU: {cpu} ({' '.join(flags)}); {torch.get_num_threads()} threads; {args.rounds} x {args.steps} steps each, "
          f"micro batch {recipe.micro_batch_size} x {recipe.sequence_len}")
    o, f = statistics.median(ours), statistics.median(full)
    print(f"every position (transformers' loss)  {f:7.1f} ms/step")
    print(f"trained positions only (openhermes)  {o:7.1f} ms/step")
    print(f"ratio                                {f / o:7.2f}x")


if __name__ == "__main__":
    main()
