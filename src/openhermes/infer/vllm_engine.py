"""The vLLM engine (`--engine vllm`): a model folder run by vLLM on one GPU or several.

vLLM computes the tokens (paged attention, automatic prefix caching, CUDA graphs, tensor parallelism);
everything around them stays ours, as with the llama.cpp engine: prompts are encoded by the folder's
tokenizer exactly as the torch engine encodes them and handed to vLLM as token ids; each request's
settings become vLLM's SamplingParams, with our sampler chain as a vLLM logits processor where vLLM's
own would compute something else (infer/vllm_params.py, infer/vllm_logits.py); the reply's tokens come
back one step at a time into our Sequence, which decodes the text, matches the stop strings and
streams, so routes, schemas, errors and metrics are the same for every engine.

vLLM's synchronous LLMEngine is driven by our scheduler's thread, one `step()` per decode step.
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from pathlib import Path

from openhermes.infer.engine import TokenizerEngine
from openhermes.infer.sequence import Sequence, TokenLogprob
from openhermes.infer.vllm_params import check, to_vllm


class EngineUnavailable(RuntimeError):
    pass


def require_vllm() -> None:
    """Fail before anything is loaded when vLLM or a CUDA GPU is missing."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise EngineUnavailable("the vLLM engine needs vLLM on a machine with an NVIDIA GPU: pip install "
                                "'openhermes[vllm]' (it brings its own CUDA build of PyTorch)") from None
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailable("the vLLM engine needs a CUDA GPU, and PyTorch sees none here; use --engine torch "
                                "or --engine llama.cpp on a CPU")


