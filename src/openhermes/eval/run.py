"""`openhermes eval`: run suites, print the card-style tables, write every per-example score to JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from openhermes import __version__, outputs
from openhermes.eval import report
from openhermes.eval.score import Scorer
from openhermes.eval.tasks import agieval, bigbench, gpt4all, humaneval, truthfulqa
from openhermes.eval.tasks.base import Question, Task, TaskResult, run_task
from openhermes.formats import Conversation, Message, chatml

SUITES = ("gpt4all", "agieval", "bigbench", "truthfulqa", "humaneval")


@dataclass
class EvalConfig:
    suites: tuple[str, ...]
    data_dir: Path | None = None
    bigbench_dir: Path | None = None
    add_bos: bool = False
    chat_template: bool = False
    quirks: bool = False
    limit: int | None = None
    batch_size: int = 32
    humaneval_mode: str = "completion"
    humaneval_samples: int = 1
    humaneval_temperature: float = 0.0
    only: tuple[str, ...] = ()  # task names to keep (with or without the "bigbench_"/"agieval_" prefix)
    allow_unsandboxed: bool = False  # run HumanEval code without OS isolation (--unsafe-no-sandbox)
    mc2: str = "harness"  # metrics.MC2_RULES: the card harness's split at the first false answer, or by labels


def expand(suites: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for s in suites:
        if s == "openhermes":
            out += SUITES
        elif s in SUITES:
            out.append(s)
        else:
            raise ValueError(f"unknown suite {s!r}; choose from {', '.join(SUITES)} or openhermes (all five)")
    return tuple(dict.fromkeys(out))


def with_chat_template(task: Task) -> Task:
    """Each context as a ChatML user turn followed by the assistant header (off by default, as on the card)."""
    def wrap(text: str) -> str:
        return chatml.render(Conversation([Message("user", text)]), add_generation_prompt=True)

    qs = [Question(q.id, wrap(q.context), q.choices, q.gold, q.continuations,
                   [wrap(c) for c in q.contexts] if q.contexts else None, q.extra) for q in task.questions]
    return Task(task.name, task.version, task.metrics, qs, task.generate)


def build_tasks(suite: str, cfg: EvalConfig) -> list[Task]:
    if suite == "gpt4all":
        return gpt4all.tasks(cfg.data_dir, cfg.limit, [n for n in gpt4all.TASKS if _wanted(n, cfg.only)])
    if suite == "agieval":
        names = [n for n in agieval.TASKS if _wanted(f"agieval_{n}", cfg.only)]
        return agieval.tasks(cfg.data_dir, cfg.limit, names)
    if suite == "truthfulqa":
        return [t for t in truthfulqa.tasks(cfg.data_dir, cfg.limit, cfg.mc2) if _wanted(t.name, cfg.only)]
    if suite == "bigbench":
        root = cfg.bigbench_dir or (cfg.data_dir / "bigbench" if cfg.data_dir else None)
        if root is None:
            raise ValueError("bigbench needs --bigbench-dir: BIG-bench's benchmark_tasks/ folder")
        names = [n for n in bigbench.TASKS if _wanted(f"bigbench_{n}", cfg.only)]
        return bigbench.tasks(root, cfg.limit, quirks=cfg.quirks, names=names)
    raise ValueError(suite)


def _wanted(name: str, only: tuple[str, ...]) -> bool:
    short = name.split("_", 1)[-1] if name.startswith(("bigbench_", "agieval_")) else name
    return not only or name in only or short in only


def run_humaneval(engine, cfg: EvalConfig) -> TaskResult:
    from openhermes.eval import sandbox

    sandbox.require(cfg.allow_unsandboxed)  # refuse before generating, not after
    probs = humaneval.problems()
    if cfg.limit:
        probs = dict(list(probs.items())[: cfg.limit])
    samples = humaneval.generate(engine, probs, cfg.humaneval_mode, cfg.humaneval_samples, cfg.humaneval_temperature)
    samples = humaneval.score(samples, probs, allow_unsandboxed=cfg.allow_unsandboxed)
    ks = tuple(k for k in (1, 10, 100) if k <= cfg.humaneval_samples)
    return TaskResult("humaneval", 0, humaneval.pass_at(samples, ks), [asdict(s) for s in samples])


def evaluate(model, tokenizer, cfg: EvalConfig, out: Path | None = None, echo=print, overwrite: bool = False,
             engine=None, scorer=None) -> dict:
    """engine and scorer: another engine's (vLLM's: eval/vllm_score.py) in place of the model's own."""
    from openhermes.infer.engine import Engine

    if out is not None:  # refuse before hours of scoring, not after
        outputs.check_file(out, is_results_file, "results file", overwrite)
    scorer = scorer or Scorer(model, tokenizer, add_bos=cfg.add_bos, batch_size=cfg.batch_size)
    engine = engine or Engine(model, tokenizer, add_bos=cfg.add_bos)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    summary: dict = {"openhermes": __version__, "config": config, "suites": {}}
    averages: dict[str, float] = {}
    for suite in cfg.suites:
        if suite == "humaneval":
            results = [run_humaneval(engine, cfg)]
        else:
            tasks = build_tasks(suite, cfg)
            if not tasks:
                raise ValueError(f"--task {', '.join(cfg.only)}: no task of the {suite} suite")
            if cfg.chat_template:
                tasks = [with_chat_template(t) for t in tasks]
            results = [run_task(t, scorer, engine) for t in tasks]
        averages[suite] = report.suite_average(suite, results)
        echo(f"\n{suite}\n" + report.table(results) + f"Average: {averages[suite]:.2f}\n")
        summary["suites"][suite] = {"average": averages[suite],
                                    "tasks": {r.name: {"version": r.version, "values": r.values,
                                                       "examples": r.examples} for r in results}}
    echo("\nAverages compared\n" + report.averages_compared(averages))
    summary["averages"] = averages
    if out is not None:
        text = json.dumps(summary, indent=1, default=str) + "\n"
        outputs.write_file(out, lambda tmp: tmp.write_text(text, encoding="utf-8"), is_results_file,
                           "results file", overwrite)
    return summary


def is_results_file(path: Path) -> bool:
    """Whether `path` is a results.json that openhermes wrote (it carries an "openhermes" key)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "openhermes" in data
