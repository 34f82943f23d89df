"""Prompt construction of the HF-data suites (SPEC §7) on rows in the hub's schema, and a whole
`openhermes eval` run from local files."""

import json
import os
import subprocess
import sys

from openhermes.eval.tasks import agieval, gpt4all, truthfulqa

ARC = {"id": "Mercury_1", "question": "Which is a mammal?", "answerKey": "3",
       "choices": {"text": ["shark", "trout", "whale", "eel"], "label": ["1", "2", "3", "4"]}}
HELLASWAG = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
             "ctx_b": "then", "endings": [" [title] Use a scraper.  Then wait [step] now.", "b", "c", "d"], "label": "0"}
WINO = {"sentence": "The trophy doesn't fit into the suitcase because the _ is too large.", "option1": "trophy",
        "option2": "suitcase", "answer": "1"}
BOOLQ = {"passage": "Ice floats.", "question": "does ice float", "label": 1}
TQA = {"question": "Are bats blind?", "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]},
       "mc2_targets": {"choices": ["No.", "Not really.", "Yes."], "labels": [1, 1, 0]}}
AGI = {"query": "Q: 1 + 1 = ? Answer Choices: (A)1 (B)2\nA: Among A through B, the answer is", "choices": ["(A)1", "(B)2"],
       "gold": [1]}


def test_arc_numeric_answer_key_and_prompt():
    q = gpt4all._arc([ARC], "arc_easy")[0]
    assert q.context == "Question: Which is a mammal?\nAnswer:" and q.gold == 2
    assert [r.continuation for r in q.requests()] == [" shark", " trout", " whale", " eel"]


def test_hellaswag_preprocessing():
    q = gpt4all._hellaswag([HELLASWAG])[0]
    assert q.context == "Removing ice from car: Then, the man writes over the snow. Then"
    # strip first, so a leading " [title]" is not matched; then brackets go and double spaces shrink
    assert q.choices[0] == " Use a scraper. Then wait now."


def test_winogrande_partial_scoring():
    q = gpt4all.winogrande_question(WINO, 0)
    reqs = q.requests()
    assert [r.context for r in reqs] == ["The trophy doesn't fit into the suitcase because the trophy",
                                         "The trophy doesn't fit into the suitcase because the suitcase"]
    assert {r.continuation for r in reqs} == {" is too large."} and q.gold == 0


def test_boolq_truthfulqa_agieval():
    q = gpt4all._boolq([BOOLQ])[0]
    assert q.context == "Ice floats.\nQuestion: does ice float?\nAnswer:" and q.gold == 0
    assert [r.continuation for r in q.requests()] == [" yes", " no"]
    t = truthfulqa.questions([TQA])[0]
    assert t.context.startswith("Q: What is human life expectancy in the United States?\n")
    assert t.context.endswith("Barcelona, Spain.\n\nQ: Are bats blind?\nA:")
    assert t.choices == ["No.", "Yes.", "No.", "Not really.", "Yes."] and t.extra["n_mc1"] == 2
    a = agieval.questions([AGI])[0]
    assert a.context == AGI["query"] and a.gold == [1] and a.requests()[1].continuation == " (B)2"


def test_eval_command_from_local_files(tmp_path, chat_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "truthfulqa_mc.jsonl").write_text("\n".join(json.dumps(TQA | {"question": f"Q{i}?"}) for i in range(5)))
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "eval", str(chat_model_dir), "--suite", "truthfulqa",
                           "--data-dir", str(data), "--output", str(out)], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "|    Task     |Version|Metric|Value |   |Stderr|" in proc.stdout
    assert "| truthfulqa | " in proc.stdout and "53.04" in proc.stdout  # averages compared with the card
    res = json.loads(out.read_text())
    task = res["suites"]["truthfulqa"]["tasks"]["truthfulqa_mc"]
    assert len(task["examples"]) == 5 and len(task["examples"][0]["logprobs"]) == 5
    assert set(task["values"]) == {"mc1", "mc1_stderr", "mc2", "mc2_stderr"}


def test_eval_command_reports_missing_data(tmp_path, chat_model_dir):
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "eval", str(chat_model_dir), "--suite", "agieval",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "agieval_aqua_rat" in proc.stderr


def test_task_filter_leaves_a_suite_without_the_named_task_empty(tmp_path):
    """`--task bigbench_causal_judgement` selects no GPT4All task, and loads none of their data (an empty
    folder would make any load fail)."""
    from openhermes.eval.run import EvalConfig, build_tasks

    cfg = EvalConfig(("gpt4all", "agieval"), data_dir=tmp_path, only=("bigbench_causal_judgement",))
    assert build_tasks("gpt4all", cfg) == []
    assert build_tasks("agieval", cfg) == []


def test_piqa_loads_from_parquet_files_by_url(tmp_path):
    """datasets >= 4 refuses ybisk/piqa's loading script: the loader reads the hub's parquet conversion by URL,
    through datasets' own parquet builder (here a file:// URL to rows in that conversion's schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from openhermes.eval.tasks.base import load_rows

    assert gpt4all.SOURCES["piqa"][0].startswith("hf://datasets/ybisk/piqa@refs%2Fconvert%2Fparquet/")
    assert gpt4all.SOURCES["piqa"][0].endswith(".parquet")
    rows = [{"goal": "Dry wet shoes", "sol1": "Stuff them with newspaper.", "sol2": "Put them in the fridge.",
             "label": 0}, {"goal": "Open a jar", "sol1": "Freeze the lid.", "sol2": "Run the lid under hot water.",
                           "label": 1}]
    folder = tmp_path / "plain_text" / "validation"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "0000.parquet")
    loaded = list(load_rows(None, "piqa", f"file://{folder}/*.parquet", None, "validation"))
    qs = gpt4all._piqa(loaded)
    assert [q.context for q in qs] == ["Question: Dry wet shoes\nAnswer:", "Question: Open a jar\nAnswer:"]
    assert [q.gold for q in qs] == [0, 1] and qs[1].choices == ["Freeze the lid.", "Run the lid under hot water."]
