"""The base model a recipe names; `base_model: tiny` is built here from the recipe's own text, once per setting.

Apart from train/run.py so that `data prepare` and the multi-process launcher find the base without importing
the Trainer stack (about 4 s a process)."""

from __future__ import annotations

import json
from pathlib import Path

import xxhash

from openhermes import outputs
from openhermes.config import Recipe
from openhermes.data.prepare import DEFAULT_CACHE, resolve_dataset_path
from openhermes.data.readers import read_records
from openhermes.formats import get_format
from openhermes.model import tiny


def _texts_for_tokenizer(recipe: Recipe, cache: Path):
    """The recipe's own text, as the tokenizer of a from-scratch model sees it (no control tokens)."""
    for spec in recipe.datasets:
        fmt = get_format(spec.format or recipe.prompt_format)
        path = resolve_dataset_path(spec.path, cache)
        for conv in read_records(path, spec.type, spec.split, spec.name, spec.data_files):
            if hasattr(conv, "messages"):
                yield "".join(s.text for s in fmt.segments(conv) if s.kind == "text")


def ensure_base_model(recipe: Recipe, cache: Path = DEFAULT_CACHE) -> str:
    """`base_model: tiny` builds the from-scratch base model once (keyed by its settings and data)."""
    if recipe.base_model != "tiny":
        return recipe.base_model
    settings = dict(recipe.tiny)
    vocab = settings.pop("vocab_size", 1024)
    seed = settings.pop("seed", recipe.seed)
    code = xxhash.xxh3_64(Path(tiny.__file__).read_bytes()).hexdigest()  # a change to the builder rebuilds
    key = xxhash.xxh3_64(json.dumps([settings, vocab, seed, [d.path for d in recipe.datasets], code],
                                    sort_keys=True).encode()).hexdigest()
    out = cache / "tiny-base" / key
    with outputs.folder_lock(out):  # two launchers sharing a cache build it once
        if not (out / "config.json").exists():
            tiny.build_base(out, _texts_for_tokenizer(recipe, cache), vocab_size=vocab, seed=seed, **settings)
    return str(out)
