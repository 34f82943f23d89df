"""LimaRP's response-length modifiers, assigned from the data.

LimaRP's training rows carried `(length = X)` chosen from each response's length; the thresholds were
never published. Ours: one bin per modifier (micro ... unlimited) over the reply length in words or
tokens. `bins: auto` places the edges at fixed quantiles of the data's own replies so that the card's
recommended default, medium, is the middle 30% (the 35th to 65th percentile) around the median."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import numpy as np
import xxhash

from openhermes.formats import Conversation
from openhermes.formats.limarp import LENGTHS

# The share of replies below each modifier's bin, for `bins: auto` (one per LENGTHS entry).
AUTO_QUANTILES = (0.0, 0.05, 0.15, 0.35, 0.65, 0.85, 0.93, 0.97, 0.99, 0.997)


def measure(convs: list[Conversation], unit: str, tokenizer=None) -> dict[tuple[int, int], int]:
    """Each character reply's length in `unit`, by (conversation, turn): measured once for both the
    assignment and the histogram (tokens: one batched tokenizer call)."""
    where = [(ci, ti) for ci, conv in enumerate(convs) for ti, m in enumerate(conv.messages) if m.role == "assistant"]
    texts = [convs[ci].messages[ti].content for ci, ti in where]
    if unit == "words":
        sizes = [len(t.split()) for t in texts]
    else:
        sizes = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    return dict(zip(where, sizes, strict=True))


def auto_bins(lengths: list[int]) -> dict[str, int]:
    """Lower bounds at the data's quantiles, made strictly increasing (ties on short data)."""
    if not lengths:
        return {m: i for i, m in enumerate(LENGTHS)}
    qs = np.quantile(np.asarray(lengths), AUTO_QUANTILES[1:], method="higher")
    bounds, last = {LENGTHS[0]: 0}, 0
    for name, q in zip(LENGTHS[1:], qs, strict=True):
        last = max(int(q), last + 1)
        bounds[name] = last
    return bounds


def modifier_for(n: int, bins: dict[str, int]) -> str:
    """The modifier whose bin holds a reply of length n: the largest lower bound <= n."""
    best = None
    for name in LENGTHS:
        if name in bins and bins[name] <= n:
            best = name
    return best or min(bins, key=bins.get)


def _omitted(seed: int, reply: str, turn: int, p: float) -> bool:
    # Drawn from the reply itself, not a running generator or the file's path: the same reply gets
    # the same choice whatever else is in the data and wherever the files lie (the cache key is
    # content-based too).
    if p <= 0:
        return False
    h = xxhash.xxh64_intdigest(f"{seed}:{turn}:{reply}".encode())
    return random.Random(h).random() < p


def assign(convs: list[Conversation], spec, seed: int, sizes: dict[tuple[int, int], int]) -> dict:
    """Give every character reply without a modifier (every one, with `replace`) the modifier of its
    length's bin (`sizes`: from `measure`), leaving it out with probability `omit`. Changes `convs` in
    place; returns the report: unit, the bins, and how many were assigned or omitted."""
    measured = [(ci, ti, n) for (ci, ti), n in sizes.items()
                if spec.replace or convs[ci].messages[ti].length is None]
    bins = auto_bins([n for *_, n in measured]) if spec.bins == "auto" else dict(spec.bins)
    omitted = 0
    for ci, ti, n in measured:
        conv = convs[ci]
        if _omitted(seed, conv.messages[ti].content, ti, spec.omit):
            length, omitted = None, omitted + 1
        else:
            length = modifier_for(n, bins)
        conv.messages[ti] = replace(conv.messages[ti], length=length)
    return {"unit": spec.unit, "bins": bins, "assigned": len(measured) - omitted, "omitted": omitted}


def histogram(convs: list[Conversation], bins: dict[str, int] | None,
              sizes: dict[tuple[int, int], int]) -> list[dict]:
    """Per modifier: how many replies carry it, and their mean length (`sizes`: from `measure`)."""
    count, total = Counter(), Counter()
    for (ci, ti), n in sizes.items():
        key = convs[ci].messages[ti].length or "(none)"
        count[key] += 1
        total[key] += n
    order = [m for m in LENGTHS if m in count] + (["(none)"] if "(none)" in count else [])
    edges = sorted((bins or {}).items(), key=lambda kv: kv[1])
    upper = {name: (edges[i + 1][1] if i + 1 < len(edges) else None) for i, (name, _) in enumerate(edges)}
    return [{"modifier": k, "replies": count[k], "mean_length": round(total[k] / count[k], 1),
             "from": (bins or {}).get(k), "to": upper.get(k)} for k in order]
