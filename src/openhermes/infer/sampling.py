"""Samplers: logits processors applied in one documented order, per request.

Order (llama.cpp's, SPEC §4, with the steps text-generation-webui and KoboldCpp users ask for):
 1. logit bias (OpenAI's `logit_bias`; a ban is -inf) and, before `min_tokens`, the stop tokens banned
 2. penalties over the window of recent tokens (prompt included): repetition, presence, frequency;
    text-generation-webui's encoder repetition penalty (tokens of the prompt) and no-repeat n-gram ban
 3. DRY (text-generation-webui's "don't repeat yourself": a penalty growing with the length of a
    repeated sequence that the next token would extend)
 4. top-k, tail-free (TFS), typical, top-p, epsilon and eta cutoff, min-p, top-a, XTC (exclude top choices)
 5. temperature (or text-generation-webui's dynamic temperature in its place), then its quadratic smoothing; with
    `temperature_last: false` (its default order) these two come before step 4 instead
 6. Mirostat v2 (when on, it replaces step 4's truncations, as in llama.cpp and text-generation-webui)
 7. the grammar mask of structured output (response_format), then the draw from the request's own
    seeded generator. Temperature 0 is greedy (argmax after steps 1-3 and the mask).
Filters therefore see the untempered distribution. A request's `sampler_order` (text-generation-webui's
`sampler_priority`, llama.cpp's `samplers`, KoboldCpp's `sampler_order`) reorders the stages of steps 2-5 that it
names among their own places in this order (STAGES); the others keep theirs.

transformers' warpers are used where they compute the same thing (top-k, top-p, min-p,
typical, epsilon, eta, temperature, repetition penalty, encoder repetition penalty, no-repeat n-grams: the ones
text-generation-webui uses too); TFS, presence/frequency, DRY, top-a, XTC, quadratic smoothing, dynamic
temperature and Mirostat are ours because transformers has none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

import torch
from transformers.generation import (
    EncoderRepetitionPenaltyLogitsProcessor,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

DRY_BREAKERS = ("\n", ":", "\"", "*")  # text-generation-webui's and SillyTavern's default sequence breakers
# Steps 2-5 one by one, in the default order (temperature_last), under text-generation-webui's sampler names.
PENALTIES = ("repetition_penalty", "presence_penalty", "frequency_penalty", "encoder_repetition_penalty",
             "no_repeat_ngram", "dry")
TRUNCATIONS = ("top_k", "tfs", "typical_p", "top_p", "epsilon_cutoff", "eta_cutoff", "min_p", "top_a", "xtc")
TEMPERATURE = ("temperature", "quadratic_sampling")
STAGES = PENALTIES + TRUNCATIONS + TEMPERATURE
# Names other servers' orders carry for samplers this server does not have (their settings are ignored fields)
# or places it does not move (dynamic temperature runs in temperature's place, Mirostat replaces the truncations):
# accepted in an order, without effect on it.
UNMOVED = ("dynamic_temperature", "top_n_sigma", "mirostat")


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
    top_a: float = 0.0  # 0 = off
    xtc_threshold: float = 0.1
    xtc_probability: float = 0.0  # 0 = off
    dry_multiplier: float = 0.0  # 0 = off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 0  # 0 (or -1) = whole context
    dry_sequence_breakers: tuple[str, ...] = DRY_BREAKERS
    mirostat_mode: int = 0  # 0 = off, 2 = Mirostat v2
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); -inf bans the token
    # text-generation-webui's: cutoffs in its units (1e-4), quadratic smoothing, and its sampler order switch
    epsilon_cutoff: float = 0.0  # 0 = off
    eta_cutoff: float = 0.0  # 0 = off
    smoothing_factor: float = 0.0  # 0 = off
    smoothing_curve: float = 1.0
    temperature_last: bool = True  # False: temperature and smoothing before the truncation samplers
    encoder_repetition_penalty: float = 1.0  # 1 = off; > 1 favours the prompt's tokens
    no_repeat_ngram_size: int = 0  # 0 = off
    sampler_order: tuple[str, ...] = ()  # STAGES names, reordered among their places; () = the default order
    # dynamic temperature (text-generation-webui's; llama.cpp's temperature +- dynatemp_range): in temperature's
    # place, a temperature from low to high by the normalised entropy of the distribution to the exponent
    dynamic_temperature: bool = False
    dynatemp_low: float = 1.0
    dynatemp_high: float = 1.0
    dynatemp_exponent: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):  # JSON gives 2 for 2.0: store floats as floats (transformers' warpers insist)
            value = getattr(self, f.name)
            if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
        for name in ("temperature_last", "dynamic_temperature"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        for name in ("top_k", "repeat_last_n", "dry_allowed_length", "dry_penalty_last_n", "mirostat_mode",
                     "no_repeat_ngram_size"):
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
            "top_a": 0 <= self.top_a <= 1,
            "xtc_threshold": 0 <= self.xtc_threshold <= 1,
            "xtc_probability": 0 <= self.xtc_probability <= 1,
            "dry_multiplier": 0 <= self.dry_multiplier <= 100,
            "dry_base": 1 <= self.dry_base <= 100,
            "dry_allowed_length": 1 <= self.dry_allowed_length <= 1000,
            "dry_penalty_last_n": self.dry_penalty_last_n >= -1,
            "mirostat_mode": self.mirostat_mode in (0, 2),
            "mirostat_tau": 0 <= self.mirostat_tau <= 100,
            "mirostat_eta": 0 <= self.mirostat_eta <= 1,
            "epsilon_cutoff": 0 <= self.epsilon_cutoff < 10_000,
            "eta_cutoff": 0 <= self.eta_cutoff < 10_000,
            "smoothing_factor": 0 <= self.smoothing_factor <= 100,
            "smoothing_curve": 1 <= self.smoothing_curve <= 10,
            "encoder_repetition_penalty": 0 < self.encoder_repetition_penalty <= 10,
            "no_repeat_ngram_size": 0 <= self.no_repeat_ngram_size <= 100,
            "dynatemp_low": 0 <= self.dynatemp_low <= 100,
            "dynatemp_high": self.dynatemp_low <= self.dynatemp_high <= 100,
            "dynatemp_exponent": 0 < self.dynatemp_exponent <= 100,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not ok or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} is out of range ({_RANGES[name]})")
        order = tuple(self.sampler_order)
        unknown = [n for n in order if not isinstance(n, str) or n not in STAGES + UNMOVED]
        if unknown:
            raise ValueError(f"sampler_order: unknown sampler {unknown[0]!r}; known: {', '.join(STAGES + UNMOVED)}")
        if len(set(order)) != len(order):
            raise ValueError("sampler_order names a sampler twice")
        object.__setattr__(self, "sampler_order", order)
        if not all(isinstance(b, str) for b in self.dry_sequence_breakers):
            raise ValueError("dry_sequence_breakers must be strings")
        object.__setattr__(self, "dry_sequence_breakers", tuple(self.dry_sequence_breakers))
        bias = []
        for pair in self.logit_bias:
            tid, value = pair
            if isinstance(tid, bool) or not isinstance(tid, int) or tid < 0 or isinstance(value, bool) \
                    or not isinstance(value, int | float) or not (value == float("-inf") or -100 <= value <= 100):
                raise ValueError(f"logit_bias entry {pair!r}: a token id >= 0 and a bias in [-100, 100]")
            bias.append((tid, float(value)))
        object.__setattr__(self, "logit_bias", tuple(bias))

    @property
    def greedy(self) -> bool:
        return (self.dynatemp_high if self.dynamic_temperature else self.temperature) == 0

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
    "top_a": "in [0, 1]; 0 = off", "xtc_threshold": "in [0, 1]", "xtc_probability": "in [0, 1]; 0 = off",
    "dry_multiplier": "in [0, 100]; 0 = off", "dry_base": "in [1, 100]", "dry_allowed_length": "in [1, 1000]",
    "dry_penalty_last_n": ">= 0; 0 = whole context", "mirostat_mode": "0 (off) or 2 (Mirostat v2)",
    "mirostat_tau": "in [0, 100]", "mirostat_eta": "in [0, 1]",
    "epsilon_cutoff": "in [0, 10000), units of 1e-4; 0 = off", "eta_cutoff": "in [0, 10000), units of 1e-4; 0 = off",
    "smoothing_factor": "in [0, 100]; 0 = off", "smoothing_curve": "in [1, 10]",
    "encoder_repetition_penalty": "in (0, 10]; 1 = off", "no_repeat_ngram_size": "in [0, 100]; 0 = off",
    "dynatemp_low": "in [0, 100]", "dynatemp_high": "in [dynatemp_low, 100]", "dynatemp_exponent": "in (0, 100]",
}

PRESETS: dict[str, SamplingParams] = {
    "greedy": SamplingParams(temperature=0.0),
    # A common ChatML chat setting (llama.cpp's defaults for temperature/top-p/min-p), no penalties.
    "chatml-default": SamplingParams(temperature=0.7, top_p=0.95, min_p=0.05),
    # The LimaRP card's recommended settings: TFS 0.92, temperature 0.70, repetition penalty 1.1
    # over 2048 tokens, top-k and top-p off.
    "limarp": SamplingParams(temperature=0.7, tfs=0.92, repetition_penalty=1.1, repeat_last_n=2048),
    # LimaRP's settings with DRY in place of most of the repetition penalty (DRY's recommended values).
    "limarp-dry": SamplingParams(temperature=0.7, tfs=0.92, repetition_penalty=1.05, repeat_last_n=2048,
                                 dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2),
    # XTC's recommended creative setting, with min-p to keep the tail clean.
    "creative-xtc": SamplingParams(temperature=1.0, min_p=0.02, xtc_threshold=0.1, xtc_probability=0.5),
    # Mirostat v2 at llama.cpp's default target surprise.
    "mirostat": SamplingParams(temperature=1.0, mirostat_mode=2, mirostat_tau=5.0, mirostat_eta=0.1),
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


def token_counts(window: torch.Tensor, vocab: int) -> torch.Tensor:
    """How often each of `vocab` token ids occurs in the window (ids past the vocabulary count as the last)."""
    return torch.bincount(window.clamp(max=vocab - 1), minlength=vocab)


def presence_frequency(window: torch.Tensor, scores: torch.Tensor, presence: float, frequency: float,
                       counts: torch.Tensor | None = None) -> torch.Tensor:
    """OpenAI's penalties: logit -= presence * [count > 0] + frequency * count, counted over the window
    (`counts`: the window's token_counts, when the caller has them already)."""
    if counts is None:
        counts = token_counts(window, scores.shape[-1])
    counts = counts.to(scores.dtype)
    return scores - presence * (counts > 0).to(scores.dtype) - frequency * counts


def dry_penalty(context: list[int], scores: torch.Tensor, multiplier: float, base: float, allowed_length: int,
                breakers: frozenset[int]) -> torch.Tensor:
    """DRY as text-generation-webui defines it: for each earlier occurrence of the last token, the
    match is extended backwards while the tokens agree (up to 50, never across a sequence breaker);
    the token that followed that occurrence would extend the repetition, and is penalised by
    multiplier * base ** (match length - allowed_length) when the match is at least allowed_length."""
    if not context or context[-1] in breakers:
        return scores
    last, n = context[-1], len(context)
    lengths: dict[int, int] = {}
    for i in range(n - 1):
        if context[i] != last:
            continue
        following = context[i + 1]
        if following in breakers:
            continue
        length = 1
        while length < 50:
            j = i - length
            if j < 0 or context[j] != context[n - 1 - length] or context[n - 1 - length] in breakers:
                break
            length += 1
        lengths[following] = max(length, lengths.get(following, 0))
    hits = [(t, m) for t, m in lengths.items() if m >= allowed_length and t < scores.shape[-1]]
    if hits:
        ids = torch.tensor([t for t, _ in hits], device=scores.device)
        penalty = torch.tensor([multiplier * base ** (m - allowed_length) for _, m in hits], device=scores.device,
                               dtype=scores.dtype)
        scores = scores.clone()
        scores[ids] -= penalty
    return scores


def quadratic_smoothing(scores: torch.Tensor, factor: float, curve: float) -> torch.Tensor:
    """text-generation-webui's quadratic sampling ("smoothing"): each finite logit l becomes
    m - k*f*(l - m)^2 + s*f*(l - m)^3 with m the largest logit, k = (3 - curve)/2, s = (curve - 1)/2."""
    top = scores.max()
    diff = scores - top
    k, s = (3 - curve) / 2, (curve - 1) / 2
    return torch.where(torch.isfinite(scores), top - k * factor * diff ** 2 + s * factor * diff ** 3, scores)


def dynamic_temperature(scores: torch.Tensor, low: float, high: float, exponent: float) -> torch.Tensor:
    """text-generation-webui's dynamic temperature: T = low + (high - low) * (H / log n) ** exponent, with H the
    entropy of softmax(scores) and n the tokens still possible (finite scores); the scores divided by T (a T of 0,
    where low is 0 and one token is left or the distribution is certain, keeps only the most likely)."""
    n = int(torch.isfinite(scores).sum())
    logp = scores.log_softmax(-1)
    entropy = max(float(-(logp.exp() * logp).nan_to_num(0.0).sum()), 1e-10)
    top_entropy = math.log(n) if n > 1 else 1e-10
    temperature = low + (high - low) * (entropy / top_entropy) ** exponent
    if temperature <= 0:
        return torch.where(scores == scores.max(), scores, float("-inf"))
    return scores / temperature


def top_a(scores: torch.Tensor, a: float) -> torch.Tensor:
    """Top-a (text-generation-webui): drop tokens whose probability is below a * max_probability**2."""
    probs = scores.softmax(-1)
    limit = a * probs.max() ** 2
    return scores.masked_fill(probs < limit, float("-inf"))


def xtc(scores: torch.Tensor, threshold: float, probability: float, generator: torch.Generator) -> torch.Tensor:
    """XTC (llama.cpp): with the given probability, remove every token at or above the threshold except
    the least likely of them, when at least two are. One draw per step from the request's generator."""
    if probability <= 0 or threshold > 0.5:
        return scores
    if float(torch.rand((), generator=generator, device=generator.device)) > probability:
        return scores
    probs = scores.softmax(-1)
    above = probs >= threshold
    if int(above.sum()) < 2:
        return scores
    keep = torch.where(above, probs, torch.full_like(probs, 2.0)).argmin()  # least likely of the top choices
    remove = above.clone()
    remove[keep] = False
    return scores.masked_fill(remove, float("-inf"))


class Sampler:
    """One request's sampler: its settings, processors in its stage order, and its own seeded generator.
    `breaker_ids`: the token ids of DRY's sequence breakers (the engine's tokenizer knows them)."""

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu", tfs_webui: bool = False,
                 breaker_ids: frozenset[int] = frozenset(), prompt_ids: Sequence[int] = ()):
        self.params = p = params
        self.generator = torch.Generator(device=device)
        if p.seed is not None:
            self.generator.manual_seed(p.seed)
        else:
            self.generator.seed()
        self.repetition = RepetitionPenaltyLogitsProcessor(p.repetition_penalty) if p.repetition_penalty != 1 else None
        self.encoder_repetition = None  # text-generation-webui's: the "encoder" input is the prompt
        if p.encoder_repetition_penalty != 1:
            self.encoder_repetition = EncoderRepetitionPenaltyLogitsProcessor(
                p.encoder_repetition_penalty, torch.as_tensor([list(prompt_ids)], dtype=torch.long, device=device))
        self.no_repeat = NoRepeatNGramLogitsProcessor(p.no_repeat_ngram_size) if p.no_repeat_ngram_size else None
        self.breakers = breaker_ids
        self.mirostat = p.mirostat_mode == 2
        self.mu = 2 * p.mirostat_tau  # Mirostat's running surprise target
        warpers: dict = {}
        if not self.mirostat:  # Mirostat replaces the truncation samplers
            if p.top_k > 0:
                warpers["top_k"] = TopKLogitsWarper(p.top_k)
            if p.tfs < 1:
                warpers["tfs"] = TailFreeLogitsWarper(p.tfs, webui=tfs_webui)
            if p.typical_p < 1:
                warpers["typical_p"] = TypicalLogitsWarper(p.typical_p)
            if p.top_p < 1:
                warpers["top_p"] = TopPLogitsWarper(p.top_p)
            if p.epsilon_cutoff > 0:  # text-generation-webui's units, 1e-4
                warpers["epsilon_cutoff"] = EpsilonLogitsWarper(p.epsilon_cutoff * 1e-4)
            if p.eta_cutoff > 0:
                warpers["eta_cutoff"] = EtaLogitsWarper(p.eta_cutoff * 1e-4, device=device)
            if p.min_p > 0:
                warpers["min_p"] = MinPLogitsWarper(p.min_p)
        self.warpers = warpers
        self.temperature = None if p.greedy or p.dynamic_temperature or p.temperature == 1 \
            else TemperatureLogitsWarper(p.temperature)
        self.order = stage_order(p)

    @property
    def needs_context(self) -> bool:
        p = self.params
        return self.repetition is not None or p.presence_penalty != 0 or p.frequency_penalty != 0 \
            or p.dry_multiplier > 0 or self.no_repeat is not None

    @property
    def plain_greedy(self) -> bool:
        """Greedy on the raw logits: the argmax of the model's output is the token."""
        return self.params.greedy and not self.needs_context and not self.params.logit_bias \
            and self.encoder_repetition is None

    def window(self, context: Sequence[int] | torch.Tensor, device: torch.device, n: int | None = None) -> torch.Tensor:
        """The penalties' recent tokens. Only this slice becomes a tensor: the context grows every step."""
        n = self.params.repeat_last_n if n is None else n
        return torch.as_tensor(context if n <= 0 else context[-n:], dtype=torch.long, device=device)

    def _biased(self, scores: torch.Tensor, banned: Sequence[int] | None) -> torch.Tensor:
        vocab = scores.shape[-1]
        if self.params.logit_bias:
            scores = scores.clone()
            for tid, bias in self.params.logit_bias:
                if tid < vocab:
                    scores[tid] = float("-inf") if bias == float("-inf") else scores[tid] + bias
        if banned:
            scores = scores.index_fill(0, torch.tensor([b for b in banned if b < vocab], dtype=torch.long,
                                                       device=scores.device), float("-inf"))
        return scores

    def _stage(self, name: str, context, scores: torch.Tensor, cache: dict) -> torch.Tensor:
        """One stage of steps 2-5 on one row (a no-op when its setting is off)."""
        p = self.params
        if name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
            if "window" not in cache:
                cache["window"] = self.window(context, scores.device)
            window = cache["window"]
            if name == "repetition_penalty":
                return self.repetition(window[None, :], scores[None, :])[0] if self.repetition is not None else scores
            presence, frequency = (p.presence_penalty, 0.0) if name == "presence_penalty" else (0.0, p.frequency_penalty)
            if not presence and not frequency:
                return scores
            if "counts" not in cache:  # one count for both penalties
                cache["counts"] = token_counts(window, scores.shape[-1])
            return presence_frequency(window, scores, presence, frequency, cache["counts"])
        if name == "encoder_repetition_penalty":
            return self.encoder_repetition(None, scores[None, :])[0] if self.encoder_repetition is not None else scores
        if name == "no_repeat_ngram":  # n-grams of the whole context, prompt included (transformers' rule)
            if self.no_repeat is None:
                return scores
            ids = torch.as_tensor(context, dtype=torch.long, device=scores.device)
            return self.no_repeat(ids[None, :], scores[None, :])[0]
        if name == "dry":
            if p.dry_multiplier <= 0:
                return scores
            n = p.dry_penalty_last_n
            recent = context if n <= 0 else context[-n:]
            recent = recent.tolist() if isinstance(recent, torch.Tensor) else list(recent)
            return dry_penalty(recent, scores, p.dry_multiplier, p.dry_base, p.dry_allowed_length, self.breakers)
        if name in self.warpers:  # the warpers here read only the scores
            return self.warpers[name](_NO_IDS, scores[None, :])[0]
        if name == "top_a":
            return top_a(scores, p.top_a) if p.top_a > 0 and not self.mirostat else scores
        if name == "xtc":
            if p.xtc_probability > 0 and not self.mirostat:
                return xtc(scores, p.xtc_threshold, p.xtc_probability, self.generator)
            return scores
        if name == "temperature" and p.dynamic_temperature:
            return dynamic_temperature(scores, p.dynatemp_low, p.dynatemp_high, p.dynatemp_exponent)
        if name == "temperature":
            return self.temperature(_NO_IDS, scores[None, :])[0] if self.temperature is not None else scores
        if name == "quadratic_sampling":
            return quadratic_smoothing(scores, p.smoothing_factor, p.smoothing_curve) if p.smoothing_factor > 0 \
                else scores
        return scores  # a truncation that is off

    def _chain(self, context, scores: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        cache: dict = {}
        for name in names:
            scores = self._stage(name, context, scores, cache)
        return scores

    def process(self, context: Sequence[int] | torch.Tensor, scores: torch.Tensor, banned: Sequence[int] | None = None,
                mask=None) -> torch.Tensor:
        """All processors, in order, on one row: context (T,) token ids, scores (V,) -> (V,).
        `banned`: token ids removed first (the stop tokens before min_tokens); `mask`: the grammar's."""
        biased = self._biased(scores.float(), banned)
        if self.params.greedy:  # the argmax of the penalised scores: temperature and the filters cannot move it
            scores = self._chain(context, biased, [n for n in self.order if n in PENALTIES])
            return scores if mask is None else _masked(mask, scores, lambda: scores)
        lead = next((i for i, n in enumerate(self.order) if n not in PENALTIES), len(self.order))
        penalised = self._chain(context, biased, self.order[:lead])
        if _overflowed(penalised):  # the draw takes its argmax; the filters would make NaNs of the +inf
            return penalised if mask is None else _masked(mask, penalised, lambda: penalised)
        rest = self.order[lead:]
        out = self._chain(context, penalised, rest)
        untruncated = [n for n in rest if n not in TRUNCATIONS]
        return out if mask is None else _masked(mask, out, lambda: self._chain(context, penalised, untruncated))

    def __call__(self, context: Sequence[int] | torch.Tensor, scores: torch.Tensor, banned: Sequence[int] | None = None,
                 mask=None) -> int:
        scores = self.process(context, scores, banned, mask)
        if self.params.greedy or _overflowed(scores):
            return int(scores.argmax())
        if self.mirostat:
            return self._mirostat(scores)
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _mirostat(self, scores: torch.Tensor) -> int:
        """Mirostat v2 (llama.cpp): keep the tokens whose surprise -log2(p) is at most mu (at least one),
        renormalise, draw, then move mu towards the target surprise tau by eta times the error."""
        probs, order = scores.softmax(-1).sort(descending=True)
        surprise = -torch.log2(probs)
        keep = max(1, int((surprise <= self.mu).sum()))
        kept = probs[:keep] / probs[:keep].sum()
        idx = int(torch.multinomial(kept, 1, generator=self.generator))
        self.mu -= self.params.mirostat_eta * (float(-torch.log2(kept[idx])) - self.params.mirostat_tau)
        return int(order[idx])


def _masked(mask, scores: torch.Tensor, fallback) -> torch.Tensor:
    """The grammar's mask after the other samplers; if they left no allowed token, the mask over the
    penalised (untruncated) scores, `fallback()`, instead, as llama.cpp resamples with the grammar applied first."""
    out = mask(scores)
    if torch.isinf(out).all():
        out = mask(fallback())
    return out


_NO_IDS = torch.zeros((1, 0), dtype=torch.long)  # transformers' warpers take input ids; these read only the scores


def stage_order(params: SamplingParams) -> tuple[str, ...]:
    """The stages of steps 2-5 in the order this request runs them. The default is STAGES (temperature last);
    `temperature_last: false` puts temperature and smoothing before the truncations. A `sampler_order` reorders
    the stages it names among the places those stages have in that order (so an order that leaves out the
    penalties, as llama.cpp's often does, still has them first); unnamed stages keep their places."""
    base = list(STAGES) if params.temperature_last else list(PENALTIES + TEMPERATURE + TRUNCATIONS)
    named = [n for n in params.sampler_order if n in STAGES]
    slots = iter(named)
    return tuple(next(slots) if n in named else n for n in base)


def _overflowed(scores: torch.Tensor) -> bool:
    """Extreme settings (a penalty or temperature near 0) can push logits to +inf; softmax would then be
    NaN. The limit of such a distribution is the argmax, so it is taken instead."""
    return bool(torch.isposinf(scores).any())
