"""Validation and filters, with a report that accounts for every row (rows in = kept + dropped)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

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
# A phrase that opens "as a ..."/"as an ..." names what the assistant is, which identity data says too ("As a
# language model, I go by the name Vicuna"): it marks a refusal only with a refusal in the same sentence.
_PREAMBLE = re.compile(r"as an? ")
_REFUSING = re.compile(r"\b(?:cannot|can ?not|can't|can’t|unable|not able|not capable|not possible|not appropriate|"
                       r"don't|don’t|do not|won't|won’t|will not|refuse|sorry|apologi[sz]e|no personal|no ability)\b")
_SENTENCE_END = re.compile(r"[.!?\n]")


@dataclass
class DropReport:
    rows_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    # (where, reason, detail) for every dropped row, so nothing is lost silently.
    details: list[tuple[str, str, str]] = field(default_factory=list)
    # LimaRP's extra arrangements are copies of rows, not rows: their drops are counted apart, so that
    # rows in = kept + dropped still holds (a row's fate is its first arrangement's).
    copies_dropped: Counter = field(default_factory=Counter)
    # Kept rows that a stricter filter would drop (an empty system or user turn, the assistant first): counted,
    # so a user sees what went in as it was.
    notes: Counter = field(default_factory=Counter)

    def drop(self, where: str, reason: str, detail: str = "", copy: bool = False) -> None:
        if copy:
            self.copies_dropped[reason] += 1
            return
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
            "arrangement_copies_dropped": dict(sorted(self.copies_dropped.items())),
            "kept_with_notes": dict(sorted(self.notes.items())),
        }


class StrictError(ValueError):
    pass


def validate(conv: Conversation, allow_trailing_user: bool = True) -> tuple[str, str] | None:
    """(reason, detail) when a conversation is unusable, else None."""
    msgs = conv.messages
    for i, m in enumerate(msgs):
        # An empty system or user turn renders as the template renders it (and is kept, as axolotl keeps it);
        # an empty reply would teach the model to stop at once.
        if m.role not in ("system", "user") and (not m.content or m.content.isspace()):
            return "empty turn", f"turn {i} ({m.role}) is empty"
        if not m.content.isascii():  # ASCII cannot hold a lone surrogate; skip the copy encoding makes
            try:
                m.content.encode("utf-8")
            except UnicodeEncodeError:
                return "invalid UTF-8", f"turn {i} holds a lone surrogate"
    turns = [m for m in msgs if m.role != "system"]
    if any(m.role == "system" for m in msgs[1:]):
        return "role order", "a system turn after the first turn"
    if not any(m.role == "assistant" for m in turns):
        return "no assistant turn", ""
    for a, b in zip(turns, turns[1:], strict=False):
        if a.role == b.role:
            return "role order", f"two {a.role} turns in a row"
    if not allow_trailing_user and turns[-1].role != "assistant":
        return "role order", "ends with a user turn"
    return None


def refusal(conv: Conversation, phrases: Iterable[str]) -> str | None:
    """The first refusal phrase an assistant turn contains (case-insensitive), else None. A phrase opening "as
    a"/"as an" counts only where its sentence also refuses (cannot, unable, sorry, ...). `phrases` are compared
    as given: pass them lower-cased."""
    for m in conv.messages:
        if m.role == "assistant":
            text = m.content.lower()
            for p in phrases:
                start = text.find(p)
                while start >= 0:
                    if not _PREAMBLE.match(p) or _REFUSING.search(_sentence(text, start, start + len(p))):
                        return p
                    start = text.find(p, start + 1)
    return None


def _sentence(text: str, start: int, end: int) -> str:
    """The sentence of `text` around text[start:end]."""
    before = max((m.end() for m in _SENTENCE_END.finditer(text, 0, start)), default=0)
    after = _SENTENCE_END.search(text, end)
    return text[before: after.start() if after else len(text)]


def check_all(items: Iterable, report: DropReport, *,
              refusal_phrases: Iterable[str] | None = DEFAULT_REFUSALS) -> Iterator[Conversation]:
    """Conversations that pass every check on their text; every other row is recorded in `report`.
    (Duplicates are judged later, on the tokenized samples: data/dedup.py.)"""
    from openhermes.data.readers import RowError

    phrases = tuple(p.lower() for p in refusal_phrases or ())
    for item in items:
        report.rows_in += 1
        if isinstance(item, RowError):
            report.drop(item.where, item.reason, item.detail)
            continue
        bad = validate(item)
        if bad is None and phrases and (hit := refusal(item, phrases)):
            bad = ("refusal", f"assistant says {hit!r}")
        if bad is not None:
            report.drop(item.where, *bad)
            continue
        for note in notes(item):
            report.notes[note] += 1
        yield item


def notes(conv: Conversation) -> list[str]:
    """What is unusual about a kept conversation (DropReport.notes)."""
    out = [f"empty {m.role} turn" for m in conv.messages if m.role in ("system", "user") and not m.content.strip()]
    turns = [m for m in conv.messages if m.role != "system"]
    if conv.roleplay is None and turns and turns[0].role == "assistant":
        out.append("assistant turn first")
    return out
