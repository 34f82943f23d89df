"""The engine and the scorer on a CUDA GPU in bf16; skipped cleanly without one."""

import copy

import pytest
import torch

from openhermes.eval.score import LLRequest, Scorer
from openhermes.infer.engine import Engine
from openhermes.infer.sampling import PRESETS, SamplingParams
from openhermes.infer.sequence import GenerationRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_engine_in_bf16_on_gpu_stops_and_streams(scripted):
    cpu_engine, _ = scripted("Answer briefly<|im_end|><|im_start|>user")
    gpu = Engine(cpu_engine.model.to("cuda", torch.bfloat16), cpu_engine.tokenizer)
    prompt = gpu.chat_prompt([{"role": "user", "content": "hi"}])
    r = gpu.generate([GenerationRequest(prompt, PRESETS["greedy"], 20)])[0]
    assert (r.text, r.finish_reason) == (" Answer briefly", "stop")
    sampled = GenerationRequest(prompt, SamplingParams(temperature=1.0, seed=3), 20, ignore_eos=True)
    assert "".join(gpu.stream(sampled)) == gpu.generate([sampled])[0].text


def test_scorer_on_gpu_agrees_with_the_cpu(chat_model, chatml_tokenizer):
    requests = [LLRequest("Question: What is 2 + 2?\nAnswer:", c) for c in (" 4", " four", " five hundred")]
    cpu = Scorer(chat_model, chatml_tokenizer, progress=False).loglikelihood(requests)
    gpu_model = copy.deepcopy(chat_model).to("cuda")
    gpu = Scorer(gpu_model, chatml_tokenizer, progress=False).loglikelihood(requests)
    assert [g.logprob for g in gpu] == pytest.approx([c.logprob for c in cpu], abs=1e-3)
    bf16 = Scorer(gpu_model.to(torch.bfloat16), chatml_tokenizer, progress=False).loglikelihood(requests)
    assert [g.logprob for g in bf16] == pytest.approx([c.logprob for c in cpu], abs=0.25)
