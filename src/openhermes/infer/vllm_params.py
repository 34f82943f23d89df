"""Our request settings as vLLM's SamplingParams (`--engine vllm`).

vLLM's sampler (v1/sample/sampler.py, 0.26-0.28) runs: its logits processors (logit bias, min_tokens, then
custom ones), repetition/frequency/presence penalties, temperature, min-p, top-k and top-p, the draw.
A request goes to vLLM's own kernels when they compute what ours compute (SamplingParams in the
card's terms, infer/sampling.py); otherwise our whole sampler chain runs as one vLLM logits processor
(infer/vllm_logits.py) and vLLM draws from its output with temperature 1 and no filters of its own.

Where the meanings differ, and so the processor runs:
- presence/frequency penalties: vLLM counts the reply's tokens only (OpenAI's rule); ours count the
  window of recent tokens, prompt included (llama.cpp's);
- repetition penalty over a window (`repeat_last_n` > 0): vLLM's covers the whole context;
- top-p and min-p: vLLM applies them after temperature and min-p before top-p; ours apply the
  filters to the untempered distribution (`temperature_last`), top-p before min-p;
- TFS, typical, top-a, XTC, DRY, epsilon/eta cutoffs, smoothing, dynamic temperature, encoder repetition
  penalty, no-repeat n-grams: vLLM has none of them;
- a ban (logit bias -inf): vLLM clamps a bias to -100;
- a sampler order of the request's own (`sampler_order`): vLLM's is fixed.
`ignore_eos` bans the stop tokens in ours (llama.cpp's rule); vLLM's min_tokens bans them until that many tokens,
so ignore_eos becomes min_tokens = max_tokens, the same ban for the whole reply, in vLLM's own kernels.
Mirostat needs the draw itself (its target moves with the surprise of each drawn token), which a
logits processor does not see: it is refused (UnsupportedSampler) rather than changed.
"""

from __future__ import annotations

from dataclasses import asdict

from openhermes.infer.sampling import SamplingParams as OurParams
from openhermes.infer.sequence import GenerationRequest

EXTRA_KEY = "openhermes"  # SamplingParams.extra_args key that carries our settings to the processor

# Our fields that vLLM has nowhere: any of them on sends the request through our processor.
_OURS_ONLY = {"tfs": 1.0, "typical_p": 1.0, "top_a": 0.0, "xtc_probability": 0.0, "dry_multiplier": 0.0,
              "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "smoothing_factor": 0.0, "encoder_repetition_penalty": 1.0,
              "no_repeat_ngram_size": 0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
              "dynamic_temperature": False}


class UnsupportedSampler(ValueError):
    """A setting that --engine vllm cannot compute as asked (the request is refused, never changed)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check(params: OurParams) -> None:
    """Refuse what the vLLM engine cannot run."""
    if params.mirostat_mode:
        raise UnsupportedSampler("mirostat_mode", "mirostat_mode: Mirostat needs each drawn token's surprise, which "
                                 "vLLM's logits processors do not see; it is not available under --engine vllm "
                                 "(use the torch or llama.cpp engine, or another sampler)")


def runs_natively(params: OurParams) -> bool:
    """Whether vLLM's own sampler computes this request's distribution as ours does."""
    if any(bias == float("-inf") for _, bias in params.logit_bias) or params.sampler_order:
        return False
    if any(getattr(params, name) != off for name, off in _OURS_ONLY.items()):
        return False
    if params.repetition_penalty != 1 and params.repeat_last_n > 0:
        return False
    if params.top_p < 1 and params.min_p > 0:  # applied in the other order
        return False
    tempered_filters = params.top_p < 1 or params.min_p > 0  # top-k keeps the same tokens at any temperature
    if tempered_filters and params.temperature_last and params.temperature not in (0.0, 1.0):
        return False
    return True


def to_vllm(request: GenerationRequest, stop_ids: frozenset[int], *, breaker_ids: frozenset[int] = frozenset()):
    """vLLM's SamplingParams for one request. Stop strings, the text and the finish reason stay ours
    (infer/sequence.py, as with the other engines): vLLM is given the stop tokens and the token limit, and
    hands back token ids, not text."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    p = request.params
    check(p)
    stops = sorted(stop_ids)
    common = dict(
        n=1, max_tokens=request.max_new_tokens, seed=p.seed, stop_token_ids=stops, ignore_eos=request.ignore_eos,
        min_tokens=request.max_new_tokens if request.ignore_eos else min(request.min_tokens, request.max_new_tokens),
        logprobs=request.logprobs, detokenize=False,
        skip_special_tokens=request.skip_special_tokens, output_kind=RequestOutputKind.DELTA,
    )
    schema = getattr(request.constraint, "schema", None)
    if schema is not None:  # vLLM's own grammar backend (llguidance, as ours), same whitespace rule
        common["structured_outputs"] = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    if runs_natively(p):
        bias = dict(p.logit_bias)
        return SamplingParams(temperature=p.temperature, top_k=p.top_k if p.top_k > 0 else 0, top_p=p.top_p,
                              min_p=p.min_p, repetition_penalty=p.repetition_penalty, logit_bias=bias or None,
                              **common)
    settings = asdict(p)
    settings["logit_bias"] = [list(pair) for pair in p.logit_bias]
    settings["dry_sequence_breakers"] = list(p.dry_sequence_breakers)
    settings["sampler_order"] = list(p.sampler_order)
    extra = {EXTRA_KEY: {"params": settings, "breaker_ids": sorted(breaker_ids)}}
    return SamplingParams(temperature=0.0 if p.greedy else 1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                          extra_args=extra, **common)


def our_params(settings: dict) -> OurParams:
    """The processor's side: our SamplingParams back from extra_args (JSON-safe lists to tuples)."""
    settings = dict(settings)
    settings["logit_bias"] = tuple((int(t), float(b)) for t, b in settings.get("logit_bias", ()))
    settings["dry_sequence_breakers"] = tuple(settings.get("dry_sequence_breakers", ()))
    return OurParams(**settings)
