"""Prefix reuse across requests: a chat client resends the whole history each turn; the engine prefills only
the new part, with the same result as a cold prefill."""

import pytest

from openhermes.infer.engine import Engine
from openhermes.infer.prefix_cache import PrefixCache
from openhermes.infer.sampling import PRESETS
from openhermes.infer.sequence import GenerationRequest

SYSTEM = {"role": "system", "content": "You are Aria, a knight of the northern march. " * 6}


def _turns(engine, n_turns=4, reply_tokens=12):
    """A client's conversation: each request is the whole history plus a new user message."""
    history, outs = [SYSTEM], []
    for t in range(n_turns):
        history.append({"role": "user", "content": f"Turn {t}: tell me about the castle and the river {t}."})
        req = GenerationRequest(engine.chat_prompt(history), PRESETS["greedy"], reply_tokens, logprobs=3)
        (res,) = engine.generate([req])
        outs.append(res)
        history.append({"role": "assistant", "content": res.text})
    return outs


def test_reused_prefixes_give_the_cold_prefill_result(chat_model, chatml_tokenizer):
    cold = Engine(chat_model, chatml_tokenizer, prefix_cache_mb=0)
    warm = Engine(chat_model, chatml_tokenizer, prefix_cache_mb=64)
    a, b = _turns(cold), _turns(warm)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    for ra, rb in zip(a, b, strict=True):
        for la, lb in zip(ra.logprobs, rb.logprobs, strict=True):
            assert la.token == lb.token and la.logprob == pytest.approx(lb.logprob, abs=1e-4)
    cache = warm.prefix_cache
    prompt_lengths = [r.prompt_tokens for r in b]
    assert cache.hits == 3  # every turn after the first
    assert cache.reused_tokens >= sum(prompt_lengths[:-1])  # each turn reused at least the previous prompt


def test_replies_with_reuse_carry_the_models_own_log_probabilities(chat_model, chatml_tokenizer):
    """Independent of our batch code: each reply's log-probabilities equal transformers' forward over the whole
    prompt + reply (a wrong position or a stale key in the reused or decoded part shows up here)."""
    import torch

    warm = Engine(chat_model, chatml_tokenizer, prefix_cache_mb=64)
    history = [SYSTEM]
    for t in range(3):
        history.append({"role": "user", "content": f"Turn {t}: the gate {t}."})
        prompt = warm.chat_prompt(history)
        (res,) = warm.generate([GenerationRequest(prompt, PRESETS["greedy"], 12, ignore_eos=True, logprobs=1)])
        with torch.no_grad():
            logp = chat_model(torch.tensor([prompt + res.token_ids])).logits[0].float().log_softmax(-1)
        expected = [logp[len(prompt) - 1 + i, token].item() for i, token in enumerate(res.token_ids)]
        assert [e.logprob for e in res.logprobs] == pytest.approx(expected, abs=1e-4)
        history.append({"role": "assistant", "content": res.text})
    assert warm.prefix_cache.hits == 2


def test_lru_keeps_the_cache_under_its_budget(chat_model, chatml_tokenizer):
    engine = Engine(chat_model, chatml_tokenizer, prefix_cache_mb=0.2)
    for i in range(12):
        prompt = engine.chat_prompt([{"role": "user", "content": f"conversation {i}: " + "words " * 40}])
        engine.generate([GenerationRequest(prompt, PRESETS["greedy"], 4)])
    cache = engine.prefix_cache
    assert 0 < cache.bytes <= cache.budget
    assert len(cache.entries) < 12  # the oldest went first


def test_lookup_never_takes_the_whole_prompt():
    import torch

    cache = PrefixCache(16)
    ids = list(range(40))
    kv = [(torch.randn(1, 2, 40, 4), torch.randn(1, 2, 40, 4))]
    cache.store(ids, kv)
    n, layers = cache.lookup(ids)
    assert n == 39 and layers[0][0].shape[2] == 39  # one token left to compute its logits
    assert torch.equal(layers[0][0], kv[0][0][:, :, :39])
    assert cache.lookup(list(range(100, 140))) is None
    n, _ = cache.lookup(ids[:30] + [999] * 10)
    assert n == 30


def test_a_longer_entry_replaces_its_prefixes_and_lookup_takes_the_longest_shared():
    """A chat's next turn (prompt + reply) makes the previous entry redundant; entries that only share a beginning
    stay, and ids above 255 are told apart (entries are keyed by the ids' bytes)."""
    import torch

    def kv(n):
        return [(torch.arange(n, dtype=torch.float32).view(1, 1, n, 1), torch.zeros(1, 1, n, 1))]

    cache = PrefixCache(16)
    first = list(range(300, 340))
    cache.store(first, kv(40), owned=True)
    longer = first + [7, 8, 9]
    cache.store(longer, kv(43), owned=True)
    assert len(cache.entries) == 1  # `first` is a prefix of `longer`: dropped
    branch = first[:30] + [1] * 20
    cache.store(branch, kv(50), owned=True)
    assert len(cache.entries) == 2  # shares a beginning only: kept
    n, layers = cache.lookup(longer + [5])
    assert n == 43 and torch.equal(layers[0][0].flatten(), torch.arange(43, dtype=torch.float32))
    assert cache.lookup(first[:30] + [1] * 12 + [2])[0] == 42
    assert cache.lookup([300 + 256, *first[1:]]) is None  # differs in the first id only (300 vs 556)


