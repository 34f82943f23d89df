"""`openhermes generate`: a JSONL file of prompts in, a JSONL file of replies out, in input order.

Each input line is an object with either "messages" (OpenAI/ChatML form, a chat prompt) or
"prompt" (raw text, written in the model's prompt format), and optionally "id", "max_tokens",
"stop" and any sampler setting (temperature, top_p, top_k, min_p, typical_p, tfs, repetition_penalty,
repeat_last_n, presence_penalty, frequency_penalty, seed). A bad line is reported with its line
number, written to the output as {"line": N, "error": ...}, and the other lines still run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from openhermes.formats.base import ROLES
from openhermes.infer.engine import BaseEngine
from openhermes.infer.sampling import Sampler, SamplingParams
from openhermes.infer.sequence import GenerationRequest

SAMPLER_KEYS = {f.name for f in fields(SamplingParams)}
ALIASES = {"tfs_z": "tfs", "repeat_penalty": "repetition_penalty"}
OTHER_KEYS = {"id", "messages", "prompt", "max_tokens", "stop", "banned_strings"}


@dataclass
class LineError:
    line: int
    message: str


def request_from_line(engine: BaseEngine, row: object, base: SamplingParams, max_new_tokens: int) -> GenerationRequest:
    if not isinstance(row, dict):
        raise ValueError("each line must be a JSON object")
    unknown = set(row) - SAMPLER_KEYS - OTHER_KEYS - set(ALIASES)
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if ("messages" in row) == ("prompt" in row):
        raise ValueError('give exactly one of "messages" or "prompt"')
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise ValueError('"messages" must be a non-empty list of {"role": str, "content": str}')
        unknown_roles = sorted({m["role"] for m in msgs} - {*ROLES, "developer"})
        if unknown_roles:  # the server's rule: ChatML would render any name, and the model has seen three
            raise ValueError(f"unknown role(s) {', '.join(map(repr, unknown_roles))}: use system, developer, user "
                             "or assistant")
        msgs = [m | {"role": "system"} if m["role"] == "developer" else m for m in msgs]
        prompt = engine.chat_prompt(msgs)
    else:
        if not isinstance(row["prompt"], str):
            raise ValueError('"prompt" must be a string')
        prompt = engine.text_prompt(row["prompt"])
    stop, banned = (_strings(row, key) for key in ("stop", "banned_strings"))
    settings = {ALIASES.get(k, k): v for k, v in row.items() if ALIASES.get(k, k) in SAMPLER_KEYS}
    max_tokens = row.get("max_tokens", max_new_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError('"max_tokens" must be a positive integer')
    params = base.with_(**settings)
    Sampler(params)  # builds every processor now, so a setting they refuse is this line's error
    return GenerationRequest(prompt, params, max_tokens, stop, banned_strings=banned)


def _strings(row: dict, key: str) -> tuple[str, ...]:
    """A field that is one string or a list of them (stop, banned_strings)."""
    value = row.get(key) or ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        raise ValueError(f'"{key}" must be a string or a list of strings')
    return tuple(value)


LINE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError)


def generate_file(engine: BaseEngine, input_path: Path, output_path: Path, base: SamplingParams,
                  max_new_tokens: int, progress: bool = True) -> tuple[int, list[LineError]]:
    """Returns (lines answered, errors). Output rows follow input order."""
    requests: list[tuple[int, object, GenerationRequest]] = []
    errors: list[LineError] = []
    with open(input_path, "rb") as f:  # bytes: a line that is not UTF-8 is that line's error only
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                row = json.loads(line)
                requests.append((n, row.get("id", n) if isinstance(row, dict) else n,
                                 request_from_line(engine, row, base, max_new_tokens)))
            except UnicodeDecodeError as e:
                errors.append(LineError(n, f"{input_path}:{n}: not UTF-8 ({e.reason})"))
            except LINE_ERRORS as e:  # JSONDecodeError is a ValueError
                errors.append(LineError(n, f"{input_path}:{n}: {e}"))
    try:
        results = engine.generate([r for _, _, r in requests], progress=progress)
    except LINE_ERRORS:  # one request failed while decoding: run them one by one to find which
        results = []
        for n, _, request in requests:
            try:
                results.append(engine.generate([request])[0])
            except LINE_ERRORS as e:
                results.append(None)
                errors.append(LineError(n, f"{input_path}:{n}: {e}"))
    answered = [(n, rid, res) for (n, rid, _), res in zip(requests, results, strict=True) if res is not None]
    by_line = {n: {"id": rid, "text": res.text, "finish_reason": res.finish_reason,
                   "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens}
               for n, rid, res in answered}
    by_line.update({e.line: {"line": e.line, "error": e.message} for e in errors})
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as out:
        for n in sorted(by_line):
            out.write(json.dumps(by_line[n], ensure_ascii=False) + "\n")
    return len(answered), sorted(errors, key=lambda e: e.line)
