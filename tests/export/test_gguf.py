"""The GGUF file itself, read back with gguf's own reader (no llama.cpp needed)."""

import json

import numpy as np
import pytest
from gguf import GGUFReader, TokenType

from openhermes.export.gguf import ExportError, export_gguf
from openhermes.formats import chatml


def field(reader, key):
    f = reader.fields[key]
    if f.types and f.types[0].name == "STRING" and len(f.types) == 1:
        return bytes(f.parts[-1]).decode()
    if f.types[0].name == "ARRAY":
        return [f.contents(i) for i in range(len(f.data))]
    return f.parts[-1][0]


@pytest.fixture(scope="module")
def f16(chat_model_dir, tmp_path_factory):
    return export_gguf(chat_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", "f16", progress=False)


def test_metadata_and_vocabulary(f16, chatml_tokenizer, chat_model):
    r = GGUFReader(f16)
    cfg = chat_model.config
    assert field(r, "general.architecture") == "llama"
    assert field(r, "llama.block_count") == cfg.num_hidden_layers
    assert field(r, "llama.attention.head_count_kv") == cfg.num_key_value_heads
    assert field(r, "tokenizer.ggml.model") == "llama"
    assert field(r, "tokenizer.chat_template") == chatml.CHAT_TEMPLATE
    assert field(r, "tokenizer.ggml.bos_token_id") == chatml_tokenizer.bos_token_id
    assert field(r, "tokenizer.ggml.eos_token_id") == chatml_tokenizer.convert_tokens_to_ids(chatml.IM_END)
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(chatml_tokenizer)
    for text in chatml.CONTROL_TOKENS:
        i = chatml_tokenizer.convert_tokens_to_ids(text)
        assert tokens[i] == text and types[i] == TokenType.CONTROL
    assert tokens[3 + 0x0A] == "<0x0A>" and types[3 + 0x0A] == TokenType.BYTE
    assert all(tokens[i] == t for t, i in chatml_tokenizer.get_vocab().items())


def test_qk_rows_are_interleaved_and_weights_match(f16, chat_model):
    r = GGUFReader(f16)
    tensors = {t.name: t for t in r.tensors}
    cfg = chat_model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    for name, hf, n in (("blk.0.attn_q.weight", chat_model.model.layers[0].self_attn.q_proj.weight, heads),
                        ("blk.0.attn_k.weight", chat_model.model.layers[0].self_attn.k_proj.weight, kv)):
        ours = np.asarray(tensors[name].data, dtype=np.float32)
        w = hf.detach().numpy()
        d = w.shape[0] // n
        # llama.cpp's layout: within each head, row 2i is HF row i and row 2i+1 is HF row i + d/2
        expect = np.stack([w.reshape(n, d, -1)[:, : d // 2], w.reshape(n, d, -1)[:, d // 2:]], axis=2).reshape(w.shape)
        np.testing.assert_allclose(ours, expect, atol=2e-3)
    emb = np.asarray(tensors["token_embd.weight"].data, dtype=np.float32)
    np.testing.assert_allclose(emb, chat_model.model.embed_tokens.weight.detach().numpy(), atol=2e-3)
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"


@pytest.mark.parametrize("qtype,kind", [("q8_0", "Q8_0"), ("q4_0", "Q4_0")])
def test_quantized_types(chat_model_dir, tmp_path, qtype, kind):
    path = export_gguf(chat_model_dir, tmp_path / f"m-{qtype}.gguf", qtype, progress=False)
    r = GGUFReader(path)
    kinds = {t.name: t.tensor_type.name for t in r.tensors}
    assert kinds["blk.0.ffn_up.weight"] == kind and kinds["output_norm.weight"] == "F32"


def test_unsupported_architecture_is_a_clear_error(chat_model_dir, tmp_path):
    folder = tmp_path / "gpt2ish"
    folder.mkdir()
    for f in chat_model_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="GPT2LMHeadModel is not supported"):
        export_gguf(folder, tmp_path / "x.gguf")
    with pytest.raises(ExportError, match="--type"):
        export_gguf(chat_model_dir, tmp_path / "x.gguf", "q9_9")
