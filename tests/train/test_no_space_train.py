"""train's final save onto a full disk: one line naming the folder and the space, nothing partial left."""

import os
import subprocess
import sys


def test_train_final_save_onto_a_full_disk(small_recipe, small_disk):
    disk = small_disk("96k")
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "train", str(small_recipe(max_steps=2)), "--out",
                           str(disk / "run")], capture_output=True, text=True, timeout=600,
                          env=os.environ | {"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "no space left" in line]
    assert len(lines) == 1 and str(disk) in lines[0], proc.stderr[-3000:]
    leftovers = [p for p in disk.rglob("*") if ".openhermes-partial-" in p.name or p.suffix == ".safetensors"]
    assert leftovers == []
