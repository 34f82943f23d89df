"""The card's 18 BIG-bench tasks, built from BIG-bench task.json files (SPEC §7).

Two layouts are read: BIG-bench's own (`benchmark_tasks/<task>/task.json`, subtasks in sub-folders)
and the flat one of the card's harness (`lm_eval/datasets/bigbench_resources/<task>.json`, named as the
suite names the task; its files are what produced the card's table, quirks included).

Prompt: task_prefix + example_input_prefix + input [+ choice_prefix + choice_prefix.join(choices in
numpy RandomState(42).permutation(sorted(target_scores)) order, a fresh RandomState per example)]
+ example_output_prefix. One request per target_scores key in JSON order, no added space.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from openhermes.eval.tasks.base import Question, Task

# suite name -> folder under benchmark_tasks/ (the card's harness spells causal_judgement with an "e")
TASKS = {
    "causal_judgement": "causal_judgment",
    "date_understanding": "date_understanding",
    "disambiguation_qa": "disambiguation_qa",
    "geometric_shapes": "geometric_shapes",
    "logical_deduction_five_objects": "logical_deduction/five_objects",
    "logical_deduction_seven_objects": "logical_deduction/seven_objects",
    "logical_deduction_three_objects": "logical_deduction/three_objects",
    "movie_recommendation": "movie_recommendation",
    "navigate": "navigate",
    "reasoning_about_colored_objects": "reasoning_about_colored_objects",
    "ruin_names": "ruin_names",
    "salient_translation_error_detection": "salient_translation_error_detection",
    "snarks": "snarks",
    "sports_understanding": "sports_understanding",
    "temporal_sequences": "temporal_sequences",
    "tracking_shuffled_objects_five_objects": "tracking_shuffled_objects/five_objects",
    "tracking_shuffled_objects_seven_objects": "tracking_shuffled_objects/seven_objects",
    "tracking_shuffled_objects_three_objects": "tracking_shuffled_objects/three_objects",
}
# The card's harness shipped tracking_shuffled_objects_three_objects as a byte copy of
# logical_deduction_three_objects (hence the identical 0.4800 on the card): reproduced on request.
QUIRK_COPIES = {"tracking_shuffled_objects_three_objects": "logical_deduction/three_objects"}
ANSWER = re.compile(r"[^\.\?\!\;\n]+")


def task_file(root: Path, name: str, folder: str) -> Path:
    """The harness's flat `<name>.json` if the folder has it, else BIG-bench's `<folder>/task.json`."""
    flat, nested = Path(root) / f"{name}.json", Path(root) / folder / "task.json"
    if flat.exists():
        return flat
    if nested.exists():
        return nested
    raise FileNotFoundError(f"{nested}: missing (nor is there {flat.name}); point --bigbench-dir at BIG-bench's "
                            f"benchmark_tasks/ folder or at the harness's flat bigbench_resources/ folder")


def load_task_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a BIG-bench task file ({e})") from None


def unique_examples(examples: list[dict]) -> list[dict]:
    """De-duplicated by their JSON, first occurrence kept."""
    seen, out = set(), []
    for ex in examples:
        key = json.dumps(ex, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def prompt(task: dict, example: dict) -> str:
    text = example["input"]
    if task.get("append_choices_to_input", True) and "target_scores" in example:
        rng = np.random.RandomState(42)
        choices = rng.permutation(sorted(example["target_scores"]))
        prefix = task.get("choice_prefix", "\n  choice: ")
        text = text + prefix + prefix.join(choices)
    return (task.get("task_prefix", "") + task.get("example_input_prefix", "\nQ: ") + text
            + task.get("example_output_prefix", "\nA: "))


def questions(task: dict) -> list[Question]:
    out = []
    for i, ex in enumerate(unique_examples(task["examples"])):
        keys = list(ex["target_scores"])
        gold = [k for k, key in enumerate(keys) if ex["target_scores"][key] == max(ex["target_scores"].values())]
        out.append(Question(str(i), prompt(task, ex), keys, gold, continuations=keys,
                            extra={"target_scores": ex["target_scores"], "target": ex.get("target")}))
    return out


# The card's harness: greedy generation of up to 128 new tokens with no stop string (eos still ends it),
# the text cut to 128 characters, then the first run of `[^.?!;\n]+`.
EXACT_STR_NEW_TOKENS = 128
EXACT_STR_CHARS = 128


def exact_str_answer(generated: str) -> str:
    m = ANSWER.search(generated[:EXACT_STR_CHARS])
    return m.group(0).strip() if m else ""


def exact_str_requests(task: Task, engine) -> list:
    from openhermes.infer.sampling import PRESETS
    from openhermes.infer.sequence import GenerationRequest

    return [GenerationRequest(engine.text_prompt(q.context), PRESETS["greedy"], EXACT_STR_NEW_TOKENS)
            for q in task.questions]


def exact_str_match(task: Task, engine) -> dict[str, list[float]]:
    """Each example's answer (exact_str_answer of its greedy generation) against its target."""
    hits = []
    for q, r in zip(task.questions, engine.generate(exact_str_requests(task, engine)), strict=True):
        target = q.extra.get("target")
        targets = target if isinstance(target, list) else [target]
        hits.append(float(exact_str_answer(r.text) in [t.strip() for t in targets if t]))
    return {"exact_str_match": hits}


def tasks(root: Path, limit: int | None = None, quirks: bool = False, names: list[str] | None = None) -> list[Task]:
    out = []
    for name in (list(TASKS) if names is None else names):
        folder = QUIRK_COPIES.get(name, TASKS[name]) if quirks else TASKS[name]
        # A flat folder is the harness's own: read as it is (its three_objects file already is the copy).
        qs = questions(load_task_json(task_file(root, name, folder)))[:limit]
        gen = exact_str_match if name == "geometric_shapes" else None
        out.append(Task(f"bigbench_{name}", 0, ("multiple_choice_grade",), qs, generate=gen))
    return out
