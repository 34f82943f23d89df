"""AGIEval, the 8 English tasks of the card (test split): context = query, choices " " + choice,
gold a list of indices."""

from __future__ import annotations

from pathlib import Path

from openhermes.eval.tasks.base import Question, Task, load_rows

TASKS = ("aqua_rat", "logiqa_en", "lsat_ar", "lsat_lr", "lsat_rc", "sat_en", "sat_en_without_passage", "sat_math")


def questions(rows) -> list[Question]:
    out = []
    for i, d in enumerate(rows):
        gold = d["gold"] if isinstance(d["gold"], list) else [d["gold"]]
        out.append(Question(str(i), d["query"], list(d["choices"]), [int(g) for g in gold]))
    return out


def tasks(data_dir: Path | None = None, limit: int | None = None, names: list[str] | None = None) -> list[Task]:
    return [Task(f"agieval_{t}", 0, ("acc", "acc_norm"),
                 questions(load_rows(data_dir, f"agieval_{t}", f"dmayhem93/agieval-{t}", None, "test"))[:limit])
            for t in (TASKS if names is None else names)]
