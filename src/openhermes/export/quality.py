"""What a quantized GGUF loses, measured through llama.cpp as its perplexity tool does: the file's
perplexity on a text, and the mean KL divergence of its next-token distributions from the f16 file's
(llama-perplexity --kl-divergence), plus how often both pick the same top token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Quality:
    path: Path
    size_bytes: int
    tokens: int
    perplexity: float
    kl_mean: float  # nats per token, against the reference file
    kl_p99: float
    top1_agreement: float


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _logprobs(path: Path, chunks: list[list[int]], n_ctx: int) -> list[np.ndarray]:
    """Each chunk's next-token log-probabilities from the file, through llama.cpp (one pass per chunk)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0)
    out = []
    for ids in chunks:
        llm.reset()
        llm.eval(ids)
        out.append(_log_softmax(np.asarray(llm.scores[:len(ids)], dtype=np.float64)))
    return out


def chunk_tokens(reference: Path, text: str, n_ctx: int = 512) -> list[list[int]]:
    """The text tokenized by the reference file, cut into windows of n_ctx tokens (each with BOS first,
    as llama-perplexity does). Control tokens spelled in the text (`<|im_start|>`) are read as those
    tokens, so a chat-formatted text is measured as the model sees chats."""
    import llama_cpp

    llm = llama_cpp.Llama(str(reference), n_ctx=n_ctx, vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    bos = llm.token_bos()
    step = n_ctx - 1
    return [[bos, *ids[i:i + step]] for i in range(0, len(ids), step) if len(ids[i:i + step]) > 1]


def measure(files: list[Path], reference: Path, text: str, n_ctx: int = 512) -> list[Quality]:
    """Perplexity and KL divergence from `reference` for each file, on the same tokens. The first half of
    each window is context only (as llama-perplexity scores the second half)."""
    chunks = chunk_tokens(reference, text, n_ctx)
    if not chunks:
        raise ValueError("the text is too short to measure (fewer than 2 tokens)")
    ref = _logprobs(reference, chunks, n_ctx)
    results = []
    for path in files:
        lp = ref if Path(path) == Path(reference) else _logprobs(path, chunks, n_ctx)
        nll, kls, same = [], [], []
        for ids, p, q in zip(chunks, ref, lp, strict=True):
            first = max(1, len(ids) // 2)
            targets = np.asarray(ids[first:])
            rows = np.arange(first - 1, len(ids) - 1)
            nll.append(-q[rows, targets])
            kls.append((np.exp(p[rows]) * (p[rows] - q[rows])).sum(axis=-1))
            same.append(p[rows].argmax(-1) == q[rows].argmax(-1))
        nll, kl, agree = np.concatenate(nll), np.concatenate(kls), np.concatenate(same)
        results.append(Quality(Path(path), Path(path).stat().st_size, len(nll), float(np.exp(nll.mean())),
                               float(kl.mean()), float(np.quantile(kl, 0.99)), float(agree.mean())))
    return results


def table(results: list[Quality]) -> str:
    """A markdown table, for the console and for model cards."""
    lines = ["| file | size | perplexity | mean KL (nats) | KL p99 | same top token |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.path.name} | {r.size_bytes / 1e6:.2f} MB | {r.perplexity:.4f} | {r.kl_mean:.5f} | "
                     f"{r.kl_p99:.5f} | {r.top1_agreement:.1%} |")
    return "\n".join(lines)
