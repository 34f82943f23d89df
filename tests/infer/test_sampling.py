"""Samplers on small hand-computed logit vectors (SPEC §4)."""

import math

import pytest
import torch

from openhermes.infer.sampling import PRESETS, Sampler, SamplingParams, TailFreeLogitsWarper, presence_frequency


def kept(scores: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(scores.tolist()) if v != -math.inf}


def test_tail_free_keeps_the_hand_computed_head():
    # p sorted: .35 .25 .18 .12 .06 .04 -> |d2| = .03 .01 .00 .04 -> normalised .375 .125 0 .5
    # -> cdf .375 .5 .5 1.0; z = .55 first exceeded at i = 3: llama.cpp keeps 3 tokens, webui 4.
    probs = torch.tensor([0.12, 0.04, 0.35, 0.18, 0.06, 0.25])  # shuffled on purpose
    logits = probs.log()[None, :]
    llama = TailFreeLogitsWarper(0.55)(None, logits.clone())[0]
    webui = TailFreeLogitsWarper(0.55, webui=True)(None, logits.clone())[0]
    assert kept(llama) == {2, 5, 3}
    assert kept(webui) == {2, 5, 3, 0}
    assert torch.equal(llama[[2, 5, 3]], logits[0, [2, 5, 3]])  # kept values untouched
    # .45 is exceeded at i = 1 (i = 0 would leave nothing): one token survives.
    assert kept(TailFreeLogitsWarper(0.45)(None, logits.clone())[0]) == {2}


def test_tail_free_off_and_flat():
    logits = torch.tensor([[1.0, 0.5, 0.2, -1.0]])
    assert torch.equal(TailFreeLogitsWarper(1.0)(None, logits.clone()), logits)
    # A linear ramp of probabilities has zero second differences: equal weights 1/2 each ->
    # cdf .5, 1.0; z = .6 first exceeded at i = 1 -> llama.cpp keeps 1.
    ramp = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    assert kept(TailFreeLogitsWarper(0.6)(None, ramp.clone())[0]) == {0}


def test_repetition_penalty_uses_only_the_recent_range():
    context = torch.tensor([5, 1, 2, 1, 3])
    scores = torch.tensor([1.0, 2.0, -1.0, 0.5, -2.0, 3.0])
    ranged = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0, repeat_last_n=2)).process(context, scores)
    # window = [1, 3]: positive logits divided by 2; token 2 and 5 are outside the window
    assert ranged.tolist() == [1.0, 1.0, -1.0, 0.25, -2.0, 3.0]
    whole = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0, repeat_last_n=0)).process(context, scores)
    # whole context {1, 2, 3, 5}: the negative logit of token 2 is multiplied
    assert whole.tolist() == [1.0, 1.0, -2.0, 0.25, -2.0, 1.5]


def test_presence_and_frequency_penalties():
    window = torch.tensor([1, 1, 1, 3])
    out = presence_frequency(window, torch.zeros(5), presence=0.5, frequency=0.25)
    assert out.tolist() == [0.0, -(0.5 + 3 * 0.25), 0.0, -(0.5 + 0.25), 0.0]


def test_filters_see_untempered_probabilities():
    # min_p 0.2 of top 0.5 -> threshold 0.1: the 0.05 token goes, whatever the temperature after it.
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    hot = Sampler(SamplingParams(temperature=5.0, min_p=0.2)).process(torch.tensor([0]), probs.log())
    assert kept(hot) == {0, 1, 2}
    assert torch.allclose(hot[:3], probs.log()[:3] / 5.0)


def test_top_k_and_top_p_in_order():
    probs = torch.tensor([0.05, 0.4, 0.3, 0.25])
    s = Sampler(SamplingParams(top_k=3, top_p=0.6)).process(torch.tensor([0]), probs.log())
    # top-k 3 -> {1, 2, 3}; top-p .6 on the untempered full distribution keeps .4 + .3
    assert kept(s) == {1, 2}


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(50)

    def draws(seed):
        s = Sampler(SamplingParams(seed=seed))
        return [s(torch.tensor([0]), logits) for _ in range(10)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_limarp_preset_is_the_cards_settings():
    p = PRESETS["limarp"]
    assert (p.tfs, p.temperature, p.repetition_penalty, p.repeat_last_n, p.top_k, p.top_p) == (
        0.92, 0.70, 1.1, 2048, 0, 1.0)


@pytest.mark.parametrize("field,value", [("temperature", -1), ("top_p", 0), ("top_p", 1.5), ("min_p", 2),
                                         ("tfs", 0), ("repetition_penalty", 0), ("top_k", -3),
                                         ("presence_penalty", 3), ("temperature", float("nan"))])
def test_out_of_range_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})
