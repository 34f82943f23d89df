"""The card's tables: `| Task |Version| Metric |Value | |Stderr|` per suite (lm-evaluation-harness v0.3's
make_table, with the same pytablewriter), each suite's average, and the averages next to the card's."""

from __future__ import annotations

from openhermes.eval.tasks.base import TaskResult

# OpenHermes 2.5 - Mistral 7B, from its model card (SPEC §7).
CARD_AVERAGES = {"gpt4all": 73.12, "agieval": 43.07, "bigbench": 40.96, "truthfulqa": 53.04, "humaneval": 50.7}


def table(results: list[TaskResult]) -> str:
    from pytablewriter import MarkdownTableWriter
    from pytablewriter.style import Style
    from typepy import Integer, String

    writer = MarkdownTableWriter()
    writer.headers = ["Task", "Version", "Metric", "Value", "", "Stderr"]
    rows = []
    for r in results:
        name, version = r.name, r.version
        for metric, value in r.values.items():
            if metric.endswith("_stderr"):
                continue
            stderr = r.values.get(metric + "_stderr")
            rows.append([name, version, metric, f"{value:.4f}", "±" if stderr is not None else "",
                         f"{stderr:.4f}" if stderr is not None else ""])
            name, version = "", ""
    writer.value_matrix = rows
    # values stay the "%.4f" strings (no re-formatting by type inference), right-aligned like numbers
    writer.type_hints = [String, Integer, String, String, String, String]
    writer.column_styles = [Style(), Style(), Style(), Style(align="right"), Style(), Style(align="right")]
    writer.margin = 0
    return writer.dumps()


def suite_average(suite: str, results: list[TaskResult]) -> float:
    """In percent. GPT4All and AGIEval: acc_norm where a task has it, else acc; BigBench: the plain mean
    of the grades; TruthfulQA: mc2; HumanEval: pass@1."""
    def pick(r: TaskResult) -> float:
        v = r.values
        for key in ("acc_norm", "acc", "multiple_choice_grade", "mc2", "pass@1"):
            if key in v:
                return v[key]
        raise KeyError(f"{r.name}: no metric to average")

    values = [pick(r) for r in results]
    return 100 * sum(values) / len(values)


def averages_compared(averages: dict[str, float]) -> str:
    lines = ["| Suite | This model | OpenHermes 2.5 (card) |", "|---|---:|---:|"]
    for suite, value in averages.items():
        card = CARD_AVERAGES.get(suite)
        lines.append(f"| {suite} | {value:.2f} | {card:.2f} |" if card is not None else f"| {suite} | {value:.2f} | |")
    return "\n".join(lines)
