"""lm-evaluation-harness's `local-completions` model pointed at a real `openhermes serve`: its
log-likelihood requests (token ids, echo, logprobs, max_tokens 1) give the same per-choice
log-likelihoods as `openhermes eval`'s own scorer, and the same accuracy."""

import json
import random

import pytest

TASK_YAML = """task: oh_sums
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
"""


def sum_rows(n: int) -> list[dict]:
    """ARC-shaped 4-choice questions (the hub's arc_easy schema), so `openhermes eval` reads them too."""
    rng = random.Random(1)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        texts = [str(x) for x in [a + b, *rng.sample([x for x in range(2, 19) if x != a + b], 3)]]
        rng.shuffle(texts)
        rows.append({"id": f"s{i}", "question": f"What is {a} + {b}?", "answerKey": "ABCD"[texts.index(str(a + b))],
                     "choices": {"text": texts, "label": list("ABCD")}})
    return rows


def test_local_completions_agrees_with_openhermes_eval(tmp_path, open_server, chat_model_dir, chat_model,
                                                       chatml_tokenizer):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from openhermes.eval.run import EvalConfig, build_tasks
    from openhermes.eval.score import Scorer
    from openhermes.eval.tasks.base import run_task

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "arc_easy.jsonl").write_text("\n".join(json.dumps(r) for r in sum_rows(12)))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "oh_sums.yaml").write_text(TASK_YAML.format(data=tmp_path / "data" / "arc_easy.jsonl"))

    ours = run_task(build_tasks("gpt4all", EvalConfig(("gpt4all",), data_dir=tmp_path / "data", only=("arc_easy",)))[0],
                    Scorer(chat_model, chatml_tokenizer, progress=False))
    args = (f"model=tiny-chat,base_url={open_server.url}/v1/completions,tokenizer_backend=huggingface,"
            f"tokenizer={chat_model_dir},num_concurrent=1,max_retries=1,tokenized_requests=True")
    out = lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=["oh_sums"],
                                  task_manager=TaskManager(include_path=str(tmp_path / "tasks")), log_samples=True,
                                  verbosity="ERROR")
    samples = sorted(out["samples"]["oh_sums"], key=lambda s: s["doc_id"])
    theirs = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    mine = [ex["logprobs"] for ex in ours.examples]
    assert len(theirs) == len(mine) == 12
    for a, b in zip(mine, theirs, strict=True):
        assert a == pytest.approx(b, abs=1e-3)
    assert out["results"]["oh_sums"]["acc,none"] == pytest.approx(ours.values["acc"])
