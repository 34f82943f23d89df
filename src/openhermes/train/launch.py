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


def check_processes(nproc: int, gpus: int) -> None:
    """On a machine with CUDA GPUs each process trains on its own GPU (LOCAL_RANK): more processes than GPUs would
    share one, which NCCL refuses mid-start ("invalid usage"). Said here, before anything is written."""
    if gpus and nproc > gpus:
        raise ValueError(f"--nproc {nproc} runs one process per GPU, and this machine has {gpus} CUDA GPU"
                         f"{'s' if gpus > 1 else ''}: use --nproc {gpus} or fewer (CUDA_VISIBLE_DEVICES chooses "
                         f"which), or hide the GPUs (CUDA_VISIBLE_DEVICES=) to run {nproc} CPU processes")


def launch(recipe: Recipe, recipe_arg: str, out: Path, overrides: list[str], nproc: int, resume: bool,
           cache: Path = DEFAULT_CACHE, overwrite: bool = False) -> int:
    import torch

    check_processes(nproc, torch.cuda.device_count())
    claim_run_folder(out, recipe, overwrite)  # before the workers start, so none of them races to it
    base = ensure_base_model(recipe, cache)
    tok = load_tokenizer(base, recipe.prompt_format, recipe.special_tokens, recipe.tokens, recipe.add_bos)
    prepare(recipe, tok, cache_dir=cache)
    return subprocess.call(torchrun_command(nproc, recipe_arg, out, overrides, resume, overwrite))
