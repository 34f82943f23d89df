"""The metrics of the card's harness (lm-evaluation-harness v0.3 and BIG-bench), SPEC §7."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np


def mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs))


def stderr_of_mean(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1) over sqrt(n), as the harness's mean_stderr."""
    n = len(xs)
    if n < 2:
        return 0.0
    mu = mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def stderr_of_accuracy(value: float, n: int) -> float:
    """The same for a 0/1 metric, from its mean and size alone (to check a published table)."""
    return math.sqrt(value * (1 - value) * n / (n - 1)) / math.sqrt(n) if n > 1 else 0.0


def acc(logprobs: Sequence[float], gold: int | Sequence[int]) -> float:
    """1 if the highest summed log-probability is a gold choice (first index wins a tie, as argmax)."""
    pick = int(np.argmax(logprobs))
    return float(pick in gold) if isinstance(gold, Sequence) else float(pick == gold)


def acc_norm(logprobs: Sequence[float], choices: Sequence[str], gold: int | Sequence[int]) -> float:
    """acc over sum / len(choice) in characters of the raw choice (no added space)."""
    return acc([lp / len(c) for lp, c in zip(logprobs, choices, strict=True)], gold)


def mc1(logprobs: Sequence[float]) -> float:
    """TruthfulQA MC1: the first choice is the true one."""
    return float(int(np.argmax(logprobs)) == 0)


MC2_RULES = ("harness", "labels")


def mc2(logprobs: Sequence[float], labels: Sequence[int], rule: str = "harness") -> float:
    """TruthfulQA MC2: probability mass of the true answers over all answers.

    rule "harness" (the card's): the true answers are those before the first label 0
    (`labels.index(0)`), whatever the labels after it say; "labels": every answer labelled 1, wherever it
    stands (the data's own meaning; differs on the validation rows whose labels are not all 1s then 0s).
    The harness calls exp() on raw log-likelihoods, which underflows for long answers; subtracting the max
    first gives the same ratio without underflow."""
    lp = np.asarray(logprobs, dtype=np.float64)
    p = np.exp(lp - lp.max())
    if rule == "harness":
        split = list(labels).index(0) if 0 in labels else len(labels)
        true = np.arange(len(labels)) < split
    elif rule == "labels":
        true = np.asarray(labels, dtype=bool)
    else:
        raise ValueError(f"unknown mc2 rule {rule!r}; choose one of {', '.join(MC2_RULES)}")
    return float(p[true].sum() / p.sum())


def yes_no_acc(ll_yes: float, ll_no: float, gold_is_yes: bool) -> float:
    """BoolQ's acc as the harness computes it: "yes" only when its log-likelihood is strictly higher (an exact
    tie predicts "no")."""
    return float((ll_yes > ll_no) == gold_is_yes)


def bigbench_grade(logprobs: Sequence[float], target_scores: dict[str, float]) -> float:
    """multiple_choice_grade: the target score of the highest raw log-likelihood (no length
    normalisation); among tied maxima BIG-bench picks by sha256 of the float64 score array's bytes,
    modulo the number of ties."""
    scores = np.asarray(logprobs, dtype=np.float64)
    best = np.flatnonzero(scores == scores.max())
    pick = best[0]
    if len(best) > 1:
        pick = best[int.from_bytes(hashlib.sha256(scores.tobytes()).digest(), "big") % len(best)]
    return float(list(target_scores.values())[int(pick)])


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator 1 - C(n-c, k) / C(n, k), computed as a product (no huge binomials)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
