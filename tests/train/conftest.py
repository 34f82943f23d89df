import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def write_chat_data(path, n=64):
    rows = []
    for i in range(n):
        a, b = i % 7, (i * 3) % 5
        rows.append({"conversations": [
            {"from": "system", "value": "You are Hermes."},
            {"from": "human", "value": f"What is {a} + {b}?"}, {"from": "gpt", "value": f"{a + b}"},
            {"from": "human", "value": "Repeat exactly:\napple river"}, {"from": "gpt", "value": "apple river"}]})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def write_recipe(folder: Path, base_model: Path, **keys) -> Path:
    """<folder>/recipe.yaml over `base_model` and <folder>/chat.jsonl, with `keys` over the small defaults."""
    import yaml

    data = folder / "chat.jsonl"
    if not data.exists():  # a run may be reading it
        write_chat_data(data)
    recipe = {"base_model": str(base_model), "datasets": [{"path": str(data), "type": "sharegpt"}],
              "sequence_len": 256, "sample_packing": True, "near_dedup_threshold": None, "dedup": False,
              "learning_rate": 0.003, "lr_scheduler": "constant", "micro_batch_size": 2, "num_epochs": 1,
              "logging_steps": 1, "seed": 1, "dataset_prepared_path": str(folder / "prepared")} | keys
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def small_recipe(tmp_path, tiny_base):
    """A recipe file over the session's tiny base and a small chat file; tests add keys."""
    return lambda **keys: write_recipe(tmp_path, tiny_base, **keys)


# 12 steps of one row a process, a checkpoint every 4: the runs on several processes and nodes.
TWO_PROCESS_STEPS = {"max_steps": 12, "save_steps": 4, "save_total_limit": 10, "micro_batch_size": 1,
                     "lr_scheduler": "cosine", "warmup_steps": 2}
# One thread a process in every run: torchrun sets it for --nproc 2 on one node, not for one process a node, and a
# thread count of its own would sum the matmuls in another order.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="session")
def two_process_run(tiny_base, tmp_path_factory) -> Path:
    """One uninterrupted `openhermes train --nproc 2` (torchrun, gloo, DDP) of TWO_PROCESS_STEPS over the small
    recipe, trained once: the reference that the killed-and-resumed runs and the two-node runs must end at."""
    root = tmp_path_factory.mktemp("two-process")
    recipe, out = write_recipe(root, tiny_base, **TWO_PROCESS_STEPS), root / "run"
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "train", str(recipe), "--out", str(out),
                           "--nproc", "2", "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=ONE_THREAD, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return out


def kill_when(proc, path, kill, timeout: float = 300) -> None:
    """Wait until `path` (a checkpoint) exists while the run is still going, then kill it with `kill()`; every
    process it started (torchrun, its ranks: torchrun gives each a session of its own) must be gone within 10 s,
    not train on beside the run that resumes."""
    import psutil

    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.05)
    started = psutil.Process(proc.pid).children(recursive=True)
    kill()
    proc.wait()
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"still running after the kill: {[p.cmdline()[:4] for p in alive]}"
