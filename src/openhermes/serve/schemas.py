"""Request bodies of the OpenAI-compatible API, strictly typed: a wrong type or an out-of-range value
is a 400 naming the field, an unknown field is a 400 naming it.

Beyond OpenAI's fields (SPEC §5): top_k, min_p, typical_p, repetition_penalty, repeat_last_n, tfs
(alias tfs_z), ignore_eos, `preset` (a named sampler preset the other fields refine) and, for chat,
`roleplay` (build the LimaRP prompt from the messages instead of ChatML).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from openhermes.formats import limarp

Strict = ConfigDict(strict=True, extra="forbid")

# OpenAI fields we accept in the schema but do not implement: a 400 that names them.
UNSUPPORTED_CHAT = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "logprobs",
                    "top_logprobs", "logit_bias", "response_format", "audio", "modalities", "prediction")
UNSUPPORTED_COMPLETION = ("logprobs", "echo", "suffix", "best_of", "logit_bias")


class StreamOptions(BaseModel):
    model_config = Strict
    include_usage: bool = False


class SamplingFields(BaseModel):
    model_config = Strict

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    typical_p: Annotated[float, Field(gt=0, le=1)] | None = None
    tfs: Annotated[float, Field(gt=0)] | None = None  # also read from "tfs_z" (llama.cpp's name)
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    repeat_last_n: Annotated[int, Field(ge=0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**64)] | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None
    ignore_eos: bool = False
    preset: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _tfs_either_name(cls, data):
        if isinstance(data, dict) and "tfs_z" in data and "tfs" not in data:
            data = dict(data)
            data["tfs"] = data.pop("tfs_z")
        return data

    def sampler_settings(self) -> dict:
        keys = ("temperature", "top_p", "top_k", "min_p", "typical_p", "tfs", "repetition_penalty", "repeat_last_n",
                "presence_penalty", "frequency_penalty", "seed")
        return {k: getattr(self, k) for k in keys}

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        kinds = {p.type for p in self.content} - {"text"}
        if kinds:
            raise ValueError(f"content parts of type {', '.join(sorted(kinds))} are not supported (text only)")
        return "".join(p.text or "" for p in self.content)


class RoleplayFields(BaseModel):
    model_config = Strict
    char_name: Annotated[str, Field(min_length=1)]
    user_name: Annotated[str, Field(min_length=1)] = "User"
    char_persona: str = ""
    user_persona: str = ""
    scenario: str = ""
    length: Literal[limarp.LENGTHS] | None = "medium"  # type: ignore[valid-type]


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    roleplay: RoleplayFields | None = None
    # accepted so that the error can name them (see UNSUPPORTED_CHAT)
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None
    function_call: str | dict | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict | None = None
    response_format: dict | None = None
    audio: dict | None = None
    modalities: list | None = None
    prediction: dict | None = None
    metadata: dict | None = None
    store: bool | None = None

    def unsupported(self) -> list[str]:
        out = [name for name in UNSUPPORTED_CHAT if _is_set(name, getattr(self, name))]
        if self.n is not None and self.n > 1:
            out.insert(0, "n")
        return out


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logit_bias: dict | None = None

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def unsupported(self) -> list[str]:
        out = [name for name in UNSUPPORTED_COMPLETION if _is_set(name, getattr(self, name))]
        if self.n is not None and self.n > 1:
            out.insert(0, "n")
        return out


def _is_set(name: str, value) -> bool:
    """Whether an unsupported field asks for something (defaults and neutral values are fine)."""
    if value is None or value is False or value == {} or value == [] or value == "":
        return False
    if name == "tool_choice" and value == "none":
        return False
    if name == "best_of" and value == 1:
        return False
    if name == "response_format" and value.get("type") == "text":
        return False
    return True
