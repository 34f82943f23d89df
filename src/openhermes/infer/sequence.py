"""One request being generated: its tokens, its text, and when it stops.

Text is decoded incrementally over a short window of recent tokens, and text ending in an
incomplete UTF-8 sequence waits for the next token, so a delta never splits a multi-byte character
(tokenizers' DecodeStream raises on byte sequences that never complete, which a model can emit).
Stop strings are matched on the decoded text, so one spanning several tokens is caught; text that
could be the start of a stop string is held back until it is decided, and the stop string itself
is never returned.

Banned strings (text-generation-webui's `banned_strings` on ExLlama, KoboldCpp's phrase bans) are matched the same
way, without regard to case, and never reach the reply: when one is complete, the reply is taken back to the
token where it began and that token is banned at that place, so the next draw there is another (backtracking).
Text that could still grow into one is held back from the start of the token where that start lies, so nothing
taken back was ever sent.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from openhermes.infer.sampling import Sampler, SamplingParams
from openhermes.infer.structured import StructuredOutputError


class ContextWindowError(ValueError):
    """A prompt that does not fit the model's context window."""


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # stop tokens banned, never sampled (llama.cpp; text-generation-webui ban_eos_token)
    min_tokens: int = 0  # the stop tokens are banned until this many tokens are generated
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and the k most likely
    skip_special_tokens: bool = True  # False: control tokens the model writes stay in the text
    constraint: object | None = None  # a grammar (structured.py) the reply must follow
    banned_strings: tuple[str, ...] = ()  # never in the reply, in any case: taken back and drawn again


def _fold(text: str) -> str:
    """Lower case, one character for one (a character whose lower case is longer stays), so indices agree."""
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


@dataclass(frozen=True)
class TokenLogprob:
    """The model's own log-probability of a generated token (before the samplers), and the top ones."""
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0  # prompt tokens whose KV was reused from an earlier request (not computed again)
    stop_string: str = ""  # the stop string that ended the reply ("" when it was a stop token or a limit)


# on_delta(text) is called with each new piece of text; on_done(result) once at the end.
DeltaCallback = Callable[[str], None]
DoneCallback = Callable[[GenerationResult], None]


