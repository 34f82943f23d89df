"""The llama.cpp engine decodes several sequences in one context, each as it would alone, and reuses a slot's kept
KV for a prompt that continues its conversation (needs llama-cpp-python).

On the trained embedded default (a random model's next-token distributions are nearly flat, so llama.cpp's
float differences between batch shapes would flip its argmax; a model that learned something is what users run)."""

import threading

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[llamacpp]')")

from openhermes.export.gguf import export_gguf  # noqa: E402
from openhermes.infer.llamacpp import N_BATCH, LlamaCppEngine  # noqa: E402
from openhermes.infer.sampling import PRESETS  # noqa: E402
from openhermes.infer.scheduler import Scheduler  # noqa: E402
from openhermes.infer.sequence import GenerationRequest  # noqa: E402
from tests.export.test_llamacpp import chats  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf(embedded_default_run, tmp_path_factory):
    return export_gguf(embedded_default_run / "model", tmp_path_factory.mktemp("slots") / "tiny-f16.gguf", "f16",
                       progress=False)


@pytest.fixture(scope="module")
def engine(gguf):
    return LlamaCppEngine(gguf, parallel=4)


def request(engine, messages, n=20, **kw):
    params = PRESETS["greedy"] if not kw.pop("sample", False) else PRESETS["chatml-default"].with_(seed=kw.pop("seed"))
    return GenerationRequest(engine.chat_prompt(messages), params, n, **kw)


