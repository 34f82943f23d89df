"""A "scripted" model for the inference tests: a real MistralForCausalLM whose weights make it a bigram table, so that after
the prompt it says a chosen token sequence (used to show stopping behaviour independently of luck)."""

import itertools

import pytest
import torch


@pytest.fixture(autouse=True)
def unwritten_buffers_hold_nan(monkeypatch):
    """The batch's buffers are made empty, not zeroed (infer/batch.py): here their unwritten parts hold NaN, so any
    masked column that attention reads without its having been written or zeroed turns a reply into NaN."""
    from openhermes.infer.batch import Slab

    monkeypatch.setattr(Slab, "unwritten", float("nan"))


@pytest.fixture
def forwards(monkeypatch) -> list[tuple[int, int, int]]:
    """(rows, new tokens a row, CPU threads) of every forward a batch runs from here on: the fast one
    (infer/fast_decode.py, where the model allows it) or the model's own."""
    from openhermes.infer.batch import Batch
    from openhermes.infer.fast_decode import FastDecode

    calls: list[tuple[int, int, int]] = []
    fast, own = FastDecode.forward, Batch._forward

    def fast_forward(self, ids, *args, **kwargs):
        calls.append((*ids.shape, torch.get_num_threads()))
        return fast(self, ids, *args, **kwargs)

    def own_forward(self, **inputs):
        calls.append((*inputs["input_ids"].shape, torch.get_num_threads()))
        return own(self, **inputs)

    monkeypatch.setattr(FastDecode, "forward", fast_forward)
    monkeypatch.setattr(Batch, "_forward", own_forward)
    return calls


@pytest.fixture(scope="session")
def scripted(tiny_base, chatml_tokenizer):
    """make(script_text) -> (Engine, script ids): the model continues any ChatML prompt with script_text."""
    from openhermes.data.tokenize import ConversationTokenizer
    from openhermes.formats import Conversation, Message
    from openhermes.infer.engine import Engine
    from openhermes.model.load import load_model

    def make(script: str):
        tok = chatml_tokenizer
        # every ChatML prompt ends with the assistant header's last token: the script starts there
        trigger = ConversationTokenizer(tok).prompt_ids(Conversation([Message("user", "hi")]))[-1]
        ids = tok.encode(script, add_special_tokens=False)
        chain = [trigger, *ids]
        assert len(set(chain[:-1])) == len(chain) - 1, "script tokens must be distinct for a bigram model"
        torch.manual_seed(1)
        model, _ = load_model(tiny_base, tok)
        with torch.no_grad():
            for layer in model.model.layers:  # no attention or MLP output: the residual is the embedding
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            emb = model.model.embed_tokens.weight
            head = torch.zeros_like(model.lm_head.weight)
            for a, b in itertools.pairwise(chain):
                head[b] += 30 * emb[a] / emb[a].norm()
            model.lm_head.weight.copy_(head)
        return Engine(model.eval(), tok), ids

    return make
