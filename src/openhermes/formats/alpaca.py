"""Plain Alpaca (Stanford), multi-turn by repeating the instruction/response blocks."""

from __future__ import annotations

from openhermes.formats.base import Conversation, Segment, segments_text

PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
STOP_STRINGS = ("\n### Instruction",)


def segments(
    conv: Conversation,
    train_roles: tuple[str, ...] = ("assistant",),
    train_on_inputs: bool = False,
    add_generation_prompt: bool = False,
) -> list[Segment]:
    msgs = conv.messages
    system = msgs[0].content + "\n\n" if msgs and msgs[0].role == "system" else None
    turns = msgs[1:] if system is not None else msgs
    has_input = any(m.input for m in turns)
    out = [Segment(system or (PREAMBLE_INPUT if has_input else PREAMBLE), train_on_inputs)]
    for i, m in enumerate(turns):
        if m.role == "user":
            text = f"### Instruction:\n{m.content}\n\n"
            if m.input:
                text += f"### Input:\n{m.input}\n\n"
            out.append(Segment(text + "### Response:\n", train_on_inputs))
            continue
        train = (train_on_inputs or m.role in train_roles) and m.trained is not False
        out.append(Segment(m.content, train))
        if i == len(turns) - 1:
            out.append(Segment("", train, "eos"))
        else:
            out.append(Segment("\n\n", train_on_inputs))
    return out


def render(conv: Conversation, add_generation_prompt: bool = False) -> str:
    return segments_text(segments(conv, add_generation_prompt=add_generation_prompt), "")