def ask(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Tell me about {topic}."}]


TOPICS = ["apples", "rivers", "sums", "code"]


def long_prompt(engine) -> list[dict]:
    """A prompt longer than one llama_decode batch, so it is fed in chunks while others decode."""
    sentence = "the sun rose over the quiet river and the owls went home. "
    k = 1
    while len(engine.chat_prompt([{"role": "user", "content": sentence * k}])) <= N_BATCH + 100:
        k *= 2
    messages = [{"role": "user", "content": sentence * k}]
    assert len(engine.chat_prompt(messages)) < engine.context_window - 64
    return messages


def test_sequences_decoded_together_equal_each_one_alone(engine):
    """More requests than slots (queued ones join as others finish, rows finish at different steps) and a prompt
    fed in chunks: greedy replies equal token for token; sampled replies (same seeds) take the same tokens and
    their log-probabilities agree within 0.01 (llama.cpp's f16 matmuls round differently for other batch
    shapes: measured max 0.0003)."""
    convs = chats() + [long_prompt(engine)]
    greedy = [request(engine, m, 12 + 4 * i) for i, m in enumerate(convs)]
    sampled = [request(engine, m, 16, sample=True, seed=i, logprobs=3) for i, m in enumerate(convs)]
    alone = [engine.generate([r])[0] for r in greedy + sampled]
    together = engine.generate(greedy + sampled)
    worst = 0.0
    for a, b in zip(alone, together, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
        if a.logprobs is not None:
            worst = max(worst, np.abs(np.subtract([t.logprob for t in a.logprobs],
                                                  [t.logprob for t in b.logprobs])).max())
    assert worst < 0.01
    assert len({r.text for r in together}) > len(convs) // 2  # different prompts, different replies


def test_a_long_prompt_joins_while_others_decode_and_they_keep_streaming(engine):
    """Through the scheduler (the server's worker): while a prompt of several batches is fed, the running
    sequences get a token in every step, and every result equals its request alone."""
    reqs = [request(engine, ask(t), 40, ignore_eos=True) for t in TOPICS[:3]] + [request(engine, long_prompt(engine))]
    alone = [engine.generate([r])[0] for r in reqs]
    steps: list[int] = []
    sched = Scheduler(engine, max_batch_size=4, on_step=steps.append)
    results, done = {}, threading.Event()

    def finish(i):
        def on_done(result):
            results[i] = result
            if len(results) == len(reqs):
                done.set()
        return on_done

    try:
        for i, r in enumerate(reqs):
            sched.submit(r, on_delta=lambda _: None, on_done=finish(i), on_error=lambda m: pytest.fail(m))
        assert done.wait(120)
    finally:
        sched.stop()
    assert [results[i].token_ids for i in range(len(reqs))] == [a.token_ids for a in alone]
    assert max(steps) == 4  # all four in one llama.cpp batch


def test_the_next_turn_prefills_only_what_is_new(gguf):
    engine = LlamaCppEngine(gguf, parallel=2)
    history = ask("owls")
    first = engine.generate([request(engine, history, 16)])[0]
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    turn2 = request(engine, history, 16)
    before = engine.slots.reused_tokens
    warm = engine.generate([turn2])[0]
    reused = engine.slots.reused_tokens - before
    assert reused >= len(engine.chat_prompt(ask("owls")))  # at least the whole first prompt came from the slot
    cold = LlamaCppEngine(gguf, parallel=1).generate([turn2])[0]
    assert warm.token_ids == cold.token_ids


def test_a_cancelled_sequence_frees_its_slot(engine):
    batch = engine.new_batch()
    seqs = [engine.sequence(request(engine, ask(t), 200, ignore_eos=True)) for t in TOPICS[:4]]
    for s in seqs:
        batch.add(s)
    batch.step()
    seqs[1].cancel()
    batch.step()
    assert seqs[1].finish_reason == "cancelled" and len(batch) == 3
    extra = engine.sequence(request(engine, ask("salt"), 200, ignore_eos=True))
    batch.add(extra)  # the freed slot takes it
    batch.step()
    assert len(batch) == 4 and len(extra.generated) == 1


def test_a_step_hands_llama_cpp_its_sequences_in_slot_order(gguf):
    """With a KV cache per sequence, llama.cpp puts only consecutive sequence ids, in batch order, into one
    micro-batch: conversations that come back in another order than their slots must still be fed in slot order
    (else one step becomes several passes over the weights). Their replies equal each one alone."""
    engine = LlamaCppEngine(gguf, parallel=4)
    firsts = engine.generate([request(engine, ask(t), 8) for t in TOPICS])
    turns = [ask(t) + [{"role": "assistant", "content": f.text}, {"role": "user", "content": "More."}]
             for t, f in zip(TOPICS, firsts, strict=True)]
    batch = engine.new_batch()
    seqs = [engine.sequence(request(engine, turns[i], 12)) for i in reversed(range(4))]  # they come back reversed
    for s in seqs:
        batch.add(s)
    assert [r.slot for r in batch.running] == [3, 2, 1, 0]  # each went back to its own conversation's slot
    while len(batch):
        batch.step()
        b = engine.slots.batch.batch
        ids = [b.seq_id[i][0] for i in range(b.n_tokens)]
        assert ids == sorted(ids), ids
    alone = LlamaCppEngine(gguf, parallel=1)
    assert [s.result().token_ids for s in seqs] == \
        [alone.generate([request(alone, turns[i], 12)])[0].token_ids for i in reversed(range(4))]


def test_min_tokens_rows_pick_what_the_sampler_picks(engine):
    """Greedy rows under min_tokens are picked on the batch's fast path with their stop tokens removed: the same
    replies as the sampler's path (forced by a zero logit bias, same logits), and no stop before min_tokens."""
    plain = engine.generate([request(engine, ask(t), 24) for t in TOPICS])
    fast = engine.generate([request(engine, ask(t), 24, min_tokens=16) for t in TOPICS])
    slow_params = PRESETS["greedy"].with_(logit_bias=((5, 0.0),))
    slow = engine.generate([GenerationRequest(engine.chat_prompt(ask(t)), slow_params, 24, min_tokens=16)
                            for t in TOPICS])
    assert [r.token_ids for r in fast] == [r.token_ids for r in slow]
    assert all(r.completion_tokens >= 16 for r in fast)
    assert any(r.completion_tokens < 16 for r in plain)  # the trained model stops sooner by itself


def test_banned_strings_cut_the_slots_kv_and_equal_each_one_alone(engine):
    """A banned word of each reply: taken back (the slot's KV cut back in llama.cpp), drawn again, never in the
    reply; four rows at once equal each one alone, and what came before the word is kept."""
    plain = engine.generate([request(engine, ask(t), 24, ignore_eos=True) for t in TOPICS])
    words = [max(r.text.split(), key=len) for r in plain]  # a word each reply has (the longest: several tokens)
    banned = [request(engine, ask(t), 24, ignore_eos=True, banned_strings=(w.upper(),))
              for t, w in zip(TOPICS, words, strict=True)]
    together = engine.generate(banned)
    alone = [engine.generate([r])[0] for r in banned]
    for p, w, a, b in zip(plain, words, alone, together, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text
        assert w.lower() not in b.text.lower() and b.text != p.text
        before = p.text[:p.text.lower().find(w.lower())].rsplit(" ", 1)[0]
        assert b.text.startswith(before)
