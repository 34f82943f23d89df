"""`openhermes export`: GGUF, LoRA GGUF, GPTQ/AWQ/EXL2 folders, and the quality check."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from openhermes.cli.common import _fail, app, console

QUANTIZED_FOLDERS = ("gptq", "awq", "exl2")


@app.command()
def export(model: Path = typer.Argument(..., help="A model folder (full fine-tune, or merged with `openhermes merge`); "
                                        "with --to gguf-lora, a LoRA adapter folder."),
           to: str = typer.Option("gguf", "--to", help="gguf; gguf-lora (a LoRA adapter llama.cpp applies on the "
                                  "base model's GGUF); gptq or awq (a 4-bit folder transformers and vLLM load, "
                                  "quantized by AutoRound, CPU or GPU); exl2 (ExLlamaV2, CUDA GPU only)."),
           type_: str = typer.Option("f16", "--type", help="GGUF only: f16, q8_0, q4_0 (written by openhermes), or a "
                                     "llama.cpp type made by llama.cpp's quantizer: Q4_K_M, Q5_K_M, Q6_K, Q3_K_M, "
                                     "Q2_K, IQ4_XS, ..."),
           out: Path = typer.Option(..., "--out", help="The .gguf file to write; a folder for gptq, awq, exl2."),
           check: Path | None = typer.Option(None, "--check", help="A text file: measure the export's perplexity "
                                             "and KL divergence from the full model on it (GGUF: through llama.cpp "
                                             "against an f16 export; gptq/awq: through transformers)."),
           calibration: str | None = typer.Option(None, "--calibration", help="gptq/awq/exl2: the recipe the model "
                                                  "was trained with (name or YAML; its data is prepared with the "
                                                  "model's tokenizer, cached) or a prepared data folder."),
           bits: float = typer.Option(4, "--bits", help="gptq/awq: bits per weight (gptq 2, 3, 4, 8; awq 4); exl2: "
                                      "the average bits per weight, e.g. 4.65."),
           group_size: int = typer.Option(128, "--group-size", help="gptq/awq: weights sharing one scale."),
           samples: int = typer.Option(128, "--samples", help="gptq/awq/exl2: calibration windows."),
           seq_len: int = typer.Option(2048, "--seq-len", help="gptq/awq/exl2: tokens per calibration window "
                                       "(at most the model's context)."),
           iters: int = typer.Option(200, "--iters", help="gptq/awq: AutoRound's tuning steps per block "
                                     "(0 = round-to-nearest, fast)."),
           card: bool = typer.Option(True, help="GGUF: write README.md (a model card listing the folder's GGUF "
                                     "files). A gptq/awq folder always gets its card."),
           overwrite: bool = typer.Option(False, help="Replace an existing file that openhermes did not write.")) -> None:
    """Write a GGUF file that llama.cpp and LM Studio run (architecture llama, chat template inside), or a
    GPTQ/AWQ/EXL2 folder as the card's quantized releases."""
    if to not in ("gguf", "gguf-lora", *QUANTIZED_FOLDERS):
        _fail(f"--to {to!r}: choose gguf, gguf-lora, gptq, awq or exl2")
    if check is not None and to == "gguf-lora":
        _fail("--check measures a model's GGUF; a LoRA GGUF has no output of its own: merge the adapter "
              "(`openhermes merge`), export that with --check")
    if check is not None and to == "exl2":
        _fail("--check is not available for exl2 (its kernels are exllamav2's own): measure with exllamav2's test "
              "script, or export gptq/awq with --check")
    if check is not None and not check.is_file():
        _fail(f"--check {check}: no such text file")
    if to in QUANTIZED_FOLDERS:
        if type_ != "f16":
            _fail(f"--type {type_} is for GGUF; {to} takes --bits (and --group-size)")
        _export_quantized_folder(model, to, out, check, calibration, bits, group_size, samples, seq_len, iters,
                                 overwrite)
        return
    from openhermes.export.gguf import ExportError, export_gguf
    from openhermes.outputs import OutputError

    try:
        if to == "gguf-lora":
            from openhermes.export.gguf_lora import export_lora_gguf

            path = export_lora_gguf(model, out, overwrite=overwrite)
            console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                # A quantized export's f16 input is kept as the check's reference (not written twice).
                is_f16 = type_.lower() == "f16"
                reference = Path(tmp) / "reference-f16.gguf" if check is not None and not is_f16 else None
                path = export_gguf(model, out, type_, overwrite=overwrite, keep_f16=reference)
                console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
                if check is not None:
                    _check_quality(path, reference or path, check)
        if card:
            from openhermes.export.card import write_card

            written = write_card(path.parent)
            if written is not None:
                console.print(f"model card: {written}")
    except (ExportError, OSError, OutputError, ValueError) as e:
        _fail(str(e))


