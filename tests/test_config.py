import pytest

from openhermes.config import RecipeError, load_recipe


def test_limarp_recipe_has_the_cards_hyperparameters():
    r = load_recipe("limarp-mistral-7b")
    card = dict(learning_rate=0.0003, lr_scheduler="constant_with_warmup", noisy_embedding_alpha=5, num_epochs=1,
                sequence_len=8750, lora_r=256, lora_alpha=16, lora_dropout=0.05, lora_target_linear=True, bf16=True,
                tf32=True, load_in_8bit=True, adapter="lora", micro_batch_size=1, gradient_accumulation_steps=1,
                warmup_steps=10, optimizer="adamw_torch", flash_attention=True, sample_packing=True,
                pad_to_sequence_len=True, prompt_format="limarp")
    assert {k: getattr(r, k) for k in card} == card


@pytest.mark.parametrize("name", ["tiny", "openhermes-2.5-mistral-7b", "limarp-mistral-7b"])
def test_shipped_recipes_load(name):
    assert load_recipe(name).datasets


def test_unknown_key_names_the_closest_valid_one(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("base_model: x\nlora_rr: 8\n")
    with pytest.raises(RecipeError, match=r"unknown recipe key 'lora_rr'; did you mean 'lora_r'\?"):
        load_recipe(p)


def test_axolotl_yaml_keys_load(tmp_path):
    p = tmp_path / "axolotl.yml"
    p.write_text(
        "base_model: mistralai/Mistral-7B-v0.1\nmodel_type: MistralForCausalLM\ntokenizer_type: LlamaTokenizer\n"
        "datasets:\n  - path: teknium/OpenHermes-2.5\n    type: chat_template\nchat_template: chatml\n"
        "neftune_noise_alpha: 5\nwandb_project: x\nspecial_tokens:\n  eos_token: <|im_end|>\n")
    with pytest.warns(UserWarning, match="wandb_project"):
        r = load_recipe(p)
    assert r.datasets[0].type == "sharegpt" and r.noisy_embedding_alpha == 5
    assert r.special_tokens == {"eos_token": "<|im_end|>"}


def test_overrides_are_yaml_values():
    r = load_recipe("tiny", ["lora_r=64", "sample_packing=false", "learning_rate=1e-4"])
    assert (r.lora_r, r.sample_packing, r.learning_rate) == (64, False, 1e-4)
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe("tiny", ["oops"])
    with pytest.raises(RecipeError, match="micro_batch_size"):
        load_recipe("tiny", ["micro_batch_size=0"])
