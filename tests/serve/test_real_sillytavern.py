"""A real SillyTavern server (its own node process and request code) between the client and `openhermes serve`, for
each local text-completion type (connect, count tokens, generate, stream) and for Chat Completion's Custom
(OpenAI-compatible) source. SillyTavern is not a dependency:
`scripts/setup.sh --dev` installs its npm release (tests/serve/sillytavern.py); without it this skips."""

import json

import httpx
import pytest

from tests.serve.sillytavern import CUSTOM_SOURCE_FIELDS, needs_sillytavern
from tests.serve.test_clients import sillytavern_body
from tests.serve.test_sillytavern_types import CARD

pytestmark = needs_sillytavern
TYPES = ("ooba", "llamacpp", "koboldcpp")


@pytest.fixture(scope="module")
def backend(open_server):
    return open_server


@pytest.fixture(scope="module")
def tavern(sillytavern_url):
    with httpx.Client(base_url=sillytavern_url, timeout=120) as client:
        yield client


def reply_text(data: dict) -> str:
    """What SillyTavern's UI takes from a reply (extractMessageFromData for text completions)."""
    return data.get("choices", [{}])[0].get("text") if "choices" in data else data.get("content", "")


def streamed(tavern, route: str, body: dict, piece) -> str:
    """The text of a stream through SillyTavern's `route`: `piece(event)` for each event, as its reader takes it."""
    text = ""
    with tavern.stream("POST", route, json=body | {"stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                text += piece(json.loads(line[6:])) or ""
    return text


def streamed_text(tavern, body: dict) -> str:
    """SillyTavern's text-completion stream reader (textgen-settings.js): each event's choices[0].text or content."""
    return streamed(tavern, "/api/backends/text-completions/generate", body,
                    lambda data: (data.get("choices") or [{}])[0].get("text") or data.get("content"))


@pytest.mark.parametrize("api_type", TYPES)
def test_each_type_through_sillytavern(tavern, backend, api_type, chat_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_model_dir)
    status = tavern.post("/api/backends/text-completions/status", json={"api_server": backend.url,
                                                                       "api_type": api_type})
    assert status.status_code == 200, status.text
    assert status.json()["result"] == "tiny-chat"
    if api_type == "ooba":  # model/info answered: SillyTavern will count with the model's tokenizer
        assert status.headers.get("x-supports-tokenization") == "true"
    count = tavern.post("/api/tokenizers/remote/textgenerationwebui/encode",
                        json={"text": CARD, "url": backend.url, "api_type": api_type}).json()
    with_bos = len(tok(CARD)["input_ids"])
    # llama.cpp's /tokenize leaves BOS out unless asked (add_special), as llama.cpp does
    assert count["count"] == (with_bos - 1 if api_type == "llamacpp" else with_bos), count
    body = sillytavern_body(3) | {"api_type": api_type, "api_server": backend.url}
    data = tavern.post("/api/backends/text-completions/generate", json=body).json()
    text = reply_text(data)
    direct = httpx.post(backend.url + "/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]
    assert text == direct and text.strip()
    assert streamed_text(tavern, body) == text
    # a quoted line in SillyTavern's Banned Tokens/Strings box: sent as banned_strings, taken back here
    piece = text.strip()[:3]
    banned = body | {"banned_strings": [piece]}
    data = tavern.post("/api/backends/text-completions/generate", json=banned).json()
    assert piece.lower() not in reply_text(data).lower() and reply_text(data) != text
    assert streamed_text(tavern, banned) == reply_text(data)
    # past the context window: SillyTavern's truncation_length keeps the end, and the reply says so
    long = body | {"prompt": "word " * 3000, "truncation_length": 512}
    data = tavern.post("/api/backends/text-completions/generate", json=long).json()
    assert reply_text(data) is not None
    if api_type == "llamacpp":
        assert data["truncated"] is True
    else:
        assert data["usage"]["truncated_prompt_tokens"] > 0


def chat_completion_body(backend, **settings) -> dict:
    """What SillyTavern's page sends for Chat Completion -> Custom (OpenAI-compatible) (openai.js,
    createGenerationParameters): its prompt manager's messages, with the example dialogue as named system messages,
    the sampler panel's values and the custom source's fields."""
    return {
        "type": "normal", "chat_completion_source": "custom", "custom_url": backend.url + "/v1", "model": "tiny-chat",
        "messages": [
            {"role": "system", "content": "Write Hermes's next reply in a fictional chat between Hermes and Ann."},
            {"role": "system", "content": "[Start a new Chat]"},
            {"role": "system", "name": "example_user", "content": "What is 2 + 3?"},
            {"role": "system", "name": "example_assistant", "content": "5"},
            {"role": "user", "content": "Hello there, who are you?"}],
        "temperature": 1, "frequency_penalty": 0, "presence_penalty": 0, "top_p": 1, "max_tokens": 40,
        "stream": False, "seed": 7, "user_name": "Ann", "char_name": "Hermes", "group_names": [],
        "include_reasoning": False, "reasoning_effort": "auto", "enable_web_search": False, "request_images": False,
        "request_image_resolution": "", "request_image_aspect_ratio": "", "custom_prompt_post_processing": "",
        "verbosity": "auto", "custom_include_body": "", "custom_exclude_body": "", "custom_include_headers": "",
    } | settings


def streamed_chat_text(tavern, body: dict) -> str:
    """SillyTavern's Chat Completion stream reader (openai.js): each event's choices[0].delta.content."""
    return streamed(tavern, "/api/backends/chat-completions/generate", body,
                    lambda data: (data["choices"] or [{}])[0].get("delta", {}).get("content"))


@pytest.mark.parametrize("keyed", [False, True], ids=["no key", "api key"])
def test_chat_completion_custom_source_through_sillytavern(tavern, open_server, server, keyed):
    """Chat Completion -> Custom (OpenAI-compatible), pointed at `openhermes serve`'s /v1: SillyTavern lists the model
    from /v1/models and forwards the chat to /v1/chat/completions, streamed and not. Without a key in its secrets it
    sends `Authorization: Bearer undefined`, which a server without --api-key takes; with the key stored in
    SillyTavern's secrets, the keyed server answers."""
    from tests.serve.conftest import API_KEY

    backend = server if keyed else open_server
    tavern.post("/api/secrets/write", json={"key": "api_key_custom", "value": API_KEY if keyed else ""})
    status = tavern.post("/api/backends/chat-completions/status",
                         json={"chat_completion_source": "custom", "custom_url": backend.url + "/v1"})
    assert status.status_code == 200, status.text
    assert [m["id"] for m in status.json()["data"]] == ["tiny-chat"]

    body = chat_completion_body(backend)
    data = tavern.post("/api/backends/chat-completions/generate", json=body).json()
    assert "error" not in data, data
    text = data["choices"][0]["message"]["content"]
    # the reference: the fields SillyTavern's server forwards (chat-completions.js), sent straight to the server
    forwarded = {k: body[k] for k in CUSTOM_SOURCE_FIELDS if k in body}
    direct = httpx.post(backend.url + "/v1/chat/completions", json=forwarded, headers=backend.headers, timeout=120)
    assert direct.status_code == 200, direct.text
    assert text == direct.json()["choices"][0]["message"]["content"] and text.strip()
    assert streamed_chat_text(tavern, body) == text
