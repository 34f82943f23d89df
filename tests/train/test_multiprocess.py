"""2-process CPU runs through the real launcher (`openhermes train --nproc 2`: torchrun, gloo, DDP): the same
losses as one process at the same global batch, the gathered final save, resume after SIGKILL. (accelerate runs
FSDP and DeepSpeed only on GPUs: their tests are in test_gpu.py.)"""

import json
import os
import subprocess
import sys

import pytest

from tests.train.conftest import TWO_PROCESS_STEPS, kill_when


def _launch(recipe, out, *extra):
    """`openhermes train --nproc 2` in its own session, so a kill takes the launcher and both ranks; CPU processes
    also on a machine with a GPU (hidden), as a user runs them there."""
    return subprocess.Popen([sys.executable, "-m", "openhermes.cli", "train", str(recipe), "--out", str(out),
                             "--nproc", "2", "--no-report", *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def _finish(proc):
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(path)


@pytest.mark.slow
def test_two_process_full_run_saves_the_gathered_weights_and_resumes_after_sigkill(small_recipe, two_process_run,
                                                                                   tmp_path):
    """Two processes log the losses of one process at the same global batch. The final model/ is the trainer's
    gathering save: it loads in plain transformers and equals the last checkpoint tensor for tensor. A
    2-process run killed (launcher and ranks) after a checkpoint and resumed ends with the weights of an
    uninterrupted 2-process run: every rank's RNG and the data order restored."""
    import signal

    import torch
    from transformers import AutoModelForCausalLM

    one = small_recipe(**TWO_PROCESS_STEPS | {"gradient_accumulation_steps": 2})
    assert subprocess.call([sys.executable, "-m", "openhermes.cli", "train", str(one), "--out", str(tmp_path / "one"),
                            "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0
    straight = two_process_run

    def losses(d):
        return [r["loss"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines()) if "loss" in r]

    assert len(losses(tmp_path / "one")) == len(losses(straight)) == 12
    assert losses(tmp_path / "one") == pytest.approx(losses(straight), rel=2e-3)
    final = _tensors(straight / "model" / "model.safetensors")
    last = _tensors(straight / "checkpoint-12" / "model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    model = AutoModelForCausalLM.from_pretrained(straight / "model")
    assert all(torch.equal(model.state_dict()[k], final[k]) for k in final)
    assert (straight / "model" / "tokenizer.json").exists() and not (straight / ".staging").exists()

    recipe = small_recipe(**TWO_PROCESS_STEPS)
    cut = tmp_path / "cut"
    proc = _launch(recipe, cut)
    kill_when(proc, cut / "checkpoint-4", lambda: os.killpg(proc.pid, signal.SIGKILL))
    assert not (cut / "model").exists()
    _finish(_launch(recipe, cut, "--resume"))
    resumed = _tensors(cut / "model" / "model.safetensors")
    for k in final:
        torch.testing.assert_close(resumed[k], final[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_two_process_lora_adapter_equals_its_last_checkpoint(small_recipe, tmp_path):
    import torch

    recipe = small_recipe(adapter="lora", lora_r=4, lora_target_linear=True, max_steps=4, save_steps=4,
                          micro_batch_size=1)
    _finish(_launch(recipe, tmp_path / "run"))
    final = _tensors(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    last = _tensors(tmp_path / "run" / "checkpoint-4" / "adapter_model.safetensors")
    assert final.keys() == last.keys() and any("lora_A" in k for k in final)
    assert all(torch.equal(final[k], last[k]) for k in final)


@pytest.mark.parametrize(("nproc", "gpus", "refused"), [(2, 1, True), (4, 2, True), (2, 2, False), (8, 0, False)])
def test_more_processes_than_gpus_is_refused_before_anything_starts(nproc, gpus, refused):
    """On one GPU, `--nproc 2` put both ranks on it and NCCL failed mid-start ("invalid usage"); now the launcher
    says so first. Without GPUs any count runs (CPU processes)."""
    from openhermes.train.launch import check_processes

    if refused:
        with pytest.raises(ValueError, match=f"--nproc {nproc} runs one process per GPU.*{gpus} CUDA GPU"):
            check_processes(nproc, gpus)
    else:
        check_processes(nproc, gpus)
