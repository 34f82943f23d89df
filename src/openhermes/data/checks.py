"""Validation and filters, with a report that accounts for every row (rows in = kept + dropped)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import xxhash

from openhermes.formats import Conversation

DEFAULT_REFUSALS = (
    "as an ai language model",
    "as a language model",
    "as an ai developed by openai",
    "i'm sorry, but as an ai",
    "i cannot fulfill that request",
    "openai's content policy",
    "i am not able to provide",
)


@dataclass
class DropReport:
    rows_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    # (where, reason, detail) for every dropped row, so nothing is lost silently.
    details: list[tuple[str, str, str]] = field(default_factory=list)

    def drop(self, where: str, reason: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        self.details.append((where, reason, detail))

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def balanced(self) -> bool:
        return self.rows_in == self.kept + self.n_dropped

    def to_dict(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "details": [{"where": w, "reason": r, "detail": d} for w, r, d in self.details],
        }


class StrictError(ValueError):
    pass


def validate(conv: Conversation, allow_trailing_user: bool = True) -> tuple[str, str] | None:
    """(reason, detail) when a conversation is unusable, else None."""
    msgs = conv.messages
    for i, m in enumerate(msgs):
        if not m.content.strip():
            return "empty turn", f"turn {i} ({m.role}) is empty"
        try:
            m.content.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid UTF-8", f"turn {i} holds a lone surrogate"
    turns = [m for m in msgs if m.role != "system"]
    if any(m.role == "system" for m in msgs[1:]):
        return "role order", "a system turn after the first turn"
    if not any(m.role == "assistant" for m in turns):
        return "no assistant turn", ""
    if conv.roleplay is None and turns and turns[0].role != "user":
        return "role order", f"first turn is {turns[0].role}, not user"
    for a, b in zip(turns, turns[1:], strict=False):
        if a.role == b.role:
            return "role order", f"two {a.role} turns in a row"
    if not allow_trailing_user and turns[-1].role != "assistant":
        return "role order", "ends with a user turn"
    return None


def refusal(conv: Conversation, phrases: Iterable[str]) -> str | None:
    lowered = [p.lower() for p in phrases]
    for m in conv.messages:
        if m.role == "assistant":
            text = m.content.lower()
            for p in lowered:
                if p in text:
                    return p
    return None


def _key_text(conv: Conversation) -> str:
    return json.dumps([(m.role, m.content, m.length, m.input) for m in conv.messages], ensure_ascii=False)


_WORD = re.compile(r"\w+")


class Deduplicator:
    """Exact duplicates by hash of the turns; near duplicates by MinHash LSH over word 3-grams."""

    def __init__(self, near_threshold: float | None = 0.9, num_perm: int = 64):
        self.seen: dict[bytes, str] = {}
        self.num_perm = num_perm
        self.lsh = None
        if near_threshold:
            from datasketch import MinHash, MinHashLSH

            self.lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
            self._a, self._b = MinHash(num_perm=num_perm, seed=1, scheme="affine32").permutations
        self._n = 0

    def _minhash(self, words: list[str]):
        """datasketch's affine32 MinHash of the word 3-grams, computed in numpy: datasketch hashes
        each shingle in Python (sha1), which made near-dedup most of the pipeline's time."""
        from datasketch import MinHash

        ids = np.fromiter(map(xxhash.xxh32_intdigest, map(str.encode, words)), dtype=np.uint64, count=len(words))
        with np.errstate(over="ignore"):
            grams = np.unique(ids[:-2] * np.uint64(1_000_003) ** 2 + ids[1:-1] * np.uint64(1_000_003) + ids[2:])
            h = _fmix32((grams ^ (grams >> np.uint64(32))).astype(np.uint32))
            phv = h[:, None] * self._a + self._b  # uint32 wraparound is the modulo, as in datasketch
        return MinHash(num_perm=self.num_perm, seed=1, hashvalues=phv.min(axis=0),
                       permutations=(self._a, self._b), scheme="affine32")

    def check(self, conv: Conversation) -> tuple[str, str] | None:
        text = _key_text(conv)
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self.seen:
            return "exact duplicate", f"same as {self.seen[digest]}"
        self.seen[digest] = conv.where
        if self.lsh is None:
            return None
        words = _WORD.findall(" ".join(m.content for m in conv.messages).lower())
        if len(words) < 7:  # too short for a meaningful similarity: exact match only
            return None
        mh = self._minhash(words)
        hits = self.lsh.query(mh)
        if hits:
            return "near duplicate", f"similar to {hits[0].rsplit('#', 1)[0]}"
        self._n += 1
        self.lsh.insert(conv.where + f"#{self._n}", mh)
        return None


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the premix of datasketch's affine32 scheme."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def check_all(items: Iterable, report: DropReport, *, dedup: Deduplicator | None = None,
              refusal_phrases: Iterable[str] | None = DEFAULT_REFUSALS) -> Iterator[Conversation]:
    """Conversations that pass every check; every other row is recorded in `report`."""
    from openhermes.data.readers import RowError

    phrases = tuple(refusal_phrases or ())
    for item in items:
        report.rows_in += 1
        if isinstance(item, RowError):
            report.drop(item.where, item.reason, item.detail)
            continue
        bad = validate(item)
        if bad is None and phrases and (hit := refusal(item, phrases)):
            bad = ("refusal", f"assistant says {hit!r}")
        if bad is None and dedup is not None:
            bad = dedup.check(item)
        if bad is not None:
            report.drop(item.where, *bad)
            continue
        yield item
