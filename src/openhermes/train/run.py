"""Wire a recipe into transformers' Trainer: base model, ChatML tokens, LoRA, NEFTune, packed rows."""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from openhermes import outputs
from openhermes.config import Recipe
from openhermes.data.prepare import DEFAULT_CACHE, Prepared, prepare
from openhermes.model.load import apply_lora, keep_sentencepiece_model, load_model, load_tokenizer, use_bf16, weight_dtype
from openhermes.train import cpu_kernels
from openhermes.train.base_model import ensure_base_model
from openhermes.train.callbacks import ProgressAndLog, TokenCounter, plot_loss
from openhermes.train.collate import PackedCollator
from openhermes.train.neftune import PackedNEFTune
from openhermes.train.run_folder import claim_run_folder, final_folder
from openhermes.train.trained_logits import TrainedPositionsHead, next_token_labels


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path  # full weights (for LoRA: the adapter folder)
    is_adapter: bool
    log_path: Path
    plot_path: Path | None
    prepared: Prepared
    metrics: dict = field(default_factory=dict)


class OpenHermesTrainer(Trainer):
    """transformers' Trainer, plus trained-token counting, logits only where a label is trained, and atomic
    checkpoints."""

    def __init__(self, *args, token_counter: TokenCounter, trained_head: TrainedPositionsHead | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.token_counter = token_counter
        self.trained_head = trained_head
        self._staging: str | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.trained_head is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        shifted = next_token_labels(inputs["labels"])
        keep = shifted != -100
        with self.trained_head.only(keep):
            return super().compute_loss(model, {**inputs, "shift_labels": shifted[keep]}, return_outputs,
                                        num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.token_counter.trained += int((inputs["labels"] != -100).sum())
        self.token_counter.total += inputs["input_ids"].numel()
        return super().training_step(model, inputs, num_items_in_batch)

    def _get_output_dir(self, trial):
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        # Written under a staging folder, then renamed into place: a kill mid-save never leaves a
        # half-written checkpoint-N that --resume would pick up.
        run_dir = self.args.output_dir
        name = f"checkpoint-{self.state.global_step}"
        self._staging = os.path.join(run_dir, ".staging")
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every rank's RNG state is in the staging folder
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(os.path.join(run_dir, ".staging", name), final)
            outputs.add_entries(Path(run_dir), [name])
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit)
        self.accelerator.wait_for_everyone()


def eval_every(recipe: Recipe, steps_per_epoch: int, has_validation: bool) -> int | None:
    """Steps between evaluation losses: eval_steps, else evals_per_epoch per epoch, else once an epoch."""
    if not has_validation:
        if recipe.eval_steps or recipe.evals_per_epoch:
            warnings.warn("eval_steps/evals_per_epoch need val_set_size > 0: no evaluation", stacklevel=2)
        return None
    if recipe.eval_steps:
        return recipe.eval_steps
    return max(1, steps_per_epoch // (recipe.evals_per_epoch or 1))


def training_arguments(recipe: Recipe, out_dir: Path, steps_per_epoch: int,
                       eval_steps: int | None = None) -> TrainingArguments:
    cuda = torch.cuda.is_available()
    bf16 = use_bf16(recipe.bf16)
    save_steps = recipe.save_steps
    if save_steps is None and recipe.saves_per_epoch:
        save_steps = max(1, steps_per_epoch // recipe.saves_per_epoch)
    if recipe.tf32 and not cuda:
        warnings.warn("tf32 needs a CUDA GPU; ignored", stacklevel=2)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    fsdp = recipe.fsdp or ""
    if fsdp and not cuda:
        # accelerate drives FSDP only on GPUs: on CPU processes it would silently run plain DDP.
        warnings.warn("fsdp needs CUDA GPUs (accelerate runs FSDP only there); training data-parallel (DDP) "
                      "on this machine instead", stacklevel=2)
        fsdp = ""
    return TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        warmup_steps=recipe.warmup_steps,
        num_train_epochs=recipe.num_epochs,
        max_steps=recipe.max_steps or -1,
        optim=recipe.optimizer,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        adam_beta1=recipe.adam_beta1,
        adam_beta2=recipe.adam_beta2,
        bf16=bf16,
        fp16=recipe.fp16 and cuda,
        tf32=True if (recipe.tf32 and cuda) else None,
        **({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
           if recipe.gradient_checkpointing else {}),
        logging_steps=recipe.logging_steps,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=recipe.save_total_limit,
        seed=recipe.seed,
        data_seed=recipe.seed,
        report_to=[],  # TensorBoard is added as a callback bound to this run's folder
        remove_unused_columns=False,
        disable_tqdm=True,  # our own bar shows loss, lr and tokens/s
        dataloader_num_workers=0,
        ddp_backend=("nccl" if cuda else "gloo") if world > 1 else None,
        deepspeed=recipe.deepspeed,
        fsdp=fsdp,
        fsdp_config=recipe.fsdp_config if fsdp else None,
        use_cpu=not cuda,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        per_device_eval_batch_size=recipe.micro_batch_size,
        prediction_loss_only=True,  # the loss is what is logged; no logits gathered across ranks
    )


def _tensorboard(out_dir: Path):
    """TensorBoard events in <out>/tensorboard (an env var would leak into the next run in-process).
    Only rank 0 logs, so only rank 0 opens a writer."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    rank0 = int(os.environ.get("RANK", "0")) == 0
    return TensorBoardCallback(SummaryWriter(log_dir=str(out_dir / "tensorboard")) if rank0 else None)


def build(recipe: Recipe, out_dir: Path, show_progress: bool = True, cache: Path = DEFAULT_CACHE):
    """Everything up to a ready Trainer. Returns (trainer, tokenizer, prepared, counter, neftune)."""
    from transformers import set_seed

    base = ensure_base_model(recipe, cache)
    tokenizer = load_tokenizer(base, recipe.prompt_format, recipe.special_tokens, recipe.tokens, recipe.add_bos)
    prepared = prepare(recipe, tokenizer, cache_dir=cache, progress=show_progress)
    data = prepared.load()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = max(1, len(data["train"]) // (recipe.global_batch_size * world))
    # The training arguments come before the model: with DeepSpeed ZeRO-3 they install the config that
    # makes from_pretrained shard the weights as it loads them (zero.Init), instead of every rank
    # building the whole model in host memory.
    args = training_arguments(recipe, out_dir, steps_per_epoch, eval_every(recipe, steps_per_epoch,
                                                                            "validation" in data))
    if world > 1:  # the process group is up (the arguments set it up): refuse a disagreeing node before the model
        from openhermes.train import nodes

        nodes.agree(recipe, out_dir)
    # Seeded here, after everything that may or may not run depending on the cache (building the
    # tiny base draws its weights): the added ChatML rows and all of training then get the same
    # random numbers on a first run and on a cached one.
    set_seed(recipe.seed)
    model, added = load_model(base, tokenizer, dtype=weight_dtype(recipe.bf16, full_finetune=not recipe.adapter),
                              load_in_8bit=recipe.load_in_8bit, load_in_4bit=recipe.load_in_4bit,
                              flash_attention=recipe.flash_attention)
    model.config.use_cache = False  # a KV cache would switch off packed-sample isolation (SPEC §3)
    if recipe.adapter:
        if recipe.load_in_8bit or recipe.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, recipe.gradient_checkpointing)
        model = apply_lora(model, r=recipe.lora_r, alpha=recipe.lora_alpha, dropout=recipe.lora_dropout,
                           target_linear=recipe.lora_target_linear, target_modules=recipe.lora_target_modules,
                           added_ids=added, modules_to_save=recipe.lora_modules_to_save)
    neftune = PackedNEFTune(model, recipe.noisy_embedding_alpha) if recipe.noisy_embedding_alpha else None
    # Not under DeepSpeed or FSDP: their wrappers gather and shard the head in ways not tested here.
    trained_head = None if (recipe.deepspeed or recipe.fsdp) else TrainedPositionsHead(model)
    counter = TokenCounter()
    trainer = OpenHermesTrainer(
        model=model, args=args, train_dataset=data["train"],
        eval_dataset=data["validation"] if "validation" in data else None,
        data_collator=PackedCollator(tokenizer.pad_token_id, recipe.sequence_len if recipe.pad_to_sequence_len else None),
        processing_class=tokenizer, token_counter=counter, trained_head=trained_head,
        callbacks=[ProgressAndLog(out_dir / "log.jsonl", counter, show_progress), _tensorboard(out_dir)],
    )
    trainer.remove_callback(PrinterCallback)  # our bar and log.jsonl replace the raw dict prints
    return trainer, tokenizer, prepared, counter, neftune


def save_final(trainer: Trainer, tokenizer, out_dir: Path, is_adapter: bool, overwrite: bool = False) -> Path:
    """The model folder a user loads: config, safetensors, tokenizer (with tokenizer.model) and chat
    template, generation config. Saved by the trainer's own save_model on every rank, which gathers
    the full weights under FSDP (full state dict) and DeepSpeed ZeRO-3 (16-bit gather); an unwrapped
    save_pretrained there would write each rank's shard (or nothing). Written to a staging folder
    every rank knows, then moved into place by rank 0 (outputs.py)."""
    target, kind = final_folder(out_dir, is_adapter)
    model = trainer.accelerator.unwrap_model(trainer.model)
    base_cfg = model.get_base_model().config if is_adapter else model.config
    base_cfg.use_cache = True
    staging = out_dir / ".staging" / f"final-{kind}"
    if trainer.args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    try:
        trainer.save_model(str(staging))  # collective under FSDP/ZeRO-3: every rank calls it
    except Exception as e:
        written = outputs.folder_size(staging)
        shutil.rmtree(out_dir / ".staging", ignore_errors=True)
        outputs.raise_if_no_space(e, target, written)
        raise

    def fill(tmp: Path) -> None:
        for entry in staging.iterdir():
            if entry.name != "training_args.bin":  # the trainer's, not part of a model folder
                os.replace(entry, tmp / entry.name)
        keep_sentencepiece_model(tokenizer, tmp)  # save_model wrote tokenizer.json; tokenizer.model beside it
        if not is_adapter:
            model.generation_config.save_pretrained(tmp)

    if trainer.args.should_save:
        outputs.write_folder(target, kind, fill, overwrite=overwrite)
        shutil.rmtree(out_dir / ".staging", ignore_errors=True)  # checkpoints' staging too: all are in place
    trainer.accelerator.wait_for_everyone()
    return target


def train(recipe: Recipe, out_dir: str | Path | None = None, resume: bool = False, show_progress: bool = True,
          cache: Path = DEFAULT_CACHE, overwrite: bool = False) -> TrainResult:
    cpu_kernels.pin(recipe.cpu_kernels, recipe.bf16)  # first: PyTorch fixes its kernels at the first tensor op
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a rank under torchrun: it ends with its agent, however that ends
        from openhermes.train.launch import die_with_parent

        die_with_parent()
    out = Path(out_dir or recipe.output_dir)
    if int(os.environ.get("RANK", "0")) == 0:  # several ranks: the launcher has claimed it already
        claim_run_folder(out, recipe, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / ".staging", ignore_errors=True)  # a save cut off by a kill
    if not resume:
        (out / "log.jsonl").unlink(missing_ok=True)
    trainer, tokenizer, prepared, counter, neftune = build(recipe, out, show_progress, cache)
    checkpoint = get_last_checkpoint(str(out)) if resume else None
    if resume and checkpoint is None:
        warnings.warn(f"--resume: no checkpoint in {out}; starting from the beginning", stacklevel=2)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    if neftune is not None:
        neftune.remove()
    if trainer.trained_head is not None:
        trainer.trained_head.remove()
    model_dir = save_final(trainer, tokenizer, out, bool(recipe.adapter), overwrite)
    plot = plot_loss(out / "log.jsonl", out / "loss.png") if trainer.args.should_save else None
    metrics = dict(output.metrics) | {"trained_tokens": counter.trained}
    return TrainResult(out, model_dir, bool(recipe.adapter), out / "log.jsonl", plot, prepared, metrics)
