"""LoRA with added ChatML tokens saves their rows; the merged model loads in plain transformers and stops."""

import json

import pytest
import torch
from safetensors import safe_open

from openhermes.config import load_recipe
from openhermes.export.merge import merge_adapter
from openhermes.formats import Conversation, Message, chatml
from openhermes.train.run import train


@pytest.mark.slow
def test_lora_trains_token_rows_and_merged_model_emits_im_end(small_recipe, tmp_path):
    recipe = load_recipe(small_recipe(adapter="lora", lora_r=8, lora_alpha=16, lora_target_linear=True,
                                      learning_rate=0.01, num_epochs=12))
    result = train(recipe, tmp_path / "run", show_progress=False)
    assert result.is_adapter and (result.model_dir / "adapter_config.json").exists()
    cfg = json.loads((result.model_dir / "adapter_config.json").read_text())
    assert cfg["trainable_token_indices"]  # the ChatML rows are part of the adapter
    with safe_open(result.model_dir / "adapter_model.safetensors", "pt") as f:
        token_keys = [k for k in f.keys() if "trainable_tokens" in k]
        deltas = [f.get_tensor(k) for k in token_keys]
    assert len(token_keys) == 2 and all(d.shape[0] == 2 and d.abs().sum() > 0 for d in deltas)

    merged = merge_adapter(result.model_dir, tmp_path / "merged")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert tok.eos_token == chatml.IM_END and model.generation_config.eos_token_id == tok.eos_token_id
    prompt = chatml.render(Conversation([Message("system", "You are Hermes."), Message("user", "What is 3 + 1?")]),
                           add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert tok.convert_tokens_to_ids(chatml.IM_END) in out[0, enc["input_ids"].shape[1]:].tolist()

    # The engine with the adapter on top of the base gives the same greedy reply as the merged folder.
    from openhermes.infer.engine import Engine
    from openhermes.infer.sampling import PRESETS
    from openhermes.infer.sequence import GenerationRequest

    on_top = Engine.load(recipe.base_model, adapter=result.model_dir, device="cpu")
    merged_engine = Engine.load(merged, device="cpu")
    messages = [{"role": "system", "content": "You are Hermes."}, {"role": "user", "content": "What is 3 + 1?"}]
    replies = [e.generate([GenerationRequest(e.chat_prompt(messages), PRESETS["greedy"], 12)])[0]
               for e in (on_top, merged_engine)]
    assert replies[0].token_ids == replies[1].token_ids and replies[0].finish_reason == "stop"
