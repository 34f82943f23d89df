"""Packed samples never attend to each other in the training forward (SPEC §3)."""

import torch

from openhermes.data.tokenize import ConversationTokenizer
from openhermes.formats import Conversation, Message
from openhermes.model.load import load_model
from openhermes.train.collate import PackedCollator

CONVS = [
    Conversation([Message("user", "What is 2 + 3?"), Message("assistant", "5")]),
    Conversation([Message("system", "Be brief."), Message("user", "Repeat exactly:\napple river stone"),
                  Message("assistant", "apple river stone")]),
    Conversation([Message("user", "Hi"), Message("assistant", "Hello there, traveller.")]),
]


def _packed_and_alone(chatml_tokenizer, tiny_base, **forward):
    torch.manual_seed(0)
    model, _ = load_model(tiny_base, chatml_tokenizer)
    model.config.use_cache = False
    model.train()  # the training forward (dropout is 0 in this config)
    samples = ConversationTokenizer(chatml_tokenizer).encode_batch(CONVS)
    row = {"input_ids": [int(t) for s in samples for t in s.input_ids],
           "labels": [int(t) for s in samples for t in s.labels],
           "position_ids": [p for s in samples for p in range(len(s))]}
    batch = PackedCollator(chatml_tokenizer.pad_token_id, pad_to=len(row["input_ids"]) + 5)([row])
    batch.pop("labels")
    with torch.no_grad():
        packed = model(**batch, **forward).logits[0]
        alone = [model(input_ids=torch.as_tensor(s.input_ids, dtype=torch.long)[None]).logits[0] for s in samples]
    return packed, alone, [len(s) for s in samples]


def test_packed_logits_equal_each_sample_alone(chatml_tokenizer, tiny_base):
    packed, alone, lengths = _packed_and_alone(chatml_tokenizer, tiny_base)
    start = 0
    for ref, n in zip(alone, lengths, strict=True):
        torch.testing.assert_close(packed[start:start + n], ref, atol=1e-5, rtol=1e-4)
        start += n


def test_with_an_attention_mask_the_samples_leak(chatml_tokenizer, tiny_base):
    """The control: passing a mask switches the isolation off, and the test above would fail."""
    samples_len = None
    packed, alone, lengths = _packed_and_alone(chatml_tokenizer, tiny_base)
    samples_len = lengths
    tok = chatml_tokenizer
    model, _ = load_model(tiny_base, tok)
    model.config.use_cache = False
    ids = torch.cat([torch.as_tensor(a.argmax(-1)) for a in alone])  # any tokens will do
    n0 = samples_len[0]
    with torch.no_grad():
        pos = torch.cat([torch.arange(n) for n in samples_len])[None]
        isolated = model(input_ids=ids[None], position_ids=pos).logits[0]
        leaked = model(input_ids=ids[None], position_ids=pos, attention_mask=torch.ones_like(ids)[None]).logits[0]
    assert torch.allclose(isolated[:n0], leaked[:n0], atol=1e-5)
    assert not torch.allclose(isolated[n0:], leaked[n0:], atol=1e-3)
