"""K-quants through llama.cpp's own quantizer, their measured quality, LoRA GGUF adapters, model cards."""

import json
import subprocess
import sys

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[llamacpp]')")

from openhermes.data import demo  # noqa: E402
from openhermes.data.readers import from_sharegpt  # noqa: E402
from openhermes.export.gguf import ExportError, export_gguf, is_openhermes_gguf  # noqa: E402
from openhermes.export.gguf_lora import export_lora_gguf  # noqa: E402
from openhermes.export.quality import measure  # noqa: E402
from openhermes.formats import chatml  # noqa: E402
from openhermes.infer.llama_load import load_llama  # noqa: E402

pytestmark = pytest.mark.slow
K_TYPES = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_XS")


def held_out_text(n: int = 120) -> str:
    """Demo conversations the model never trained on (the held-out items), as ChatML text."""
    items = [it for it in demo.held_out(train_chat=800, train_roleplay=0) if it.kind != "roleplay"][:n]
    return "".join(chatml.render(from_sharegpt(it.record)) for it in items)


@pytest.fixture(scope="module")
def model256(tmp_path_factory):
    """A model whose rows are multiples of 256 (K-quant blocks), trained a little on demo chat."""
    import yaml

    from openhermes.config import load_recipe
    from openhermes.train.run import train

    root = tmp_path_factory.mktemp("k")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "base_model": "tiny", "tiny": {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 512,
                                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
        "datasets": [{"path": "demo:chat:800", "type": "sharegpt"}], "sequence_len": 512, "sample_packing": True,
        "train_on_inputs": True, "learning_rate": 0.003, "lr_scheduler": "constant", "micro_batch_size": 4, "num_epochs": 2,
        "logging_steps": 100, "bf16": False}))
    result = train(load_recipe(recipe), root / "run", show_progress=False, cache=root / "cache")
    return result.model_dir


@pytest.fixture(scope="module")
def exports(model256, tmp_path_factory):
    folder = tmp_path_factory.mktemp("quants")
    files = {t: export_gguf(model256, folder / f"m-{t}.gguf", t, progress=False) for t in ("f16", "q8_0", *K_TYPES)}
    return folder, files


