"""Prompts over the context window, cut only when asked, and said when cut: `serve --truncate keep-system`
(whole oldest turns after the system message, as SillyTavern and text-generation-webui drop them) and vLLM's
`truncate_prompt_tokens`. The reference for what a kept chat is: the model folder's own ChatML chat template."""

from __future__ import annotations

import httpx
import pytest
from transformers import AutoTokenizer

from tests.serve.conftest import Server, with_context

SYSTEM = {"role": "system", "content": "You are Seraphina."}
MAX_TOKENS = 8


def chat(turns: int) -> list[dict]:
    msgs = [SYSTEM]
    for i in range(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant",
                     "content": f"turn {i}: ok"})
    return msgs


WINDOW = 256


@pytest.fixture(scope="module")
def window_dir(tmp_path_factory, chat_model_dir):
    return with_context(chat_model_dir, tmp_path_factory.mktemp("ctx256"), WINDOW)


@pytest.fixture(scope="module")
def keep_system(window_dir):
    s = Server(window_dir, "--truncate", "keep-system")
    yield s
    s.stop()


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=server.headers, timeout=60)


def test_keep_system_drops_the_fewest_oldest_turns(keep_system, window_dir):
    tok = AutoTokenizer.from_pretrained(window_dir)
    msgs = chat(40)

    def prompt_len(kept: list[dict]) -> int:
        text = tok.apply_chat_template(kept, add_generation_prompt=True, tokenize=False)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    full = prompt_len(msgs)
    assert full + MAX_TOKENS > WINDOW
    dropped = next(n for n in range(1, 40) if prompt_len([SYSTEM, *msgs[1 + n:]]) + MAX_TOKENS <= WINDOW)
    assert 2 <= dropped <= 30  # some turns go, not all: the fewest is found, not the first or the last
    kept = prompt_len([SYSTEM, *msgs[1 + dropped:]])
    r = post(keep_system, "/v1/chat/completions", {"messages": msgs, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == kept
    assert usage["truncated_prompt_tokens"] == full - kept == int(r.headers["x-openhermes-truncated-tokens"])


def test_keep_system_never_cuts_into_the_system_message_or_the_last_turn(keep_system):
    long_last = [SYSTEM, {"role": "user", "content": "hi"}, {"role": "user", "content": "word " * 300}]
    r = post(keep_system, "/v1/chat/completions", {"messages": long_last, "max_tokens": MAX_TOKENS})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text


def test_a_chat_that_fits_is_not_touched(keep_system):
    r = post(keep_system, "/v1/chat/completions", {"messages": chat(1), "max_tokens": MAX_TOKENS, "temperature": 0})
    assert r.status_code == 200 and "truncated_prompt_tokens" not in r.json()["usage"]
    assert "x-openhermes-truncated-tokens" not in r.headers


def test_without_truncate_a_chat_over_the_window_is_openais_400(server):
    msgs = [SYSTEM, {"role": "user", "content": "word " * 3000}]
    r = post(server, "/v1/chat/completions", {"messages": msgs, "max_tokens": MAX_TOKENS})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("keep, expected", [(100, 100), (-1, 2048 - MAX_TOKENS)])
def test_truncate_prompt_tokens_keeps_the_end(server, keep, expected):
    body = {"prompt": "word " * 3000, "max_tokens": MAX_TOKENS, "truncate_prompt_tokens": keep, "temperature": 0}
    r = post(server, "/v1/completions", body)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == expected and usage["truncated_prompt_tokens"] > 0
    assert r.headers["x-openhermes-truncated-tokens"] == str(usage["truncated_prompt_tokens"])


def test_keep_system_keeps_the_roleplay_block_and_drops_old_turns(keep_system):
    block = {"char_name": "Mira", "user_name": "Sam", "char_persona": "A wandering bard.", "user_persona": "",
             "scenario": "A tavern.", "length": "short"}
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: ok"} for i in range(41)]
    body = {"messages": msgs, "roleplay": block, "max_tokens": MAX_TOKENS, "temperature": 0}
    r = post(keep_system, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["truncated_prompt_tokens"] > 0 and usage["prompt_tokens"] + MAX_TOKENS <= WINDOW
    newest = post(keep_system, "/v1/chat/completions", body | {"messages": msgs[-1:]}).json()["usage"]
    assert newest["prompt_tokens"] < usage["prompt_tokens"]  # more than the block and the last turn were kept
