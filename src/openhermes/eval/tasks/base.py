"""Multiple-choice tasks: questions -> log-likelihood requests -> per-question metrics -> mean and stderr."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from openhermes.eval import metrics
from openhermes.eval.score import LLRequest, Scorer


@dataclass
class Question:
    id: str
    context: str
    choices: list[str]  # raw choice texts (acc_norm divides by their length in characters)
    gold: int | list[int]
    continuations: list[str] | None = None  # default " " + choice
    contexts: list[str] | None = None  # one context per choice (winogrande's partial scoring)
    extra: dict = field(default_factory=dict)

    def requests(self) -> list[LLRequest]:
        conts = self.continuations or [" " + c for c in self.choices]
        ctxs = self.contexts or [self.context] * len(conts)
        return [LLRequest(c, x) for c, x in zip(ctxs, conts, strict=True)]


# metric name -> f(question, log-likelihoods) -> value
MetricFn = Callable[[Question, list[float]], float]
METRICS: dict[str, MetricFn] = {
    "acc": lambda q, lls: (metrics.yes_no_acc(lls[0], lls[1], q.gold == 0) if q.extra.get("yes_no")
                           else metrics.acc(lls, q.gold)),
    "acc_norm": lambda q, lls: metrics.acc_norm(lls, q.choices, q.gold),
    "mc1": lambda q, lls: metrics.mc1(lls[: q.extra["n_mc1"]]),
    "mc2": lambda q, lls: metrics.mc2(lls[q.extra["n_mc1"]:], q.extra["labels"], q.extra.get("mc2_rule", "harness")),
    "multiple_choice_grade": lambda q, lls: metrics.bigbench_grade(lls, q.extra["target_scores"]),
}


@dataclass
class Task:
    name: str
    version: int
    metrics: tuple[str, ...]
    questions: list[Question]
    # extra per-question metrics computed by the task itself (e.g. geometric_shapes' exact_str_match)
    generate: Callable[[Task, object], dict[str, list[float]]] | None = None


@dataclass
class TaskResult:
    name: str
    version: int
    values: dict[str, float]  # metric -> mean, and metric + "_stderr"
    examples: list[dict]


def run_task(task: Task, scorer: Scorer, engine=None) -> TaskResult:
    requests, spans = [], []
    for q in task.questions:
        rs = q.requests()
        spans.append((len(requests), len(requests) + len(rs)))
        requests += rs
    results = scorer.loglikelihood(requests, desc=task.name)
    per_metric: dict[str, list[float]] = {m: [] for m in task.metrics}
    examples = []
    for q, (a, b) in zip(task.questions, spans, strict=True):
        lls = [r.logprob for r in results[a:b]]
        row = {"id": q.id, "logprobs": lls, "is_greedy": [r.is_greedy for r in results[a:b]], "gold": q.gold}
        for m in task.metrics:
            v = METRICS[m](q, lls)
            per_metric[m].append(v)
            row[m] = v
        examples.append(row)
    if task.generate is not None and engine is not None:
        for m, vals in task.generate(task, engine).items():
            per_metric[m] = vals
            for row, v in zip(examples, vals, strict=True):
                row[m] = v
    values: dict[str, float] = {}
    for m, vals in per_metric.items():
        values[m] = metrics.mean(vals)
        values[m + "_stderr"] = metrics.stderr_of_mean(vals)
    return TaskResult(task.name, task.version, values, examples)


# ---- data ---------------------------------------------------------------------------------------
def load_rows(data_dir: Path | None, local_name: str, hub_id: str, config: str | None, split: str) -> Iterable[dict]:
    """Rows from DATA_DIR/<local_name>.{jsonl,json,parquet} when given, else from the Hugging Face hub."""
    if data_dir is not None:
        for ext in ("jsonl", "json", "parquet"):
            path = Path(data_dir) / f"{local_name}.{ext}"
            if path.exists():
                return _read_local(path)
        raise FileNotFoundError(f"{data_dir}: no {local_name}.jsonl/.json/.parquet (the {hub_id} {split} split "
                                f"in the hub's schema)")
    from datasets import load_dataset

    if hub_id.endswith(".parquet"):
        # Parquet files by URL (hf://datasets/<id>@refs%2Fconvert%2Fparquet/...): the hub's parquet conversion
        # of a script-based data set, which datasets >= 4 no longer runs.
        return load_dataset("parquet", data_files={split: hub_id}, split=split)
    return load_dataset(hub_id, config, split=split)


def _read_local(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        return data if isinstance(data, list) else data.get("data", [])
    return [json.loads(line) for line in text.splitlines() if line.strip()]
