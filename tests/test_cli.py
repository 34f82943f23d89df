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


@pytest.mark.parametrize("cmd", [["serve"], ["generate", "--input", "x.jsonl", "--output", "y.jsonl"], ["chat"],
                                 ["eval", "--suite", "gpt4all"]])
def test_engine_vllm_without_vllm_or_a_gpu_says_so_before_loading(cmd, tmp_path):
    """Here (CI) .venv has no vLLM and PyTorch sees no GPU: one line naming what is missing, and the
    embedded default is not trained first."""
    (tmp_path / "x.jsonl").write_text('{"prompt": "hi"}\n')
    env = os.environ | {"OPENHERMES_CACHE": str(tmp_path / "cache")}
    args = [*cmd, "--engine", "vllm"] + (["--port", "0"] if cmd == ["serve"] else [])
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # openhermes's usage-error code
    assert "vLLM" in proc.stderr and ("GPU" in proc.stderr) and "training the embedded default" not in proc.stdout
    assert not (tmp_path / "runs").exists()
