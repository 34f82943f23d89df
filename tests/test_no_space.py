"""A full disk is one line naming the folder and the space, with nothing partial left: export, data prepare and
train's final save, through the real CLI onto a small tmpfs."""

import os
import subprocess
import sys

from tests.test_output_commands import recipe_file


def run(*args):
    return subprocess.run([sys.executable, "-m", "openhermes.cli", *args], capture_output=True, text=True,
                          timeout=600, env=os.environ | {"CUDA_VISIBLE_DEVICES": ""})


def assert_one_line_and_nothing_left(proc, disk):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "no space left" in line]
    assert len(lines) == 1 and str(disk) in lines[0] and " free): " in lines[0], proc.stderr[-2000:]
    assert sorted(p.name for p in disk.iterdir() if p.name != "lost+found") == []


def test_export_onto_a_full_disk(chat_model_dir, small_disk):
    disk = small_disk("64k")
    for kind in ("f16", "q8_0"):
        proc = run("export", str(chat_model_dir), "--to", "gguf", "--type", kind, "--out", str(disk / f"m-{kind}.gguf"))
        assert_one_line_and_nothing_left(proc, disk)


def test_data_prepare_onto_a_full_disk(tmp_path, tiny_base, small_disk):
    disk = small_disk("16k")
    proc = run("data", "prepare", str(recipe_file(tmp_path, tiny_base)), "--out", str(disk / "prepared"))
    assert_one_line_and_nothing_left(proc, disk)
