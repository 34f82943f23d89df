"""A Mistral/Llama model folder -> one GGUF file that llama.cpp (and LM Studio) runs (SPEC §6).

Written with the `gguf` package: its GGUFWriter, its tensor-name map and its numpy quantizers.
Architecture `llama`; Q and K rows permuted from HF's half-split rotary layout to interleaved
pairs; a SentencePiece-kind ("llama") vocabulary with scores, token types (ChatML tokens as control
tokens, byte tokens as bytes), bos/eos ids and the chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from openhermes import outputs
from openhermes.export.gguf_types import NUMPY_TYPES, QuantizeError, canonical
from openhermes.model.load import adds_bos, is_byte_token

SUPPORTED = ("MistralForCausalLM", "LlamaForCausalLM")
TYPES = NUMPY_TYPES  # written here with gguf's numpy quantizers; others: export/quantize.py


class ExportError(ValueError):
    pass


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores each head's rotary dims as two halves; llama.cpp (like Meta's original) interleaves pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def vocab_entries(folder: Path) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, SentencePiece scores and token types, id by id.

    With a SentencePiece `tokenizer.model` its own pieces, scores and types are used. A BPE
    `tokenizer.json` (byte fallback, "▁" for spaces, as Mistral's and the embedded default's) has no
    scores: a merged token gets minus the rank of the merge that makes it, so llama.cpp's score-greedy
    SentencePiece merging takes the merges in BPE's order."""
    import gguf

    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if (folder / "tokenizer.model").exists():
        return _sentencepiece_entries(folder / "tokenizer.model", data.get("added_tokens", []))
    model = data["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise ExportError(f"{folder}: GGUF export supports SentencePiece-style tokenizers (tokenizer.model, or a BPE "
                          f"tokenizer.json with byte fallback, as Llama/Mistral); this one is {model.get('type')}")
    vocab: dict[str, int] = model["vocab"]
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    size = max([*vocab.values(), *added]) + 1
    tokens: list[bytes] = [b""] * size
    scores = [0.0] * size
    types = [int(gguf.TokenType.UNUSED)] * size
    for text, i in vocab.items():
        tokens[i] = text.encode("utf-8")
        types[i] = int(gguf.TokenType.BYTE if is_byte_token(text) else gguf.TokenType.NORMAL)
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        i = vocab.get(left + right)
        if i is not None and scores[i] == 0.0:
            scores[i] = -float(rank + 1)
    for i, t in added.items():
        tokens[i] = t["content"].encode("utf-8")
        types[i] = int(gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED)
        if t["content"] == data["model"].get("unk_token", "<unk>"):
            types[i] = int(gguf.TokenType.UNKNOWN)
    missing = [i for i, t in enumerate(tokens) if not t]
    if missing:
        raise ExportError(f"{folder}: token ids {missing[:5]} have no token in tokenizer.json")
    return tokens, scores, types


def _sentencepiece_entries(model_file: Path, added_tokens: list[dict]) -> tuple[list[bytes], list[float], list[int]]:
    """The SentencePiece model's own pieces, scores and types, then the tokens added on top (the ChatML
    tokens: control tokens, as llama.cpp must never split or print them as text). gguf's
    SentencePieceVocab reads added tokens only from added_tokens.json, which transformers 5 no longer
    writes: hence our own reading of tokenizer.json's added_tokens."""
    import gguf
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        kind = (gguf.TokenType.UNKNOWN if sp.is_unknown(i) else gguf.TokenType.CONTROL if sp.is_control(i)
                else gguf.TokenType.UNUSED if sp.is_unused(i) else gguf.TokenType.BYTE if sp.is_byte(i)
                else gguf.TokenType.NORMAL)
        types.append(int(kind))
    for t in sorted(added_tokens, key=lambda t: t["id"]):
        i = t["id"]
        if i < len(tokens):
            if tokens[i] != t["content"].encode("utf-8"):
                raise ExportError(f"{model_file}: added token {t['content']!r} has id {i}, which the SentencePiece "
                                  f"model gives to {tokens[i].decode(errors='replace')!r}")
            continue
        if i != len(tokens):
            raise ExportError(f"{model_file}: added token ids are not contiguous after the SentencePiece vocabulary "
                              f"({len(tokens)} pieces, next added id {i})")
        tokens.append(t["content"].encode("utf-8"))
        scores.append(0.0)
        types.append(int(gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED))
    return tokens, scores, types


def fit_vocab(tokens: list[bytes], scores: list[float], types: list[int], rows: int, where: Path) -> None:
    """llama.cpp needs exactly one token per embedding row. More tokens than rows cannot be run (a clear
    error here, not a file llama.cpp refuses); fewer (rows padded to a multiple, as some models are) get
    unused "[PAD{i}]" tokens, as llama.cpp's own converter writes."""
    import gguf

    if len(tokens) > rows:
        raise ExportError(f"{where}: the tokenizer has {len(tokens)} tokens but the model's embedding has {rows} "
                          f"rows; resize the model's embeddings to the tokenizer (openhermes train does) first")
    for i in range(len(tokens), rows):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))


