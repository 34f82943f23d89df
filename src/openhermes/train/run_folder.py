"""A training run's output folder: what it holds, and the check that refuses someone else's folder before any
work starts (outputs.py). Light, so the launcher checks it before torchrun starts."""

from __future__ import annotations

from pathlib import Path

from openhermes import outputs
from openhermes.config import Recipe


def final_folder(out_dir: Path, is_adapter: bool) -> tuple[Path, str]:
    kind = "adapter" if is_adapter else "model"
    return out_dir / kind, kind


# What a training run writes in its folder (the marker lists them; checkpoints are added as saved).
RUN_ENTRIES = ("log.jsonl", "tensorboard", "loss.png", "model", "adapter", "merged", "demo_report.json", ".staging")


def claim_run_folder(out: Path, recipe: Recipe, overwrite: bool = False, claim: bool = True) -> None:
    """Refuse a folder holding someone else's files before any work starts (outputs.py); with `claim`, mark it
    as a run's."""
    if claim:
        outputs.claim_folder(out, "run", overwrite, RUN_ENTRIES)
    else:
        outputs.check_folder(out, "run", overwrite)
    target, kind = final_folder(out, bool(recipe.adapter))
    outputs.check_folder(target, kind, overwrite)
