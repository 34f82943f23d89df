"""The shared shapes every format and reader speaks: messages, conversations, segments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    # LimaRP: the response-length modifier of an assistant turn (None = omitted).
    length: str | None = None
    # Alpaca: the optional "### Input:" text of a user turn.
    input: str | None = None
    # A row's own say on this turn: False = never trained (ShareGPT `weight: 0`, as axolotl reads it);
    # None = the recipe's rule (roles_to_train, train_on_inputs).
    trained: bool | None = None


@dataclass(frozen=True)
class Roleplay:
    """The LimaRP card's instruction block: who is who, and the scene."""

    char_name: str
    user_name: str
    char_persona: str
    user_persona: str
    scenario: str


@dataclass
class Conversation:
    messages: list[Message]
    roleplay: Roleplay | None = None
    # Where the row came from, so every report can name file and line.
    source: str = ""
    line: int = 0
    # A label for mixing reports (which dataset entry it came from).
    dataset: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


SegmentKind = Literal["text", "control", "eos"]


class Segment(NamedTuple):  # a tuple: built ~10 times per conversation, so it must be cheap
    """A piece of rendered text.

    kind "control": `text` is a control token (e.g. "<|im_start|>") that must become that one token.
    kind "eos": the tokenizer's end-of-sequence token (text is empty; the tokenizer knows it).
    """

    text: str
    train: bool
    kind: SegmentKind = "text"


def segments_text(segments: list[Segment], eos_token: str = "</s>") -> str:
    """The plain text a list of segments renders to."""
    return "".join(eos_token if s.kind == "eos" else s.text for s in segments)
