"""GPTQ- and AWQ-format folders (4-bit weights, 16-bit activations), as the card's quantized releases are,
through Intel's AutoRound (`auto-round`), the maintained quantizer that runs on a CPU as well as a GPU
(llm-compressor pins an older transformers; GPTQModel installs CUDA torch). AutoRound tunes each block's
rounding on calibration tokens (SignRound; `iters=0` is plain round-to-nearest) and writes the packing the
formats define: GPTQ (`quant_method: gptq`, symmetric) and AWQ (`quant_method: awq`, GEMM layout with zero
points). transformers loads either: on a GPU through gptqmodel, on a CPU through AutoRound's kernels
(model/load.py's `quantized_load_kwargs`); vLLM serves them with `--quantization gptq|awq`."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from openhermes import outputs
from openhermes.export.card import folder_card
from openhermes.export.gguf import ExportError
from openhermes.model.load import QUANT_INSTALL_HINT, ModelLoadError, save_tokenizer

FORMATS = {"gptq": "auto_gptq", "awq": "auto_awq"}  # ours -> AutoRound's export format


class _ApiAdvice(logging.Filter):
    """Drops AutoRound's advice to its own API users ("recommended usage is alg_configs=..."): noise to ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "recommended usage" not in record.getMessage()


def _auto_round():
    try:
        from auto_round import AutoRound
    except ImportError:
        raise ExportError(f"GPTQ/AWQ export needs AutoRound: {QUANT_INSTALL_HINT}") from None
    log = logging.getLogger("autoround")
    if not any(isinstance(f, _ApiAdvice) for f in log.filters):
        log.addFilter(_ApiAdvice())
    return AutoRound


def export_weight_only(model_dir: str | Path, out: str | Path, fmt: str, windows: list[list[int]], *,
                       calibration: str, bits: int = 4, group_size: int = 128, iters: int = 200,
                       check_text: str | None = None, overwrite: bool = False) -> tuple[Path, dict | None]:
    """Quantize a model folder's linear layers (not lm_head) to `bits` with one scale per `group_size`
    inputs, calibrated on `windows` (equal-length token lists from `calibration`), into the folder `out`,
    with a model card. With `check_text`, the folder's perplexity and KL divergence from the full model on
    it are measured before the folder is put in place, and recorded (quality.json, the card).
    Returns (the folder, the measured figures or None)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if fmt not in FORMATS:
        raise ExportError(f"--to {fmt}: choose one of {', '.join(FORMATS)}")
    if bits not in (2, 3, 4, 8):
        raise ExportError(f"--bits {bits}: GPTQ/AWQ kernels take 2, 3, 4 or 8 bits")
    if fmt == "awq" and bits != 4:
        raise ExportError(f"--bits {bits}: the AWQ format is 4-bit only")
    AutoRound = _auto_round()
    target = Path(out)
    outputs.check_folder(target, "quantized-model", overwrite)  # refuse before the work, not after
    cuda = torch.cuda.is_available()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16 if cuda else torch.float32)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a model from {model_dir}: {e}") from None
    seq_len = len(windows[0])
    data = [{"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, seq_len, dtype=torch.long)}
            for w in windows]
    quantizer = AutoRound(model, tokenizer, bits=bits, group_size=group_size, sym=fmt == "gptq", iters=iters,
                          nsamples=len(windows), seqlen=seq_len, dataset=data, batch_size=min(8, len(windows)),
                          device_map="cuda" if cuda else "cpu",
                          # compiling the block being tuned pays off on a GPU; on a CPU it costs more than it saves
                          enable_torch_compile=cuda)

    measured: dict = {}
    source = Path(model_dir).resolve()
    name = source.parent.name if source.name == "model" else source.name  # runs/NAME/model -> NAME

    def fill(tmp: Path) -> None:
        # named as staging: a killed run's scratch is cleared by the next run's
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f"{tmp.name}-scratch-") as scratch:
            quantizer.quantize_and_save(scratch, format=FORMATS[fmt])
            written = [p.parent for p in Path(scratch).rglob("config.json")]
            if len(written) != 1:
                raise ExportError(f"AutoRound wrote {len(written)} model folders, expected one")
            for item in written[0].iterdir():
                shutil.move(str(item), tmp / item.name)
        save_tokenizer(tokenizer, tmp)  # with the base's tokenizer.model, as every folder we write
        config = json.loads((tmp / "config.json").read_text())
        qc = config.get("quantization_config", {})
        if qc.get("quant_method") != fmt:
            raise ExportError(f"AutoRound wrote {qc!r}, not a {fmt} config")
        if check_text is not None:
            from openhermes.export.quality import measure_folder

            mine, full = measure_folder(tmp, Path(model_dir), check_text)
            measured.update(perplexity=mine.perplexity, reference_perplexity=full.perplexity, kl_mean=mine.kl_mean,
                            kl_p99=mine.kl_p99, top1_agreement=mine.top1_agreement, tokens=mine.tokens)
            (tmp / "quality.json").write_text(json.dumps(measured, indent=1))
        facts = {"bits": bits, "group_size": group_size, "iters": iters, "samples": len(windows), "seq_len": seq_len,
                 "calibration": calibration, "autoround_version": qc.get("autoround_version", "?")}
        card = folder_card(name, fmt, facts, getattr(tokenizer, "chat_template", None), measured or None)
        (tmp / "README.md").write_text(card, encoding="utf-8")

    path = outputs.write_folder(target, "quantized-model", fill, overwrite=overwrite)
    return path, measured or None
