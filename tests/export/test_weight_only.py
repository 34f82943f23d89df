"""GPTQ and AWQ folders (AutoRound, on this CPU), calibrated on the recipe's own prepared data: they load in
transformers and in `openhermes chat`, answer like the full model, and their measured quality holds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("auto_round", reason="AutoRound is not installed (pip install -e '.[quant]')")

from tests.export.test_quantize import held_out_text  # noqa: E402

pytestmark = pytest.mark.slow
QUICK = ["--samples", "32", "--seq-len", "256", "--iters", "20"]


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OPENHERMES_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "openhermes.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def exported(embedded_default_run, tmp_path_factory):
    """The embedded default exported as GPTQ and AWQ through the CLI, with --check on held-out demo chats."""
    root = tmp_path_factory.mktemp("weight-only")
    text = root / "heldout.txt"
    text.write_text(held_out_text(60))
    model = embedded_default_run / "model"
    out = {}
    for fmt in ("gptq", "awq"):
        proc = cli("export", str(model), "--to", fmt, "--out", str(root / fmt), "--calibration", "tiny",
                   "--check", str(text), *QUICK, cache=root / "cache")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        out[fmt] = root / fmt
    return model, text, out


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_folder_is_the_format_and_loads_in_transformers(exported, fmt):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openhermes.model.load import quantized_load_kwargs

    model_dir, _, folders = exported
    folder = folders[fmt]
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["bits"], qc["group_size"]) == (fmt, 4, 128)
    assert qc["sym"] is (fmt == "gptq")  # AWQ keeps zero points; GPTQ as released is symmetric
    quantized = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **quantized_load_kwargs(folder))
    layer = quantized.model.layers[0].mlp.down_proj
    assert not isinstance(layer, torch.nn.Linear), type(layer)  # packed 4-bit weights, not dequantized floats
    full = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok("<|im_start|>user\nRepeat exactly: desert stone<|im_end|>\n<|im_start|>assistant\n",
              return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        a, b = quantized(ids).logits, full(ids).logits
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8
    assert not torch.allclose(a, b, atol=1e-4)  # it really is quantized
    # 4-bit weights: the packed folder is far smaller than the fp32 one
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert size < 0.5 * sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_measured_quality_is_close_to_the_full_model_and_recorded(exported, fmt):
    _, _, folders = exported
    q = json.loads((folders[fmt] / "quality.json").read_text())
    # The stated margin: within 10% of the full model's perplexity, KL under 0.05 nats, top token mostly kept.
    assert abs(q["perplexity"] / q["reference_perplexity"] - 1) < 0.10, q
    assert 0 < q["kl_mean"] < 0.05, q
    assert q["top1_agreement"] > 0.9, q
    card = (folders[fmt] / "README.md").read_text()
    assert f"- {fmt.upper()}" in card and "<|im_start|>" in card and f"{q['perplexity']:.4f}" in card
    assert "32 windows of 256 tokens from `tiny`" in card


def test_reference_perplexity_matches_llama_cpp_on_the_same_model(exported, tmp_path):
    """The transformers-side measure agrees with llama.cpp's (an independent implementation) on the full model."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from openhermes.export.gguf import export_gguf
    from openhermes.export.quality import measure

    model_dir, text, folders = exported
    f16 = export_gguf(model_dir, tmp_path / "f16.gguf", "f16", progress=False)
    (ours,) = measure([f16], f16, text.read_text())
    recorded = json.loads((folders["gptq"] / "quality.json").read_text())["reference_perplexity"]
    assert abs(ours.perplexity / recorded - 1) < 0.005, (ours.perplexity, recorded)


