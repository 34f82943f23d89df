"""outputs.py: a folder or file openhermes writes never costs the user a file it did not write."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openhermes import outputs


def fill_with(files: dict[str, str]):
    def fill(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
    return fill


def test_a_new_folder_is_written_with_a_marker(tmp_path):
    out = outputs.write_folder(tmp_path / "new" / "set", "prepared-data", fill_with({"a.txt": "1", "d/b.txt": "2"}))
    assert (out / "a.txt").read_text() == "1" and (out / "d" / "b.txt").read_text() == "2"
    marker = json.loads((out / outputs.MARKER).read_text())
    assert marker["kind"] == "prepared-data" and marker["entries"] == ["a.txt", "d"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["set"]  # no staging left behind


def test_a_foreign_folder_is_refused_and_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(outputs.OutputError, match="openhermes did not write it.*notes.txt.*--overwrite"):
        outputs.write_folder(tmp_path, "model", fill_with({"config.json": "{}"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_overwrite_keeps_the_users_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    outputs.write_folder(tmp_path, "model", fill_with({"config.json": "{1}", "old.bin": "x"}), overwrite=True)
    # again, now into our own folder that also holds the user's file: our old entries go, theirs stay
    outputs.write_folder(tmp_path, "model", fill_with({"config.json": "{2}"}))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "config.json").read_text() == "{2}" and not (tmp_path / "old.bin").exists()


def test_overwrite_replaces_a_file_of_ours_by_name_only(tmp_path):
    (tmp_path / "config.json").write_text("theirs")
    (tmp_path / "keep.txt").write_text("mine")
    outputs.write_folder(tmp_path, "model", fill_with({"config.json": "ours"}), overwrite=True)
    assert (tmp_path / "config.json").read_text() == "ours" and (tmp_path / "keep.txt").read_text() == "mine"


def test_our_own_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "set"
    outputs.write_folder(out, "prepared-data", fill_with({"a.txt": "old", "gone.txt": "old"}))
    outputs.write_folder(out, "prepared-data", fill_with({"a.txt": "new"}))
    assert sorted(p.name for p in out.iterdir()) == [outputs.MARKER, "a.txt"]
    assert (out / "a.txt").read_text() == "new"


def test_another_kind_of_ours_is_refused_without_overwrite(tmp_path):
    outputs.write_folder(tmp_path / "x", "prepared-data", fill_with({"a.txt": "1"}))
    with pytest.raises(outputs.OutputError, match="holds an openhermes prepared-data, not a model"):
        outputs.write_folder(tmp_path / "x", "model", fill_with({"b.txt": "1"}))


def test_a_failing_write_leaves_the_old_result(tmp_path):
    out = tmp_path / "set"
    outputs.write_folder(out, "prepared-data", fill_with({"a.txt": "old"}))

    def broken(tmp: Path) -> None:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        outputs.write_folder(out, "prepared-data", broken)
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


KILLED_WRITER = """
import sys, time
from pathlib import Path
from openhermes import outputs
def fill(tmp):
    (tmp / "a.txt").write_text("new")
    Path(sys.argv[2]).write_text("writing")
    time.sleep(60)
outputs.write_folder(sys.argv[1], "prepared-data", fill)
"""


def kill_mid_write(script: str, target: Path, tmp_path: Path) -> None:
    """Run a writer script in its own process and SIGKILL it once it says it is writing."""
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", script, str(target), str(started)])
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the writer never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_kill_mid_write_leaves_the_old_result_complete(tmp_path):
    out = tmp_path / "set"
    outputs.write_folder(out, "prepared-data", fill_with({"a.txt": "old", "b.txt": "old"}))
    kill_mid_write(KILLED_WRITER, out, tmp_path)
    assert (out / "a.txt").read_text() == "old" and (out / "b.txt").read_text() == "old"
    leftovers = [p.name for p in tmp_path.iterdir() if outputs.STAGING_TAG in p.name]
    assert leftovers, "the killed writer's staging folder should be where it was cut off"
    outputs.write_folder(out, "prepared-data", fill_with({"a.txt": "next"}))  # the next run tidies up
    assert not [p for p in tmp_path.iterdir() if outputs.STAGING_TAG in p.name]
    assert (out / "a.txt").read_text() == "next"


KILLED_FILE_WRITER = """
import sys, time
from pathlib import Path
from openhermes import outputs
def fill(tmp):  # as a GGUF export to a llama.cpp type does: an f16 file beside the partial one
    tmp.write_bytes(b"GGUF partial")
    tmp.with_name(tmp.name + ".f16").write_bytes(b"GGUF f16")
    Path(sys.argv[2]).write_text("writing")
    time.sleep(60)
outputs.write_file(sys.argv[1], fill, lambda p: p.read_bytes().startswith(b"GGUF"), "GGUF file")
"""


def test_a_killed_file_write_leaves_the_old_file_and_the_rerun_clears_its_leftovers(tmp_path):
    target = tmp_path / "model.gguf"
    outputs.write_file(target, lambda t: t.write_bytes(b"GGUF old"), lambda p: True, "GGUF file")
    kill_mid_write(KILLED_FILE_WRITER, target, tmp_path)
    assert target.read_bytes() == b"GGUF old"
    assert len([p for p in tmp_path.iterdir() if outputs.STAGING_TAG in p.name]) == 2  # partial + its f16
    (tmp_path / ".other.gguf.openhermes-partial-x").write_bytes(b"")  # another target's: not this run's to clear
    outputs.write_file(target, lambda t: t.write_bytes(b"GGUF new"), lambda p: True, "GGUF file")
    assert target.read_bytes() == b"GGUF new"
    assert [p.name for p in tmp_path.iterdir() if outputs.STAGING_TAG in p.name] == [".other.gguf.openhermes-partial-x"]


def test_files_are_refused_unless_ours(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("my own notes")

    def ours(p: Path) -> bool:
        return p.read_text().startswith("ours")

    with pytest.raises(outputs.OutputError, match="openhermes did not write it"):
        outputs.write_file(target, lambda t: t.write_text("ours 1"), ours, "results file")
    assert target.read_text() == "my own notes"
    outputs.write_file(target, lambda t: t.write_text("ours 1"), ours, "results file", overwrite=True)
    outputs.write_file(target, lambda t: t.write_text("ours 2"), ours, "results file")
    assert target.read_text() == "ours 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
