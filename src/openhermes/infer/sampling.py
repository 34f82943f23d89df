"""Samplers: logits processors applied in one documented order, per request.

Order (llama.cpp's, SPEC §4): penalties (repetition over a range, presence, frequency),
top-k, tail-free (TFS), typical, top-p, min-p, temperature, then sample. Temperature 0 is
greedy (argmax after the penalties). Filters therefore see the untempered distribution.

transformers' warpers are used where they compute the same thing (top-k, top-p, min-p,
typical, temperature, repetition penalty); TFS and presence/frequency penalties are ours
because transformers has none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

import torch
from transformers.generation import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

ORDER = ("repetition_penalty", "presence_penalty", "frequency_penalty", "top_k", "tfs", "typical_p", "top_p",
         "min_p", "temperature")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    typical_p: float = 1.0  # 1 = off
    tfs: float = 1.0  # tail-free z; >= 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    repeat_last_n: int = 0  # window of recent tokens (prompt included) for all penalties; 0 = whole context
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):  # JSON gives 2 for 2.0: store floats as floats (transformers' warpers insist)
            value = getattr(self, f.name)
            if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
        for name in ("top_k", "repeat_last_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}={value!r} must be an integer ({_RANGES[name]})")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**64):
            raise ValueError(f"seed={self.seed!r} must be an integer in [0, 2**64)")
        checks = {
            "temperature": self.temperature >= 0,
            "top_k": self.top_k >= 0,
            "top_p": 0 < self.top_p <= 1,
            "min_p": 0 <= self.min_p <= 1,
            "typical_p": 0 < self.typical_p <= 1,
            "tfs": self.tfs > 0,
            "repetition_penalty": self.repetition_penalty > 0,
            "repeat_last_n": self.repeat_last_n >= -1,
            "presence_penalty": -2 <= self.presence_penalty <= 2,
            "frequency_penalty": -2 <= self.frequency_penalty <= 2,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not ok or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} is out of range ({_RANGES[name]})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_(self, **changes) -> SamplingParams:
        """A copy with some fields changed; None values are ignored (unset request fields)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown sampler setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict:
        return asdict(self)


_RANGES = {
    "temperature": ">= 0; 0 = greedy", "top_k": ">= 0; 0 = off", "top_p": "in (0, 1]", "min_p": "in [0, 1]",
    "typical_p": "in (0, 1]", "tfs": "> 0; >= 1 = off", "repetition_penalty": "> 0; 1 = off",
    "repeat_last_n": ">= 0; 0 = whole context", "presence_penalty": "in [-2, 2]", "frequency_penalty": "in [-2, 2]",
}

PRESETS: dict[str, SamplingParams] = {
    "greedy": SamplingParams(temperature=0.0),
    # A common ChatML chat setting (llama.cpp's defaults for temperature/top-p/min-p), no penalties.
    "chatml-default": SamplingParams(temperature=0.7, top_p=0.95, min_p=0.05),
    # The LimaRP card's recommended settings: TFS 0.92, temperature 0.70, repetition penalty 1.1
    # over 2048 tokens, top-k and top-p off.
    "limarp": SamplingParams(temperature=0.7, tfs=0.92, repetition_penalty=1.1, repeat_last_n=2048),
}


def preset(name: str) -> SamplingParams:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown sampler preset {name!r}; choose one of {', '.join(PRESETS)}") from None


