"""A first run (the tiny base built in the process) and a cached run start from the same weights."""

import torch

from openhermes.config import Recipe
from openhermes.train.run import build


def test_first_and_cached_runs_start_from_the_same_weights(tmp_path):
    recipe = Recipe(base_model="tiny", tiny={"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64,
                                             "num_hidden_layers": 1, "num_attention_heads": 2,
                                             "num_key_value_heads": 1},
                    datasets=[{"path": "demo:chat:40", "type": "sharegpt"}], sequence_len=128,
                    near_dedup_threshold=None, seed=5)
    cache = tmp_path / "cache"
    first = build(recipe, tmp_path / "first", show_progress=False, cache=cache)[0].model.state_dict()
    assert (cache / "tiny-base").is_dir()  # the first run built the base; the second loads it
    second = build(recipe, tmp_path / "second", show_progress=False, cache=cache)[0].model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
