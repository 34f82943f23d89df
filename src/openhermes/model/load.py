"""Base model and tokenizer: local folder or hub id, ChatML tokens added as OpenHermes did, LoRA."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from openhermes.formats import chatml, limarp


class ModelLoadError(RuntimeError):
    pass


QUANTIZED_FORMATS = ("gptq", "awq")  # folders `export --to gptq|awq` writes
QUANT_INSTALL_HINT = "pip install 'openhermes[quant]' (AutoRound and its CPU kernels)"


def adds_bos(tokenizer) -> bool:
    """Whether a model folder's tokenizer puts BOS before a text: the BOS rule every inference path follows (our
    engine, the GGUF's add_bos_token, transformers' `tokenizer(text)`), and that training wrote (set_bos_rule)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def set_bos_rule(tokenizer, add_bos: bool) -> None:
    """openhermes's BOS rule: a training row starts with BOS iff `add_bos` (the recipe's key, default true, as
    Mistral's pretraining documents and tokenizer do). The saved tokenizer then adds BOS to a text iff the rows
    have it, and its chat template starts with `{{ bos_token }}` iff they do, so apply_chat_template, llama.cpp
    (which drops a template's leading BOS when its vocabulary adds one) and our engines feed what training saw."""
    try:
        tokenizer.add_bos_token = add_bos
    except (AttributeError, ValueError):  # a tokenizer without the switch keeps its own post-processor
        pass


def load_tokenizer(name_or_path: str | Path, prompt_format: str = "chatml", extra_special: dict | None = None,
                   extra_tokens: list[str] | None = None, add_bos: bool | None = None):
    """The tokenizer, with the ChatML tokens and template when training ChatML.

    When the base lacks `<|im_end|>`/`<|im_start|>` (Mistral's does), they are added in OpenHermes's
    order (32000, 32001 for Mistral) as special tokens, and eos becomes `<|im_end|>`. `add_bos` (training):
    the rows' BOS rule, written into the tokenizer and its chat template (set_bos_rule)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    except OSError as e:
        raise ModelLoadError(f"cannot load a tokenizer from {name_or_path}: {e}") from None
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"{name_or_path}: openhermes needs a fast (tokenizer.json) tokenizer")
    if prompt_format == "chatml":
        vocab = tok.get_vocab()
        missing = [t for t in chatml.CONTROL_TOKENS if t not in vocab]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        tok.eos_token = chatml.IM_END
        tok.chat_template = chatml.chat_template(add_bos is not False)
    elif prompt_format == "limarp":
        tok.chat_template = limarp.chat_template(add_bos is not False)  # so GGUF users (LM Studio) get the format
    if add_bos is not None:
        set_bos_rule(tok, add_bos)
    if extra_special:
        tok.add_special_tokens(dict(extra_special))
    if extra_tokens:
        tok.add_tokens(list(extra_tokens))
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """save_pretrained, plus the base's SentencePiece `tokenizer.model` (keep_sentencepiece_model)."""
    tokenizer.save_pretrained(str(folder))
    keep_sentencepiece_model(tokenizer, folder)


def keep_sentencepiece_model(tokenizer, folder: str | Path) -> None:
    """Copy the base's SentencePiece `tokenizer.model` into a saved folder (transformers writes only
    tokenizer.json): GGUF export takes the real piece scores from it, and SentencePiece tools need it."""
    source = getattr(tokenizer, "vocab_file", None)
    target = Path(folder) / "tokenizer.model"
    if source and Path(source).name == "tokenizer.model" and Path(source).is_file() and not target.exists():
        shutil.copyfile(source, target)


def added_token_ids(tokenizer, model_vocab_size: int) -> list[int]:
    """Ids the base model has no trained rows for."""
    return list(range(model_vocab_size, len(tokenizer)))


