"""Terminal chat: ChatML conversations, or LimaRP roleplay from a character card, streamed.

In-chat commands: /reset, /system TEXT, /save FILE, /preset NAME, /length NAME, /help, /quit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from openhermes.formats import Message, limarp
from openhermes.infer.cards import Card
from openhermes.infer.engine import BaseEngine
from openhermes.infer.sampling import PRESETS, SamplingParams, preset
from openhermes.infer.sequence import GenerationRequest

HELP = """commands:
  /reset          start the conversation again
  /system TEXT    set the system prompt (ChatML) and start again
  /save FILE      write the conversation to FILE as JSON (OpenAI messages)
  /preset NAME    sampler preset: {presets}
  /length NAME    LimaRP reply length: {lengths}
  /help           this list
  /quit           leave"""


@dataclass
class Roleplaying:
    card: Card
    user_name: str = "User"
    persona: str = ""
    length: str | None = "medium"


@dataclass
class ChatSession:
    engine: BaseEngine
    system: str | None = None
    params: SamplingParams = field(default_factory=lambda: PRESETS["chatml-default"])
    max_new_tokens: int = 512
    roleplay: Roleplaying | None = None
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.roleplay is not None and self.params == PRESETS["chatml-default"]:
            self.params = PRESETS["limarp"]
        self.reset()

    def reset(self) -> None:
        self.messages = []
        if self.roleplay is not None and self.roleplay.card.first_message.strip():
            self.messages.append(Message("assistant", self.roleplay.card.greeting(self.roleplay.user_name)))

    def prompt_ids(self) -> list[int]:
        if self.roleplay is None:
            msgs = ([Message("system", self.system)] if self.system else []) + self.messages
            return self.engine.chat_prompt(msgs)
        rp = self.roleplay
        return self.engine.roleplay_prompt(rp.card.roleplay(rp.user_name, rp.persona), self.messages, rp.length)

    def stops(self) -> tuple[str, ...]:
        if self.roleplay is None:
            return ()
        return (*limarp.STOP_STRINGS, f"\n{self.roleplay.user_name}:")

    def reply(self, text: str, on_delta: Callable[[str], None] = lambda s: None) -> str:
        """Send a user message; stream the reply through on_delta; both join the history."""
        self.messages.append(Message("user", text))
        try:
            request = GenerationRequest(self.prompt_ids(), self.params, self.max_new_tokens, self.stops())
        except ValueError:
            self.messages.pop()
            raise
        pieces = []
        for delta in self.engine.stream(request):
            pieces.append(delta)
            on_delta(delta)
        answer = "".join(pieces).strip()
        length = self.roleplay.length if self.roleplay else None
        self.messages.append(Message("assistant", answer, length=length))
        return answer

    def command(self, line: str) -> str | None:
        """Run an in-chat command; returns what to print, or None to quit."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name == "/quit":
            return None
        if name == "/reset":
            self.reset()
            return "(conversation reset)"
        if name == "/system":
            if self.roleplay is not None:
                return "(roleplay uses the card's personas and scenario; /system is for ChatML chats)"
            self.system = arg or None
            self.reset()
            return f"(system prompt {'set' if arg else 'cleared'}; conversation reset)"
        if name == "/save":
            if not arg:
                return "usage: /save FILE"
            msgs = ([{"role": "system", "content": self.system}] if self.system and not self.roleplay else [])
            msgs += [{"role": m.role, "content": m.content} for m in self.messages]
            Path(arg).write_text(json.dumps({"messages": msgs}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            return f"(saved {len(msgs)} messages to {arg})"
        if name == "/preset":
            try:
                self.params = preset(arg)
            except ValueError as e:
                return f"({e})"
            return f"(sampler preset {arg})"
        if name == "/length":
            if self.roleplay is None:
                return "(/length applies to roleplay chats: start with --roleplay CARD)"
            if arg not in limarp.LENGTHS and arg != "none":
                return f"(unknown length {arg!r}; use one of {', '.join(limarp.LENGTHS)} or none)"
            self.roleplay.length = None if arg == "none" else arg
            return f"(reply length {arg})"
        if name == "/help":
            return HELP.format(presets=", ".join(PRESETS), lengths=", ".join(limarp.LENGTHS))
        return f"(unknown command {name}; /help lists them)"


def run_terminal(session: ChatSession, read: Callable[[str], str] = input,
                 write: Callable[[str], None] = lambda s: print(s, end="", flush=True)) -> None:
    """The read-reply loop. Ctrl-D or /quit leaves; Ctrl-C stops a reply but not the chat."""
    rp = session.roleplay
    who, me = (rp.card.name, rp.user_name) if rp else ("assistant", "you")
    write("type /help for commands\n")
    if rp and session.messages:
        write(f"{who}: {session.messages[0].content}\n")
    while True:
        try:
            line = read(f"{me}> ")
        except EOFError:
            write("\n")
            return
        if not line.strip():
            continue
        if line.startswith("/"):
            out = session.command(line)
            if out is None:
                return
            write(out + "\n")
            continue
        write(f"{who}: ")
        try:
            session.reply(line, write)
        except KeyboardInterrupt:
            write(" (stopped)")
        except ValueError as e:
            write(f"({e})")
        write("\n")
