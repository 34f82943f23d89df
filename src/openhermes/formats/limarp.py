"""The LimaRP card's extended Alpaca roleplay format, with its response-length modifier."""

from __future__ import annotations

import re

from openhermes.formats.base import Conversation, Message, Roleplay, Segment, segments_text

LENGTHS = ("micro", "tiny", "short", "medium", "long", "massive", "huge", "enormous", "humongous", "unlimited")
STOP_STRINGS = ("\n### Input", "\n### Instruction")


# How the instruction block is arranged. "card": the card's own order (personas, scenario, then the
# instruction line). The card's second epoch "used a differently arranged system instruction"; the
# text of that arrangement is not published, so ours is the same parts with the instruction line first.
ARRANGEMENTS = ("card", "instruction_first")


def instruction_body(rp: Roleplay, arrangement: str = "card") -> str:
    """The text under "### Instruction:" (no header, no closing blank line): a GGUF chat template's
    system message holds exactly this."""
    parts = [f"{rp.char_name}'s Persona: {rp.char_persona}", f"{rp.user_name}'s Persona: {rp.user_persona}",
             f"Scenario: {rp.scenario}",
             f"Play the role of {rp.char_name}. You must engage in a roleplaying chat with {rp.user_name} "
             f"below this line. Do not write dialogues and narration for {rp.user_name}."]
    if arrangement == "instruction_first":
        parts = parts[-1:] + parts[:-1]
    elif arrangement != "card":
        raise ValueError(f"unknown LimaRP arrangement {arrangement!r}; use one of {', '.join(ARRANGEMENTS)}")
    return "\n\n".join(parts)


def instruction(rp: Roleplay, arrangement: str = "card") -> str:
    return f"### Instruction:\n{instruction_body(rp, arrangement)}\n\n"


# The same text as `render` for GGUF users (LM Studio, llama.cpp's server): the system message holds
# the instruction body, messages carry `name` (the real names), and the reply header asks for
# `length` (the card's recommended medium unless the caller passes another, or none) and, after it,
# "Name:" for `char_name` or the name on the last assistant message.
TEMPLATE_BODY = (
    "{% set length = length if length is defined else 'medium' %}"
    "{% for message in messages %}"
    "{% set who = (message['name'] + ': ') if message.get('name') else '' %}"
    "{% if message['role'] == 'system' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Input:\\n' + who + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Response:\\n' + who + message['content'] }}"
    "{% if loop.last %}{{ eos_token }}{% else %}{{ '\\n\\n' }}{% endif %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:' + ((' (length = ' + length + ')') if length else '') + '\\n' }}"
    "{% set ns = namespace(char=char_name if char_name is defined else '') %}"
    "{% for message in messages %}{% if message['role'] == 'assistant' and message.get('name') and "
    "char_name is not defined %}{% set ns.char = message['name'] %}{% endif %}{% endfor %}"
    "{% if ns.char %}{{ ns.char + ':' }}{% endif %}{% endif %}"
)
CHAT_TEMPLATE = "{{ bos_token }}" + TEMPLATE_BODY  # BOS first, as the rows (openhermes's BOS rule, model/load.py)


def chat_template(add_bos: bool = True) -> str:
    return CHAT_TEMPLATE if add_bos else TEMPLATE_BODY


def response_header(char_name: str, length: str | None) -> str:
    if length is not None and length not in LENGTHS:
        raise ValueError(f"unknown LimaRP length modifier {length!r}; use one of {', '.join(LENGTHS)}")
    mod = f" (length = {length})" if length else ""
    return f"### Response:{mod}\n{char_name}:"


def segments(
    conv: Conversation,
    train_roles: tuple[str, ...] = ("assistant",),
    train_on_inputs: bool = False,
    add_generation_prompt: bool = False,
    length: str | None = None,
) -> list[Segment]:
    """Render a roleplay. A reply is trained from the space after "Name:" through the final EOS, so
    the first word's token (which carries that space) is trained too."""
    rp = conv.roleplay
    if rp is None:
        raise ValueError(f"{conv.where}: a LimaRP conversation needs personas and a scenario")
    out = [Segment(instruction(rp, conv.meta.get("arrangement", "card")), train_on_inputs)]
    turns = [m for m in conv.messages if m.role != "system"]
    for i, m in enumerate(turns):
        last = i == len(turns) - 1
        if m.role == "user":
            out.append(Segment(f"### Input:\n{rp.user_name}: {m.content}\n\n", train_on_inputs))
            continue
        train = (train_on_inputs or m.role in train_roles) and m.trained is not False
        out.append(Segment(response_header(rp.char_name, m.length), train_on_inputs))
        out.append(Segment(" " + m.content, train))
        if last:
            out.append(Segment("", train, "eos"))
        else:
            out.append(Segment("\n\n", train_on_inputs))
    if add_generation_prompt:
        out.append(Segment(response_header(rp.char_name, length), False))
    return out


def render(conv: Conversation, add_generation_prompt: bool = False, length: str | None = None) -> str:
    return segments_text(segments(conv, add_generation_prompt=add_generation_prompt, length=length), "")


_PERSONA = re.compile(
    r"### Instruction:\n(?P<char>.+?)'s Persona: (?P<cp>.*?)\n\n(?P<user>.+?)'s Persona: (?P<up>.*?)\n\n"
    r"Scenario: (?P<sc>.*?)\n\nPlay the role of .*?\n\n",
    re.DOTALL,
)
# "### Input" appears with and without the colon in the card: accept both.
_BLOCK = re.compile(r"### (Input|Response):?(?: \(length = (\w+)\))?\n(.*?)(?=\n\n### |\Z)", re.DOTALL)


def parse(text: str) -> Conversation:
    """LimaRP text back into a conversation with its roleplay header."""
    head = _PERSONA.match(text)
    if not head:
        raise ValueError("not LimaRP text: the '### Instruction:' persona block is missing")
    rp = Roleplay(head["char"], head["user"], head["cp"], head["up"], head["sc"])
    messages = []
    for kind, length, body in _BLOCK.findall(text[head.end():]):
        name = rp.user_name if kind == "Input" else rp.char_name
        content = body.rstrip("\n")
        if content.startswith(name + ":"):
            content = content[len(name) + 1:].lstrip(" ")
        role = "user" if kind == "Input" else "assistant"
        messages.append(Message(role, content, length=length or None))
    return Conversation(messages, roleplay=rp)
