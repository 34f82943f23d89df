"""A model card (README.md) beside exported GGUF files, in the style of the cards' quantized releases:
what the model is, the prompt template, a table of the provided files (type, method, size) and, where
`--check` measured them, their perplexity and KL divergence from the f16 file."""

from __future__ import annotations

import json
from pathlib import Path

from openhermes import outputs

MARK = "<!-- written by openhermes: regenerated on each export into this folder -->"
QUALITY = "quality.json"  # measured figures by file name, kept across exports into the folder

METHODS = {"f16": "none (16-bit floats)", "q8_0": "openhermes (gguf's numpy Q8_0)",
           "q4_0": "openhermes (gguf's numpy Q4_0)"}


def _is_ours(path: Path) -> bool:
    try:
        return MARK in path.read_text(encoding="utf-8", errors="replace")[:500]
    except OSError:
        return False


def _gguf_facts(path: Path) -> dict | None:
    import gguf

    from openhermes.export.gguf import MARK_KEY

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception:  # not a GGUF we can read: not listed
        return None
    f = reader.fields
    if MARK_KEY not in f:
        return None

    def value(key: str):
        return f[key].contents() if key in f else None

    ftype = value("general.file_type")
    ftype = -1 if ftype is None else ftype
    name = {v.value: v.name.removeprefix("MOSTLY_") for v in gguf.LlamaFileType}.get(ftype, str(ftype))
    return {"file": path.name, "type": name, "size": path.stat().st_size, "name": value("general.name"),
            "template": value("tokenizer.chat_template"), "lora": value("adapter.type") == "lora"}


def record_quality(folder: Path, rows: list[dict]) -> None:
    path = folder / QUALITY
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
    data.update({r["file"]: r for r in rows})
    outputs.write_file(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)),
                       _is_quality_record, "quality record", overwrite=False)


def _is_quality_record(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(isinstance(v, dict) and "kl_mean" in v for v in data.values())


def _template_lines(template: str | None) -> list[str]:
    if template and "im_start" in template:
        return ["ChatML:", "", "```", "<|im_start|>system", "{system_message}<|im_end|>", "<|im_start|>user",
                "{prompt}<|im_end|>", "<|im_start|>assistant", "```"]
    if template and "### Response" in template:
        return ["LimaRP's extended Alpaca (the chat template inside the files builds it):", "", "```",
                "### Instruction:", "{char}'s Persona: {persona}", "", "{user}'s Persona: {user persona}", "",
                "Scenario: {scenario}", "", "Play the role of {char}. ...", "", "### Input:", "{user}: {message}",
                "", "### Response: (length = medium)", "{char}:", "```"]
    return ["The chat template inside the files."]


def write_card(folder: Path, base: str | None = None) -> Path | None:
    """README.md for the openhermes GGUF files in `folder`; a README.md we did not write is left alone."""
    files = [f for p in sorted(folder.glob("*.gguf")) if (f := _gguf_facts(p)) is not None]
    if not files:
        return None
    target = folder / "README.md"
    if target.exists() and not _is_ours(target):
        return None
    quality = json.loads((folder / QUALITY).read_text()) if (folder / QUALITY).exists() else {}
    model = next((f["name"] for f in files if f["name"]), folder.name)
    template = next((f["template"] for f in files if f["template"]), None)
    lines = [MARK, f"# {model} - GGUF", "",
             f"GGUF files of **{model}**" + (f", fine-tuned from `{base}`" if base else "") +
             ", written by openhermes for llama.cpp and LM Studio.", "", "## Prompt template", ""]
    lines += _template_lines(template)
    lines += ["", "## Provided files", "", "| file | type | quantization method | size | perplexity | mean KL vs f16 |",
              "|---|---|---|---|---|---|"]
    for f in files:
        q = quality.get(f["file"], {})
        method = "LoRA adapter (apply on the base GGUF)" if f["lora"] else METHODS.get(
            f["type"].lower(), "llama.cpp's quantizer (llama_model_quantize)")
        ppl = f"{q['perplexity']:.4f}" if "perplexity" in q else "-"
        kl = f"{q['kl_mean']:.5f}" if "kl_mean" in q else "-"
        lines.append(f"| {f['file']} | {f['type']} | {method} | {f['size'] / 1e6:.2f} MB | {ppl} | {kl} |")
    if quality:
        lines += ["", "Perplexity and KL divergence were measured through llama.cpp on the text given to "
                  "`openhermes export --check` (the second half of each 512-token window scored)."]
    text = "\n".join(lines) + "\n"
    return outputs.write_file(target, lambda tmp: tmp.write_text(text, encoding="utf-8"), _is_ours, "model card",
                              overwrite=False)


LOADING = {
    "gptq": ["```python", "from transformers import AutoModelForCausalLM, AutoRoundConfig",
             "# a GPU with gptqmodel installed: from_pretrained(folder) alone; a CPU: AutoRound's kernels",
             "model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=AutoRoundConfig())", "```",
             "", "vLLM: `vllm serve FOLDER --quantization gptq`. openhermes: `openhermes chat FOLDER`."],
}
LOADING["awq"] = [line.replace("gptq", "awq") for line in LOADING["gptq"]]


def folder_card(name: str, fmt: str, facts: dict, template: str | None, quality: dict | None) -> str:
    """README.md of a GPTQ/AWQ folder: what it is, the prompt template, how it was quantized and what it lost."""
    lines = [MARK, f"# {name} - {fmt.upper()}", "",
             f"{fmt.upper()} weights of **{name}** ({facts['bits']}-bit, group size {facts['group_size']}), "
             "written by openhermes.", "", "## Prompt template", ""]
    lines += _template_lines(template)
    lines += ["", "## Quantization", "",
              f"- method: AutoRound {facts['autoround_version']} (SignRound, {facts['iters']} tuning steps per block"
              + ("; 0 = round-to-nearest" if facts["iters"] == 0 else "") + f"), written in the {fmt.upper()} format",
              f"- {facts['bits']}-bit weights, one scale per {facts['group_size']} inputs"
              + (", symmetric" if fmt == "gptq" else ", with zero points") + "; embeddings and lm_head not quantized",
              f"- calibration: {facts['samples']} windows of {facts['seq_len']} tokens from `{facts['calibration']}` "
              "(the recipe's own prepared data)", "", "## Loading", ""]
    lines += LOADING[fmt]
    if quality:
        lines += ["", "## Measured quality", "", "| perplexity | full model's | mean KL (nats) | same top token |",
                  "|---|---|---|---|",
                  f"| {quality['perplexity']:.4f} | {quality['reference_perplexity']:.4f} | {quality['kl_mean']:.5f} "
                  f"| {quality['top1_agreement']:.1%} |", "",
                  f"Measured by transformers on the text given to `openhermes export --check` ({quality['tokens']} "
                  "tokens scored: the second half of each 512-token window), against the full-precision model."]
    return "\n".join(lines) + "\n"
