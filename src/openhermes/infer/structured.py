"""Structured output: `response_format` as a token mask from llguidance.

llguidance (the grammar engine behind Guidance, also used by vLLM and llama.cpp) was chosen over
xgrammar and outlines-core because it installs here as one 3 MB wheel with no dependencies, while
xgrammar pulls in triton (hundreds of MB, for GPUs) and outlines-core builds a regex index per
schema that is slow to compile. The mask is applied after the other samplers and before the draw.
"""

from __future__ import annotations

import threading

import torch


class StructuredOutputError(ValueError):
    """A response_format that cannot be turned into a grammar."""


def schema_for(response_format: dict) -> dict | None:
    """The JSON schema an OpenAI `response_format` asks for; None for {"type": "text"}."""
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema: dict = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise StructuredOutputError('response_format.json_schema must be {"name": ..., "schema": {...}}')
        schema = spec.get("schema") or {"type": "object"}
    else:
        raise StructuredOutputError(f"response_format type {kind!r}: use text, json_object or json_schema")
    return schema


def grammar_for(response_format: dict) -> str | None:
    """The llguidance grammar for an OpenAI `response_format`; None for {"type": "text"}."""
    import llguidance

    schema = schema_for(response_format)
    if schema is None:
        return None
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        error = llguidance.LLMatcher.validate_grammar(grammar)
    except (ValueError, TypeError, RuntimeError) as e:
        raise StructuredOutputError(f"response_format: the JSON schema cannot be used: {e}") from None
    if error:
        raise StructuredOutputError(f"response_format: the JSON schema cannot be used: {error}")
    return grammar


_tokenizers: dict[int, object] = {}
_lock = threading.Lock()


def _ll_tokenizer(hf_tokenizer, vocab_size: int):
    """llguidance's view of a Hugging Face tokenizer, built once per tokenizer (it scans the vocabulary)."""
    import llguidance.hf

    key = id(hf_tokenizer)
    with _lock:
        if key not in _tokenizers:
            _tokenizers[key] = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)
        return _tokenizers[key]


class Grammar:
    """One reply's grammar state: the mask of allowed next tokens, advanced by each chosen token."""

    def __init__(self, grammar: str, hf_tokenizer, vocab_size: int):
        import llguidance
        import llguidance.torch as llt

        self._llt = llt
        self.tokenizer = _ll_tokenizer(hf_tokenizer, vocab_size)
        self.matcher = llguidance.LLMatcher(self.tokenizer, grammar)
        if self.matcher.is_error():
            raise StructuredOutputError(f"response_format: {self.matcher.get_error()}")
        self.bitmask = llt.allocate_token_bitmask(1, self.tokenizer.vocab_size)

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (V,) with every token the grammar does not allow next set to -inf."""
        self._llt.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        if self.matcher.is_error() or not bool(self.bitmask.any()):
            # e.g. a schema with no finite instance ({"$ref": "#"}): no token can go on, and a draw from
            # nothing would end the reply as a "stop" with invalid JSON
            why = self.matcher.get_error() if self.matcher.is_error() else "the schema allows no next token"
            raise StructuredOutputError(f"response_format: the reply cannot go on: {why}")
        out = scores.float().clone()
        self._llt.apply_token_bitmask_inplace(out, self.bitmask[0])
        return out

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)
        if self.matcher.is_error():
            raise StructuredOutputError(f"response_format: {self.matcher.get_error()}")

    def rollback(self, tokens: int) -> None:
        """Forget the last `tokens` accepted (a reply taken back over a banned string)."""
        if tokens and not self.matcher.rollback(tokens):
            raise StructuredOutputError(f"response_format: cannot take back {tokens} tokens")


def make_grammar(response_format: dict | None, hf_tokenizer, vocab_size: int) -> Grammar | None:
    if not response_format:
        return None
    grammar = grammar_for(response_format)
    return Grammar(grammar, hf_tokenizer, vocab_size) if grammar is not None else None


class SchemaConstraint:
    """A checked response_format for an engine with its own grammar backend (vLLM's): the schema."""

    def __init__(self, response_format: dict):
        grammar_for(response_format)  # the same checks and errors as the other engines
        self.schema = schema_for(response_format)

