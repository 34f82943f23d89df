"""The real command: help texts, data prepare / inspect, and clear errors."""

import json
import os
import subprocess
import sys

import pytest
import yaml


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "openhermes.cli", *args], capture_output=True, text=True,
                          timeout=300, env=os.environ | (env or {}))


@pytest.mark.parametrize("cmd", [[], ["data"], ["data", "prepare"], ["data", "inspect"], ["train"], ["merge"]])
def test_every_command_has_help(cmd):
    out = run(*cmd, "--help")
    assert out.returncode == 0 and "Usage" in out.stdout


def test_prepare_then_inspect(tmp_path, tiny_base):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"conversations": [{"from": "human", "value": f"hi {i}"},
                                                            {"from": "gpt", "value": f"hello {i}"}]})
                              for i in range(20)) + "\n{broken\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": str(tiny_base), "datasets": [{"path": str(data)}],
                                      "sequence_len": 64, "sample_packing": True}))
    out = run("data", "prepare", str(recipe), "--out", str(tmp_path / "prep"), "--set", "near_dedup_threshold=null")
    assert out.returncode == 0, out.stderr
    assert "packing efficiency" in out.stdout and f"{data}:21: invalid JSON" in out.stderr
    shown = run("data", "inspect", str(tmp_path / "prep"), "--row", "0")
    assert shown.returncode == 0 and "hello" in shown.stdout and "rows in" in shown.stdout
    strict = run("data", "prepare", str(recipe), "--out", str(tmp_path / "p2"), "--strict")
    assert strict.returncode == 2 and "invalid JSON" in strict.stderr


def test_unknown_recipe_key_is_a_clear_error():
    out = run("data", "prepare", "tiny", "--set", "sequnce_len=10")
    assert out.returncode == 2 and "did you mean 'sequence_len'" in out.stderr
