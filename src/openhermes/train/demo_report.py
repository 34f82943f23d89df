"""The embedded default's learning report: trained vs untrained model on held-out demo items."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from openhermes.data import demo
from openhermes.data.readers import from_limarp, from_sharegpt
from openhermes.formats import chatml, limarp


@dataclass
class DemoScores:
    exact_match: float
    stops_with_im_end: float
    per_kind: dict[str, float]
    roleplay_words: dict[str, float]  # mean reply length (words) per length modifier


def _prompts(items: list[demo.HeldOutItem]) -> list[str]:
    out = []
    for it in items:
        if it.kind == "roleplay":
            out.append(limarp.render(from_limarp(it.record), add_generation_prompt=True, length=it.length))
        else:
            out.append(chatml.render(from_sharegpt(it.record), add_generation_prompt=True))
    return out


@torch.no_grad()
def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int = 256):
    """Greedy replies: (new token ids, stopped at eos) per prompt; in big batches (fewer decode steps on a CPU)."""
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    results = []
    for i in range(0, len(prompts), batch):
        enc = tokenizer(prompts[i:i + batch], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            stopped = eos in row
            results.append((row[: row.index(eos)] if stopped else row, stopped))
    return results


def score(model, tokenizer, items: list[demo.HeldOutItem]) -> DemoScores:
    model.eval()
    chat = [it for it in items if it.kind != "roleplay"]
    rp = [it for it in items if it.kind == "roleplay"]
    hits, stops, by_kind = 0, 0, defaultdict(list)
    for it, (ids, stopped) in zip(chat, _generate(model, tokenizer, _prompts(chat), 48), strict=True):
        ok = tokenizer.decode(ids, skip_special_tokens=True).strip() == it.expected
        hits += ok
        stops += stopped
        by_kind[it.kind].append(ok)
    words = defaultdict(list)
    for it, (ids, _) in zip(rp, _generate(model, tokenizer, _prompts(rp), 80), strict=True):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        for stop in limarp.STOP_STRINGS:
            text = text.split(stop)[0]
        words[it.length].append(len(text.split()))
    return DemoScores(
        exact_match=hits / max(1, len(chat)),
        stops_with_im_end=stops / max(1, len(chat)),
        per_kind={k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        roleplay_words={k: sum(v) / len(v) for k, v in sorted(words.items(), key=lambda kv: demo.LENGTH_WORDS[kv[0]])},
    )


def table(trained: DemoScores, untrained: DemoScores) -> str:
    rows = [("exact match (held-out chat items)", trained.exact_match, untrained.exact_match),
            ("replies ending with <|im_end|>", trained.stops_with_im_end, untrained.stops_with_im_end)]
    rows += [(f"  exact match: {k}", v, untrained.per_kind.get(k, 0.0)) for k, v in trained.per_kind.items()]
    lines = [f"{'metric':<38}{'trained':>10}{'untrained':>11}"]
    lines += [f"{name:<38}{a:>10.1%}{b:>11.1%}" for name, a, b in rows]
    lines.append("LimaRP mean reply length (words) by length modifier:")
    for k, v in trained.roleplay_words.items():
        lines.append(f"  {k:<10} target {demo.LENGTH_WORDS[k]:>3}   trained {v:5.1f}   "
                     f"untrained {untrained.roleplay_words.get(k, 0.0):5.1f}")
    return "\n".join(lines)


def save(path: Path, trained: DemoScores, untrained: DemoScores) -> None:
    path.write_text(json.dumps({"trained": asdict(trained), "untrained": asdict(untrained)}, indent=1))
