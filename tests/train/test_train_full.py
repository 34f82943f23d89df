"""Full fine-tuning outputs, resume after SIGKILL, clear errors."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openhermes.config import load_recipe
from openhermes.model.load import ModelLoadError, load_model
from openhermes.train.run import train
from tests.train.conftest import kill_when


def test_full_run_writes_a_loadable_model_folder_log_and_plot(small_recipe, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train(load_recipe(small_recipe(max_steps=6)), tmp_path / "run", show_progress=False)
    d = result.model_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (d / name).exists(), name
    tok = AutoTokenizer.from_pretrained(d)
    AutoModelForCausalLM.from_pretrained(d)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    rows = [json.loads(x) for x in result.log_path.read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert result.plot_path.exists() and result.plot_path.read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents*"))


def test_8bit_on_cpu_is_a_clear_error(tiny_base, chatml_tokenizer):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="need a CUDA GPU"):
        load_model(tiny_base, chatml_tokenizer, load_in_8bit=True)


def _cli(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "openhermes.cli", "train", str(recipe), "--out", str(out),
                             "--no-report", *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_same_weights(small_recipe, tmp_path):
    recipe = small_recipe(max_steps=12, save_steps=3, save_total_limit=10, lr_scheduler="cosine", warmup_steps=2)
    straight = tmp_path / "straight"
    assert _cli(recipe, straight).wait(timeout=300) == 0

    cut = tmp_path / "cut"
    proc = _cli(recipe, cut)
    kill_when(proc, cut / "checkpoint-6", lambda: proc.send_signal(signal.SIGKILL))
    assert not (cut / "model").exists()
    assert _cli(recipe, cut, "--resume").wait(timeout=300) == 0

    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(cut / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
