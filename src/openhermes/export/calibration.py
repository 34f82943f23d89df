"""Calibration tokens for weight quantizers (GPTQ, AWQ, EXL2), drawn from a recipe's own prepared data:
a model is calibrated on the conversations it was fine-tuned on, rendered in its prompt format, not on
generic web text."""

from __future__ import annotations

import random
from pathlib import Path


class CalibrationError(ValueError):
    pass


def _train_rows(source: str | Path, tokenizer, progress: bool, cache: Path | None):
    """The `input_ids` column of the prepared set's train split: a prepared folder (`data prepare --out`),
    or a recipe (name or YAML), prepared with the model's tokenizer as training did (cached)."""
    import datasets

    folder = Path(source)
    if folder.is_dir():
        try:
            data = datasets.load_from_disk(str(folder))
        except (FileNotFoundError, ValueError) as e:
            raise CalibrationError(f"--calibration {folder}: not a prepared data folder ({e})") from None
        split = data["train"] if isinstance(data, datasets.DatasetDict) else data
    else:
        from openhermes.config import RecipeError, load_recipe
        from openhermes.data.prepare import DEFAULT_CACHE, prepare

        try:
            recipe = load_recipe(source)
            split = prepare(recipe, tokenizer, progress=progress, cache_dir=cache or DEFAULT_CACHE).load()["train"]
        except (RecipeError, FileNotFoundError, ValueError) as e:
            raise CalibrationError(f"--calibration {source}: {e}") from None
    if "input_ids" not in split.column_names:
        raise CalibrationError(f"--calibration {source}: the prepared rows have no input_ids")
    return split["input_ids"]


def calibration_windows(source: str | Path, tokenizer, vocab_size: int, samples: int, seq_len: int,
                        seed: int = 0, progress: bool = True, cache: Path | None = None) -> list[list[int]]:
    """Up to `samples` windows of exactly `seq_len` tokens: the prepared rows in a seeded random order,
    joined end to end and cut (as quantizers' own calibration loaders join texts)."""
    rows = _train_rows(source, tokenizer, progress, cache)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    stream: list[int] = []
    need = samples * seq_len
    for i in order:
        stream.extend(rows[i])
        if len(stream) >= need:
            break
    windows = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)][:samples]
    if not windows:
        raise CalibrationError(f"--calibration {source}: the data holds {len(stream)} tokens, fewer than one "
                               f"window of {seq_len} (lower --seq-len)")
    top = max(max(w) for w in windows)
    if top >= vocab_size:
        raise CalibrationError(f"--calibration {source}: token id {top} is outside the model's vocabulary "
                               f"({vocab_size}): the data was tokenized for another model")
    return windows
