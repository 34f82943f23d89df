"""Banned strings with backtracking (text-generation-webui's `banned_strings`, KoboldCpp's phrase bans) against a
reference restated from their definition: ExLlamaV2's generator (which text-generation-webui passes them to) and
KoboldCpp compare the reply's text without regard to case, and when a banned string is complete they take the reply
back to the token where it begins and forbid that token there, so the model draws again; a banned string never
appears in the reply, even one spanning several tokens, and text that may be taken back is never streamed."""

import pytest
import torch

from openhermes.infer.batch import Batch
from openhermes.infer.sampling import PRESETS, SamplingParams
from openhermes.infer.sequence import GenerationRequest

GREEDY = PRESETS["greedy"]
QUESTIONS = ["Tell me a story.", "What is 3 + 4? Answer briefly please.", "Repeat exactly: apple river", "hi"]
LENGTH = 40


def reference(model, tokenizer, prompt: list[int], banned: list[str], max_new: int) -> list[int]:
    """The definition, plainly: greedy over the model's whole forward, the whole reply decoded after every token;
    on a banned string (any case), back to the token holding its first character, which is then forbidden there."""
    gen: list[int] = []
    forbidden: dict[int, set[int]] = {}
    head = len(tokenizer.decode(prompt))

    def text(ids):
        return tokenizer.decode(prompt + ids)[head:]

    with torch.no_grad():
        while len(gen) < max_new:
            logits = model(input_ids=torch.tensor([prompt + gen])).logits[0, -1].clone()
            logits[list(forbidden.get(len(gen), ()))] = float("-inf")
            gen.append(int(logits.argmax()))
            reply = text(gen).lower()
            starts = [reply.find(s.lower()) for s in banned if s.lower() in reply]
            if starts:
                start = min(starts)
                k = next(k for k in range(len(gen)) if len(text(gen[:k + 1])) > start)
                forbidden = {p: f for p, f in forbidden.items() if p < k}
                forbidden.setdefault(k, set()).add(gen[k])
                del gen[k:]
    return gen


def spanning(engine, ids: list[int], prompt: list[int]) -> str:
    """A piece of a reply that crosses a token boundary: the end of one token's text and the start of the next."""
    head = len(engine.tokenizer.decode(prompt))
    for k in range(2, len(ids) - 1):
        before = engine.tokenizer.decode(prompt + ids[:k])[head:]
        after = engine.tokenizer.decode(prompt + ids[:k + 1])[head:]
        piece = before[-2:] + after[len(before):len(before) + 2]
        if len(piece) == 4 and piece.strip() == piece and piece.isascii():
            return piece
    pytest.skip("no ASCII piece across a token boundary in this reply")


