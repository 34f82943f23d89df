"""The recipe: one typed object loaded from YAML, speaking axolotl's key names."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # inside the package, so a wheel has them
DEEPSPEED_DIR = Path(__file__).resolve().parent / "configs" / "deepspeed"

# Keys an axolotl YAML for these recipes carries that change nothing here (logging services,
# attention back-ends we choose ourselves, hub pushes). Accepted with a warning so the YAML loads.
IGNORED_AXOLOTL_KEYS = {
    "wandb_project", "wandb_entity", "wandb_watch", "wandb_name", "wandb_run_id", "wandb_log_model",
    "strict", "debug", "xformers_attention", "tokenizer_type", "model_type", "is_mistral_derived_model",
    "is_llama_derived_model", "hub_model_id", "hub_strategy", "early_stopping_patience", "local_rank",
    "group_by_length", "eval_sample_packing", "eval_table_size",
    "eval_max_new_tokens", "sdp_attention", "s2_attention", "lora_fan_in_fan_out",
    "lora_model_dir", "trust_remote_code", "tokenizer_use_fast", "tokenizer_legacy", "base_model_config",
}


class DatasetSpec(BaseModel):
    """One axolotl-shaped dataset entry: `{path: ..., type: ...}`."""

    model_config = ConfigDict(extra="forbid")

    path: str
    type: Literal["sharegpt", "openai", "alpaca", "limarp", "chat_template"] = "sharegpt"
    split: str = "train"
    name: str | None = None  # a hub data set's config name
    data_files: str | list[str] | None = None
    share: float | None = Field(None, gt=0, le=1, description="target share of the mixed set")
    label: str | None = None  # how reports name it; defaults to the path
    format: Literal["chatml", "limarp", "alpaca"] | None = None  # prompt format; default: the recipe's

    @property
    def report_name(self) -> str:
        """How reports and the mix name this data set."""
        return self.label or self.path

    @field_validator("type")
    @classmethod
    def _chat_template_is_sharegpt(cls, v: str) -> str:
        return "sharegpt" if v == "chat_template" else v


class LengthModifiers(BaseModel):
    """LimaRP: how each character reply's `(length = X)` is chosen from its length (data/lengths.py)."""

    model_config = ConfigDict(extra="forbid")

    unit: Literal["words", "tokens"] = "words"  # words: the same bins whatever the tokenizer
    # "auto": edges at the data's quantiles, medium = the middle 30%; or modifier -> smallest length
    bins: Literal["auto"] | dict[str, int] = "auto"
    omit: float = Field(0.0, ge=0, le=1)  # the card: leaving the modifier out lets the model choose
    replace: bool = False  # also replace modifiers the rows already carry

    @field_validator("bins")
    @classmethod
    def _bins_in_order(cls, v: Any) -> Any:
        if v == "auto":
            return v
        from openhermes.formats.limarp import LENGTHS

        unknown = [k for k in v if k not in LENGTHS]
        if unknown:
            raise ValueError(f"unknown length modifiers {unknown}; use {', '.join(LENGTHS)}")
        bounds = [v[k] for k in LENGTHS if k in v]
        if not bounds or bounds[0] != 0 or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError("bins are smallest lengths, in the order micro ... unlimited: the first 0, "
                             "then strictly increasing")
        return v


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # model
    base_model: str = "tiny"
    adapter: Literal["lora", "qlora"] | None = None
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    special_tokens: dict[str, str] = Field(default_factory=dict)
    tokens: list[str] = Field(default_factory=list)

    # data
    datasets: list[DatasetSpec] = Field(default_factory=list)
    prompt_format: Literal["chatml", "limarp", "alpaca"] = Field("chatml", alias="chat_template")
    dataset_prepared_path: str | None = None
    sequence_len: int = Field(2048, gt=8)
    sample_packing: bool = False
    pad_to_sequence_len: bool = False
    train_on_inputs: bool = False
    roles_to_train: list[str] = Field(default_factory=lambda: ["assistant"])
    long_samples: Literal["drop", "truncate"] = "drop"
    add_bos: bool = True
    dedup: bool = True
    near_dedup_threshold: float | None = Field(0.9, ge=0, le=1)
    refusal_filter: bool = True
    refusal_phrases: list[str] | None = None
    val_set_size: float = Field(0.0, ge=0)
    # LimaRP: modifiers from the data, and the instruction-block arrangements each row is rendered in
    # (two = the card's "data repeated twice in slightly different formats").
    limarp_length_modifiers: LengthModifiers | None = None
    limarp_arrangements: list[Literal["card", "instruction_first"]] = Field(default_factory=lambda: ["card"],
                                                                           min_length=1)

    # training
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler: Literal["constant_with_warmup", "cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    num_epochs: float = Field(1, gt=0)
    max_steps: int | None = None
    micro_batch_size: int = Field(1, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit"] = "adamw_torch"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    # true/auto: bf16 arithmetic, fp32 master weights in a full fine-tune; "pure": bf16 weights too
    bf16: bool | Literal["auto", "pure"] = "auto"
    # On a CPU, fp32: "avx2" pins PyTorch's kernels to the AVX2 level, so the run's numbers are the same on every
    # x86 CPU with AVX2, AVX-512 ones included (train/cpu_kernels.py); native/null: the CPU's best kernels
    cpu_kernels: Literal["avx2", "native"] | None = None
    fp16: bool = False
    tf32: bool = False
    flash_attention: bool = False
    gradient_checkpointing: bool = False
    noisy_embedding_alpha: float | None = Field(None, alias="neftune_noise_alpha")
    seed: int = 42

    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_linear: bool = False
    lora_target_modules: list[str] | None = None
    lora_modules_to_save: list[str] | None = None

    # outputs
    output_dir: str = "runs/out"
    logging_steps: int = 10
    # with val_set_size: an evaluation loss this many times per epoch, or every eval_steps (axolotl's keys);
    # neither given: once per epoch
    evals_per_epoch: int | None = Field(None, gt=0)
    eval_steps: int | None = Field(None, gt=0)
    save_steps: int | None = None
    saves_per_epoch: int | None = None
    save_total_limit: int | None = 2
    deepspeed: str | None = None
    fsdp: str | list[str] | None = None  # e.g. "full_shard auto_wrap", passed to transformers
    fsdp_config: dict[str, Any] | None = None

    # the embedded default's from-scratch model (ignored for other base models)
    tiny: dict[str, Any] = Field(default_factory=dict)

    @field_validator("deepspeed")
    @classmethod
    def _shipped_deepspeed_config(cls, v: str | None) -> str | None:
        """`deepspeed: zero3` (or zero2) names a config shipped with openhermes; anything else is a path."""
        if v is not None and (DEEPSPEED_DIR / f"{v}.json").is_file():
            return str(DEEPSPEED_DIR / f"{v}.json")
        return v

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a recipe is a mapping of keys to values")
        valid = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        out = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise ValueError(f"recipe keys are names, not {type(key).__name__} ({key!r})")
            if key in valid:
                out[key] = value
            elif key in IGNORED_AXOLOTL_KEYS:
                warnings.warn(f"recipe key {key!r} is accepted for axolotl compatibility and ignored", stacklevel=2)
            else:
                close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown recipe key {key!r}{hint}")
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if len(set(self.limarp_arrangements)) != len(self.limarp_arrangements):
            raise ValueError("limarp_arrangements names an arrangement twice (each copy must differ)")
        shares = [d.share for d in self.datasets if d.share is not None]
        if sum(shares) > 1 + 1e-9:
            raise ValueError(f"dataset shares add up to {sum(shares):.3f}, more than 1")
        if self.adapter == "qlora" and not self.load_in_4bit:
            self.load_in_4bit = True
        return self

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps


class RecipeError(ValueError):
    pass


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A path, or the name of a shipped recipe ("tiny", "limarp-mistral-7b")."""
    if "\0" in str(name_or_path):
        raise RecipeError(f"recipe {str(name_or_path)!r}: a path cannot contain a NUL character")
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(q.stem for q in RECIPES_DIR.glob("*.yaml"))
    raise RecipeError(f"recipe {str(name_or_path)!r} is neither a file nor a shipped recipe ({', '.join(names)})")


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw else None
    except (yaml.YAMLError, RecursionError) as e:
        raise RecipeError(f"--set {item!r}: the value is not valid YAML: {e}") from None


def load_recipe(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, RecursionError) as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read it ({e.strerror})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys to values, not a {type(data).__name__}")
    for item in overrides:
        key, value = parse_override(item)
        data[key] = value
    # Relative dataset paths are relative to the recipe file.
    datasets = data.get("datasets")
    for d in datasets if isinstance(datasets, list) else []:
        if isinstance(d, dict) and isinstance(d.get("path"), str) and "\0" not in d["path"]:
            local = path.parent / d["path"]
            if not Path(d["path"]).is_absolute() and local.exists():
                d["path"] = str(local)
    try:
        return Recipe.model_validate(data)
    except RecursionError:
        raise RecipeError(f"{path}: the recipe is nested too deeply") from None
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "recipe"
            msgs.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise RecipeError(f"{path}: " + "; ".join(msgs)) from None
