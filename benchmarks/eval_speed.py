"""openhermes' scorer against lm-evaluation-harness (`lm-eval` on PyPI), in one process, on the same model
and the same prompts: a BigBench task (built from BIG-bench task.json) and a 4-choice ARC-format task
(synthetic sums, so it runs without the hub). lm-eval gets local task configs whose prompts are
exactly the ones openhermes scores. Prints per-task time, the speed-up (target >= 2x) and whether
every per-example prediction is identical.

    python benchmarks/eval_speed.py [--model runs/tiny/model] [--bigbench-dir ../shared/benchmarks/bigbench]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from _common import embedded_model_folder

from openhermes.eval.run import EvalConfig, build_tasks
from openhermes.eval.score import Scorer
from openhermes.eval.tasks.base import run_task

ROOT = Path(__file__).resolve().parents[1]

BIGBENCH_YAML = """task: oh_bigbench
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""

ARC_YAML = """task: oh_arc_sums
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices.text}}}}"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def arc_rows(n: int) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        wrong = rng.sample([x for x in range(a + b - 12, a + b + 13) if x != a + b], 3)
        texts = [str(x) for x in [a + b, *wrong]]
        rng.shuffle(texts)
        rows.append({"id": f"sum-{i}", "question": f"What is {a} + {b}?", "answerKey": "ABCD"[texts.index(str(a + b))],
                     "choices": {"text": texts, "label": ["A", "B", "C", "D"]}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "tiny" / "model")
    ap.add_argument("--bigbench-dir", type=Path, default=ROOT.parent / "shared" / "benchmarks" / "bigbench")
    ap.add_argument("--bigbench-task", default="date_understanding")
    ap.add_argument("--arc-questions", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32, help="openhermes: questions per forward")
    ap.add_argument("--lm-eval-batch-size", type=int, default=None,
                    help="lm-eval: requests per forward (default: --batch-size x the task's choices)")
    args = ap.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = embedded_model_folder(args.model, tmp)
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

        (tmp / "data").mkdir()
        (tmp / "data" / "arc_easy.jsonl").write_text("\n".join(json.dumps(r) for r in arc_rows(args.arc_questions)))
        cfg = EvalConfig(("bigbench",), data_dir=tmp / "data", bigbench_dir=args.bigbench_dir,
                         only=(args.bigbench_task,), batch_size=args.batch_size)
        bb = build_tasks("bigbench", cfg)[0]
        arc = build_tasks("gpt4all", EvalConfig(("gpt4all",), data_dir=tmp / "data", only=("arc_easy",)))[0]
        bb_rows = [{"prompt": q.context, "choices": q.choices, "gold": q.gold[0]} for q in bb.questions]
        (tmp / "bb.jsonl").write_text("\n".join(json.dumps(r) for r in bb_rows))
        (tmp / "tasks").mkdir()
        (tmp / "tasks" / "oh_bigbench.yaml").write_text(BIGBENCH_YAML.format(data=tmp / "bb.jsonl"))
        (tmp / "tasks" / "oh_arc_sums.yaml").write_text(ARC_YAML.format(data=tmp / "data" / "arc_easy.jsonl"))

        scorer = Scorer(model, tok, batch_size=args.batch_size, progress=False)
        manager = TaskManager(include_path=str(tmp / "tasks"))
        print(f"model {folder}; {torch.get_num_threads()} threads")
        for ours_task, theirs_name in ((bb, "oh_bigbench"), (arc, "oh_arc_sums")):
            # the same rows per forward for both: openhermes batches questions, lm-eval single requests
            choices = round(sum(len(q.choices) for q in ours_task.questions) / len(ours_task.questions))
            lm_batch = args.lm_eval_batch_size or args.batch_size * choices
            lm = HFLM(pretrained=model, tokenizer=tok, batch_size=lm_batch, add_bos_token=False)  # the card: no BOS
            start = time.perf_counter()
            ours = run_task(ours_task, scorer)
            t_ours = time.perf_counter() - start
            start = time.perf_counter()
            out = lm_eval.simple_evaluate(model=lm, tasks=[theirs_name], task_manager=manager, log_samples=True,
                                          verbosity="ERROR")
            t_theirs = time.perf_counter() - start
            samples = sorted(out["samples"][theirs_name], key=lambda s: s["doc_id"])
            their_lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
            our_lls = [ex["logprobs"] for ex in ours.examples]
            same = sum(int(torch.tensor(a).argmax()) == int(torch.tensor(b).argmax())
                       for a, b in zip(our_lls, their_lls, strict=True))
            worst = max(abs(x - y) for a, b in zip(our_lls, their_lls, strict=True) for x, y in zip(a, b, strict=True))
            acc_ours = ours.values.get("acc", ours.values.get("multiple_choice_grade"))
            acc_theirs = out["results"][theirs_name]["acc,none"]
            print(f"{ours_task.name:<28} openhermes {t_ours:6.1f} s ({args.batch_size} questions per batch)   "
                  f"lm-eval {t_theirs:6.1f} s ({lm_batch} requests per batch)   -> {t_theirs / t_ours:.2f}x (target >= 2x)")
            print(f"{'':<28} identical predictions {same}/{len(samples)}; acc {acc_ours:.4f} vs {acc_theirs:.4f}; "
                  f"max |log-likelihood difference| {worst:.1e}")


if __name__ == "__main__":
    main()