MARK_KEY = "openhermes.version"  # our own key in the file: how a later export knows the file is ours


def is_openhermes_gguf(path: Path) -> bool:
    import gguf

    try:
        return MARK_KEY in gguf.GGUFReader(str(path)).fields
    except Exception:  # any file that is not a GGUF we can read is not ours
        return False


def export_gguf(model_dir: str | Path, out: str | Path, qtype: str = "f16", progress: bool = True,
                overwrite: bool = False, keep_f16: Path | None = None) -> Path:
    """Write `out` next to itself and rename it over; an existing file we did not write is refused.
    f16, q8_0 and q4_0 are written by our numpy writer; K-quants and the other llama.cpp types by
    llama.cpp's quantizer from an f16 file written first (export/quantize.py), which is moved to `keep_f16`
    if given (the reference of a quality check) instead of deleted; q8_0/q4_0 write one there apart."""
    from openhermes.export.quantize import quantize_gguf

    try:
        qtype = canonical(qtype)
    except QuantizeError as e:
        raise ExportError(str(e)) from None

    def fill(tmp: Path) -> None:
        if qtype in NUMPY_TYPES:
            _write_gguf(Path(model_dir), tmp, qtype, progress)
            if keep_f16 is not None:  # no f16 step on this path: the reference is written apart
                _write_gguf(Path(model_dir), keep_f16, "f16", progress)
            return
        f16 = tmp.with_name(tmp.name + ".f16")
        try:
            _write_gguf(Path(model_dir), f16, "f16", progress)
            quantize_gguf(f16, tmp, qtype)
            if keep_f16 is not None:
                f16.replace(keep_f16)
        except QuantizeError as e:
            raise ExportError(str(e)) from None
        finally:
            f16.unlink(missing_ok=True)

    return outputs.write_file(out, fill, is_openhermes_gguf, "GGUF file", overwrite)


def _write_gguf(model_dir: Path, out: Path, qtype: str, progress: bool) -> None:
    import gguf
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    from openhermes import __version__

    if not (model_dir / "config.json").exists():
        raise ExportError(f"{model_dir}: not a model folder (no config.json); merge an adapter first with "
                          f"`openhermes merge`")
    config = AutoConfig.from_pretrained(model_dir)
    arch = (config.architectures or ["?"])[0]
    if arch not in SUPPORTED:
        raise ExportError(f"{model_dir}: architecture {arch} is not supported by the GGUF export "
                          f"(supported: {', '.join(SUPPORTED)})")
    tok = AutoTokenizer.from_pretrained(model_dir)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_string(MARK_KEY, __version__)
    w.add_name(model_dir.resolve().name if model_dir.name != "model" else model_dir.resolve().parent.name)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, scores, types = vocab_entries(model_dir)
    fit_vocab(tokens, scores, types, config.vocab_size, model_dir)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_vocab_size(len(tokens))
    for name, tid in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("unk", tok.unk_token_id),
                      ("pad", tok.pad_token_id)):
        if tid is not None:
            getattr(w, f"add_{name}_token_id")(tid)
    w.add_add_bos_token(adds_bos(tok))  # the folder's BOS rule, as training wrote it
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir}: no .safetensors weights")
    block = gguf.GGML_QUANT_SIZES
    qt = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(qtype)
    keys = [(f, k) for f in files for k in safe_open(f, "np").keys()]
    for f, key in tqdm(keys, desc=f"export {qtype}", unit="tensor", disable=not progress):
        if key.endswith("rotary_emb.inv_freq"):
            continue
        gname = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ExportError(f"{model_dir}: no GGUF name for tensor {key}")
        with safe_open(f, "pt") as st:
            data = st.get_tensor(key).float().numpy()
        if key.endswith("q_proj.weight"):
            data = permute_qk(data, n_head)
        elif key.endswith("k_proj.weight"):
            data = permute_qk(data, n_kv)
        if data.ndim == 1:  # norms stay f32, as llama.cpp's converter keeps them
            w.add_tensor(gname, data.astype(np.float32))
        elif qt is not None and data.shape[-1] % block[qt][0] == 0:
            w.add_tensor(gname, gguf.quants.quantize(data, qt), raw_dtype=qt)
        else:
            w.add_tensor(gname, data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=progress)
    w.close()