class VllmEngine(TokenizerEngine):
    # vLLM's scheduler owns the KV and the tokens it has drawn: a reply cannot be taken back (banned strings)
    takes_back = False

    def __init__(self, model: str | Path, *, name: str | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, max_batch_size: int = 256,
                 add_bos: bool | None = None, enforce_eager: bool = False, seed: int = 0, dtype: str = "bfloat16"):
        """dtype: bf16 by default, as the torch engine loads a model on a GPU (an fp32 folder too)."""
        require_vllm()
        from transformers import AutoTokenizer, GenerationConfig
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        from openhermes.infer.vllm_logits import OpenHermesSampling

        path = str(model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        try:
            eos = GenerationConfig.from_pretrained(path).eos_token_id
        except OSError:  # a folder without generation_config.json
            eos = None
        args = EngineArgs(model=path, tokenizer=path, tensor_parallel_size=tensor_parallel_size,
                          gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                          max_num_seqs=max_batch_size, enable_prefix_caching=True, enforce_eager=enforce_eager, dtype=dtype,
                          logits_processors=[OpenHermesSampling], seed=seed, logprobs_mode="raw_logprobs")
        llm = LLMEngine.from_engine_args(args)
        self._attach(llm, tokenizer, eos, name=name or Path(path).name, max_batch_size=max_batch_size,
                     context_window=llm.model_config.max_model_len, vocab_size=llm.model_config.get_vocab_size(),
                     add_bos=add_bos)

    def _attach(self, llm, tokenizer, eos, *, name: str, max_batch_size: int, context_window: int, vocab_size: int,
                add_bos: bool | None = None, device: str = "cuda") -> None:
        """Everything but vLLM's start: `llm` is an LLMEngine (tests on a CPU give a stand-in with its methods)."""
        self.llm = llm
        self.name = name
        self.device = device
        self.max_batch_size = max_batch_size
        self.context_window = context_window
        self.n_vocab = vocab_size
        self._use_tokenizer(tokenizer, eos, add_bos)
        self._ids = itertools.count()
        self._lock = threading.Lock()  # one caller steps vLLM at a time
        self._outputs: dict[str, list] = defaultdict(list)  # outputs stepped out, by request id, not yet read
        self._live: set[str] = set()  # submitted, neither finished nor aborted

    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    def check_params(self, params) -> None:
        check(params)

    def _grammar(self, response_format: dict):
        from openhermes.infer.structured import SchemaConstraint

        return SchemaConstraint(response_format)  # vLLM's guidance backend compiles it

    def new_batch(self) -> VllmBatch:
        return VllmBatch(self)

    # ---- vLLM, shared by the batch and one-off calls ----------------------------------------------
    def submit(self, ids: list[int], params) -> str:
        from vllm.inputs import TokensPrompt

        rid = f"oh-{next(self._ids)}"
        with self._lock:
            self.llm.add_request(rid, TokensPrompt(prompt_token_ids=list(ids)), params)
            self._live.add(rid)
        return rid

    def abort(self, rids: list[str]) -> None:
        with self._lock:
            self.llm.abort_request(list(rids))
            for rid in rids:
                self._live.discard(rid)
                self._outputs.pop(rid, None)

    def abort_all(self) -> None:
        """Every request still in vLLM (a new batch after a failed step owns none of them)."""
        with self._lock:  # step() changes the set
            live = list(self._live)
        self.abort(live)

    def step(self) -> None:
        with self._lock:
            if self.llm.has_unfinished_requests():
                for out in self.llm.step():
                    if out.request_id in self._live:  # not one aborted since
                        self._outputs[out.request_id].append(out)
                        if out.finished:
                            self._live.discard(out.request_id)

    def take(self, rid: str) -> list:
        with self._lock:
            return self._outputs.pop(rid, [])

    def run(self, prompts: list[tuple[list[int], object]]) -> list:
        """Each (ids, SamplingParams) to the end; their final outputs in order (eval, prompt log-probs)."""
        rids = [self.submit(ids, params) for ids, params in prompts]
        final: dict[str, object] = {}
        while len(final) < len(rids):
            self.step()
            for rid in rids:
                for out in self.take(rid):
                    if out.finished:
                        final[rid] = out
        return [final[rid] for rid in rids]

    def prompt_logprobs(self, ids: list[int], top: int) -> list:
        from vllm import SamplingParams

        out = self.run([(ids, SamplingParams(max_tokens=1, prompt_logprobs=max(top, 0), detokenize=False))])[0]
        result: list = [None]
        for token, entries in zip(ids[1:], out.prompt_logprobs[1:], strict=True):
            ranked = sorted(((t, e.logprob) for t, e in entries.items() if e.rank is not None and e.rank <= top),
                            key=lambda pair: -pair[1])
            result.append(TokenLogprob(token, entries[token].logprob, tuple(ranked[:top])))
        return result


class VllmBatch:
    """The Batch interface (add, step, len, rows) over vLLM's running requests: each step is one vLLM step,
    whose new tokens are pushed into our Sequences."""

    def __init__(self, engine: VllmEngine):
        self.engine = engine
        engine.abort_all()  # the scheduler's restart after a failure: what vLLM still holds is no one's
        self.running: dict[str, Sequence] = {}

    @property
    def rows(self) -> list[Sequence]:
        return list(self.running.values())

    def __len__(self) -> int:
        return len(self.running)

    def add_many(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self.add(seq)

    def add(self, seq: Sequence) -> None:
        if seq.cancelled.is_set():
            seq.finish_cancelled()
            return
        params = to_vllm(seq.request, self.engine.stop_ids, breaker_ids=seq.sampler.breakers)
        self.running[self.engine.submit(seq.ids, params)] = seq

    def step(self) -> None:
        cancelled = [rid for rid, seq in self.running.items() if seq.cancelled.is_set() and not seq.done]
        if cancelled:
            self.engine.abort(cancelled)
            for rid in cancelled:
                self.running[rid].finish_cancelled()
        if any(not seq.done for seq in self.running.values()):
            self.engine.step()
        finished_early = []
        for rid, seq in self.running.items():
            for out in self.engine.take(rid):
                self._take(seq, out)
                if seq.done and not out.finished:
                    finished_early.append(rid)  # our stop string, or our cancel: vLLM would go on
                    break
                if out.finished and not seq.done:  # vLLM's own limit (its max_model_len)
                    seq.finish("length")
        if finished_early:
            self.engine.abort(finished_early)
        self.running = {rid: seq for rid, seq in self.running.items() if not seq.done}

    @staticmethod
    def _take(seq: Sequence, out) -> None:
        if out.num_cached_tokens and not seq.cached_tokens:
            seq.cached_tokens = out.num_cached_tokens
        reply = out.outputs[0]
        k = seq.request.logprobs
        for i, token in enumerate(reply.token_ids):
            if seq.logprobs is not None and reply.logprobs is not None:
                entries = reply.logprobs[i]
                top = sorted(((t, e.logprob) for t, e in entries.items() if e.rank is not None and e.rank <= k),
                             key=lambda pair: -pair[1])[:k]
                seq.logprobs.append(TokenLogprob(token, entries[token].logprob, tuple(top)))
            seq.push(token)
            if seq.done:
                return
