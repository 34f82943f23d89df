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
