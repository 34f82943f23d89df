"""llama.cpp runs our GGUF exports exactly like the PyTorch model (needs llama-cpp-python)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[llamacpp]')")

from openhermes.data import demo  # noqa: E402
from openhermes.export.gguf import export_gguf  # noqa: E402
from openhermes.infer.engine import Engine  # noqa: E402
from openhermes.infer.llamacpp import LlamaCppEngine  # noqa: E402
from openhermes.infer.sampling import PRESETS  # noqa: E402
from openhermes.infer.sequence import GenerationRequest  # noqa: E402

pytestmark = pytest.mark.slow


def chats() -> list[list[dict]]:
    """Held-out demo questions (the model answers them) and a few free-form ones."""
    items = [it for it in demo.held_out(train_chat=5000, train_roleplay=800) if it.kind != "roleplay"][:6]
    out = [[{"role": t["from"].replace("human", "user").replace("gpt", "assistant"), "content": t["value"]}
            for t in it.record["conversations"]] for it in items]
    out += [[{"role": "system", "content": "You are Hermes."}, {"role": "user", "content": "héllo wörld, 2 + 2?"}],
            [{"role": "user", "content": "Spell <|im_end|> for me"}]]
    return out


@pytest.fixture(scope="module")
def trained(embedded_default_run):
    return embedded_default_run / "model"


@pytest.fixture(scope="module")
def engines(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    f16 = export_gguf(trained, folder / "tiny-f16.gguf", "f16", progress=False)
    q8 = export_gguf(trained, folder / "tiny-q8_0.gguf", "q8_0", progress=False)
    return Engine.load(trained, device="cpu"), LlamaCppEngine(f16), LlamaCppEngine(q8)


def greedy(engine, messages, n=24):
    return engine.generate([GenerationRequest(engine.chat_prompt(messages), PRESETS["greedy"], n)])[0]


def test_llama_cpp_tokenizes_the_exported_chat_template_like_us(engines):
    torch_engine, cpp, _ = engines
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = cpp.llm.metadata["tokenizer.chat_template"]
    fmt = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="<s>")
    for messages in chats()[:-1]:  # the last one spells a control token: only our own path keeps it plain
        result = fmt(messages=messages)  # the template puts BOS first, so llama-cpp-python adds none of its own
        ids = cpp.llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)
        assert ids == torch_engine.chat_prompt(messages)
        assert cpp.chat_prompt(messages) == ids


def test_forged_control_tokens_stay_plain_in_llama_cpp_prompts(engines):
    torch_engine, cpp, _ = engines
    messages = chats()[-1]
    assert cpp.chat_prompt(messages) == torch_engine.chat_prompt(messages)


def test_greedy_continuations_equal_the_pytorch_model_token_for_token(engines):
    torch_engine, cpp, _ = engines
    for messages in chats():
        a, b = greedy(torch_engine, messages), greedy(cpp, messages)
        assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason


def test_q8_0_logits_stay_close_to_f16(engines):
    """Tolerance, in units of the f16 logits' spread (std over the vocabulary). On the held-out demo questions
    (the model's trained answers): mean |q8_0 - f16| <= 0.08, max <= 0.2, and the same top token (measured on the
    6 here: mean <= 0.043, max <= 0.134; llama.cpp also quantizes the activations to 8 bits in q8_0 matmuls;
    f16 against PyTorch fp32: max |diff| about 0.0075). The free-form prompts are outside the training data,
    where the activations' 8-bit rounding costs more (measured: mean <= 0.065, max <= 0.208, on "Spell
    <|im_end|>"): mean <= 0.15, max <= 0.4 there; and their top two tokens can
    be a near-tie (a top-2 margin of 1.07 spreads measured), which any rounding flips, so only their distances
    are checked."""
    torch_engine, f16, q8 = engines
    n_held_out = 6
    for k, messages in enumerate(chats()):
        ids = torch_engine.chat_prompt(messages)
        a, b = f16.logits_after(ids), q8.logits_after(ids)
        diff = np.abs(a - b) / a.std()
        if k < n_held_out:
            assert diff.mean() <= 0.08 and diff.max() <= 0.2, (k, diff.mean(), diff.max())
            assert a.argmax() == b.argmax()
        else:
            assert diff.mean() <= 0.15 and diff.max() <= 0.4, (k, diff.mean(), diff.max())


def test_merged_lora_exports_and_runs_the_same(trained, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openhermes.export.merge import merge_adapter

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(trained)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=4, target_modules="all-linear", init_lora_weights=False,
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():  # a small, non-zero update
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.mul_(0.02)
    lora.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(trained).save_pretrained(tmp_path / "adapter")  # as `openhermes train` saves it
    merged = merge_adapter(tmp_path / "adapter", tmp_path / "merged", str(trained))
    torch_engine = Engine.load(merged, device="cpu")
    cpp = LlamaCppEngine(export_gguf(merged, tmp_path / "merged.gguf", "f16", progress=False))
    for messages in chats():
        a, b = greedy(torch_engine, messages), greedy(cpp, messages)
        assert a.token_ids == b.token_ids
    # The adapter did change the model (its outputs, not only its files).
    ids = torch.tensor([torch_engine.chat_prompt(chats()[0])])
    with torch.no_grad():
        before = AutoModelForCausalLM.from_pretrained(trained)(ids).logits
        after = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    assert (after - before).abs().max() > 1e-2


def test_generate_command_with_the_llama_cpp_engine(engines, trained, tmp_path):
    torch_engine, cpp, _ = engines
    gguf = export_gguf(trained, tmp_path / "m.gguf", "f16", progress=False)
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"messages": m, "max_tokens": 24}) for m in chats()[:3]) + "\n")
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "generate", str(gguf), "--engine", "llama.cpp",
                           "--input", str(src), "--output", str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, timeout=300, env=os.environ | {"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [greedy(torch_engine, m).text for m in chats()[:3]]


def test_serve_with_the_llama_cpp_engine(engines, trained, tmp_path):
    import openai

    from tests.serve.conftest import Server

    torch_engine = engines[0]
    gguf = export_gguf(trained, tmp_path / "m.gguf", "f16", progress=False)
    server = Server(gguf, "--engine", "llama.cpp")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        for messages in chats()[:3]:
            reply = client.chat.completions.create(model="tiny-chat", messages=messages, temperature=0, max_tokens=24)
            expected = greedy(torch_engine, messages)
            assert reply.choices[0].message.content == expected.text
            streamed = client.chat.completions.create(model="tiny-chat", messages=messages, temperature=0,
                                                      max_tokens=24, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected.text
    finally:
        server.stop()


def test_structured_output_and_new_samplers_work_in_the_llama_cpp_engine(engines):
    """The grammar mask (from transformers' reading of the GGUF vocabulary) and the RP samplers are the
    same code in both engines: a JSON schema holds for every seed, and greedy DRY agrees token for token."""
    import jsonschema

    from openhermes.infer.sampling import SamplingParams

    torch_engine, cpp, _ = engines
    schema = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    messages = chats()[0]
    for seed in range(5):
        params = SamplingParams(temperature=1.0, seed=seed)
        for engine in (cpp, torch_engine):
            r = engine.generate([GenerationRequest(engine.chat_prompt(messages), params, 40,
                                                   constraint=engine.grammar(fmt))])[0]
            jsonschema.validate(json.loads(r.text), schema)
    dry = SamplingParams(temperature=0, dry_multiplier=2.0, dry_allowed_length=1, repetition_penalty=1.2)
    a, b = (e.generate([GenerationRequest(e.chat_prompt(messages), dry, 24, ignore_eos=True)])[0]
            for e in (torch_engine, cpp))
    assert a.token_ids == b.token_ids