def is_byte_token(piece: str) -> bool:
    """A byte-fallback token of a SentencePiece-style vocabulary: `<0x41>`."""
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def bf16_supported() -> bool:
    """A CUDA GPU with bf16, or a CPU with bf16 matrix instructions (AVX512-BF16 / AMX)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bf16(bf16: bool | str) -> bool:
    """Whether to train in bf16 mixed precision (autocast). `auto`: on a CUDA GPU that supports it, never
    on a CPU, so CPU results do not depend on whether the CPU has bf16 instructions (AVX512-BF16, AMX);
    `true` (or `pure`) asks for it on a CPU too, and falls back to fp32 with a warning where unsupported."""
    if bf16 is False:
        return False
    if bf16 == "auto" and not torch.cuda.is_available():
        return False
    if bf16_supported():
        return True
    if bf16 is True or bf16 == "pure":
        warnings.warn("bf16 asked for but not supported here; training in fp32", stacklevel=2)
    return False


def weight_dtype(bf16: bool | str, full_finetune: bool) -> torch.dtype:
    """The dtype the weights are loaded in.

    A full fine-tune keeps fp32 master weights, with bf16 autocast (or the engine's mixed precision:
    FSDP MixedPrecision, DeepSpeed bf16 with fp32 master) doing the arithmetic: AdamW updating bf16
    weights directly rounds away every update below half a bf16 ulp, which at the OpenHermes
    recipe's learning rate (2e-6) is most of them. Pure bf16 weights only when a recipe says
    `bf16: pure`. A LoRA base is frozen: bf16 on a GPU (as axolotl loads it), fp32 on a CPU."""
    if bf16 == "pure":
        warnings.warn("bf16: pure keeps the weights themselves in bf16: small updates round away "
                      "(use bf16: true for fp32 master weights with bf16 arithmetic)", stacklevel=2)
        return torch.bfloat16
    if full_finetune:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_available() and use_bf16(bf16) else torch.float32


def attention_implementation(flash_attention: bool) -> str | None:
    """`flash_attention: true` as users expect it: flash_attention_2 on a CUDA GPU with flash-attn
    installed; otherwise PyTorch SDPA (which runs flash kernels itself on recent GPUs), with a notice.
    Packed samples stay isolated with both (transformers reads the boundaries from position_ids)."""
    if not flash_attention:
        return None
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    why = "flash-attn is not installed" if torch.cuda.is_available() else "there is no CUDA GPU"
    warnings.warn(f"flash_attention: {why}; using PyTorch SDPA attention", stacklevel=2)
    return "sdpa"


def local_device() -> int:
    """This process's GPU under torchrun/accelerate (LOCAL_RANK), before anything has set the device."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def load_model(name_or_path: str | Path, tokenizer, *, dtype: torch.dtype = torch.float32,
               load_in_8bit: bool = False, load_in_4bit: bool = False, flash_attention: bool = False):
    """The base model, resized for added tokens, with eos set from the tokenizer.

    Returns (model, ids of the added token rows)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": dtype}
    if load_in_8bit or load_in_4bit:
        if not torch.cuda.is_available():
            raise ModelLoadError("8-bit and 4-bit loading (bitsandbytes) need a CUDA GPU; none is available here. "
                                 "Drop load_in_8bit/load_in_4bit to train in full precision on this machine.")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit,
            bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4")
        # Each rank on its own GPU: current_device() is still 0 on every rank at this point.
        kwargs["device_map"] = {"": local_device()}
    if (attn := attention_implementation(flash_attention)) is not None:
        kwargs["attn_implementation"] = attn
    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    except OSError as e:
        raise ModelLoadError(f"cannot load a model from {name_or_path}: {e}") from None
    old = model.get_input_embeddings().weight.shape[0]
    added = added_token_ids(tokenizer, old)
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, added


def apply_lora(model, *, r: int, alpha: int, dropout: float, target_linear: bool,
               target_modules: list[str] | None, added_ids: list[int], modules_to_save: list[str] | None = None):
    """Wrap in a peft LoRA model. Added tokens' embedding and output rows train too (axolotl 787,
    1570, 1659): without them the adapter could never produce `<|im_end|>`."""
    from peft import LoraConfig, get_peft_model

    if target_linear:
        targets: str | list[str] = "all-linear"  # peft: every linear layer except the output head
    elif target_modules:
        targets = target_modules
    else:
        targets = ["q_proj", "v_proj"]
    token_rows = None
    if added_ids:
        token_rows = {"embed_tokens": list(added_ids), "lm_head": list(added_ids)}
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM",
                     trainable_token_indices=token_rows, modules_to_save=modules_to_save)
    return get_peft_model(model, cfg)


def quant_method(folder: str | Path) -> str | None:
    """`gptq` or `awq` for a folder holding such weights, else None."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    method = (config.get("quantization_config") or {}).get("quant_method")
    return method if method in QUANTIZED_FORMATS else None


def quantized_load_kwargs(folder: str | Path) -> dict:
    """from_pretrained arguments for a GPTQ/AWQ folder: transformers' own path (gptqmodel) where it is
    installed with a GPU, else AutoRound's kernels, which also run on a CPU; {} for other folders."""
    method = quant_method(folder)
    if method is None:
        return {}
    if torch.cuda.is_available() and importlib.util.find_spec("gptqmodel") is not None:
        return {}
    try:
        import auto_round  # noqa: F401  (AutoRoundConfig's kernels live there)
        from transformers import AutoRoundConfig
    except ImportError:
        raise ModelLoadError(f"{folder} holds {method.upper()} weights: loading them needs {QUANT_INSTALL_HINT}, "
                             f"or gptqmodel on a CUDA GPU") from None
    # transformers warns that the folder's own config wins over the one passed: it does, and only the backend is ours
    warnings.filterwarnings("ignore", message="You passed `quantization_config`", category=UserWarning)
    return {"quantization_config": AutoRoundConfig(backend="auto")}
