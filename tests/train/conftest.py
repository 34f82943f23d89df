import json
import time

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


@pytest.fixture
def small_recipe(tmp_path, tiny_base):
    """A recipe file over the session's tiny base and a small chat file; tests add keys."""
    data = write_chat_data(tmp_path / "chat.jsonl")

    def make(**keys):
        base = {"base_model": str(tiny_base), "datasets": [{"path": str(data), "type": "sharegpt"}],
                "sequence_len": 256, "sample_packing": True, "near_dedup_threshold": None, "dedup": False,
                "learning_rate": 0.003, "lr_scheduler": "constant", "micro_batch_size": 2, "num_epochs": 1,
                "logging_steps": 1, "seed": 1, "dataset_prepared_path": str(tmp_path / "prepared")}
        base.update(keys)
        p = tmp_path / "recipe.yaml"
        import yaml

        p.write_text(yaml.safe_dump(base))
        return p

    return make


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
