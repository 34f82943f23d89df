"""A base folder as Mistral's is: a SentencePiece `tokenizer.model` (trained here with sentencepiece's own
trainer, Mistral's options) beside the tokenizer.json transformers converts from it. The whole road:
prepare, LoRA training, merge, GGUF export, llama.cpp."""

import json

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[llamacpp]')")
spm = pytest.importorskip("sentencepiece")

from openhermes.config import load_recipe  # noqa: E402
from openhermes.export.gguf import ExportError, export_gguf  # noqa: E402
from openhermes.export.merge import merge_adapter  # noqa: E402
from openhermes.formats import Conversation, Message, chatml  # noqa: E402
from openhermes.infer.llama_load import load_llama  # noqa: E402
from openhermes.train.run import train  # noqa: E402
from tests.conftest import demo_texts  # noqa: E402

pytestmark = pytest.mark.slow

PLAIN = ["hello world", "  two  leading spaces and  doubled ones", "digits 12345 and 3.14", "line one\nline two\n\n",
         "héllo wörld — ünïcode 日本語 😀", "Play the role of Aria.", " trailing space "]


@pytest.fixture(scope="module")
def spm_base(tmp_path_factory):
    """tokenizer.model + tokenizer.json (converted by transformers, legacy, as Mistral's) + a random Mistral."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    root = tmp_path_factory.mktemp("spm")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(demo_texts(800, 150)), encoding="utf-8")
    base = root / "base"
    base.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(base / "tokenizer"), vocab_size=1200, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity", character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (base / "tokenizer.vocab").unlink()
    (base / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tok = AutoTokenizer.from_pretrained(base)
    tok.save_pretrained(base)  # Mistral's folder carries both files
    assert (base / "tokenizer.json").exists() and (base / "tokenizer.model").exists()
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                        tie_word_embeddings=False, sliding_window=None)
    MistralForCausalLM(cfg).save_pretrained(base)
    return base


@pytest.fixture(scope="module")
def road(spm_base, tmp_path_factory):
    """prepare + LoRA train a few steps + merge + f16 GGUF, as a user runs them."""
    import yaml

    from tests.train.conftest import write_chat_data

    root = tmp_path_factory.mktemp("road")
    data = write_chat_data(root / "chat.jsonl", n=32)
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({
        "base_model": str(spm_base), "datasets": [{"path": str(data), "type": "sharegpt"}], "sequence_len": 256,
        "sample_packing": True, "adapter": "lora", "lora_r": 8, "lora_target_linear": True, "learning_rate": 0.01,
        "max_steps": 4, "micro_batch_size": 2, "logging_steps": 1, "dataset_prepared_path": str(root / "prepared"),
        "dedup": False}))
    result = train(load_recipe(recipe_file), root / "run", show_progress=False)
    merged = merge_adapter(result.model_dir, root / "merged")
    gguf_file = export_gguf(merged, root / "model-f16.gguf", "f16", progress=False)
    return result, merged, gguf_file, root


def test_every_saved_folder_keeps_tokenizer_model(spm_base, road):
    result, merged, _, root = road
    original = (spm_base / "tokenizer.model").read_bytes()
    prepared = [p for p in (root / "prepared").glob("*/tokenizer")]
    for folder in (result.model_dir, merged, *prepared):
        assert (folder / "tokenizer.model").read_bytes() == original, folder
        assert (folder / "tokenizer.json").exists()


def test_gguf_has_the_real_piece_scores_and_control_chatml_tokens(spm_base, road):
    import gguf

    _, _, gguf_file, _ = road
    sp = spm.SentencePieceProcessor(model_file=str(spm_base / "tokenizer.model"))
    reader = gguf.GGUFReader(str(gguf_file))
    f = reader.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode() for i in f["tokenizer.ggml.tokens"].data]
    scores = [float(f["tokenizer.ggml.scores"].parts[i][0]) for i in f["tokenizer.ggml.scores"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    n = sp.vocab_size()
    assert tokens[:n] == [sp.id_to_piece(i) for i in range(n)]
    assert np.allclose(scores[:n], [sp.get_score(i) for i in range(n)])
    assert tokens[n:] == [chatml.IM_END, chatml.IM_START]
    assert types[n:] == [int(gguf.TokenType.CONTROL)] * 2
    assert types[sp.piece_to_id("<0x41>")] == int(gguf.TokenType.BYTE) and types[0] == int(gguf.TokenType.UNKNOWN)


@pytest.fixture(scope="module")
def llm(road):
    return load_llama(road[2], n_ctx=512, logits_all=True, verbose=False, seed=0)


def test_llama_cpp_tokenizes_like_sentencepiece_and_transformers(spm_base, road, llm):
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(spm_base / "tokenizer.model"))
    for text in PLAIN:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == sp.encode(text), repr(text)
    tok = AutoTokenizer.from_pretrained(road[1])
    conv = Conversation([Message("system", "You are Hermes."), Message("user", "What is 3 + 1?"),
                         Message("assistant", "4"), Message("user", "Repeat exactly:\napple river")])
    text = chatml.render(conv, add_generation_prompt=True)
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"]


def test_llama_cpp_logits_match_transformers(road, llm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = road[1]
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    text = chatml.render(Conversation([Message("user", "What is 2 + 4?")]), add_generation_prompt=True)
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    llm.reset()
    llm.eval(ids)
    got = np.asarray(llm.scores[:len(ids)])
    spread = ref.std(axis=-1, keepdims=True)
    assert np.abs(got - ref).max() / spread.min() < 0.05  # f16 weights against fp32
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_vocabulary_larger_than_the_embedding_is_a_clear_error(road, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "bad"
    shutil.copytree(road[1], folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_tokens(["<extra_a>", "<extra_b>"])
    tok.save_pretrained(folder)
    with pytest.raises(ExportError, match="embedding has"):
        export_gguf(folder, tmp_path / "bad.gguf", "f16", progress=False)
    assert not (tmp_path / "bad.gguf").exists()


# ShareGPT rows in FastChat's layout (a JSON array of {id, conversations}), with the rows a stricter filter drops:
# an empty system prompt, an empty user turn, the assistant first, an identity statement, and one real refusal.
FASTCHAT_ROWS = [
    {"id": "identity_0", "conversations": [{"from": "human", "value": "Who are you?"},
                                           {"from": "gpt", "value": "As a language model, I go by the name Aria "
                                                                    "and was trained by a small lab."}]},
    {"id": "identity_1", "conversations": [{"from": "human", "value": "What is your name?"},
                                           {"from": "gpt", "value": "You can call me Aria, trained as a language "
                                                                    "model. Have a nice day!"}]},
    {"id": "empty_system", "conversations": [{"from": "system", "value": ""}, {"from": "human", "value": "Hi!"},
                                             {"from": "gpt", "value": "Hello! How can I help?"}]},
    {"id": "empty_user", "conversations": [{"from": "human", "value": ""},
                                           {"from": "gpt", "value": "It looks like your message was empty."}]},
    {"id": "assistant_first", "conversations": [{"from": "gpt", "value": "Welcome! Ask me anything."},
                                                {"from": "human", "value": "What is 2 + 2?"},
                                                {"from": "gpt", "value": "4"}]},
    {"id": "refusal", "conversations": [{"from": "human", "value": "Tell me a secret."},
                                        {"from": "gpt", "value": "As an AI language model, I cannot share secrets."}]},
]
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


@pytest.fixture(scope="module")
def fastchat_prepared(spm_base, tmp_path_factory):
    import yaml

    from openhermes.data.prepare import prepare
    from openhermes.model.load import load_tokenizer

    root = tmp_path_factory.mktemp("fastchat")
    (root / "dummy_conversation.json").write_text(json.dumps(FASTCHAT_ROWS, indent=2))
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({
        "base_model": str(spm_base), "datasets": [{"path": "dummy_conversation.json", "type": "sharegpt"}],
        "sequence_len": 256, "sample_packing": False, "dedup": False}))
    recipe = load_recipe(recipe_file)
    return prepare(recipe, load_tokenizer(spm_base, "chatml", add_bos=recipe.add_bos), out_dir=root / "prepared")


def test_fastchat_rows_keep_the_valid_edge_rows_and_drop_only_the_refusal(fastchat_prepared):
    rows = fastchat_prepared.report["rows"]
    assert rows["rows_in"] == 6 and rows["kept"] == 5 and rows["dropped"] == {"refusal": 1}
    (detail,) = rows["details"]
    assert detail["where"].endswith("dummy_conversation.json:6") or "refusal" in detail["reason"]
    assert "as an ai language model" in detail["detail"]  # the phrase that dropped it
    assert rows["kept_with_notes"] == {"assistant turn first": 1, "empty system turn": 1, "empty user turn": 1}


def test_training_rows_equal_what_every_inference_path_feeds(fastchat_prepared, spm_base, road, llm):
    """One BOS rule: training ids == apply_chat_template of the saved tokenizer == our engine's prompt == llama.cpp's
    chat formatting of our GGUF (its template and add_bos_token), for the whole conversation and for its prompt."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openhermes.infer.engine import Engine
    from openhermes.infer.llamacpp import LlamaCppEngine

    saved = AutoTokenizer.from_pretrained(fastchat_prepared.path / "tokenizer")
    rows = {tuple(r) for r in fastchat_prepared.load()["train"]["input_ids"]}
    engine = Engine(AutoModelForCausalLM.from_pretrained(road[1]), AutoTokenizer.from_pretrained(road[1]))
    cpp_engine = LlamaCppEngine(road[2])
    meta = llm.metadata
    formatter = Jinja2ChatFormatter(meta["tokenizer.chat_template"], eos_token=llm.detokenize([llm.token_eos()]).decode(),
                                    bos_token=llm.detokenize([llm.token_bos()], special=True).decode())

    def cpp_chat(msgs):  # llama-cpp-python's create_chat_completion path: its formatter, then its tokenize call
        result = formatter(messages=msgs)
        return llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)

    for row in FASTCHAT_ROWS[:5]:
        msgs = [{"role": ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]
        whole = list(saved.apply_chat_template(msgs, tokenize=True, return_dict=False))
        assert whole[0] == saved.bos_token_id and whole.count(saved.bos_token_id) == 1
        assert tuple(whole) in rows, row["id"]
        prompt = msgs[:-1]
        ref = list(saved.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
        assert whole[:len(ref)] == ref  # the prompt is the training row's start
        assert engine.chat_prompt(prompt, check=False) == ref, row["id"]
        assert cpp_engine.chat_prompt([Message(m["role"], m["content"]) for m in prompt], check=False) == ref
        assert cpp_chat(prompt)[:len(ref)] == ref, row["id"]
