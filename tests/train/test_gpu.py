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
