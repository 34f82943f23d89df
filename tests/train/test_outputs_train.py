"""`train --out` and `merge --out` through the real CLI never delete a user's files."""

import os
import subprocess
import sys

from safetensors.torch import load_file

from openhermes.outputs import MARKER


def run(*args):
    return subprocess.run([sys.executable, "-m", "openhermes.cli", *args], capture_output=True, text=True,
                          timeout=600, env=os.environ | {"CUDA_VISIBLE_DEVICES": ""})


def test_train_and_merge_keep_the_users_files(tmp_path, small_recipe):
    recipe = str(small_recipe(adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True, max_steps=2))
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep")

    refused = run("train", recipe, "--out", str(run_dir))
    assert refused.returncode == 2 and "openhermes did not write it" in refused.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]

    trained = run("train", recipe, "--out", str(run_dir), "--overwrite")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (run_dir / "notes.txt").read_text() == "keep" and (run_dir / "adapter" / MARKER).exists()
    again = run("train", recipe, "--out", str(run_dir), "--set", "max_steps=3")  # ours now: no --overwrite
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run_dir / "notes.txt").read_text() == "keep"

    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "notes.txt").write_text("keep too")
    refused = run("merge", str(run_dir / "adapter"), "--out", str(merged))
    assert refused.returncode == 2 and "openhermes did not write it" in refused.stderr
    assert sorted(p.name for p in merged.iterdir()) == ["notes.txt"]
    assert run("merge", str(run_dir / "adapter"), "--out", str(merged), "--overwrite").returncode == 0
    first = load_file(merged / "model.safetensors")
    assert run("merge", str(run_dir / "adapter"), "--out", str(merged)).returncode == 0  # ours: replaced
    second = load_file(merged / "model.safetensors")
    assert first.keys() == second.keys() and (merged / "notes.txt").read_text() == "keep too"
