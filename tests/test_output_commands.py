"""Every command that writes an output, through the real CLI: a folder or file holding a user's
work is refused and left intact; with --overwrite the user's other files are still intact; a
second run into openhermes's own output replaces it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from openhermes.outputs import MARKER


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "openhermes.cli", *args], capture_output=True, text=True,
                          timeout=600, env=os.environ | {"CUDA_VISIBLE_DEVICES": ""} | (env or {}))


def users_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.txt").write_text("three years of work")
    return path


def recipe_file(tmp_path, tiny_base, **keys) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"conversations": [{"from": "human", "value": f"hi {i}"},
                                                            {"from": "gpt", "value": f"hello {i}"}]})
                              for i in range(20)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": str(tiny_base), "datasets": [{"path": str(data)}],
                                      "sequence_len": 64, "sample_packing": True, "near_dedup_threshold": None}
                                     | keys))
    return recipe


def test_data_prepare_out(tmp_path, tiny_base):
    recipe = recipe_file(tmp_path, tiny_base)
    out = users_folder(tmp_path / "work")
    refused = run("data", "prepare", str(recipe), "--out", str(out))
    assert refused.returncode == 2 and "openhermes did not write it" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]

    assert run("data", "prepare", str(recipe), "--out", str(out), "--overwrite").returncode == 0
    assert (out / "thesis.txt").read_text() == "three years of work" and (out / "report.json").exists()
    key1 = (out / "key.txt").read_text()
    # a second run with another setting prepares again into our own folder: no --overwrite needed
    again = run("data", "prepare", str(recipe), "--out", str(out), "--set", "sequence_len=128")
    assert again.returncode == 0, again.stderr
    assert (out / "key.txt").read_text() != key1 and json.loads((out / "report.json").read_text())["sequence_len"] == 128
    assert (out / "thesis.txt").read_text() == "three years of work"


def test_dataset_prepared_path_is_a_parent_of_one_folder_per_key(tmp_path, tiny_base):
    parent = users_folder(tmp_path / "prepared")
    recipe = recipe_file(tmp_path, tiny_base, dataset_prepared_path=str(parent))
    for extra in ([], ["--set", "sequence_len=128"]):
        proc = run("data", "prepare", str(recipe), *extra)
        assert proc.returncode == 0, proc.stderr
    subs = sorted(p for p in parent.iterdir() if p.is_dir())
    assert len(subs) == 2 and all((s / "key.txt").read_text() == s.name for s in subs)
    assert all(json.loads((s / MARKER).read_text())["kind"] == "prepared-data" for s in subs)
    assert (parent / "thesis.txt").read_text() == "three years of work"


def test_export_out(tmp_path, chat_model_dir):
    target = tmp_path / "model.gguf"
    target.write_text("a file of the user's")
    refused = run("export", str(chat_model_dir), "--out", str(target))
    assert refused.returncode == 2 and "openhermes did not write it" in refused.stderr
    assert target.read_text() == "a file of the user's"
    assert run("export", str(chat_model_dir), "--out", str(target), "--overwrite").returncode == 0
    first = target.stat().st_size
    again = run("export", str(chat_model_dir), "--out", str(target), "--type", "q8_0")  # ours: replaced
    assert again.returncode == 0, again.stderr
    assert target.stat().st_size < first
    # Beside it: our model card; nothing else (no staging file left behind).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "model.gguf"]
    assert "written by openhermes" in (tmp_path / "README.md").read_text()


def test_eval_output(tmp_path, chat_model_dir):
    target = tmp_path / "results.json"
    target.write_text('{"my": "own results"}')
    args = ("eval", str(chat_model_dir), "--suite", "humaneval", "--limit", "1", "--output", str(target))
    refused = run(*args)
    assert refused.returncode == 2 and "openhermes did not write it" in refused.stderr
    assert json.loads(target.read_text()) == {"my": "own results"}
    assert run(*args, "--overwrite").returncode == 0
    assert "humaneval" in json.loads(target.read_text())["suites"]
    again = run(*args)  # our own results file: replaced without --overwrite
    assert again.returncode == 0, again.stderr
