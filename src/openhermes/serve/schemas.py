"""Request bodies of the OpenAI-compatible API: a wrong type or an out-of-range value is a 400 naming
the field; a field this server does not know is accepted and ignored (as vLLM and llama.cpp do),
logged once per name and listed in the `x-openhermes-ignored` response header.

Beyond OpenAI's fields (SPEC §5): top_k, min_p, typical_p, repetition_penalty, repeat_last_n, tfs,
top_a, DRY (dry_*), XTC (xtc_*), Mirostat v2 (mirostat_*), min_tokens, ignore_eos,
truncation_length, add_bos_token, skip_special_tokens, `preset` (a named sampler preset the other
fields refine) and, for chat, `roleplay` (build the LimaRP prompt from the messages instead of
ChatML). The spellings of text-generation-webui and llama.cpp that SillyTavern sends are honoured
(SPELLINGS); where two spellings of one setting disagree, the first in that table wins and the log
says so.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from openhermes.formats import limarp
from openhermes.infer.sampling import STAGES, UNMOVED

log = logging.getLogger("openhermes.serve")
Strict = ConfigDict(strict=True, extra="forbid")
Lenient = ConfigDict(strict=True, extra="allow")  # unknown fields: kept aside and ignored

# OpenAI fields we accept in the schema but do not implement: a 400 that names them.
UNSUPPORTED_CHAT = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "audio",
                    "modalities", "prediction", "grammar", "grammar_string")
UNSUPPORTED_COMPLETION = ("suffix", "grammar", "grammar_string")

# Each setting's spellings, first = the one that wins when they disagree: OpenAI's or ours, then
# text-generation-webui's, then llama.cpp's (and Ollama's).
SPELLINGS: dict[str, tuple[str, ...]] = {
    "max_tokens": ("max_tokens", "max_new_tokens", "n_predict", "num_predict", "max_length"),
    "repetition_penalty": ("repetition_penalty", "rep_pen", "repeat_penalty"),
    "repeat_last_n": ("repeat_last_n", "repetition_penalty_range", "rep_pen_range"),
    "tfs": ("tfs", "tfs_z"),
    "stop": ("stop", "stopping_strings", "stop_sequence"),
    "seed": ("seed", "sampler_seed"),
    "ignore_eos": ("ignore_eos", "ban_eos_token"),
    "typical_p": ("typical_p", "typical"),
    "mirostat_mode": ("mirostat_mode", "mirostat"),
    "top_k": ("top_k",),
    "min_tokens": ("min_tokens", "min_length"),  # the second: text-generation-webui's
    "response_format": ("response_format", "json_schema"),
    "truncation_length": ("truncation_length", "max_context_length"),  # the second: KoboldCpp's
    # the sampler order: text-generation-webui's names, llama.cpp's names, KoboldCpp's numbers
    "sampler_order": ("sampler_order", "sampler_priority", "samplers"),
}
# llama.cpp's sampler names (common/sampling.cpp) and KoboldCpp's sampler numbers, as ours (sampling.STAGES)
LLAMACPP_SAMPLERS = {"penalties": ("repetition_penalty", "presence_penalty", "frequency_penalty"), "dry": ("dry",),
                     "top_k": ("top_k",), "typ_p": ("typical_p",), "typical_p": ("typical_p",), "top_p": ("top_p",),
                     "min_p": ("min_p",), "xtc": ("xtc",), "temperature": ("temperature",), "temp": ("temperature",),
                     "tfs_z": ("tfs",), "top_n_sigma": ("top_n_sigma",), "infill": ()}
KOBOLD_SAMPLERS = {0: "top_k", 1: "top_a", 2: "top_p", 3: "tfs", 4: "typical_p", 5: "temperature",
                   6: "repetition_penalty"}
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args) -> None:
    """Log `message` the first time `key` is seen; bounded, since clients can invent any number of names."""
    if key not in _warned and len(_warned) < 1000:
        _warned.add(key)
        log.warning(message, *args)


def _normalise(name: str, value: Any) -> Any:
    """One spelling's value in our field's terms."""
    if name in ("seed", "sampler_seed") and value == -1:
        return None  # -1 = a random seed (text-generation-webui, llama.cpp)
    if name in ("repeat_last_n", "rep_pen_range", "repetition_penalty_range") and value == -1:
        return 0  # -1 = the whole context (llama.cpp); ours is 0
    if name == "top_k" and value == -1:
        return 0  # -1 = off (vLLM's; SillyTavern sends it for its vLLM type)
    if name in ("sampler_order", "sampler_priority", "samplers"):
        return _sampler_order(value)
    if name == "json_schema":  # llama.cpp's bare schema (SillyTavern sends {} when there is none)
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else None
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": value}} if value else None
    return value


def _sampler_order(value: Any) -> Any:
    """A sampler order in our names (sampling.STAGES): KoboldCpp's numbers, llama.cpp's names (a list, or one
    string split by ';' or ','), or text-generation-webui's (a list, or lines). A name of a sampler this server
    lacks is skipped; anything else (an unknown KoboldCpp number, a non-string) is left for the field's check (a
    400)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.replace(";", "\n").replace(",", "\n").splitlines() if v.strip()]
    if not isinstance(value, list) or not value:
        return value or None
    out: list = []
    for v in value:
        if isinstance(v, int) and not isinstance(v, bool):
            out.append(KOBOLD_SAMPLERS.get(v, f"KoboldCpp sampler {v}"))
        elif isinstance(v, str) and (v in LLAMACPP_SAMPLERS or v in STAGES + UNMOVED):
            out.extend(LLAMACPP_SAMPLERS.get(v, (v,)))  # text-generation-webui's names are ours
        elif isinstance(v, str):
            # A sampler this server does not have (SillyTavern 1.19 lists `adaptive_p` in both types' defaults):
            # llama.cpp's server skips a name it cannot match, text-generation-webui's sorts only the samplers
            # it has, so the others run in the order given.
            _warn_once(f"sampler {v}", "sampler %r in a sampler order is not one this server has; skipped "
                       "(logged once)", v)
        else:
            out.append(v)
    return list(dict.fromkeys(out))


