"""Metric math on hand-computed log-likelihoods, and the card's own table checked against the formulas."""

import hashlib
import math

import numpy as np
import pytest

from openhermes.eval import metrics

# The OpenHermes 2.5 card's GPT4All table: task -> (metric -> (value, stderr)), and the task sizes.
CARD_GPT4ALL = {
    "arc_challenge": {"acc": (0.5623, 0.0145), "acc_norm": (0.6007, 0.0143)},
    "arc_easy": {"acc": (0.8346, 0.0076), "acc_norm": (0.8165, 0.0079)},
    "boolq": {"acc": (0.8657, 0.0060)},
    "hellaswag": {"acc": (0.6310, 0.0048), "acc_norm": (0.8173, 0.0039)},
    "openbookqa": {"acc": (0.3460, 0.0213), "acc_norm": (0.4480, 0.0223)},
    "piqa": {"acc": (0.8145, 0.0091), "acc_norm": (0.8270, 0.0088)},
    "winogrande": {"acc": (0.7435, 0.0123)},
}
SIZES = {"arc_challenge": 1172, "arc_easy": 2376, "boolq": 3270, "hellaswag": 10042, "openbookqa": 500, "piqa": 1838,
         "winogrande": 1267}


def test_stderr_formula_reproduces_the_cards_stderr_column():
    for task, rows in CARD_GPT4ALL.items():
        for metric, (value, stderr) in rows.items():
            assert round(metrics.stderr_of_accuracy(value, SIZES[task]), 4) == pytest.approx(stderr, abs=1e-9), (task,
                                                                                                                metric)


def test_gpt4all_average_is_the_cards():
    picks = [rows.get("acc_norm", rows["acc"])[0] for rows in CARD_GPT4ALL.values()]
    assert round(100 * sum(picks) / len(picks), 2) == 73.12


def test_stderr_of_mean_uses_n_minus_1():
    xs = [1, 0, 1, 1]
    assert metrics.stderr_of_mean(xs) == pytest.approx(math.sqrt(0.25) / 2)  # sample var 0.25, n = 4
    assert metrics.stderr_of_mean(xs) == pytest.approx(metrics.stderr_of_accuracy(0.75, 4))


def test_acc_and_acc_norm():
    lls = [-4.0, -6.0, -9.0]
    choices = ["ab", "abcd", "abcdefghi"]  # per character: -2, -1.5, -1
    assert metrics.acc(lls, 0) == 1.0 and metrics.acc(lls, 2) == 0.0
    assert metrics.acc_norm(lls, choices, 2) == 1.0 and metrics.acc_norm(lls, choices, 0) == 0.0
    assert metrics.acc([-1.0, -1.0], 0) == 1.0 and metrics.acc([-1.0, -1.0], 1) == 0.0  # a tie goes to the first
    assert metrics.acc(lls, [1, 0]) == 1.0  # AGIEval's gold is a list


def test_mc1_and_mc2():
    assert metrics.mc1([-1.0, -0.5]) == 0.0 and metrics.mc1([-0.5, -1.0]) == 1.0
    lls, labels = [math.log(0.2), math.log(0.1), math.log(0.3)], [1, 1, 0]
    assert metrics.mc2(lls, labels) == pytest.approx(0.3 / 0.6)


def harness_mc2(lls, labels):
    """lm-evaluation-harness b281b09's truthfulqa mc2, restated: the answers before the first 0 are the true ones."""
    split = list(labels).index(0)
    p_true, p_false = np.exp(np.array(lls[:split])), np.exp(np.array(lls[split:]))
    return float(sum(p_true / (sum(p_true) + sum(p_false))))


def test_mc2_takes_the_true_answers_as_the_harness_does():
    lls, labels = [math.log(p) for p in (0.1, 0.2, 0.3, 0.15, 0.25)], [1, 1, 0, 1, 0]
    assert metrics.mc2(lls, labels) == pytest.approx(harness_mc2(lls, labels), abs=1e-12)
    assert metrics.mc2(lls, labels) == pytest.approx(0.3)  # the 1 after a 0 is not counted
    assert metrics.mc2(lls, labels, rule="labels") == pytest.approx(0.45)  # --mc2 labels: it is
    with pytest.raises(ValueError, match="unknown mc2 rule"):
        metrics.mc2(lls, labels, rule="guess")


def test_boolq_tie_predicts_no_as_the_harness_does():
    from openhermes.eval.tasks import gpt4all
    from openhermes.eval.tasks.base import METRICS

    yes, no = gpt4all._boolq([{"passage": "p", "question": "q", "label": 1}, {"passage": "p", "question": "q",
                                                                                  "label": 0}])
    assert METRICS["acc"](yes, [-1.0, -1.0]) == 0.0 and METRICS["acc"](no, [-1.0, -1.0]) == 1.0
    assert METRICS["acc"](yes, [-1.0, -2.0]) == 1.0 and METRICS["acc"](no, [-1.0, -2.0]) == 0.0


def test_mc2_is_stable_where_the_naive_formula_underflows():
    lls, labels = [-2000.0, -2001.0, -2003.0], [1, 0, 0]
    with np.errstate(all="ignore"):
        p = np.exp(np.array(lls))
        assert np.isnan(p[0] / p.sum())  # the harness's formula: 0/0
    expect = 1 / (1 + math.exp(-1) + math.exp(-3))
    assert metrics.mc2(lls, labels) == pytest.approx(expect)


def test_bigbench_grade_and_its_tie_break():
    targets = {"a": 0, "b": 1, "c": 0}
    assert metrics.bigbench_grade([-3.0, -1.0, -2.0], targets) == 1.0
    assert metrics.bigbench_grade([-1.0, -3.0, -2.0], targets) == 0.0
    tied = [-1.0, -1.0, -5.0]
    digest = int(hashlib.sha256(np.array(tied, dtype=np.float64).tobytes()).hexdigest(), 16)
    pick = [0, 1][digest % 2]
    assert metrics.bigbench_grade(tied, targets) == list(targets.values())[pick]


def test_pass_at_k():
    assert metrics.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert metrics.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert metrics.pass_at_k(5, 4, 2) == 1.0 and metrics.pass_at_k(5, 0, 1) == 0.0