def test_openhermes_chat_engine_runs_the_gptq_folder_and_answers_like_the_full_model(exported):
    from openhermes.data import demo
    from openhermes.data.readers import from_sharegpt
    from openhermes.infer.engine import Engine
    from openhermes.infer.sampling import SamplingParams
    from openhermes.infer.sequence import GenerationRequest

    model_dir, _, folders = exported
    items = [it for it in demo.held_out(train_chat=800, train_roleplay=0) if it.kind != "roleplay"][:24]
    replies = {}
    for name, path in (("full", model_dir), ("gptq", folders["gptq"])):
        engine = Engine.load(path, device="cpu")
        requests = []
        for it in items:
            conv = from_sharegpt(it.record)
            prompt = engine.chat_prompt([{"role": m.role, "content": m.content} for m in conv.messages[:-1]])
            requests.append(GenerationRequest(prompt, SamplingParams(temperature=0), max_new_tokens=48))
        replies[name] = [r.text for r in engine.generate(requests)]
    same = sum(a == b for a, b in zip(replies["full"], replies["gptq"], strict=True))
    assert same >= 0.75 * len(items), list(zip(replies["full"], replies["gptq"], strict=True))


def test_calibration_windows_come_from_the_recipes_prepared_rows(embedded_default_run, tmp_path):
    from transformers import AutoTokenizer

    from openhermes.config import load_recipe
    from openhermes.data.prepare import prepare
    from openhermes.export.calibration import CalibrationError, calibration_windows

    tok = AutoTokenizer.from_pretrained(str(embedded_default_run / "model"))
    windows = calibration_windows("tiny", tok, len(tok), samples=8, seq_len=100, progress=False, cache=tmp_path)
    assert len(windows) == 8 and all(len(w) == 100 for w in windows)
    rows = prepare(load_recipe("tiny"), tok, progress=False, cache_dir=tmp_path).load()["train"]["input_ids"]
    rows = ["," + ",".join(map(str, row)) + "," for row in rows]
    # windows are runs of prepared tokens (rows joined end to end), not generic text: most lie inside one row
    inside = sum(any("," + ",".join(map(str, w[:40])) + "," in row for row in rows) for w in windows)
    assert inside >= 6, inside
    with pytest.raises(CalibrationError, match="fewer than one window"):
        calibration_windows("tiny", tok, len(tok), samples=1, seq_len=10**8, progress=False, cache=tmp_path)
    # a folder written by `data prepare --out` works the same
    prepared = prepare(load_recipe("tiny"), tok, out_dir=tmp_path / "mine", progress=False).path
    assert calibration_windows(prepared, tok, len(tok), samples=2, seq_len=50, progress=False) == \
        calibration_windows("tiny", tok, len(tok), samples=2, seq_len=50, progress=False, cache=tmp_path)


def test_bad_requests_say_why_and_write_nothing(embedded_default_run, tmp_path):
    model = str(embedded_default_run / "model")
    cases = [
        (["--to", "gptq", "--out", str(tmp_path / "a")], "needs --calibration"),
        (["--to", "gptq", "--out", str(tmp_path / "b"), "--calibration", str(tmp_path)], "not a prepared data folder"),
        (["--to", "awq", "--out", str(tmp_path / "c"), "--calibration", "tiny", "--bits", "3"], "4-bit only"),
        (["--to", "gptq", "--out", str(tmp_path / "d"), "--type", "Q4_K_M", "--calibration", "tiny"], "--bits"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--to", "exl2", "--out", str(tmp_path / "f"), "--calibration", "tiny"], "needs a CUDA GPU"))
    for args, why in cases:
        proc = cli("export", model, *args, cache=tmp_path / "cache")
        assert proc.returncode != 0 and why in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr[-1500:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="EXL2 (exllamav2) needs a CUDA GPU")
def test_exl2_on_a_gpu(embedded_default_run, tmp_path):
    pytest.importorskip("exllamav2", reason="exllamav2 is not installed")
    proc = cli("export", str(embedded_default_run / "model"), "--to", "exl2", "--out", str(tmp_path / "exl2"),
               "--calibration", "tiny", "--bits", "4.0", "--samples", "8", "--seq-len", "256", cache=tmp_path / "c")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "exl2" / "config.json").exists()