def test_a_reply_is_kept_even_when_the_server_cancels_its_request_first(chat_model, chatml_tokenizer):
    """A server cancels every request once its response is sent, which can come before the batch drops the
    finished row: the reply's KV must still be kept, so the next turn (prompt + reply + new message) reuses it."""
    engine = Engine(chat_model, chatml_tokenizer, prefix_cache_mb=64)
    prompt = engine.chat_prompt([SYSTEM, {"role": "user", "content": "Tell me about the gate."}])
    seqs = []

    def cancel_on_done(result):
        seqs[0].cancel()  # as the HTTP side does in its finally, on another thread, as soon as it has the result

    seqs.append(engine.sequence(GenerationRequest(prompt, PRESETS["greedy"], 10, ignore_eos=True),
                                on_done=cancel_on_done))
    other = engine.sequence(GenerationRequest(prompt[:-3], PRESETS["greedy"], 30, ignore_eos=True))
    batch = engine.new_batch()
    batch.add(seqs[0])
    batch.add(other)  # still running when the first finishes: the first row leaves a batch that goes on
    while len(batch):
        batch.step()
    first = seqs[0].result()
    assert first.finish_reason == "length" and len(first.token_ids) == 10
    next_turn = prompt + first.token_ids + chatml_tokenizer.encode("<|im_end|>\n", add_special_tokens=False)
    n, _ = engine.prefix_cache.lookup(next_turn)
    assert n == len(prompt) + 9  # all but the last reply token, whose KV a finished row never computes


def test_next_turns_prefilled_together_equal_each_alone(chat_model, chatml_tokenizer, forwards):
    """Several clients' next turns join at once: their new parts (after prefixes of different lengths, and one
    conversation with nothing cached, whose padding has nothing real before it) are computed in one forward,
    with each reply what a cold prefill of its prompt alone gives."""
    cold = Engine(chat_model, chatml_tokenizer, prefix_cache_mb=0)
    warm = Engine(chat_model, chatml_tokenizer, prefix_cache_mb=64)
    histories = [[SYSTEM, {"role": "user", "content": "Tell me about the river. " * k}] for k in (1, 3, 6)]
    for h in histories:  # turn 1, one at a time: its prompt and reply are cached
        (r,) = warm.generate([GenerationRequest(warm.chat_prompt(h), PRESETS["greedy"], 8)])
        h += [{"role": "assistant", "content": r.text}, {"role": "user", "content": "And the gate?"}]
    histories.append([{"role": "user", "content": "New here."}])
    prompts = [warm.chat_prompt(h) for h in histories]
    reqs = [GenerationRequest(p, PRESETS["greedy"], 12, ignore_eos=True, logprobs=2) for p in prompts]
    batch = warm.new_batch()
    seqs = [warm.sequence(r) for r in reqs]
    forwards.clear()
    batch.add_many(seqs)
    assert [rows for rows, _, _ in forwards] == [4]  # one forward for the four prefills
    assert [s.cached_tokens > 0 for s in seqs] == [True, True, True, False]
    while len(batch):
        batch.step()
    for seq, req in zip(seqs, reqs, strict=True):
        (alone,) = cold.generate([req])
        got = seq.result()
        assert got.token_ids == alone.token_ids
        assert [t.logprob for t in got.logprobs] == pytest.approx([t.logprob for t in alone.logprobs], abs=1e-4)


@pytest.mark.parametrize(("per_token", "shared"), [(1e-5, True), (1e-3, False)])
def test_prompts_share_a_forward_only_where_it_pays(chat_model, chatml_tokenizer, per_token, shared, forwards):
    """In a shared forward everyone waits for the whole group: prompts whose own compute is below a forward's fixed
    cost (a decode step, measured) go together; heavier ones go alone, shortest first."""
    engine = Engine(chat_model, chatml_tokenizer, prefix_cache_mb=0)
    prompts = [engine.chat_prompt([{"role": "user", "content": "word " * k}]) for k in (3, 5, 8)]
    batch = engine.new_batch()
    batch.costs.stepped(0.004)  # 4 ms a step; at 1e-3 s a token a 20-token prompt alone costs 20 ms
    batch.costs.prefilled(100, 0.004 + 100 * per_token)
    seqs = [engine.sequence(GenerationRequest(p, PRESETS["greedy"], 4, ignore_eos=True)) for p in reversed(prompts)]
    batch.add_many(seqs)
    lengths = sorted(len(p) for p in prompts)
    calls = [(rows, tokens) for rows, tokens, _ in forwards]
    assert calls == ([(3, lengths[-1])] if shared else [(1, n) for n in lengths])  # alone: shortest first
    while len(batch):
        batch.step()
    assert [s.result().token_ids for s in seqs] == [engine.generate([s.request])[0].token_ids for s in seqs]


def test_a_reply_stopped_by_its_user_is_kept_for_the_resend(chat_model, chatml_tokenizer):
    """A user stops a reply (the client disconnects) and sends the conversation again with what was shown: the
    prompt and the partial reply are not computed again."""
    engine = Engine(chat_model, chatml_tokenizer, prefix_cache_mb=64)
    prompt = engine.chat_prompt([SYSTEM, {"role": "user", "content": "Describe the northern march."}])
    seq = engine.sequence(GenerationRequest(prompt, PRESETS["greedy"], 50, ignore_eos=True))
    batch = engine.new_batch()
    batch.add(seq)
    for _ in range(6):
        batch.step()
    seq.cancel()
    batch.step()
    assert seq.result().finish_reason == "cancelled" and len(seq.generated) == 7
    n, _ = engine.prefix_cache.lookup(prompt + seq.generated + [5, 6])
    assert n == len(prompt) + 6  # the last token shown was never fed: its KV does not exist