def test_every_k_quant_loads_and_starts_like_f16(exports):
    import gguf

    _, files = exports
    items = [it for it in demo.held_out(train_chat=800, train_roleplay=0) if it.kind != "roleplay"][:PROMPTS]
    prompts = [chatml.render(from_sharegpt(it.record), add_generation_prompt=True) for it in items]

    def greedy(path, n=4):
        llm = load_llama(path, n_ctx=256, verbose=False, seed=0)
        out = []
        for p in prompts:
            ids = llm.tokenize(p.encode(), add_bos=True, special=True)
            out.append([t for t, _ in zip(llm.generate(ids, temp=0.0, top_k=1), range(n), strict=False)])
        llm.close()
        return out

    ref = greedy(files["f16"])
    for t in K_TYPES:
        reader = gguf.GGUFReader(str(files[t]))
        kinds = {tensor.tensor_type.name for tensor in reader.tensors}
        assert kinds & {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"}, (t, kinds)  # real K-quant blocks
        assert is_openhermes_gguf(files[t])  # our metadata survives llama.cpp's quantizer
        same = sum(a[0] == b[0] for a, b in zip(ref, greedy(files[t]), strict=True))
        # Agreement, not identity: the CPU's rounding (in training and in llama.cpp's kernels) moves a first token
        # here and there. Measured over this fixture's seeds 42, 1-5 on an AMD EPYC Zen 5 (AVX-512): Q2_K 17-24 of
        # 24, every other type 21-24; an untrained model of this shape agrees on 0. Q2_K's 2 bits get a floor of
        # their own (15), the others 18; KL orders the types (next test).
        assert same >= FIRST_TOKEN_FLOOR[t] * len(ref), (t, same)


PROMPTS = 24
FIRST_TOKEN_FLOOR = {t: 0.75 for t in K_TYPES} | {"Q2_K": 0.625}  # of the prompts


def test_perplexity_and_kl_are_ordered_by_precision(exports):
    _, files = exports
    order = ["f16", "q8_0", "Q6_K", "Q4_K_M", "Q2_K"]
    results = {t: r for t, r in zip(order, measure([files[t] for t in order], files["f16"], held_out_text()),
                                    strict=True)}
    ppl = {t: r.perplexity for t, r in results.items()}
    kl = {t: r.kl_mean for t, r in results.items()}
    assert results["f16"].kl_mean == pytest.approx(0, abs=1e-9) and results["f16"].tokens > 500
    # On a model this small quantization noise moves perplexity either way, so perplexity is only bounded, by
    # precision; the divergence from f16 is what orders the types. Measured over the recipe's seeds 42, 1, 2 on an
    # AMD EPYC with AVX2: q8_0 and Q6_K within 0.2% of f16, Q4_K_M within 1.1%, Q2_K -7.1%, +19.6%, +5.0% (2 bits:
    # the seed decides which way); KL 4-5e-5, 3-5e-4, 3.5-5e-3, 5-7e-2, a factor of 6 or more between neighbours.
    bounds = {"f16": 0.0, "q8_0": 0.01, "Q6_K": 0.01, "Q4_K_M": 0.05, "Q2_K": 0.5}
    for t in order:
        assert ppl[t] == pytest.approx(ppl["f16"], rel=bounds[t], abs=1e-9), (t, ppl)
    assert kl["Q2_K"] > kl["Q4_K_M"] > kl["Q6_K"] > kl["q8_0"] > 0
    sizes = {t: files[t].stat().st_size for t in order}
    assert sizes["f16"] > sizes["q8_0"] > sizes["Q6_K"] > sizes["Q4_K_M"] > sizes["Q2_K"]


def test_unknown_and_imatrix_types_are_clear_errors(model256, tmp_path):
    with pytest.raises(ExportError, match="choose one of"):
        export_gguf(model256, tmp_path / "x.gguf", "Q7_K")
    with pytest.raises(ExportError, match="importance matrix"):
        export_gguf(model256, tmp_path / "x.gguf", "IQ2_XS")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_check_writes_a_model_card_with_the_measured_quality(model256, tmp_path):
    text = tmp_path / "held-out.txt"
    text.write_text(held_out_text(20))
    out = tmp_path / "gguf" / "model-Q4_K_M.gguf"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "export", str(model256), "--type", "Q4_K_M",
                           "--out", str(out), "--check", str(text)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = proc.stdout + proc.stderr  # the console writes to stderr
    assert "perplexity" in shown and "mean KL" in shown
    card = (out.parent / "README.md").read_text()
    assert "model-Q4_K_M.gguf | Q4_K_M | llama.cpp's quantizer" in card and "<|im_start|>" in card
    row = next(line for line in card.splitlines() if line.startswith("| model-Q4_K_M.gguf"))
    recorded = json.loads((out.parent / "quality.json").read_text())["model-Q4_K_M.gguf"]
    assert f"{recorded['perplexity']:.4f}" in row
    # The reference was the quantizer's own f16 input (written once): an f16 exported apart gives the same KL.
    (again,) = measure([out], export_gguf(model256, tmp_path / "apart-f16.gguf", "f16", progress=False),
                       text.read_text())
    assert again.kl_mean == pytest.approx(recorded["kl_mean"], rel=1e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == ["README.md", "model-Q4_K_M.gguf", "quality.json"]
    # A numpy-written type (no f16 step of its own) is checked against an f16 written for the purpose.
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "export", str(model256), "--type", "q8_0",
                           "--out", str(out.parent / "model-q8_0.gguf"), "--check", str(text)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    q8 = json.loads((out.parent / "quality.json").read_text())["model-q8_0.gguf"]
    assert 0 < q8["kl_mean"] < recorded["kl_mean"]
    (out.parent / "README.md").write_text("my own notes")  # a README the user wrote is never replaced
    assert subprocess.run([sys.executable, "-m", "openhermes.cli", "export", str(model256), "--type", "q8_0",
                           "--out", str(out.parent / "m-q8.gguf")], capture_output=True).returncode == 0
    assert (out.parent / "README.md").read_text() == "my own notes"


def test_check_on_a_lora_gguf_is_refused_before_any_work(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("some text")
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "export", str(tmp_path / "adapter"), "--to",
                           "gguf-lora", "--out", str(tmp_path / "a.gguf"), "--check", str(text)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "merge the adapter" in proc.stdout + proc.stderr
    assert not (tmp_path / "a.gguf").exists()


@pytest.fixture(scope="module")
def limarp_lora(tiny_base, tmp_path_factory):
    """A LimaRP-format LoRA (no added tokens) on the tiny base, and its merged model."""
    import yaml

    from openhermes.config import load_recipe
    from openhermes.export.merge import merge_adapter
    from openhermes.train.run import train

    root = tmp_path_factory.mktemp("lora")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "base_model": str(tiny_base), "datasets": [{"path": "demo:roleplay:40", "type": "limarp"}],
        "chat_template": "limarp", "sequence_len": 512, "sample_packing": True, "adapter": "lora", "lora_r": 8,
        "lora_alpha": 16, "lora_target_linear": True, "learning_rate": 0.01, "lr_scheduler": "constant",
        "max_steps": 6, "micro_batch_size": 2, "logging_steps": 100}))
    result = train(load_recipe(recipe), root / "run", show_progress=False, cache=root / "cache")
    return result.model_dir, merge_adapter(result.model_dir, root / "merged")


