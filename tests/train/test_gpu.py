"""What only a GPU can show; skipped cleanly without one."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_bf16_training_step_on_gpu(tiny_base, chatml_tokenizer):
    from openhermes.model.load import load_model

    model, _ = load_model(tiny_base, chatml_tokenizer, dtype=torch.bfloat16)
    model.cuda().train()
    ids = torch.randint(0, len(chatml_tokenizer), (2, 64), device="cuda")
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    assert torch.isfinite(loss)


def _launch(recipe, out, nproc=1):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "train", str(recipe), "--out", str(out),
                           "--nproc", str(nproc), "--no-report"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _same_as_checkpoint(final, checkpoint):
    from safetensors.torch import load_file

    a, b = load_file(final), load_file(checkpoint)
    assert a.keys() == b.keys() and all(t.numel() > 0 for t in a.values())
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float())


@pytest.mark.skipif(not __import__("importlib").util.find_spec("deepspeed"), reason="deepspeed is not installed")
def test_zero3_final_save_is_the_whole_model(small_recipe, tmp_path):
    """ZeRO-3 shards the parameters: the final model/ must be the 16-bit gather, not each rank's empty shard."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    zero3 = Path(__file__).resolve().parents[2] / "configs" / "deepspeed" / "zero3.json"
    recipe = small_recipe(deepspeed=str(zero3), max_steps=2, save_steps=2, bf16=True)
    _launch(recipe, tmp_path / "run")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert all(p.numel() > 0 for p in model.parameters())
    assert model.get_input_embeddings().weight.shape[0] > 0


@pytest.mark.skipif(not __import__("importlib").util.find_spec("bitsandbytes"), reason="bitsandbytes is not installed")
def test_lora_on_an_8bit_base_places_each_rank_and_saves_the_adapter(small_recipe, tmp_path):
    recipe = small_recipe(adapter="lora", lora_r=8, lora_target_linear=True, load_in_8bit=True, max_steps=2,
                          save_steps=2, bf16=True)
    _launch(recipe, tmp_path / "run", nproc=min(2, torch.cuda.device_count()))
    _same_as_checkpoint(tmp_path / "run" / "adapter" / "adapter_model.safetensors",
                        tmp_path / "run" / "checkpoint-2" / "adapter_model.safetensors")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP needs two GPUs here")
def test_fsdp2_full_finetune_saves_the_gathered_model(small_recipe, tmp_path):
    recipe = small_recipe(fsdp="full_shard auto_wrap", max_steps=2, save_steps=2, bf16=True,
                          fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": "MistralDecoderLayer",
                                       "state_dict_type": "FULL_STATE_DICT"})
    _launch(recipe, tmp_path / "run", nproc=2)
    _same_as_checkpoint(tmp_path / "run" / "model" / "model.safetensors",
                        tmp_path / "run" / "checkpoint-2" / "model.safetensors")


def test_full_finetune_weights_stay_fp32_under_bf16(small_recipe, tmp_path):
    from openhermes.config import load_recipe
    from openhermes.train.run import build

    trainer = build(load_recipe(small_recipe(bf16=True, max_steps=1)), tmp_path / "run", show_progress=False)[0]
    assert trainer.args.bf16 and all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_packed_samples_stay_isolated_on_gpu(tiny_base, chatml_tokenizer):
    """A row packed from two samples (positions restarting at 0) gives each sample the logits it has alone: on a GPU
    SDPA takes the masked kernels (tests/train/test_packed_forward.py checks the CPU's)."""
    from openhermes.model.load import load_model
    from openhermes.train.collate import PackedCollator

    model, _ = load_model(tiny_base, chatml_tokenizer)
    model.config.use_cache = False  # as training sets it: a KV cache switches packed-sample isolation off
    model.cuda().eval()
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(3, len(chatml_tokenizer), (n,), generator=g).tolist() for n in (150, 90))
    row = {"input_ids": a + b, "labels": a + b, "position_ids": list(range(150)) + list(range(90))}
    batch = {k: v.cuda() for k, v in PackedCollator(0, pad_to=256)([row]).items() if k != "labels"}
    with torch.no_grad():
        packed = model(**batch).logits[0]
        alone = [model(input_ids=torch.tensor([s], device="cuda")).logits[0] for s in (a, b)]
    torch.testing.assert_close(packed[:150], alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed[150:240], alone[1], atol=1e-4, rtol=1e-4)
