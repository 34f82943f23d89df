"""The embedded default's model: a SentencePiece-style BPE tokenizer with byte fallback (the kind
Mistral uses) trained on the demo data, and a small Mistral-architecture model built from scratch.

The result is an ordinary Hugging Face model folder *without* the ChatML tokens, exactly like a
Mistral base model, so the training road adds them the same way it does for Mistral-7B."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from openhermes import outputs

SPECIALS = ("<unk>", "<s>", "</s>")
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))

DEFAULT_MODEL = {
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """A Llama/Mistral-layout tokenizer: <unk> <s> </s>, 256 byte tokens, then BPE merges.

    Merges are learned within words (digits one by one, newlines alone, as Llama's SentencePiece
    splits them); at run time there is no pre-tokenizer, as in Mistral's tokenizer.json."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("▁"), "merged_with_next"),
        pre_tokenizers.Split(Regex(r"[0-9\n]"), "isolated"),
        pre_tokenizers.Split(Regex(r"[^\w▁]"), "isolated"),
    ])
    n_merges_room = vocab_size - len(SPECIALS) - len(BYTE_TOKENS)
    trainer = trainers.BpeTrainer(vocab_size=n_merges_room, min_frequency=2, show_progress=False,
                                  special_tokens=[], limit_alphabet=200)
    from tqdm.auto import tqdm

    # the texts are read as the trainer pulls them: over the card's million rows that is minutes, so it shows
    trainer_tok.train_from_iterator(tqdm(texts, desc="train tokenizer", unit=" texts", mininterval=1), trainer)
    learned = trainer_tok.model
    state = __import__("json").loads(trainer_tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SPECIALS + BYTE_TOKENS)}
    for tok, _ in sorted(state["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    del learned
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(list(SPECIALS))
    return tok


def build_base(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 1024, seed: int = 0,
               **model_overrides) -> Path:
    """Write a from-scratch base model folder (tokenizer + random-init Mistral) to `out_dir`."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    tok = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(texts, vocab_size),
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.add_bos_token = True
    cfg = MistralConfig(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False, sliding_window=None, use_cache=True,
        **(DEFAULT_MODEL | model_overrides),
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(cfg)

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return outputs.write_folder(out, "model", fill)
