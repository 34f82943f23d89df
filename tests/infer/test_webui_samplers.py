"""text-generation-webui's samplers that SillyTavern's ooba type sends, each against a reference restated from
text-generation-webui's source (modules/sampler_hijack.py, modules/text_generation.py) or from the algorithm
transformers defines and text-generation-webui uses."""

import math

import pytest
import torch

from openhermes.infer.sampling import Sampler, SamplingParams

LOGITS = torch.tensor([4.0, 3.2, 2.9, 1.0, 0.5, -0.3, -2.0, -6.0])


def finite(scores: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(scores.tolist()) if math.isfinite(v)}


@pytest.mark.parametrize("cutoff", [50, 800, 2500])
def test_epsilon_cutoff_drops_tokens_below_it_in_units_of_1e_4(cutoff):
    probs = LOGITS.softmax(-1)
    expected = {i for i, p in enumerate(probs.tolist()) if p >= cutoff * 1e-4} or {int(probs.argmax())}
    got = Sampler(SamplingParams(epsilon_cutoff=cutoff)).process([1], LOGITS.clone())
    assert finite(got) == expected
    assert torch.equal(got[list(expected)], LOGITS[list(expected)])  # the kept logits are untouched


@pytest.mark.parametrize("cutoff", [3, 300, 3000])
def test_eta_cutoff_scales_with_the_entropy(cutoff):
    probs = LOGITS.softmax(-1)
    entropy = -(probs * probs.log()).sum()
    eps = cutoff * 1e-4
    eta = min(eps, math.sqrt(eps) * math.exp(-float(entropy)))
    expected = {i for i, p in enumerate(probs.tolist()) if p >= eta} or {int(probs.argmax())}
    assert finite(Sampler(SamplingParams(eta_cutoff=cutoff)).process([1], LOGITS.clone())) == expected


@pytest.mark.parametrize("factor,curve", [(0.3, 1.0), (0.3, 2.5), (1.2, 4.0)])
def test_quadratic_smoothing_is_text_generation_webuis_formula(factor, curve):
    top = float(LOGITS.max())
    k, s = (3 - curve) / 2, (curve - 1) / 2
    expected = [top - k * factor * (x - top) ** 2 + s * factor * (x - top) ** 3 for x in LOGITS.tolist()]
    got = Sampler(SamplingParams(smoothing_factor=factor, smoothing_curve=curve)).process([1], LOGITS.clone())
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_temperature_last_false_lets_the_filters_see_the_tempered_distribution():
    """min-p 0.1 at temperature 3: tempered first (text-generation-webui's default order) keeps more tokens."""
    def min_p_keeps(logits):
        probs = logits.softmax(-1)
        return {i for i, p in enumerate(probs.tolist()) if p >= 0.1 * float(probs.max())}

    keep_first, keep_last = min_p_keeps(LOGITS / 3), min_p_keeps(LOGITS)
    assert keep_first != keep_last
    first = Sampler(SamplingParams(temperature=3.0, min_p=0.1, temperature_last=False)).process([1], LOGITS.clone())
    last = Sampler(SamplingParams(temperature=3.0, min_p=0.1)).process([1], LOGITS.clone())
    assert finite(first) == keep_first and finite(last) == keep_last
    assert first[0] == pytest.approx(LOGITS[0] / 3)


def test_no_repeat_ngram_bans_the_token_that_would_repeat_one():
    context = [5, 6, 7, 1, 5, 6]  # 5 6 -> 7 was seen: 7 would repeat the 3-gram
    got = Sampler(SamplingParams(no_repeat_ngram_size=3)).process(context, LOGITS.clone())
    assert finite(got) == set(range(8)) - {7}
    assert finite(Sampler(SamplingParams(no_repeat_ngram_size=4)).process(context, LOGITS.clone())) == set(range(8))


def test_encoder_repetition_penalty_favours_the_prompts_tokens():
    """text-generation-webui passes the prompt as the encoder input: a prompt token's logit l becomes l * p when
    positive and l / p when negative (p > 1 favours it)."""
    prompt = [1, 5, 6]
    got = Sampler(SamplingParams(encoder_repetition_penalty=1.5), prompt_ids=prompt).process(prompt + [2],
                                                                                               LOGITS.clone())
    expected = [x * 1.5 if i in prompt and x > 0 else x / 1.5 if i in prompt else x for i, x in enumerate(LOGITS.tolist())]
    assert got.tolist() == pytest.approx(expected)


def test_the_new_settings_are_checked():
    for field, value in (("epsilon_cutoff", -1.0), ("eta_cutoff", 10_000.0), ("smoothing_curve", 0.5),
                         ("no_repeat_ngram_size", -1), ("encoder_repetition_penalty", 0.0), ("temperature_last", 1)):
        with pytest.raises(ValueError, match=field):
            SamplingParams(**{field: value})


def _warpers_in_order(names, logits, temperature=2.0, top_p=0.8, min_p=0.3, top_k=4):
    """text-generation-webui's rule for sampler_priority: transformers' warpers, each applied in the listed order."""
    from transformers.generation import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    make = {"temperature": TemperatureLogitsWarper(temperature), "top_p": TopPLogitsWarper(top_p),
            "min_p": MinPLogitsWarper(min_p), "top_k": TopKLogitsWarper(top_k)}
    scores = logits[None, :].clone()
    for name in names:
        scores = make[name](None, scores)
    return scores[0]


