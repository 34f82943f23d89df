"""A peft LoRA adapter -> a LoRA GGUF in the layout llama.cpp's adapter loader reads (`--lora FILE`, LM Studio),
so a LimaRP-style adapter runs on the base model's GGUF without merging.

Layout (as llama.cpp's convert_lora_to_gguf writes it): general.type "adapter", adapter.type "lora",
adapter.lora.alpha; for each adapted weight W of the base, "<gguf name of W>.lora_a" (r x in) and ".lora_b"
(out x r), f32. llama.cpp scales by alpha / r, as peft does. The Q/K rows of lora_b are permuted like the
base's Q/K weights (HF's half-split rotary layout -> interleaved pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from openhermes import outputs
from openhermes.export.gguf import MARK_KEY, ExportError, is_openhermes_gguf, permute_qk

PREFIX = "base_model.model."


def _adapter_config(adapter: Path) -> dict:
    path = adapter / "adapter_config.json"
    if not path.exists():
        raise ExportError(f"{adapter}: not a peft adapter folder (no adapter_config.json)")
    cfg = json.loads(path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{adapter}: a {cfg.get('peft_type')} adapter; llama.cpp loads LoRA adapters only")
    if cfg.get("use_rslora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("use_dora"):
        raise ExportError(f"{adapter}: rsLoRA, DoRA and per-module ranks/alphas have no llama.cpp LoRA form")
    return cfg


def export_lora_gguf(adapter_dir: str | Path, out: str | Path, base_model: str | None = None,
                     overwrite: bool = False) -> Path:
    adapter = Path(adapter_dir)
    cfg = _adapter_config(adapter)
    return outputs.write_file(out, lambda tmp: _write(adapter, cfg, tmp, base_model), is_openhermes_gguf,
                              "GGUF file", overwrite)


def _write(adapter: Path, cfg: dict, out: Path, base_model: str | None) -> None:
    import gguf
    from safetensors import safe_open
    from transformers import AutoConfig

    from openhermes import __version__

    base = base_model or cfg["base_model_name_or_path"]
    config = AutoConfig.from_pretrained(base)
    weights = adapter / "adapter_model.safetensors"
    if not weights.exists():
        raise ExportError(f"{adapter}: no adapter_model.safetensors")
    with safe_open(weights, "np") as st:
        tensors = {k: st.get_tensor(k) for k in st.keys()}
    extra = [k for k in tensors if ".lora_A." not in k and ".lora_B." not in k]
    if extra:
        raise ExportError(f"{adapter}: the adapter also trains {extra[0].removeprefix(PREFIX)} (added-token rows or "
                          f"modules_to_save), which a llama.cpp LoRA cannot carry; merge it (`openhermes merge`) "
                          f"and export the merged model instead")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_string(MARK_KEY, __version__)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(cfg["lora_alpha"]))
    w.add_name(adapter.resolve().name if adapter.name != "adapter" else adapter.resolve().parent.name)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    for key in sorted(k for k in tensors if ".lora_A." in k):
        module = key.removeprefix(PREFIX).split(".lora_A.")[0]
        gname = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if gname is None:
            raise ExportError(f"{adapter}: no GGUF name for the adapted weight {module}")
        a = tensors[key].astype(np.float32)
        b = tensors[key.replace(".lora_A.", ".lora_B.")].astype(np.float32)
        if module.endswith("q_proj"):
            b = permute_qk(b, n_head)
        elif module.endswith("k_proj"):
            b = permute_qk(b, n_kv)
        w.add_tensor(gname + ".lora_a", a)
        w.add_tensor(gname + ".lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
