"""The samplers roleplay users ask for (DRY, XTC, top-a, Mirostat v2, logit bias, min_tokens), each
checked on random logits against a reference restated here from its published definition:
text-generation-webui's DRYLogitsProcessor and TopALogitsWarper, llama.cpp's XTC and Mirostat v2
samplers (src/llama-sampling.cpp)."""

import math
import random

import pytest
import torch

from openhermes.infer.sampling import Sampler, SamplingParams, dry_penalty, top_a, xtc


def reference_dry(ids, scores, multiplier, base, allowed_length, breakers, max_match=50):
    """text-generation-webui: for each earlier position of the last token, extend the match backwards
    (while the tokens agree, up to 50, stopping at a breaker); the token after it gets the longest
    match; penalty multiplier * base ** (length - allowed_length) once the length reaches allowed_length."""
    scores = list(scores)
    last = ids[-1]
    if last in breakers:
        return scores
    longest = {}
    for i in range(len(ids) - 1):
        if ids[i] != last or ids[i + 1] in breakers:
            continue
        m = 1
        while m < max_match and i - m >= 0:
            prev = ids[-(m + 1)]
            if ids[i - m] != prev or prev in breakers:
                break
            m += 1
        longest[ids[i + 1]] = max(m, longest.get(ids[i + 1], 0))
    for token, m in longest.items():
        if m >= allowed_length:
            scores[token] -= multiplier * base ** (m - allowed_length)
    return scores


@pytest.mark.parametrize("seed", range(30))
def test_dry_matches_the_reference(seed):
    rng = random.Random(seed)
    vocab = rng.choice([4, 6, 12])  # small vocabularies make long repeats
    ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 120))]
    if seed % 3 == 0:  # a planted long repetition
        ids = ids[:20] * 3 + ids[:7]
    breakers = frozenset(rng.sample(range(vocab), rng.randint(0, 2)))
    scores = torch.randn(vocab, generator=torch.Generator().manual_seed(seed))
    mult, base, allowed = rng.choice([0.8, 1.5]), rng.choice([1.75, 1.1]), rng.choice([1, 2, 3])
    ours = dry_penalty(ids, scores, mult, base, allowed, breakers)
    theirs = reference_dry(ids, scores.tolist(), mult, base, allowed, breakers)
    assert torch.allclose(ours, torch.tensor(theirs), atol=1e-5)


def test_dry_penalises_the_token_that_would_continue_a_repeat():
    ids = [5, 1, 2, 3, 4, 9, 1, 2, 3]  # "1 2 3" repeats; 4 came next last time
    scores = torch.zeros(10)
    out = dry_penalty(ids, scores, 0.8, 1.75, 2, frozenset())
    assert out[4] == pytest.approx(-0.8 * 1.75 ** (3 - 2)) and (out[torch.arange(10) != 4] == 0).all()
    assert (dry_penalty(ids, scores, 0.8, 1.75, 2, frozenset({2})) == 0).all()  # a breaker inside the match


def reference_top_a(probs, a):
    limit = a * max(probs) ** 2
    return [p >= limit for p in probs]


@pytest.mark.parametrize("seed", range(20))
def test_top_a_matches_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(50, generator=g) * 3
    a = [0.1, 0.2, 0.5, 1.0][seed % 4]
    kept = torch.isfinite(top_a(scores, a)).tolist()
    assert kept == reference_top_a(scores.softmax(-1).tolist(), a)


def reference_xtc(probs, threshold, probability, draw):
    """llama.cpp: if probability > 0, threshold <= 0.5 and the draw <= probability, sort by probability,
    find the last position whose probability is >= threshold; if it is > 0, drop everything before it."""
    keep = [True] * len(probs)
    if probability <= 0 or threshold > 0.5 or draw > probability:
        return keep
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    pos_last = 0
    for rank, i in enumerate(order):
        if probs[i] >= threshold:
            pos_last = rank
        else:
            break
    for i in order[:pos_last]:
        keep[i] = False
    return keep


@pytest.mark.parametrize("seed", range(30))
def test_xtc_matches_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(12, generator=g) * (1 + seed % 3)
    threshold, probability = [0.05, 0.1, 0.2, 0.6][seed % 4], [0.0, 0.5, 1.0][seed % 3]
    gen = torch.Generator().manual_seed(seed)
    draw = float(torch.rand((), generator=torch.Generator().manual_seed(seed)))
    kept = torch.isfinite(xtc(scores, threshold, probability, gen)).tolist()
    assert kept == reference_xtc(scores.softmax(-1).tolist(), threshold, probability, draw)


def test_mirostat_v2_keeps_the_reference_surprise_budget():
    """llama.cpp: keep the tokens whose surprise -log2(p) is at most mu (at least the most likely),
    renormalise, draw, then mu -= eta * (surprise of the drawn token after renormalising - tau), from
    mu = 2 * tau. The draw itself is the request's generator: the reference follows its choices."""
    steps = [torch.randn(40, generator=torch.Generator().manual_seed(s)) * 2 for s in range(25)]
    sampler = Sampler(SamplingParams(temperature=1.0, mirostat_mode=2, mirostat_tau=3.0, mirostat_eta=0.1, seed=7))
    mu = 2 * 3.0
    for logits in steps:
        probs = logits.softmax(-1)
        allowed = {i for i, p in enumerate(probs.tolist()) if -math.log2(p) <= mu} or {int(probs.argmax())}
        token = sampler([], logits)
        assert token in allowed
        kept_total = sum(probs[i] for i in allowed)
        mu -= 0.1 * (-math.log2(float(probs[token] / kept_total)) - 3.0)
        assert sampler.mu == pytest.approx(mu, rel=1e-5)
    # and over many draws the mean surprise settles near tau (Mirostat's purpose)
    s = Sampler(SamplingParams(temperature=1.0, mirostat_mode=2, mirostat_tau=3.0, mirostat_eta=0.1, seed=1))
    surprises = []
    logits = torch.randn(400, generator=torch.Generator().manual_seed(3)) * 2
    for _ in range(400):
        before = s.mu
        token = s([], logits)
        probs = logits.softmax(-1)
        kept = probs[-torch.log2(probs) <= before]
        surprises.append(-math.log2(float(probs[token] / (kept.sum() if len(kept) else probs[token]))))
    assert abs(sum(surprises[100:]) / 300 - 3.0) < 0.5


def test_logit_bias_and_min_tokens():
    scores = torch.tensor([0.0, 5.0, 1.0, 2.0])
    greedy = SamplingParams(temperature=0, logit_bias=((1, float("-inf")), (2, 10)))
    assert Sampler(greedy)([], scores) == 2
    assert Sampler(SamplingParams(temperature=0))([], scores, banned=[1]) == 3  # stop token 1 banned


def test_the_order_puts_truncation_after_penalties_and_before_temperature():
    """top-a sees the penalised, untempered distribution: a repetition penalty can bring a token back in."""
    scores = torch.tensor([4.0, 3.0, -5.0])
    params = SamplingParams(temperature=0.5, top_a=0.9, repetition_penalty=3.0, seed=0)
    processed = Sampler(params).process([0], scores)
    assert torch.isfinite(processed).tolist() == [False, True, False]  # token 0 penalised to 4/3, then cut
