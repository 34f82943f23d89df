"""Fold a peft LoRA adapter into full weights that plain transformers loads."""

from __future__ import annotations

import json
from pathlib import Path

from openhermes import outputs
from openhermes.model.load import save_tokenizer


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base_model: str | None = None,
                  overwrite: bool = False) -> Path:
    adapter = Path(adapter_dir)
    cfg_path = adapter / "adapter_config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{adapter} is not a peft adapter folder (no adapter_config.json)")
    outputs.check_folder(Path(out_dir), "model", overwrite)  # refuse before the work (and peft's 5 s import)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = base_model or json.loads(cfg_path.read_text())["base_model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
        # The adapter was trained on the base resized for the ChatML tokens; its rows are in the adapter.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.config.eos_token_id = tokenizer.eos_token_id
    merged.config.pad_token_id = tokenizer.pad_token_id
    merged.config.use_cache = True
    merged.generation_config.eos_token_id = tokenizer.eos_token_id
    merged.generation_config.pad_token_id = tokenizer.pad_token_id

    def fill(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)

    return outputs.write_folder(out_dir, "model", fill, overwrite=overwrite)
