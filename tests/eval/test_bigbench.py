"""BigBench prompts and counts on the real BIG-bench task files in ../shared/benchmarks/bigbench/."""

import json

import numpy as np
import pytest

from openhermes.eval.tasks import bigbench
from tests.conftest import SHARED

ROOT = SHARED / "benchmarks" / "bigbench"
pytestmark = pytest.mark.skipif(not ROOT.exists(), reason="the shared BIG-bench files are not here")


def load(folder):
    return json.loads((ROOT / folder / "task.json").read_text())


@pytest.mark.parametrize("folder,before,after", [("geometric_shapes", 360, 359), ("sports_understanding", 1000, 986),
                                                 ("navigate", 1000, 1000)])
def test_deduplication_counts(folder, before, after):
    task = load(folder)
    assert len(task["examples"]) == before
    assert len(bigbench.questions(task)) == after


def test_prompt_with_appended_choices_follows_the_spec():
    task = load("geometric_shapes")  # append_choices_to_input: true, default prefixes
    for i in (0, 7, 100):
        ex = task["examples"][i]
        order = np.random.RandomState(42).permutation(sorted(ex["target_scores"]))
        expected = "\nQ: " + ex["input"] + "".join("\n  choice: " + c for c in order) + "\nA: "
        assert bigbench.prompt(task, ex) == expected
    q = bigbench.questions(task)[0]
    assert q.choices == list(task["examples"][0]["target_scores"])  # scored in JSON order
    assert q.continuations == q.choices  # no added space


def test_prompt_with_the_task_own_prefixes():
    task = load("logical_deduction/three_objects")  # task_prefix, empty input prefix, " " output prefix
    ex = task["examples"][0]
    assert bigbench.prompt(task, ex) == task["task_prefix"] + ex["input"] + " "


def test_quirk_tracking_shuffled_three_objects_is_logical_deduction(tmp_path):
    quirky = bigbench.tasks(ROOT, quirks=True, names=["tracking_shuffled_objects_three_objects"])[0]
    plain = bigbench.tasks(ROOT, names=["logical_deduction_three_objects"])[0]
    assert [q.context for q in quirky.questions] == [q.context for q in plain.questions]
    with pytest.raises(FileNotFoundError, match="tracking_shuffled_objects/three_objects/task.json"):
        bigbench.tasks(ROOT, names=["tracking_shuffled_objects_three_objects"])


def test_causal_judgement_reads_the_causal_judgment_folder():
    t = bigbench.tasks(ROOT, names=["causal_judgement"])[0]
    assert t.name == "bigbench_causal_judgement" and len(t.questions) == 190


def test_flat_layout_of_the_card_harness(tmp_path):
    """The harness's bigbench_resources/<task>.json: named as the suite names the task, read as they are
    (its causal_judgement.json differs from BIG-bench 1.0.0 in one example; its three_objects tracking
    file is a copy of logical_deduction's)."""
    causal = load("causal_judgment")
    changed = json.loads(json.dumps(causal))
    changed["examples"][5]["input"] = changed["examples"][5]["input"] + " (the harness's own wording)"
    (tmp_path / "causal_judgement.json").write_text(json.dumps(changed))
    deduction = (ROOT / "logical_deduction" / "three_objects" / "task.json").read_text()
    (tmp_path / "logical_deduction_three_objects.json").write_text(deduction)
    (tmp_path / "tracking_shuffled_objects_three_objects.json").write_text(deduction)
    names = ["causal_judgement", "logical_deduction_three_objects", "tracking_shuffled_objects_three_objects"]
    flat = {t.name: t for t in bigbench.tasks(tmp_path, names=names)}
    nested = bigbench.tasks(ROOT, names=["causal_judgement"])[0]
    diffs = [i for i, (a, b) in enumerate(zip(flat["bigbench_causal_judgement"].questions, nested.questions,
                                                  strict=True)) if a.context != b.context]
    assert diffs == [5] and "(the harness's own wording)" in flat["bigbench_causal_judgement"].questions[5].context
    assert ([q.context for q in flat["bigbench_tracking_shuffled_objects_three_objects"].questions]
            == [q.context for q in flat["bigbench_logical_deduction_three_objects"].questions])
    with pytest.raises(FileNotFoundError, match="navigate.json"):
        bigbench.tasks(tmp_path, names=["navigate"])


def test_geometric_shapes_exact_str_rule():
    """128 new tokens, no stop string; the text cut to 128 characters, then the first [^.?!;\\n]+ run."""
    assert bigbench.exact_str_answer(" heptagon\nQ: next question") == "heptagon"
    assert bigbench.exact_str_answer("It is a kite. Yes") == "It is a kite"
    assert bigbench.exact_str_answer("  circle; or not") == "circle"
    assert bigbench.exact_str_answer("x" * 125 + " abcdef") == "x" * 125 + " ab"  # cut at 128 characters first
    assert bigbench.exact_str_answer("...") == ""


def test_geometric_shapes_requests_generate_as_the_harness(engine):
    task = bigbench.tasks(ROOT, limit=3, names=["geometric_shapes"])[0]
    reqs = bigbench.exact_str_requests(task, engine)
    assert [r.max_new_tokens for r in reqs] == [128] * 3 and all(r.stop == () for r in reqs)
    assert all(r.params.temperature == 0 for r in reqs)
    assert reqs[0].prompt_ids == engine.text_prompt(task.questions[0].context)
