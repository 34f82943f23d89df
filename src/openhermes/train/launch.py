"""Several processes: data-parallel (or FSDP, from the recipe) training through torchrun.

The launcher prepares the data and the base model first, so every worker finds them cached."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from openhermes.config import Recipe
from openhermes.data.prepare import DEFAULT_CACHE, prepare
from openhermes.model.load import load_tokenizer
from openhermes.train.run import claim_run_folder, ensure_base_model


def torchrun_command(nproc: int, recipe_arg: str, out: Path, overrides: list[str], resume: bool,
                     overwrite: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "openhermes.cli", "train", recipe_arg, "--out", str(out), "--no-report"]
    for o in overrides:
        cmd += ["--set", o]
    if resume:
        cmd.append("--resume")
    if overwrite:
        cmd.append("--overwrite")
    return cmd


def launch(recipe: Recipe, recipe_arg: str, out: Path, overrides: list[str], nproc: int, resume: bool,
           cache: Path = DEFAULT_CACHE, overwrite: bool = False) -> int:
    claim_run_folder(out, recipe, overwrite)  # before the workers start, so none of them races to it
    base = ensure_base_model(recipe, cache)
    prepare(recipe, load_tokenizer(base, recipe.prompt_format, recipe.special_tokens, recipe.tokens), cache_dir=cache)
    return subprocess.call(torchrun_command(nproc, recipe_arg, out, overrides, resume, overwrite))