@pytest.mark.parametrize("order", [("temperature", "top_p", "min_p", "top_k"), ("min_p", "top_p", "temperature", "top_k"),
                                   ("top_k", "min_p", "temperature", "top_p"), ("top_p", "temperature", "top_k", "min_p")])
def test_a_sampler_order_applies_the_samplers_in_that_order(order):
    params = SamplingParams(temperature=2.0, top_p=0.8, min_p=0.3, top_k=4, sampler_order=order)
    got = Sampler(params).process([1], LOGITS.clone())
    assert torch.equal(got, _warpers_in_order(order, LOGITS))


def test_orders_differ_where_the_samplers_do_not_commute():
    a = Sampler(SamplingParams(temperature=2.0, min_p=0.2, sampler_order=("temperature", "min_p"))).process([1], LOGITS)
    b = Sampler(SamplingParams(temperature=2.0, min_p=0.2, sampler_order=("min_p", "temperature"))).process([1], LOGITS)
    assert finite(a) != finite(b)


def test_an_order_that_leaves_out_the_penalties_keeps_them_first():
    """llama.cpp's `samplers` often omits "penalties"; an order only moves the samplers it names."""
    params = SamplingParams(temperature=2.0, repetition_penalty=1.5, sampler_order=("temperature",))
    default = SamplingParams(temperature=2.0, repetition_penalty=1.5)
    assert torch.equal(Sampler(params).process([0, 1], LOGITS), Sampler(default).process([0, 1], LOGITS))


def test_the_default_order_is_the_documented_one():
    from openhermes.infer.sampling import STAGES, stage_order

    assert stage_order(SamplingParams()) == STAGES
    early = stage_order(SamplingParams(temperature_last=False))
    assert early.index("temperature") < early.index("top_k") and early.index("quadratic_sampling") < early.index("top_k")


@pytest.mark.parametrize("order", [("top_k", "beam"), ("top_k", "top_k")])
def test_a_bad_order_is_refused(order):
    with pytest.raises(ValueError, match="sampler_order"):
        SamplingParams(sampler_order=order)


def webui_dynamic_temperature(scores: torch.Tensor, low: float, high: float, exponent: float) -> torch.Tensor:
    """text-generation-webui's DynamicTemperatureLogitsWarper, restated: entropy of the softmax (0 log 0 = 0, at
    least 1e-10) over the log of the count of finite logits (at least 1e-10), to the exponent, maps low..high."""
    probs = torch.softmax(scores, dim=-1)
    entropy = -torch.where(probs > 0, probs * torch.log(probs), torch.zeros_like(probs)).sum()
    entropy = max(float(entropy), 1e-10)
    valid = int((scores > -float("inf")).sum())
    top = math.log(valid) if math.log(valid) > 0 else 1e-10
    return scores / (low + (high - low) * (entropy / top) ** exponent)


@pytest.mark.parametrize("low,high,exponent", [(0.5, 1.5, 1.0), (0.2, 2.0, 0.5), (1.0, 3.0, 2.5)])
@pytest.mark.parametrize("top_k", [0, 3])
def test_dynamic_temperature_is_text_generation_webuis_formula(low, high, exponent, top_k):
    """In temperature's place: after the filters by default (top-k's -inf tokens do not count), and it replaces
    the plain temperature, which SillyTavern sets to the middle of the range."""
    params = SamplingParams(temperature=(low + high) / 2, top_k=top_k, dynamic_temperature=True, dynatemp_low=low,
                            dynatemp_high=high, dynatemp_exponent=exponent)
    got = Sampler(params).process([1], LOGITS.clone())
    filtered = Sampler(SamplingParams(top_k=top_k)).process([1], LOGITS.clone())
    expected = webui_dynamic_temperature(filtered, low, high, exponent)
    assert finite(got) == finite(expected)
    assert torch.allclose(got[list(finite(got))], expected[list(finite(expected))], rtol=1e-6)
    plain = Sampler(params.with_(dynamic_temperature=False)).process([1], LOGITS.clone())
    assert not torch.allclose(got[list(finite(got))], plain[list(finite(plain))])


def test_dynamic_temperature_spreads_when_unsure_and_sharpens_when_sure():
    params = SamplingParams(dynamic_temperature=True, dynatemp_low=0.2, dynatemp_high=2.0)
    sure, unsure = torch.tensor([9.0] + [0.0] * 7), torch.linspace(1.0, 0.3, 8)
    t_sure = float(sure[0] / Sampler(params).process([1], sure)[0])
    t_unsure = float(unsure[0] / Sampler(params).process([1], unsure)[0])
    assert 0.2 < t_sure < 0.25 and 1.9 < t_unsure < 2.0  # near low when one token dominates, near high when flat
    zero = Sampler(params.with_(dynatemp_low=0.0, dynatemp_high=0.0))
    assert zero.params.greedy and zero(torch.tensor([1]), sure) == 0
    with pytest.raises(ValueError, match="dynatemp_high"):
        SamplingParams(dynamic_temperature=True, dynatemp_low=2.0, dynatemp_high=1.0)
