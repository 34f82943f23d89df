"""Full fine-tunes keep fp32 master weights; val_set_size gives an evaluation loss; GPU keys degrade cleanly."""

import json
import warnings

import pytest
import torch

from openhermes.config import load_recipe
from openhermes.model.load import attention_implementation
from openhermes.train.run import build, train

LR = 2e-6  # the OpenHermes recipe's learning rate


def _one_step_updates(small_recipe, tmp_path, **keys) -> torch.Tensor:
    """|w_after - w_before| of every attention/MLP weight after one AdamW step at LR."""
    recipe = load_recipe(small_recipe(max_steps=1, learning_rate=LR, lr_scheduler="constant", warmup_steps=0,
                                      weight_decay=0.0, **keys))
    trainer = build(recipe, tmp_path / "run", show_progress=False)[0]
    names = [n for n, _ in trainer.model.named_parameters() if n.endswith("proj.weight")]
    before = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters() if n in names}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    return torch.cat([(after[n].detach().float() - before[n]).abs().flatten() for n in names])


def test_full_finetune_at_2e_6_moves_weights_as_fp32_arithmetic_does(small_recipe, tmp_path):
    """AdamW's first step moves each weight with a gradient by lr (m/sqrt(v) = ±1): in fp32 every such
    weight moves by 2e-6. In pure bf16 (the weights themselves bf16) the same step rounds away: half a
    bf16 ulp of a weight of size 0.02 is 6e-5."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16: true on a CPU without bf16 falls back to fp32 with a warning
        delta = _one_step_updates(small_recipe, tmp_path / "mixed", bf16=True)
    moved = delta[delta > 0]
    assert moved.numel() > 0.9 * delta.numel()
    assert moved.median().item() == pytest.approx(LR, rel=0.01)

    with pytest.warns(UserWarning, match="bf16: pure"):
        pure = _one_step_updates(small_recipe, tmp_path / "pure", bf16="pure")
    assert (pure > 0).float().mean().item() < 0.1  # nearly every update lost


def test_val_set_size_logs_an_evaluation_loss(small_recipe, tmp_path):
    recipe = load_recipe(small_recipe(val_set_size=0.25, max_steps=6, eval_steps=2))
    result = train(recipe, tmp_path / "run", show_progress=False)
    rows = [json.loads(x) for x in result.log_path.read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert all(0 < r["eval_loss"] < 20 for r in evals)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents*")).parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/loss")] == [2, 4, 6]
    assert result.plot_path.exists()


def test_evals_per_epoch_spaces_the_evaluations(small_recipe, tmp_path):
    recipe = load_recipe(small_recipe(val_set_size=0.25, num_epochs=1, evals_per_epoch=2, micro_batch_size=1))
    trainer = build(recipe, tmp_path / "run", show_progress=False)[0]
    steps_per_epoch = len(trainer.train_dataset)  # one packed row per step here
    assert trainer.args.eval_strategy == "steps" and trainer.args.eval_steps == steps_per_epoch // 2
    assert trainer.eval_dataset is not None and len(trainer.eval_dataset) > 0


def test_flash_attention_without_a_gpu_or_flash_attn_is_sdpa_with_a_notice():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.warns(UserWarning, match="using PyTorch SDPA"):
        assert attention_implementation(True) == "sdpa"
    assert attention_implementation(False) is None


def test_fsdp_on_cpu_says_it_runs_ddp(small_recipe, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    recipe = load_recipe(small_recipe(fsdp="full_shard auto_wrap", max_steps=1))
    with pytest.warns(UserWarning, match="fsdp needs CUDA GPUs"):
        trainer = build(recipe, tmp_path / "run", show_progress=False)[0]
    assert not trainer.args.fsdp