def _resolve_spellings(data: dict) -> tuple[dict, list[str]]:
    data, notes = dict(data), []
    for field, names in SPELLINGS.items():
        present = [(n, _normalise(n, data.pop(n))) for n in names if n in data]
        given = [(n, v) for n, v in present if v is not None]
        if not given:
            if present:
                data[field] = None
            continue
        winner, value = given[0]
        others = [n for n, v in given[1:] if v != value]
        if others:
            notes.append(f"{winner}={value!r} used; {', '.join(f'{n}={dict(given)[n]!r}' for n in others)} ignored")
        data[field] = value
    return data, notes


def _breakers(value: Any) -> Any:
    """DRY's sequence breakers: a list, or (as SillyTavern sends them) a JSON list in a string, or
    comma-separated text."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = [s for s in value.split(",") if s]
        return parsed
    return value


def _logit_bias(value: Any) -> Any:
    """OpenAI's {"token id": bias} or llama.cpp's [[id, bias or false], ...] as (id, bias) pairs."""
    if isinstance(value, dict):
        pairs = []
        for k, v in value.items():
            if not (isinstance(k, str) and k.isdigit()):
                raise ValueError(f"logit_bias keys are token ids, got {k!r}")
            pairs.append([int(k), v])
        value = pairs
    if isinstance(value, list):
        out = []
        for item in value:
            if not (isinstance(item, list) and len(item) == 2):
                raise ValueError("logit_bias entries are [token id, bias]")
            out.append((item[0], float("-inf") if item[1] is False else item[1]))
        return out
    return value


class StreamOptions(BaseModel):
    model_config = Strict
    include_usage: bool = False


Float = Annotated[float, Field(allow_inf_nan=False)]


class SamplingFields(BaseModel):
    model_config = Lenient

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[Float, Field(ge=0, le=1)] | None = None
    typical_p: Annotated[Float, Field(gt=0, le=1)] | None = None
    tfs: Annotated[Float, Field(gt=0)] | None = None
    repetition_penalty: Annotated[Float, Field(gt=0, le=10)] | None = None
    repeat_last_n: Annotated[int, Field(ge=0)] | None = None
    presence_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**64)] | None = None
    top_a: Annotated[Float, Field(ge=0, le=1)] | None = None
    xtc_threshold: Annotated[Float, Field(ge=0, le=1)] | None = None
    xtc_probability: Annotated[Float, Field(ge=0, le=1)] | None = None
    dry_multiplier: Annotated[Float, Field(ge=0, le=100)] | None = None
    dry_base: Annotated[Float, Field(ge=1, le=100)] | None = None
    dry_allowed_length: Annotated[int, Field(ge=1, le=1000)] | None = None
    dry_penalty_last_n: Annotated[int, Field(ge=-1)] | None = None
    dry_sequence_breakers: Annotated[list[str], Field(max_length=64)] | None = None
    mirostat_mode: Literal[0, 2] | None = None
    mirostat_tau: Annotated[Float, Field(ge=0, le=100)] | None = None
    mirostat_eta: Annotated[Float, Field(ge=0, le=1)] | None = None
    logit_bias: Annotated[list[tuple[int, float]], Field(max_length=1024)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    truncation_length: Annotated[int, Field(ge=1)] | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=-1)] | None = None  # vLLM's: keep the last k (-1: what fits)
    add_bos_token: bool | None = None
    skip_special_tokens: bool = True
    stop: str | Annotated[list[str], Field(max_length=64)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=16)] | None = None
    user: str | None = None
    ignore_eos: bool = False
    preset: str | None = None
    response_format: dict | None = None
    # text-generation-webui's: do_sample false = greedy; the three searches it offers are not served here (400)
    do_sample: bool | None = None
    temperature_last: bool | None = None
    epsilon_cutoff: Annotated[Float, Field(ge=0, lt=10_000)] | None = None  # its units: 1e-4
    eta_cutoff: Annotated[Float, Field(ge=0, lt=10_000)] | None = None
    smoothing_factor: Annotated[Float, Field(ge=0, le=100)] | None = None
    smoothing_curve: Annotated[Float, Field(ge=1, le=10)] | None = None
    encoder_repetition_penalty: Annotated[Float, Field(gt=0, le=10)] | None = None
    no_repeat_ngram_size: Annotated[int, Field(ge=0, le=100)] | None = None
    sampler_order: Annotated[list[str], Field(max_length=64)] | None = None
    custom_token_bans: str | list[int] | None = None  # "12, 345" (text-generation-webui) or ids
    # never in the reply, in any case (taken back and drawn again); text-generation-webui's, KoboldCpp's phrase bans
    banned_strings: Annotated[str, Field(max_length=200)] \
        | Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=256)] | None = None
    # dynamic temperature: text-generation-webui's switch and bounds, or llama.cpp's / KoboldCpp's range around
    # the temperature (SillyTavern sends both)
    dynamic_temperature: bool | None = None
    dynatemp_low: Annotated[Float, Field(ge=0, le=100)] | None = None
    dynatemp_high: Annotated[Float, Field(ge=0, le=100)] | None = None
    dynatemp_range: Annotated[Float, Field(ge=0, le=100)] | None = None
    dynatemp_exponent: Annotated[Float, Field(gt=0, le=100)] | None = None
    max_tokens_second: Annotated[int, Field(ge=0, le=1000)] | None = None  # text-generation-webui's stream pace
    num_beams: Annotated[int, Field(ge=1)] | None = None
    penalty_alpha: Annotated[Float, Field(ge=0)] | None = None
    guidance_scale: Float | None = None

    _notes: list[str] = PrivateAttr(default_factory=list)
    _truncated: int = PrivateAttr(default=0)  # prompt tokens dropped to fit (all prompts)

    @model_validator(mode="wrap")
    @classmethod
    def _spellings(cls, data, handler):
        notes: list[str] = []
        if isinstance(data, dict):
            data, notes = _resolve_spellings(data)
            phrases = data.get("banned_tokens")  # KoboldCpp's phrase bans; TabbyAPI's token ids go unread
            if isinstance(phrases, list) and all(isinstance(x, str) for x in phrases) and not data.get("banned_strings"):
                data["banned_strings"] = data.pop("banned_tokens")
            if "dry_sequence_breakers" in data:
                data["dry_sequence_breakers"] = _breakers(data["dry_sequence_breakers"])
            if "logit_bias" in data and data["logit_bias"] is not None:
                data["logit_bias"] = _logit_bias(data["logit_bias"])
        model = handler(data)
        model._notes = notes
        return model

    def ignored_fields(self) -> list[str]:
        """Fields this server does not know; each name is logged the first time it is seen."""
        names = sorted(self.model_extra or {})
        for name in names:
            _warn_once(name, "request field %r is not used by this server; ignored (logged once)", name)
        return names

    def note_truncated(self, tokens: int, why: str) -> None:
        """`why` (truncation_length, truncate_prompt_tokens, serve --truncate) dropped this many prompt tokens:
        said in the log and the response."""
        self._truncated += tokens
        log.warning("%s: dropped %d prompt tokens", why, tokens)

    @property
    def truncated_tokens(self) -> int:
        return self._truncated

    def log_spelling_notes(self) -> None:
        """Log which spelling won where two spellings of one setting disagreed."""
        for note in self._notes:
            log.warning("two spellings of one setting disagree: %s", note)

    def sampler_settings(self) -> dict:
        keys = ("temperature", "top_p", "top_k", "min_p", "typical_p", "tfs", "repetition_penalty", "repeat_last_n",
                "presence_penalty", "frequency_penalty", "seed", "top_a", "xtc_threshold", "xtc_probability",
                "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "mirostat_mode",
                "mirostat_tau", "mirostat_eta", "temperature_last", "epsilon_cutoff", "eta_cutoff",
                "smoothing_factor", "smoothing_curve", "encoder_repetition_penalty", "no_repeat_ngram_size")
        out = {k: getattr(self, k) for k in keys}
        if self.dry_sequence_breakers is not None:
            out["dry_sequence_breakers"] = tuple(self.dry_sequence_breakers)
        bans = tuple((t, float("-inf")) for t in self.token_bans())
        if self.logit_bias or bans:
            out["logit_bias"] = tuple(self.logit_bias or ()) + bans
        out |= self.dynamic_temperature_settings()
        if self.do_sample is False:
            out["temperature"] = 0.0
            out["dynamic_temperature"] = False
        if self.sampler_order:
            order = list(self.sampler_order)
            if self.temperature_last:  # text-generation-webui moves them last, after the order it was given
                moved = [n for n in order if n in ("temperature", "dynamic_temperature", "quadratic_sampling")]
                order = [n for n in order if n not in moved] + (moved or ["temperature", "quadratic_sampling"])
            out["sampler_order"] = tuple(order)
        return out

    def dynamic_temperature_settings(self) -> dict:
        """text-generation-webui's dynamic_temperature with dynatemp_low/high, else llama.cpp's dynatemp_range > 0
        (temperature - range to temperature + range, the low end at least 0): as our dynatemp_low/high."""
        if self.dynamic_temperature is False:
            return {}
        out: dict = {"dynatemp_exponent": self.dynatemp_exponent}
        if self.dynamic_temperature and self.dynatemp_low is not None and self.dynatemp_high is not None:
            low, high = self.dynatemp_low, self.dynatemp_high
        elif self.dynatemp_range:
            t = 1.0 if self.temperature is None else self.temperature
            low, high = max(0.0, t - self.dynatemp_range), t + self.dynatemp_range
        else:
            return {}
        return out | {"dynamic_temperature": True, "dynatemp_low": low, "dynatemp_high": high}

    def token_bans(self) -> list[int]:
        """custom_token_bans as ids: text-generation-webui's comma-separated text, or a list."""
        bans = self.custom_token_bans
        if not bans:
            return []
        if isinstance(bans, list):
            return bans
        try:
            return [int(x) for x in bans.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"custom_token_bans: comma-separated token ids, got {bans!r}") from None

    def unserved_searches(self) -> list[str]:
        """Beam search, contrastive search and CFG: asked for (not their neutral values), they would change the
        reply, so they are a 400 rather than silently ignored."""
        asked = [("num_beams", self.num_beams not in (None, 1)), ("penalty_alpha", bool(self.penalty_alpha)),
                 ("guidance_scale", self.guidance_scale not in (None, 1))]
        return [name for name, on in asked if on]

    def banned(self) -> tuple[str, ...]:
        """banned_strings as a tuple (a single string is one)."""
        value = self.banned_strings
        return () if not value else (value,) if isinstance(value, str) else tuple(s for s in value if s)

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def choices(self) -> int:
        return self.n or 1


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
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # accepted so that the error can name them (see UNSUPPORTED_CHAT)
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None
    function_call: str | dict | None = None
    parallel_tool_calls: bool | None = None
    audio: dict | None = None
    modalities: list | None = None
    prediction: dict | None = None
    grammar: str | None = None
    grammar_string: str | None = None
    metadata: dict | None = None
    store: bool | None = None

    def unsupported(self) -> list[str]:
        return [name for name in UNSUPPORTED_CHAT if _is_set(name, getattr(self, name))] + self.unserved_searches()

    def logprobs_k(self) -> int | None:
        """None: no log-probabilities; k: each token's and the k most likely (OpenAI's chat shape)."""
        return (self.top_logprobs or 0) if self.logprobs else None


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=64)] | TokenIds \
        | Annotated[list[TokenIds], Field(min_length=1, max_length=64)]
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    grammar: str | None = None
    grammar_string: str | None = None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text, or token ids (lm-evaluation-harness sends ids)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)

    def unsupported(self) -> list[str]:
        out = [name for name in UNSUPPORTED_COMPLETION if _is_set(name, getattr(self, name))]
        if self.best_of is not None and self.best_of not in (1, self.choices()):
            out.append("best_of")  # SillyTavern sends best_of = n, which is what we do
        return out + self.unserved_searches()