class Sequence:
    def __init__(self, request: GenerationRequest, *, backend, stop_ids: frozenset[int], max_total: int,
                 device, on_delta: DeltaCallback | None = None, on_done: DoneCallback | None = None,
                 on_error: Callable[[str], None] | None = None, breaker_ids: frozenset[int] = frozenset()):
        self.request = request
        self.sampler = Sampler(request.params, device=device, breaker_ids=breaker_ids, prompt_ids=request.prompt_ids)
        self.constraint = request.constraint
        self.logprobs: list[TokenLogprob] | None = [] if request.logprobs is not None else None
        self.banned = sorted(stop_ids)  # before min_tokens, or always with ignore_eos
        self.backend = backend
        self.stop_ids = frozenset() if request.ignore_eos else stop_ids
        self.stops = tuple(s for s in request.stop if s)
        self.banned_strings = tuple(_fold(s) for s in request.banned_strings if s)
        self._stop_starts, self._banned_starts = Starts(self.stops), Starts(self.banned_strings)
        self._banned_len = max(map(len, self.banned_strings), default=0)
        self.position_bans: dict[int, set[int]] = {}  # reply position -> tokens taken back from there
        self.taken_back = 0  # tokens taken back in all (a batch re-feeds the reply from where it now ends)
        self.kv_stale = False  # set when tokens were taken back: the engine's KV holds some the reply no longer has
        self.max_new = min(request.max_new_tokens, max_total - len(request.prompt_ids))
        self.ids = list(request.prompt_ids)
        self.generated: list[int] = []
        # Offsets into `ids`. The window starts one token before the unread ones, beginning with the
        # prompt's last token: decoders that strip the first leading space (SentencePiece's) would
        # otherwise eat the indentation of generated code.
        self.read_offset = len(self.ids)
        self.prefix_offset = max(0, self.read_offset - 1)
        # After each reply token: (text length, prefix_offset, read_offset), to take tokens back exactly.
        self.marks: list[tuple[int, int, int]] = []
        self.text = ""
        self.stop_string = ""
        self.emitted = 0
        self.finish_reason: str | None = None
        self.cached_tokens = 0  # set by the engine when the prompt's prefill reuses a known prefix
        self.cancelled = threading.Event()
        self.on_delta = on_delta
        self.on_done = on_done
        self.on_error = on_error

    def fail(self, message: str) -> None:
        """The engine could not go on (a model error): report it instead of a result."""
        self.finish_reason = "error"
        if self.on_error is not None:
            self.on_error(message)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Ask the engine to stop this sequence at its next step (thread-safe)."""
        self.cancelled.set()

    @property
    def greedy_bans(self) -> list[int] | None:
        """When the next token is the argmax of the raw logits with these ids removed (the stop tokens, before
        min_tokens), so the batch can take it for many rows at once: the ids ([] for none); None when the
        sampler must run."""
        if not (self.sampler.plain_greedy and self.constraint is None and self.logprobs is None):
            return None
        return self._bans() or []

    @property
    def _banning(self) -> bool:
        return self.request.ignore_eos or len(self.generated) < self.request.min_tokens

    def _bans(self) -> list[int] | None:
        """Token ids the next draw may not take: the stop tokens (before min_tokens, or with ignore_eos) and
        those taken back from this place (banned strings); None for none."""
        here = self.position_bans.get(len(self.generated))
        if not here:
            return self.banned if self._banning else None
        return sorted(here.union(self.banned)) if self._banning else sorted(here)

    def advance(self, logits: torch.Tensor) -> None:
        """Choose the next token from this step's logits (V,) and take it."""
        banned = self._bans()
        mask = self.constraint.mask if self.constraint is not None else None
        try:
            token = self.sampler(self.ids, logits, banned, mask)
            if self.constraint is not None:
                self.constraint.accept(token)
        except StructuredOutputError as e:  # this reply's grammar is at a dead end: it fails, the batch goes on
            self.fail(str(e))
            return
        if self.logprobs is not None:
            logp = torch.log_softmax(logits.float(), -1)
            k = self.request.logprobs
            top = logp.topk(k) if k else None
            pairs = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else ()
            self.logprobs.append(TokenLogprob(token, float(logp[token]), pairs))
        self.push(token)

    def push(self, token: int) -> None:
        """Take one sampled token: update text, check stops and limits, report the new text."""
        if token in self.stop_ids:
            self.finish_reason = "stop"
        else:
            self.generated.append(token)
            self.ids.append(token)
            self._decode(final=False)
            if not self.done and len(self.generated) >= self.max_new:
                self.finish_reason = "length"
        if self.done:
            self._decode(final=True)
        self._emit()

    def _decode(self, final: bool) -> None:
        """Append the text of unread tokens (vLLM's incremental detokenization): decode the window
        with and without them and take the difference, so decoders that strip a leading space or
        fuse bytes give the same text as decoding everything at once."""
        if self.read_offset < len(self.ids) and not (self.done and not final):
            window = self.ids[self.prefix_offset:]
            skip = self.request.skip_special_tokens
            before = self.backend.decode(window[: self.read_offset - self.prefix_offset], skip_special_tokens=skip)
            after = self.backend.decode(window, skip_special_tokens=skip)
            if len(after) > len(before) and (final or not after.endswith("\ufffd")):
                searched = len(self.text)
                self.text += after[len(before):]
                self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
                stop, banned = self._stop_at(searched), self._banned_at(searched)
                if banned is not None and (stop is None or banned < stop[0]):
                    self._take_back(banned, final)
                elif stop is not None:
                    self.text, self.stop_string = self.text[:stop[0]], stop[1]
                    self.finish_reason = "stop"
        if not final and len(self.marks) < len(self.generated):
            self.marks.append((len(self.text), self.prefix_offset, self.read_offset))

    def _banned_at(self, searched: int) -> int | None:
        """Where the first banned string now complete begins (text from `searched` on is new), or None."""
        if not self.banned_strings:
            return None
        low = max(0, searched - self._banned_len + 1)  # only the end can hold a new one
        folded = _fold(self.text[low:])
        starts = [i for s in self.banned_strings if (i := folded.find(s, max(0, searched - low - len(s) + 1))) >= 0]
        return low + min(starts) if starts else None

    def _take_back(self, start: int, final: bool) -> None:
        """A banned string begins at character `start`: the reply goes back to the token where it begins, and that
        token is banned there; at the end of a reply (nothing more will be drawn) the text is cut there instead,
        as at a stop string."""
        if final:
            self.text = self.text[:start]
            return
        keep = self._token_holding(start)
        dropped = len(self.generated) - keep
        self.position_bans = {p: b for p, b in self.position_bans.items() if p < keep}
        self.position_bans.setdefault(keep, set()).add(self.generated[keep])
        del self.generated[keep:], self.marks[keep:], self.ids[len(self.request.prompt_ids) + keep:]
        if self.logprobs is not None:
            del self.logprobs[keep:]
        if self.constraint is not None:
            self.constraint.rollback(dropped)
        size, self.prefix_offset, self.read_offset = (self.marks[-1] if self.marks else
                                                       (0, max(0, len(self.ids) - 1), len(self.ids)))
        self.text = self.text[:size]
        self.taken_back += dropped
        self.kv_stale = True

    def finish_cancelled(self) -> None:
        self.finish("cancelled")

    def finish(self, reason: str) -> None:
        """End here for a reason the engine knows ("cancelled"; "length" at an engine's own limit)."""
        self.finish_reason = reason
        self._decode(final=True)
        self._emit()

    def _stop_at(self, searched: int) -> tuple[int, str] | None:
        """(where, which) of the first stop string now complete (text from `searched` on is new), or None."""
        found = None
        for s in self.stops:
            i = self.text.find(s, max(0, searched - len(s) + 1))
            if i >= 0 and (found is None or i < found[0]):
                found = (i, s)
        return found

    def _holdback(self) -> int:
        """Characters at the end that could still grow into a stop string, or into a banned string: those from
        the start of the token where it would begin (taking it back takes the whole token)."""
        hold = self._stop_starts.longest_at_end(self.text)
        if self.banned_strings:
            partial = self._banned_starts.longest_at_end(_fold(self.text[-self._banned_len:]))
            if partial:
                token = self._token_holding(len(self.text) - partial)
                hold = max(hold, len(self.text) - (self.marks[token - 1][0] if token else 0))
        return hold

    def _token_holding(self, char: int) -> int:
        """The index of the reply token whose text holds character `char` (the first whose text ends after it)."""
        return bisect.bisect_right(self.marks, char, key=lambda mark: mark[0])

    def _emit(self) -> None:
        end = len(self.text) if self.done else len(self.text) - self._holdback()
        if end > self.emitted:
            delta = self.text[self.emitted:end]
            self.emitted = end
            if self.on_delta is not None:
                self.on_delta(delta)
        if self.done and self.on_done is not None:
            self.on_done(self.result())

    def result(self) -> GenerationResult:
        return GenerationResult(self.text, list(self.generated), self.finish_reason or "length",
                                len(self.request.prompt_ids), len(self.generated),
                                list(self.logprobs) if self.logprobs is not None else None, self.cached_tokens,
                                self.stop_string)


class Starts:
    """The starts (not the whole) of some strings, indexed by their last character: what ends a text and could still
    grow into one of them is found from the few starts ending in the text's last character, not by trying every
    length of every string at every token (a client may send hundreds of banned strings)."""

    def __init__(self, strings: tuple[str, ...]):
        self.by_last: dict[str, list[tuple[int, str]]] = {}  # last character -> (length, string) of each start
        for s in strings:
            for k in range(1, len(s)):
                self.by_last.setdefault(s[k - 1], []).append((k, s))
        for starts in self.by_last.values():
            starts.sort(key=lambda start: start[0], reverse=True)

    def longest_at_end(self, text: str) -> int:
        """The length of the longest end of `text` that is one of the starts (0 for none)."""
        for k, s in self.by_last.get(text[-1:], ()):
            if k <= len(text) and s.startswith(text[-k:]):
                return k
        return 0
