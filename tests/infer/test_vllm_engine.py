"""--engine vllm on a GPU: vLLM's engine against our torch engine on the same model folder.

Needs a CUDA GPU and vLLM (the vllm extra); skips otherwise (CI has neither). The model: the folder in
OPENHERMES_VLLM_MODEL (e.g. runs/tiny/model after `openhermes train`), else the tests' small chat model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
pytest.importorskip("vllm", reason="needs vLLM (pip install 'openhermes[vllm]')")

from openhermes.formats import Message  # noqa: E402
from openhermes.formats.base import Roleplay  # noqa: E402
from openhermes.infer.engine import Engine  # noqa: E402
from openhermes.infer.sampling import PRESETS, SamplingParams  # noqa: E402
from openhermes.infer.sequence import GenerationRequest  # noqa: E402
from openhermes.infer.vllm_engine import VllmEngine  # noqa: E402
from openhermes.infer.vllm_params import UnsupportedSampler  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def folder(request) -> Path:
    env = os.environ.get("OPENHERMES_VLLM_MODEL")
    return Path(env) if env else request.getfixturevalue("chat_model_dir")


@pytest.fixture(scope="module")
def engines(folder):
    ours = Engine.load(folder, device="cuda")  # bf16, as VllmEngine's default
    theirs = VllmEngine(folder, gpu_memory_utilization=0.3, max_batch_size=32, enforce_eager=True)
    return ours, theirs


def prompts(engine) -> list[list[int]]:
    chats = [engine.chat_prompt([Message("user", q)]) for q in
             ("What is 3 + 4?", "Copy: red blue green", "Write a Python function that adds two numbers.",
              "Hello! Who are you?", "What is the capital of France?", "Say something kind.")]
    rp = Roleplay(char_name="Aria", user_name="Sam", char_persona="A cheerful knight.", user_persona="A traveller.",
                  scenario="A tavern.")
    roleplays = [engine.roleplay_prompt(rp, [Message("user", "Hello there, Aria.")], length)
                 for length in ("tiny", "short", "medium", "long")]
    return chats + roleplays


def test_greedy_replies_equal_our_torch_engines(engines):
    ours, theirs = engines
    ids = prompts(ours)
    assert ids == prompts(theirs)  # ChatML and LimaRP prompts encoded alike
    reqs = [GenerationRequest(p, GREEDY, max_new_tokens=24) for p in ids]
    a = ours.generate(reqs)
    b = theirs.generate(reqs)
    same = [x.token_ids == y.token_ids for x, y in zip(a, b, strict=True)]
    print(f"greedy replies equal: {sum(same)}/{len(same)}")
    assert all(same), [(x.text, y.text) for x, y, s in zip(a, b, same, strict=True) if not s]
    assert [x.text for x in a] == [y.text for y in b]


def test_our_samplers_run_inside_vllm_seeded(engines):
    _, theirs = engines
    prompt = prompts(theirs)[-1]
    for name in ("limarp", "limarp-dry", "creative-xtc", "chatml-default"):
        params = PRESETS[name].with_(seed=11)
        first, second = theirs.generate([GenerationRequest(prompt, params, max_new_tokens=24)] * 2)
        assert first.completion_tokens > 0 and first.token_ids == second.token_ids, name


def test_stop_strings_and_streaming_are_ours(engines):
    ours, theirs = engines
    prompt = prompts(theirs)[0]
    full = theirs.generate([GenerationRequest(prompt, GREEDY, max_new_tokens=24)])[0].text
    assert len(full) > 4
    stop = full[2:4]
    cut = theirs.generate([GenerationRequest(prompt, GREEDY, max_new_tokens=24, stop=(stop,))])[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)] and cut.stop_string == stop
    assert "".join(theirs.stream(GenerationRequest(prompt, GREEDY, max_new_tokens=24))) == full


def test_mirostat_is_refused(engines):
    _, theirs = engines
    with pytest.raises(UnsupportedSampler, match="mirostat"):
        theirs.check_params(PRESETS["mirostat"])


def test_prompt_logprobs_match_the_torch_engine(engines):
    ours, theirs = engines
    ids = prompts(ours)[0]
    a, b = ours.prompt_logprobs(ids, 2), theirs.prompt_logprobs(ids, 2)
    assert a[0] is None and b[0] is None
    for x, y in zip(a[1:], b[1:], strict=True):
        assert x.token == y.token and abs(x.logprob - y.logprob) < 0.1  # bf16 in two engines' kernels


def test_eval_loglikelihoods_match_the_torch_scorer(engines):
    from openhermes.eval.score import LLRequest, Scorer
    from openhermes.eval.vllm_score import VllmScorer

    ours, theirs = engines
    reqs = [LLRequest("Question: what is 3 + 4?\nAnswer:", c) for c in (" 7", " 8", " seven")]
    reqs += [LLRequest("The capital of France is", c) for c in (" Paris", " London")]
    a = Scorer(ours.model, ours.tokenizer, progress=False).loglikelihood(reqs)
    b = VllmScorer(theirs, progress=False).loglikelihood(reqs)
    for x, y in zip(a, b, strict=True):
        assert abs(x.logprob - y.logprob) < 0.1 and x.is_greedy == y.is_greedy
