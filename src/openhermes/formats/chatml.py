"""ChatML, the OpenHermes 2.5 prompt format. The only place the ChatML strings live."""

from __future__ import annotations

import re
from functools import cache

from openhermes.formats.base import Conversation, Message, Segment, segments_text

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CONTROL_TOKENS = (IM_END, IM_START)  # the order OpenHermes added them: 32000, 32001

# Byte-identical to the chat template of the published OpenHermes 2.5 tokenizer (SPEC §2), which has no BOS.
PUBLISHED_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)

# The template we save: the published one, with BOS first when the model's rows start with it (openhermes's
# BOS rule, model/load.py), so apply_chat_template(tokenize=True) feeds the ids training saw.
CHAT_TEMPLATE = "{{ bos_token }}" + PUBLISHED_TEMPLATE


def chat_template(add_bos: bool = True) -> str:
    return CHAT_TEMPLATE if add_bos else PUBLISHED_TEMPLATE


STOP_STRINGS = (IM_END,)


# The fixed pieces are built once and shared (segments are immutable): a prepare run renders
# millions of turns, and building five tuples per turn was a fifth of its Python time.
_START = {t: Segment(IM_START, t, "control") for t in (False, True)}
_END = {t: Segment(IM_END, t, "control") for t in (False, True)}
_NEWLINE = {t: Segment("\n", t) for t in (False, True)}


@cache
def _header(role: str, train: bool) -> Segment:
    return Segment(role + "\n", train)


def segments(
    conv: Conversation,
    train_roles: tuple[str, ...] = ("assistant",),
    train_on_inputs: bool = False,
    add_generation_prompt: bool = False,
) -> list[Segment]:
    """Render a conversation. Trained by default: assistant content and its <|im_end|>;
    never the `<|im_start|>assistant\\n` header nor the newline after <|im_end|> (axolotl 922)."""
    out: list[Segment] = []
    start, newline = _START[train_on_inputs], _NEWLINE[train_on_inputs]
    for m in conv.messages:
        train = (train_on_inputs or m.role in train_roles) and m.trained is not False
        header = _header(m.role, train_on_inputs)
        out += (start, header)
        if m.content:
            out.append(Segment(m.content, train))
        out += (_END[train], newline)
    if add_generation_prompt:
        out += (_START[False], _header("assistant", False))
    return out


def render(conv: Conversation, add_generation_prompt: bool = False) -> str:
    return segments_text(segments(conv, add_generation_prompt=add_generation_prompt))


_TURN = re.compile(re.escape(IM_START) + r"([^\n]*)\n(.*?)" + re.escape(IM_END) + r"\n?", re.DOTALL)


def parse(text: str) -> list[Message]:
    """ChatML text back into messages (a trailing open assistant header is ignored)."""
    return [Message(role, content) for role, content in _TURN.findall(text)]