def test_lora_gguf_on_the_base_gguf_gives_the_merged_model_logits(tiny_base, limarp_lora, tmp_path):
    adapter, merged = limarp_lora
    base_gguf = export_gguf(tiny_base, tmp_path / "base.gguf", "f16", progress=False)
    merged_gguf = export_gguf(merged, tmp_path / "merged.gguf", "f16", progress=False)
    lora_gguf = export_lora_gguf(adapter, tmp_path / "adapter.gguf")
    text = "### Instruction:\nAria's Persona: a knight.\n\n### Input:\nSam: Hello there, who are you?\n\n### Response:\n"

    def logits(path, lora=None):
        llm = load_llama(path, n_ctx=256, logits_all=True, verbose=False, lora_path=lora)
        ids = llm.tokenize(text.encode(), add_bos=True, special=False)
        llm.eval(ids)
        out = np.asarray(llm.scores[:len(ids)])
        llm.close()
        return out

    on_top, folded, plain = logits(base_gguf, str(lora_gguf)), logits(merged_gguf), logits(base_gguf)
    spread = folded.std(axis=-1).min()
    assert np.abs(on_top - folded).max() / spread < 0.02  # f16 weights either way
    assert np.abs(plain - folded).max() / spread > 0.1  # the adapter changes the model: the check can fail
    assert (on_top.argmax(-1) == folded.argmax(-1)).all()


def test_lora_gguf_refuses_added_token_rows(tiny_base, tmp_path):
    """A ChatML LoRA trains the added <|im_end|>/<|im_start|> rows, which a llama.cpp LoRA cannot carry."""
    from openhermes.config import Recipe
    from openhermes.train.run import train

    recipe = Recipe(base_model=str(tiny_base), datasets=[{"path": "demo:chat:40", "type": "sharegpt"}],
                    sequence_len=256, adapter="lora", lora_r=4, max_steps=1)
    result = train(recipe, tmp_path / "run", show_progress=False, cache=tmp_path / "cache")
    with pytest.raises(ExportError, match="merge it"):
        export_lora_gguf(result.model_dir, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()