@pytest.fixture(scope="module")
def plain(engine):
    """Each question's prompt and its greedy reply with nothing banned."""
    prompts = [engine.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    replies = engine.generate([GenerationRequest(p, GREEDY, LENGTH, ignore_eos=True) for p in prompts])
    return prompts, replies


def bans_for(engine, plain) -> list[list[str]]:
    """Per question: a piece across two tokens (in upper case: case does not matter), the first token's text (taken
    back to the prompt), two pieces at once, nothing."""
    (p0, p1, p2, _), (r0, r1, r2, _) = plain
    first = r1.text.strip().split()[0]
    return [[spanning(engine, r0.token_ids, p0).upper()], [first], [spanning(engine, r2.token_ids, p2),
                                                                     r2.text[len(r2.text) // 2:][:3]], []]


def test_replies_equal_the_reference_batched_with_other_rows(engine, chat_model, chatml_tokenizer, plain):
    prompts, replies = plain
    bans = bans_for(engine, plain)
    for r, b in zip(replies, bans, strict=True):  # each ban would be in the reply without it
        assert all(s.lower() in r.text.lower() for s in b)
    requests = [GenerationRequest(p, GREEDY, LENGTH, ignore_eos=True, banned_strings=tuple(b))
                for p, b in zip(prompts, bans, strict=True)]
    for _ in range(2):  # the second time through, prompts and replies come back from the prefix cache
        ours = engine.generate(requests)
        for p, b, r in zip(prompts, bans, ours, strict=True):
            assert r.token_ids == reference(chat_model, chatml_tokenizer, p, b, LENGTH)
            assert not any(s.lower() in r.text.lower() for s in b)
            assert r.completion_tokens == LENGTH
    assert ours[3].token_ids == replies[3].token_ids  # a row with no bans is untouched by its neighbours'


def test_a_row_taken_back_while_others_join_matches_running_alone(engine, plain):
    prompts, _ = plain
    bans = bans_for(engine, plain)
    alone = [engine.generate([GenerationRequest(p, GREEDY, LENGTH, ignore_eos=True, banned_strings=tuple(b))])[0]
             for p, b in zip(prompts, bans, strict=True)]
    seqs = [engine.sequence(GenerationRequest(p, GREEDY, LENGTH, ignore_eos=True, banned_strings=tuple(b)))
            for p, b in zip(prompts, bans, strict=True)]
    batch = Batch(engine.model)  # no prefix cache: rows with masked holes carry on in the batch itself
    batch.add(seqs[0])
    for s in seqs[1:]:
        for _ in range(5):
            batch.step()
        batch.add(s)
    while len(batch):
        batch.step()
    assert [s.generated for s in seqs] == [r.token_ids for r in alone]
    assert seqs[0].taken_back > 0 and seqs[1].taken_back > 0


def test_streamed_text_is_never_taken_back(engine, plain):
    prompts, _ = plain
    bans = bans_for(engine, plain)
    for sampled in (GREEDY, SamplingParams(temperature=0.8, seed=5)):
        for p, b in zip(prompts[:3], bans[:3], strict=True):
            request = GenerationRequest(p, sampled, LENGTH, ignore_eos=True, banned_strings=tuple(b))
            seq = engine.sequence(request)
            sent = []
            seq.on_delta = sent.append
            batch = engine.new_batch()
            batch.add(seq)
            while not seq.done:
                batch.step()
            assert "".join(sent) == seq.result().text  # every delta is final: nothing sent is taken back
            assert not any(s.lower() in seq.result().text.lower() for s in b)


def test_a_stop_string_and_a_banned_string_together(engine, plain):
    prompts, replies = plain
    ban = spanning(engine, replies[0].token_ids, prompts[0])
    reply = engine.generate([GenerationRequest(prompts[0], GREEDY, LENGTH, ignore_eos=True,
                                               banned_strings=(ban,))])[0]
    stop = reply.text[-6:-3]
    both = engine.generate([GenerationRequest(prompts[0], GREEDY, LENGTH, stop=(stop,), ignore_eos=True,
                                              banned_strings=(ban,))])[0]
    assert both.finish_reason == "stop" and both.text == reply.text[:reply.text.find(stop)]


def test_whichever_begins_first_of_a_stop_and_a_banned_string_in_one_token_wins(scripted, chatml_tokenizer):
    """One token completes both: a stop string that begins first ends the reply there (the banned string after it
    is cut away with the rest); a banned string that begins first takes the token back (the stop was in it)."""
    engine, ids = scripted("green yellow violet answer")
    prompt = engine.chat_prompt([{"role": "user", "content": "hi"}])
    k, piece = next((k, t) for k, i in enumerate(ids) if len(t := chatml_tokenizer.decode([i]).strip()) >= 4)
    full = engine.generate([GenerationRequest(prompt, GREEDY, 20)])[0].text
    first, last = piece[:2], piece[-2:]
    stopped = engine.generate([GenerationRequest(prompt, GREEDY, 20, stop=(first,), banned_strings=(last,))])[0]
    assert stopped.finish_reason == "stop" and stopped.stop_string == first
    assert stopped.text == full[:full.find(first)]
    taken = engine.generate([GenerationRequest(prompt, GREEDY, 20, stop=(last,), banned_strings=(first,))])[0]
    assert taken.token_ids[:k] == ids[:k] and taken.token_ids[k] != ids[k]
    assert first.lower() not in taken.text.lower()


def test_the_longest_start_at_the_end_equals_trying_every_length():
    """What is held back: the longest end of the text that is the start (not the whole) of a string, found from the
    starts indexed by their last character, equals trying every length of every string."""
    import random

    from openhermes.infer.sequence import Starts

    rng = random.Random(3)
    for _ in range(300):
        strings = tuple("".join(rng.choice("abc ") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(0, 4)))
        text = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 8)))
        every = max((k for s in strings for k in range(1, len(s)) if k <= len(text) and text.endswith(s[:k])),
                    default=0)
        assert Starts(strings).longest_at_end(text) == every, (strings, text)
