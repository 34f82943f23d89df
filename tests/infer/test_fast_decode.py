"""The fast forward (infer/fast_decode.py) against the model's own, in lockstep: the same tokens, log-probabilities
and KV cache at every step and every prefill, with padded rows, joins and leaves, on Mistral and on Llama with a
rope scaling, and next turns prefilled together after reused prefixes; the joined weights follow changes to the
model; and the models it must leave to transformers."""

import copy

import pytest
import torch

from openhermes.infer.batch import Batch, Costs
from openhermes.infer.engine import Engine
from openhermes.infer.prefix_cache import PrefixCache
from openhermes.infer.sampling import PRESETS
from openhermes.infer.sequence import GenerationRequest

QUESTIONS = ["hi", "What is 3 + 4? Answer briefly please.", "Repeat exactly: apple river", "héllo wörld 😀",
             "A longer question, so that the rows of the batch have rather different lengths: why is the sky blue?"]


def lockstep(engine: Engine) -> None:
    """Two batches fed the same sequences, one with the fast step and one with the model's forward."""
    prompts = [engine.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    lengths = [20, 9, 20, 14, 20]  # rows leave at different steps
    batches, seqs = [], []
    for fast in (True, False):
        batch = Batch(engine.model)
        assert batch.fast is not None
        if not fast:
            batch.fast = None
        batches.append(batch)
        seqs.append([engine.sequence(GenerationRequest(p, PRESETS["greedy"], n, ignore_eos=True, logprobs=3))
                     for p, n in zip(prompts, lengths, strict=True)])
    joins = {0: [0], 3: [1, 2], 5: [3], 6: [4]}  # step -> sequences joining before it
    for step in range(40):
        for batch, mine in zip(batches, seqs, strict=True):
            if step in joins:
                batch.add_many([mine[i] for i in joins[step]])
            batch.step()
        fast, slow = batches
        assert [s.ids for s in fast.rows] == [s.ids for s in slow.rows]
        if fast.rows:
            a, b = fast.slab, slow.slab
            assert (a.start, a.end) == (b.start, b.end)
            for x, y in zip(a.keys + a.values, b.keys + b.values, strict=True):
                torch.testing.assert_close(x[:a.rows, :, a.start:a.end], y[:b.rows, :, b.start:b.end],
                                           rtol=0, atol=1e-5)
    for x, y in zip(*seqs, strict=True):
        rx, ry = x.result(), y.result()
        assert rx.token_ids == ry.token_ids and len(rx.token_ids) == x.request.max_new_tokens
        for lx, ly in zip(rx.logprobs, ry.logprobs, strict=True):
            assert lx.logprob == pytest.approx(ly.logprob, abs=1e-5)
            assert [t for t, _ in lx.top] == [t for t, _ in ly.top]


def test_fast_step_equals_the_mistral_forward(chat_model, chatml_tokenizer):
    lockstep(Engine(chat_model, chatml_tokenizer, prefix_cache_mb=0))


def llama(tokenizer, **config) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **config)
    return LlamaForCausalLM(cfg).eval()


def test_fast_step_equals_the_llama_forward_with_its_rope_scaling(chatml_tokenizer):
    model = llama(chatml_tokenizer, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0})
    lockstep(Engine(model, chatml_tokenizer, prefix_cache_mb=0))


def test_a_sliding_window_shorter_than_the_rows_is_the_models_own(chat_model, chatml_tokenizer):
    """Mistral's sliding window: once rows are longer than it, the step must attend within it as the model does."""
    model = copy.deepcopy(chat_model)
    model.config.sliding_window = 24
    lockstep(Engine(model, chatml_tokenizer, prefix_cache_mb=0))


def test_joined_weights_follow_a_model_that_changes(chat_model, chatml_tokenizer):
    """An engine can sample from a model that then trains on: the next batch must see the new weights."""
    model = copy.deepcopy(chat_model)
    engine = Engine(model, chatml_tokenizer, prefix_cache_mb=0)
    lockstep(engine)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.mul_(-1.5)
            layer.mlp.up_proj.weight.add_(0.05)
    lockstep(engine)
    model.model.layers[0].self_attn.q_proj.weight = torch.nn.Parameter(torch.randn_like(
        model.model.layers[0].self_attn.q_proj.weight))  # replaced, not changed in place
    lockstep(engine)


def test_next_turns_after_reused_prefixes_equal_the_model_forward(chat_model, chatml_tokenizer, forwards):
    """Three conversations' next turns (prefixes of different lengths found in the prefix cache) and a new one with
    nothing cached, prefilled in one forward: keys, values, tokens and log-probabilities as the model's forward."""
    engine = Engine(chat_model, chatml_tokenizer, prefix_cache_mb=0)
    firsts = [engine.chat_prompt([{"role": "user", "content": "Tell me about the river. " * k}]) for k in (1, 4, 9)]
    tail = chatml_tokenizer.encode("<|im_end|>\n<|im_start|>user\nAnd the gate?<|im_end|>\n<|im_start|>assistant\n",
                                   add_special_tokens=False)
    runs = []
    for fast in (True, False):
        batch = Batch(engine.model, PrefixCache(64))
        if not fast:
            batch.fast = None
        seqs = [engine.sequence(GenerationRequest(p, PRESETS["greedy"], 6, ignore_eos=True)) for p in firsts]
        batch.add_many(seqs)
        while len(batch):
            batch.step()  # rows that leave are stored with their replies
        nexts = [s.ids + tail for s in seqs] + [engine.chat_prompt([{"role": "user", "content": "New here."}])]
        seqs = [engine.sequence(GenerationRequest(p, PRESETS["greedy"], 8, ignore_eos=True, logprobs=3))
                for p in nexts]
        batch.costs = Costs()  # costs not yet known: prompts are grouped
        forwards.clear()
        batch.add_many(seqs)
        assert [rows for rows, _, _ in forwards] == [4]
        assert [s.cached_tokens > 0 for s in seqs] == [True, True, True, False]
        kv = [batch.slab.row_kv(row) for row in range(4)]
        while len(batch):
            batch.step()
        runs.append((kv, [s.result() for s in seqs]))
    (fast_kv, fast_results), (own_kv, own_results) = runs
    for rows_a, rows_b in zip(fast_kv, own_kv, strict=True):
        for (ka, va), (kb, vb) in zip(rows_a, rows_b, strict=True):
            torch.testing.assert_close(ka, kb, rtol=0, atol=1e-5)
            torch.testing.assert_close(va, vb, rtol=0, atol=1e-5)
    for a, b in zip(fast_results, own_results, strict=True):
        assert a.token_ids == b.token_ids and len(a.token_ids) == 8
        assert [t.logprob for t in a.logprobs] == pytest.approx([t.logprob for t in b.logprobs], abs=1e-5)


def test_models_it_leaves_to_transformers(chat_model, chatml_tokenizer):
    from peft import LoraConfig, get_peft_model

    assert Batch(copy.deepcopy(chat_model).to(torch.bfloat16)).fast is None
    assert Batch(llama(chatml_tokenizer, attention_bias=True)).fast is None
    assert Batch(llama(chatml_tokenizer, hidden_act="gelu")).fast is None
    lora = get_peft_model(copy.deepcopy(chat_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert Batch(lora.base_model.model).fast is None  # an unmerged adapter's layers are not plain Linears
