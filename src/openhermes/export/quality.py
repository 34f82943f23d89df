"""What a quantized GGUF loses, measured through llama.cpp as its perplexity tool does: the file's
perplexity on a text, and the mean KL divergence of its next-token distributions from the f16 file's
(llama-perplexity --kl-divergence), plus how often both pick the same top token. GPTQ/AWQ folders get the
same figures from transformers against the full-precision folder (`measure_folder`)."""

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
    from openhermes.infer.llama_load import load_llama

    llm = load_llama(path, n_ctx=n_ctx, logits_all=True, verbose=False, seed=0)
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
    from openhermes.infer.llama_load import load_llama

    llm = load_llama(reference, n_ctx=n_ctx, vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    return _windows(ids, [llm.token_bos()], n_ctx)


def _windows(ids: list[int], bos: list[int], n_ctx: int) -> list[list[int]]:
    """Windows of n_ctx tokens, each starting with `bos` (as llama-perplexity cuts a text)."""
    step = n_ctx - len(bos)
    return [bos + list(ids[i:i + step]) for i in range(0, len(ids), step) if len(ids[i:i + step]) > 1]


def measure(files: list[Path], reference: Path, text: str, n_ctx: int = 512) -> list[Quality]:
    """Perplexity and KL divergence from `reference` for each file, on the same tokens. The first half of
    each window is context only (as llama-perplexity scores the second half)."""
    chunks = chunk_tokens(reference, text, n_ctx)
    if not chunks:
        raise ValueError("the text is too short to measure (fewer than 2 tokens)")
    ref = _logprobs(reference, chunks, n_ctx)
    return [_score(Path(path), Path(path).stat().st_size, chunks, ref,
                   ref if Path(path) == Path(reference) else _logprobs(path, chunks, n_ctx)) for path in files]


def _score(path: Path, size: int, chunks: list[list[int]], ref: list[np.ndarray], lp: list[np.ndarray]) -> Quality:
    """Perplexity of `lp` and its KL divergence from `ref` over the second half of each window."""
    nll, kls, same = [], [], []
    for ids, p, q in zip(chunks, ref, lp, strict=True):
        first = max(1, len(ids) // 2)
        targets = np.asarray(ids[first:])
        rows = np.arange(first - 1, len(ids) - 1)
        nll.append(-q[rows, targets])
        kls.append((np.exp(p[rows]) * (p[rows] - q[rows])).sum(axis=-1))
        same.append(p[rows].argmax(-1) == q[rows].argmax(-1))
    nll, kl, agree = np.concatenate(nll), np.concatenate(kls), np.concatenate(same)
    return Quality(path, size, len(nll), float(np.exp(nll.mean())), float(kl.mean()), float(np.quantile(kl, 0.99)),
                   float(agree.mean()))


def measure_folder(folder: Path, reference: Path, text: str, n_ctx: int = 512) -> tuple[Quality, Quality]:
    """The same figures for a transformers folder (GPTQ/AWQ) against the full-precision model folder it came
    from, computed by transformers on the reference's tokens (windows of n_ctx with BOS first).
    Returns (the folder's, the reference's own)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openhermes.model.load import quantized_load_kwargs

    tok = AutoTokenizer.from_pretrained(str(reference))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    chunks = _windows(ids, [tok.bos_token_id] if tok.bos_token_id is not None else [], n_ctx)
    if not chunks:
        raise ValueError("the text is too short to measure (fewer than 2 tokens)")

    def logprobs(path: Path, **kwargs) -> list[np.ndarray]:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
        with torch.inference_mode():
            device = next(model.parameters()).device
            return [torch.log_softmax(model(torch.tensor([c], device=device)).logits[0].double(), -1).cpu().numpy()
                    for c in chunks]

    ref = logprobs(reference, dtype=torch.float32)
    lp = logprobs(folder, dtype=torch.float32, **quantized_load_kwargs(folder))
    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))

    return (_score(Path(folder), size(folder), chunks, ref, lp),
            _score(Path(reference), size(reference), chunks, ref, ref))


def table(results: list[Quality]) -> str:
    """A markdown table, for the console and for model cards."""
    lines = ["| file | size | perplexity | mean KL (nats) | KL p99 | same top token |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.path.name} | {r.size_bytes / 1e6:.2f} MB | {r.perplexity:.4f} | {r.kl_mean:.5f} | "
                     f"{r.kl_p99:.5f} | {r.top1_agreement:.1%} |")
    return "\n".join(lines)
