"""A 2-process CPU run (torchrun, gloo) matches the 1-process run's loss at the same global batch."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(small_recipe, tmp_path):
    one = small_recipe(max_steps=5, micro_batch_size=1, gradient_accumulation_steps=2)
    assert subprocess.call([sys.executable, "-m", "openhermes.cli", "train", str(one), "--out", str(tmp_path / "one"),
                            "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0
    two = small_recipe(max_steps=5, micro_batch_size=1, gradient_accumulation_steps=1)
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "train", str(two), "--out", str(tmp_path / "two"),
                           "--nproc", "2", "--no-report"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(d):
        return [r["loss"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines()) if "loss" in r]

    l1, l2 = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(l1) == len(l2) == 5
    assert l1 == pytest.approx(l2, rel=2e-3)