def _is_set(name: str, value) -> bool:
    """Whether an unsupported field asks for something (defaults and neutral values are fine)."""
    if value is None or value is False or value == {} or value == [] or value == "":
        return False
    if name == "tool_choice" and value == "none":
        return False
    if name == "response_format" and value.get("type") == "text":
        return False
    return True


class TokenizeRequest(BaseModel):
    """llama.cpp's {"content", "add_special"} or vLLM's {"prompt", "add_special_tokens"}."""
    model_config = Lenient
    content: str
    add_special: bool = False
    with_pieces: bool = False

    @model_validator(mode="before")
    @classmethod
    def _vllm_names(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            if "prompt" in data and "content" not in data:
                data["content"] = data.pop("prompt")
            if "add_special_tokens" in data and "add_special" not in data:
                data["add_special"] = data.pop("add_special_tokens")
        return data


class DetokenizeRequest(BaseModel):
    """llama.cpp's and vLLM's /detokenize, and text-generation-webui's /v1/internal/decode: {"tokens": [...]}."""
    model_config = Lenient
    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=1_000_000)]


class EncodeRequest(BaseModel):
    """text-generation-webui's /v1/internal/encode and token-count: {"text"}."""
    model_config = Lenient
    text: str


class TokenCountRequest(BaseModel):
    """KoboldCpp's /api/extra/tokencount: {"prompt"}."""
    model_config = Lenient
    prompt: str
