"""A real SillyTavern server (its own node process and request code) between the client and `openhermes serve`, for
each local text-completion type: connect, count tokens, generate, stream. SillyTavern is not a dependency:
`scripts/setup.sh --dev` installs its npm release (tests/serve/sillytavern.py); without it this skips."""

import json

import httpx
import pytest

from tests.serve.sillytavern import needs_sillytavern
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


def streamed_text(tavern, body: dict) -> str:
    """SillyTavern's stream reader (textgen-settings.js): each event's choices[0].text or content."""
    text = ""
    with tavern.stream("POST", "/api/backends/text-completions/generate", json=body | {"stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                data = json.loads(line[6:])
                text += (data.get("choices") or [{}])[0].get("text") or data.get("content") or ""
    return text


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
