"""Our sampler chain inside vLLM: a logits processor of vLLM's V1 interface (`--engine vllm`).

A request whose settings vLLM's own sampler cannot compute as ours do (infer/vllm_params.py) carries
them in `SamplingParams.extra_args`; this processor runs infer/sampling.py's `Sampler.process` on
its row, with the prompt and the reply so far as the context, so the distribution vLLM draws from is
ours: the same code, the same order, the same float32 arithmetic. vLLM's AdapterLogitsProcessor keeps
the rows in step with its persistent batch.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from openhermes.infer.sampling import Sampler
from openhermes.infer.vllm_params import EXTRA_KEY, our_params


class RowSampler:
    """One request's sampler, called by vLLM with (prompt ids, output ids so far, logits row)."""

    def __init__(self, settings: dict, device: torch.device | str):
        self.settings = settings
        self.device = device
        self.sampler: Sampler | None = None  # built at the first call: the encoder penalty needs the prompt

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if self.sampler is None:
            self.sampler = Sampler(our_params(s["params"]), device=logits.device,
                                   breaker_ids=frozenset(s.get("breaker_ids", ())), prompt_ids=prompt_ids)
        scores = self.sampler.process([*prompt_ids, *output_ids], logits)
        if torch.isposinf(scores).any():  # the limit of an overflowed distribution is its argmax (sampling.py)
            top = scores.argmax()
            scores = torch.full_like(scores, float("-inf"))
            scores[top] = 0.0
        return scores


class OpenHermesSampling(AdapterLogitsProcessor):
    """Registered with vLLM (`logits_processors=[OpenHermesSampling]`); applies to the requests that
    carry our settings, and leaves the others alone."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        self.device = device

    def is_argmax_invariant(self) -> bool:
        return False  # penalties and bans change the greedy choice too

    def new_req_logits_processor(self, params) -> RowSampler | None:
        settings = (params.extra_args or {}).get(EXTRA_KEY)
        return RowSampler(settings, self.device) if settings else None
