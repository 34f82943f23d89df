"""The scorer against a plain full-sequence computation with transformers."""

import pytest
import torch

from openhermes.eval.score import LLRequest, Scorer

REQUESTS = [LLRequest("Question: What is 2 + 2?\nAnswer:", " 4"), LLRequest("Question: What is 2 + 2?\nAnswer:", " four"),
            LLRequest("Question: What is 2 + 2?\nAnswer:", " five hundred and twelve"),
            LLRequest("The colour of the sky is ", "blue"),  # trailing space moves into the continuation
            LLRequest("héllo wörld", " 😀 done"), LLRequest("", "Hello")]


def reference(model, tok, context, continuation):
    """lm-evaluation-harness's definition, computed naively: one forward over context + continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok.encode(context + continuation, add_special_tokens=False)
    ctx = tok.encode(context, add_special_tokens=False) or [tok.eos_token_id]
    cont = whole[len(tok.encode(context, add_special_tokens=False)):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    rows = logp[len(ctx) - 1: len(ctx) - 1 + len(cont)]
    target = torch.tensor(cont)
    return rows.gather(-1, target[:, None]).sum().item(), bool((rows.argmax(-1) == target).all())


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_loglikelihoods_equal_a_full_forward(chat_model, chatml_tokenizer, batch_size):
    scorer = Scorer(chat_model, chatml_tokenizer, batch_size=batch_size, progress=False)
    got = scorer.loglikelihood(REQUESTS)
    for r, g in zip(REQUESTS, got, strict=True):
        lp, greedy = reference(chat_model, chatml_tokenizer, r.context, r.continuation)
        assert g.logprob == pytest.approx(lp, abs=1e-4) and g.is_greedy == greedy


def test_trailing_space_moves_into_the_continuation(chatml_tokenizer, chat_model):
    scorer = Scorer(chat_model, chatml_tokenizer, progress=False)
    assert scorer.encode_pair("A: ", "x") == scorer.encode_pair("A:", " x")


def test_bos_only_when_asked(chatml_tokenizer, chat_model):
    ctx, _ = Scorer(chat_model, chatml_tokenizer, progress=False).encode_pair("Question:", " yes")
    ctx_bos, _ = Scorer(chat_model, chatml_tokenizer, add_bos=True, progress=False).encode_pair("Question:", " yes")
    assert ctx[0] != chatml_tokenizer.bos_token_id and ctx_bos == (chatml_tokenizer.bos_token_id, *ctx)


def harness_window_loglikelihood(model, ctx: list[int], cont: list[int], max_length: int) -> float:
    """lm-evaluation-harness b281b09's cut, restated: the model sees (context + continuation)[-(max_length + 1):]
    less its last token, and the continuation is scored on the last len(continuation) positions."""
    inp = (ctx + cont)[-(max_length + 1):][:-1]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([inp])).logits[0].float(), -1)
    rows = logp[len(inp) - len(cont):]
    return rows.gather(-1, torch.tensor(cont)[:, None]).sum().item()


def test_a_question_longer_than_the_window_is_cut_per_choice_as_the_harness_cuts_it(chat_model, chatml_tokenizer):
    import copy

    window = 24
    model = copy.deepcopy(chat_model)
    model.config.max_position_embeddings = window  # a small model's window: the questions below do not fit
    context = "Passage: " + " ".join(["the river runs past the old stone mill"] * 6) + "\nQuestion: where?\nAnswer:"
    choices = [" by the mill", " past the old stone bridge over the water", " here"]
    requests = [LLRequest(context, c) for c in choices]
    scorer = Scorer(model, chatml_tokenizer, progress=False)
    got = [r.logprob for r in scorer.loglikelihood(requests)]
    lengths = set()
    for r, g in zip(requests, got, strict=True):
        ctx, cont = scorer.encode_pair(r.context, r.continuation)
        assert len(ctx) + len(cont) > window + 1  # every request is over the window
        lengths.add(len(cont))
        assert g == pytest.approx(harness_window_loglikelihood(model, list(ctx), list(cont), window), abs=1e-4)
    assert len(lengths) == 3  # choices of different lengths keep different amounts of context


def test_a_continuation_longer_than_the_window_is_refused(chat_model, chatml_tokenizer):
    import copy

    model = copy.deepcopy(chat_model)
    model.config.max_position_embeddings = 8
    with pytest.raises(ValueError, match="more than the model's window of 8"):
        Scorer(model, chatml_tokenizer, progress=False).loglikelihood([LLRequest("Q:", " " + "word " * 20)])