def _export_quantized_folder(model: Path, to: str, out: Path, check: Path | None, calibration: str | None,
                             bits: float, group_size: int, samples: int, seq_len: int, iters: int,
                             overwrite: bool) -> None:
    """--to gptq|awq|exl2: calibration windows from the recipe's data, then the quantizer."""
    # The argument checks first: a mistyped option is answered before seconds of imports.
    if to != "exl2" and bits != int(bits):
        _fail(f"--bits {bits}: {to} takes a whole number of bits")
    if calibration is None:
        _fail(f"--to {to} needs --calibration: the recipe the model was trained with (e.g. --calibration tiny), or "
              "a prepared data folder (`openhermes data prepare RECIPE --out DIR`)")
    if samples < 1 or seq_len < 2:
        _fail("--samples must be at least 1 and --seq-len at least 2")
    from openhermes.export.exl2 import exl2_unavailable, export_exl2

    if to == "exl2" and (why := exl2_unavailable()) is not None:
        _fail(why)  # before any work
    from transformers import AutoConfig, AutoTokenizer

    from openhermes.export.calibration import calibration_windows
    from openhermes.export.gguf import ExportError
    from openhermes.export.weight_only import export_weight_only
    from openhermes.model.load import ModelLoadError
    from openhermes.outputs import OutputError

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
        config = AutoConfig.from_pretrained(str(model))
    except (OSError, ValueError) as e:
        _fail(f"cannot load a model from {model}: {e}")
    seq_len = min(seq_len, int(getattr(config, "max_position_embeddings", seq_len)))
    try:
        windows = calibration_windows(calibration, tokenizer, int(config.vocab_size), samples, seq_len)
        if len(windows) < samples:
            console.print(f"[yellow]calibration: the data gives {len(windows)} windows of {seq_len} tokens, "
                          f"fewer than --samples {samples}[/yellow]")
        if to == "exl2":
            texts = [tokenizer.decode(w) for w in windows]
            path = export_exl2(model, out, texts, bits=bits, seq_len=seq_len, overwrite=overwrite)
            console.print(f"wrote {path}")
            return
        path, measured = export_weight_only(model, out, to, windows, calibration=calibration, bits=int(bits),
                                            group_size=group_size, iters=iters,
                                            check_text=check.read_text(encoding="utf-8") if check else None,
                                            overwrite=overwrite)
    except (ExportError, ModelLoadError, OSError, OutputError, ValueError) as e:
        _fail(str(e))
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    console.print(f"wrote {path} ({size / 1e6:.1f} MB of weights; model card README.md)")
    if measured:
        console.print(f"perplexity {measured['perplexity']:.4f} (full model {measured['reference_perplexity']:.4f}), "
                      f"mean KL {measured['kl_mean']:.5f} nats, same top token {measured['top1_agreement']:.1%}")


def _check_quality(path: Path, reference: Path, text_file: Path) -> None:
    """Perplexity and KL divergence of `path` against the f16 file `reference` on a text, printed and recorded
    in the folder's quality.json (the model card reads it)."""
    from openhermes.export.card import record_quality
    from openhermes.export.quality import measure, table

    (result,) = measure([path], reference, text_file.read_text(encoding="utf-8"))
    console.print(table([result]))
    record_quality(path.parent, [{"file": path.name, "perplexity": result.perplexity, "kl_mean": result.kl_mean,
                                  "kl_p99": result.kl_p99, "top1_agreement": result.top1_agreement,
                                  "tokens": result.tokens}])

