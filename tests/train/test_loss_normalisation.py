"""Loss is normalised by the trained tokens of the whole accumulated batch, not per micro batch."""

import json

import pytest

from openhermes.config import load_recipe
from openhermes.train.run import train


def test_accumulation_gives_the_same_loss_as_one_big_batch(small_recipe, tmp_path):
    data = tmp_path / "uneven.jsonl"
    # Replies of very different lengths: per-micro-batch means would weigh them differently.
    data.write_text("\n".join(json.dumps({"conversations": [
        {"from": "human", "value": f"Say something {i}"},
        {"from": "gpt", "value": " ".join(["apple river stone"] * (1 + 12 * (i % 2)))}]}) for i in range(16)))

    def first_loss(micro, accum, name):
        recipe = load_recipe(small_recipe(micro_batch_size=micro, gradient_accumulation_steps=accum, max_steps=1,
                                          sample_packing=False, datasets=[{"path": str(data)}]))
        result = train(recipe, tmp_path / name, show_progress=False)
        return [r["loss"] for r in map(json.loads, result.log_path.read_text().splitlines()) if "loss" in r][0]

    one_batch = first_loss(4, 1, "big")
    accumulated = first_loss(1, 4, "acc")
    assert accumulated == pytest.approx(one_batch, rel=1e-4)


@pytest.mark.parametrize("keys", [{}, {"adapter": "lora", "lora_r": 8, "lora_alpha": 16,
                                       "lora_target_linear": True}], ids=["full", "lora"])
def test_loss_from_trained_positions_equals_transformers_full_loss(small_recipe, tmp_path, keys):
    """The trainer computes logits only where a label is trained; its loss and gradients are transformers' own
    loss over every position (the model's forward with labels), and the head is whole again for generation."""
    import torch

    from openhermes.train.run import build

    recipe = load_recipe(small_recipe(micro_batch_size=4, **keys))
    trainer, *_ = build(recipe, tmp_path / "run", show_progress=False)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < trained < batch["labels"].numel() // 2  # mostly prompt: the case this is for

    def loss_and_grads(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours, ours_grads = loss_and_grads(lambda: trainer.compute_loss(model, batch, num_items_in_batch=trained))
    ref, ref_grads = loss_and_grads(lambda: model(**batch, num_items_in_batch=trained).loss)
    assert ours == pytest.approx(ref.item(), rel=1e-5)
    assert ours_grads.keys() == ref_grads.keys() and ours_grads
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # outside the loss, every position gets its logits
        assert model(input_ids=batch["input_ids"][:1]).logits.shape[:2] == batch["input_ids"][:1].shape
