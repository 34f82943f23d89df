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
