"""Log-likelihoods from vLLM's prompt log-probabilities (`openhermes eval --engine vllm`).

lm-evaluation-harness's vLLM backend scores the same way: context + continuation go in as one prompt
with `prompt_logprobs=1` and one token to generate; the continuation's log-probability is the sum of
its tokens' entries, and it is greedy when each of them is ranked first. Tokenization and the cut of an
over-long request are Scorer's (eval/score.py), so the requests are the torch engine's; vLLM's prefix
cache serves a question's shared context to its choices.
"""

from __future__ import annotations

from openhermes.eval.score import LLResult, Scorer


class VllmScorer(Scorer):
    def __init__(self, engine, *, add_bos: bool = False, batch_size: int = 32, progress: bool = True):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.add_bos = add_bos
        self.batch_size = batch_size
        self.progress = progress
        # vLLM takes the continuation's last token into the prompt and generates one more: two tokens less
        # than the window, where the torch scorer feeds max_length (that token is only a target there).
        self.max_length = engine.context_window - 2

    def _score_batch(self, batch, results, bar) -> None:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=1, detokenize=False)
        work = [(i, list(ctx), list(cont)) for ctx, items in batch for i, cont in items]
        outs = self.engine.run([(ctx + cont, params) for _, ctx, cont in work])
        for (i, ctx, cont), out in zip(work, outs, strict=True):
            ids = ctx + cont
            entries = [out.prompt_logprobs[j][ids[j]] for j in range(len(ctx), len(ids))]
            results[i] = LLResult(sum(e.logprob for e in entries), all(e.rank == 1 for e in entries))
        bar.update(len(work))
