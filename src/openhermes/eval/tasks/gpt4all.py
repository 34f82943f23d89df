"""The GPT4All suite as the card's harness (lm-evaluation-harness v0.3) builds it (SPEC §7)."""

from __future__ import annotations

import re
from pathlib import Path

from openhermes.eval.tasks.base import Question, Task, load_rows

TASKS = ("arc_challenge", "arc_easy", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande")


def _arc(rows, name: str) -> list[Question]:
    out = []
    for i, d in enumerate(rows):
        key = {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}.get(d["answerKey"], d["answerKey"])
        out.append(Question(d.get("id", str(i)), f"Question: {d['question']}\nAnswer:", list(d["choices"]["text"]),
                            ["A", "B", "C", "D", "E"].index(key)))
    return out


def _boolq(rows) -> list[Question]:
    # yes_no: scored as the harness does, "yes" only when strictly more likely (a tie is "no")
    return [Question(str(i), f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["yes", "no"],
                     0 if d["label"] else 1, extra={"yes_no": True}) for i, d in enumerate(rows)]


def hellaswag_preprocess(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(rows) -> list[Question]:
    out = []
    for i, d in enumerate(rows):
        ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
        out.append(Question(str(d.get("ind", i)), hellaswag_preprocess(d["activity_label"] + ": " + ctx),
                            [hellaswag_preprocess(e) for e in d["endings"]], int(d["label"])))
    return out


def _openbookqa(rows) -> list[Question]:
    return [Question(d.get("id", str(i)), d["question_stem"], list(d["choices"]["text"]),
                     ["A", "B", "C", "D"].index(d["answerKey"].strip())) for i, d in enumerate(rows)]


def _piqa(rows) -> list[Question]:
    return [Question(str(i), f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"]))
            for i, d in enumerate(rows)]


def winogrande_question(d: dict, i: int) -> Question:
    """Partial scoring: each option completes the sentence up to the blank; the shared rest is scored."""
    idx = d["sentence"].index("_")
    options = [d["option1"], d["option2"]]
    rest = " " + d["sentence"][idx + 1:].strip()
    return Question(str(i), "", options, int(d["answer"]) - 1, continuations=[rest, rest],
                    contexts=[d["sentence"][:idx] + o for o in options])


PIQA_PARQUET = "hf://datasets/ybisk/piqa@refs%2Fconvert%2Fparquet/plain_text/validation/*.parquet"

SOURCES = {  # task: (hub id, config, split, builder, version, metrics)
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", lambda r: _arc(r, "arc_challenge"), 0,
                      ("acc", "acc_norm")),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", lambda r: _arc(r, "arc_easy"), 0, ("acc", "acc_norm")),
    "boolq": ("super_glue", "boolq", "validation", _boolq, 1, ("acc",)),
    "hellaswag": ("Rowan/hellaswag", None, "validation", _hellaswag, 0, ("acc", "acc_norm")),
    "openbookqa": ("allenai/openbookqa", "main", "test", _openbookqa, 0, ("acc", "acc_norm")),
    # ybisk/piqa is a loading script, which datasets >= 4 refuses: its parquet conversion on the hub instead.
    "piqa": (PIQA_PARQUET, None, "validation", _piqa, 0, ("acc", "acc_norm")),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation",
                   lambda rows: [winogrande_question(d, i) for i, d in enumerate(rows)], 0, ("acc",)),
}


def tasks(data_dir: Path | None = None, limit: int | None = None, names: list[str] | None = None) -> list[Task]:
    out = []
    for name in (TASKS if names is None else names):
        hub, config, split, build, version, mets = SOURCES[name]
        questions = build(load_rows(data_dir, name, hub, config, split))
        out.append(Task(name, version, mets, questions[:limit]))
    return out