class TailFreeLogitsWarper:
    """Tail-free sampling as llama.cpp had it (SPEC §4): keep the head of the sorted distribution
    until the normalised |second difference| mass exceeds z. `webui=True` keeps one token more,
    as text-generation-webui's TailFreeLogitsWarper does."""

    def __init__(self, z: float, webui: bool = False):
        self.z = z
        self.webui = webui

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.z >= 1.0 or scores.shape[-1] <= 2:
            return scores
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = sorted_scores.float().softmax(-1)
        d2 = probs.diff(dim=-1).diff(dim=-1).abs()
        total = d2.sum(-1, keepdim=True)
        d2 = torch.where(total > 1e-6, d2 / total.clamp_min(1e-30), torch.full_like(d2, 1.0 / d2.shape[-1]))
        cdf = d2.cumsum(-1)
        # cut = index of the first second difference whose running sum exceeds z (at least 1);
        # llama.cpp keeps positions [0, cut), webui keeps [0, cut].
        idx = torch.arange(cdf.shape[-1], device=scores.device)
        over = (cdf > self.z) & (idx >= 1) if not self.webui else cdf > self.z
        cut = torch.where(over.any(-1), over.float().argmax(-1), torch.full_like(over[..., 0], scores.shape[-1],
                                                                                  dtype=torch.long))
        keep = cut + 1 if self.webui else cut
        remove_sorted = torch.arange(scores.shape[-1], device=scores.device)[None, :] >= keep[..., None]
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        return scores.masked_fill(remove, float("-inf"))


def presence_frequency(window: torch.Tensor, scores: torch.Tensor, presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's penalties: logit -= presence * [count > 0] + frequency * count, counted over the window."""
    counts = torch.bincount(window.clamp(max=scores.shape[-1] - 1), minlength=scores.shape[-1]).to(scores.dtype)
    return scores - presence * (counts > 0).to(scores.dtype) - frequency * counts


class Sampler:
    """One request's sampler: its settings, processors in ORDER, and its own seeded generator."""

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu", tfs_webui: bool = False):
        self.params = p = params
        self.generator = torch.Generator(device=device)
        if p.seed is not None:
            self.generator.manual_seed(p.seed)
        else:
            self.generator.seed()
        self.repetition = RepetitionPenaltyLogitsProcessor(p.repetition_penalty) if p.repetition_penalty != 1 else None
        warpers: list = []
        if p.top_k > 0:
            warpers.append(TopKLogitsWarper(p.top_k))
        if p.tfs < 1:
            warpers.append(TailFreeLogitsWarper(p.tfs, webui=tfs_webui))
        if p.typical_p < 1:
            warpers.append(TypicalLogitsWarper(p.typical_p))
        if p.top_p < 1:
            warpers.append(TopPLogitsWarper(p.top_p))
        if p.min_p > 0:
            warpers.append(MinPLogitsWarper(p.min_p))
        if not p.greedy and p.temperature != 1:
            warpers.append(TemperatureLogitsWarper(p.temperature))
        self.warpers = warpers

    @property
    def needs_context(self) -> bool:
        p = self.params
        return self.repetition is not None or p.presence_penalty != 0 or p.frequency_penalty != 0

    def window(self, context: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
        """The penalties' recent tokens. Only this slice becomes a tensor: the context grows every step."""
        n = self.params.repeat_last_n
        return torch.as_tensor(context if n <= 0 else context[-n:], dtype=torch.long, device=device)

    def process(self, context: Sequence[int] | torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """All processors, in ORDER, on one row: context (T,) token ids, scores (V,) -> (V,)."""
        scores = scores.float()[None, :]
        if self.needs_context:
            window = self.window(context, scores.device)
            if self.repetition is not None:
                scores = self.repetition(window[None, :], scores)
            p = self.params
            if p.presence_penalty or p.frequency_penalty:
                scores = presence_frequency(window, scores[0], p.presence_penalty, p.frequency_penalty)[None, :]
        if self.params.greedy or _overflowed(scores):
            return scores[0]
        no_ids = scores.new_zeros((1, 0), dtype=torch.long)  # the warpers here read only the scores
        for w in self.warpers:
            scores = w(no_ids, scores)
        return scores[0]

    def __call__(self, context: Sequence[int] | torch.Tensor, scores: torch.Tensor) -> int:
        scores = self.process(context, scores)
        if self.params.greedy or _overflowed(scores):
            return int(scores.argmax())
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _overflowed(scores: torch.Tensor) -> bool:
    """Extreme settings (a penalty or temperature near 0) can push logits to +inf; softmax would then be
    NaN. The limit of such a distribution is the argmax, so it is taken instead."""
    return bool(torch.isposinf(scores).any())
