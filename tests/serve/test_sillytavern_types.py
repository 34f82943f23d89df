"""SillyTavern's three local text-completion types against a real `openhermes serve`: the routes each type calls
(read from SillyTavern 1.12.6's src/endpoints/backends/text-completions.js and src/endpoints/tokenizers.js) in the
shapes their servers answer (text-generation-webui's modules/api, llama.cpp's tools/server, KoboldCpp's API), the
token counts against the model folder's own tokenizer, and the settings SillyTavern sends that used to be ignored."""

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from transformers import AutoTokenizer

from tests.serve.conftest import API_KEY, Server
from tests.serve.test_clients import HEADERS, PROMPT, post, sillytavern_body

CARD = ("Seraphina's Persona: Seraphina is a guardian of the forest, kind and watchful. "
        "Scenario: {{user}} wakes in her glade after a wolf attack. <|im_start|> stays text here. " * 10)


@pytest.fixture(scope="module")
def folder_tokenizer(chat_model_dir):
    return AutoTokenizer.from_pretrained(chat_model_dir)


def sse_payloads(server, path: str, body: dict) -> list[tuple[str | None, object]]:
    """(event name, data) for each Server-Sent Event of a streamed reply."""
    out, event = [], None
    with httpx.stream("POST", server.url + path, json=body, headers=HEADERS, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, line[6:] if line == "data: [DONE]" else json.loads(line[6:])))
                event = None
    return out


def test_textgen_webui_type_counts_with_the_models_tokenizer(server, folder_tokenizer):
    """SillyTavern's ooba type: /v1/models, then /v1/internal/model/info (200 = 'supports tokenization'), then
    /v1/internal/encode {"text"} read as data.length: the model's count, not SillyTavern's LLaMA fallback."""
    models = httpx.get(server.url + "/v1/models", headers=HEADERS).json()
    assert [m["id"] for m in models["data"]] == ["tiny-chat"]
    info = httpx.get(server.url + "/v1/internal/model/info", headers=HEADERS)
    assert info.status_code == 200 and info.json()["model_name"] == "tiny-chat"
    encoded = post(server, "/v1/internal/encode", {"text": CARD}).json()
    reference = folder_tokenizer(CARD)["input_ids"]  # the folder's tokenizer, BOS as it adds it
    assert encoded["tokens"] == reference and encoded["length"] == len(reference)
    assert post(server, "/v1/internal/token-count", {"text": CARD}).json() == {"length": len(reference)}
    decoded = post(server, "/v1/internal/decode", {"tokens": reference}).json()["text"]
    assert decoded == folder_tokenizer.decode(reference, skip_special_tokens=True)
    # the count a completion of this text is given: the same
    usage = post(server, "/v1/completions", {"prompt": CARD, "max_tokens": 1}).json()["usage"]
    assert usage["prompt_tokens"] == len(reference)
    lone_surrogate = httpx.post(server.url + "/v1/internal/encode", content=b'{"text": "\\ud800"}', headers=HEADERS)
    assert lone_surrogate.status_code == 400, lone_surrogate.text


def test_llamacpp_type_generates_through_completion(server):
    """SillyTavern's llama.cpp type posts its body to /completion and reads data.content (streamed: each
    chunk's content, no [DONE]); the reply is the one /v1/completions gives for the same body."""
    body = sillytavern_body(7) | {"api_type": "llamacpp"}
    full = post(server, "/completion", body)
    assert full.status_code == 200, full.text
    reply = full.json()
    oai = post(server, "/v1/completions", body).json()
    assert reply["content"] == oai["choices"][0]["text"] and reply["content"].strip()
    assert reply["stop"] is True and reply["tokens_predicted"] == oai["usage"]["completion_tokens"]
    assert reply["tokens_evaluated"] == oai["usage"]["prompt_tokens"]
    assert reply["stop_type"] == {"length": "limit", "stop": reply["stop_type"]}[oai["choices"][0]["finish_reason"]]
    assert len(reply["tokens"]) == reply["tokens_predicted"]
    events = sse_payloads(server, "/completion", body | {"stream": True})
    assert all(data != "[DONE]" for _, data in events)
    assert [d["stop"] for _, d in events] == [False] * (len(events) - 1) + [True]
    assert "".join(d["content"] for _, d in events) == reply["content"]
    assert events[-1][1]["tokens_predicted"] == reply["tokens_predicted"] and "timings" in events[-1][1]
    # /completion's /tokenize counts what /completion is given (BOS added as the model's rule says)
    tokens = post(server, "/tokenize", {"content": PROMPT, "add_special": True}).json()["tokens"]
    assert len(tokens) == reply["tokens_evaluated"]


def test_completion_reports_which_stop_ended_it(server):
    greedy = {"prompt": PROMPT, "temperature": 0, "n_predict": 24, "ignore_eos": True}
    text = post(server, "/completion", greedy).json()["content"]
    word = text[len(text) // 2:len(text) // 2 + 3]
    assert word.strip()
    cut = post(server, "/completion", greedy | {"stop": [word]}).json()
    assert cut["stop_type"] == "word" and cut["stopping_word"] == word
    assert cut["content"] == text[:text.index(word)]
    assert post(server, "/completion", greedy).json()["stop_type"] == "limit"


def test_ban_eos_token_never_samples_the_end_of_turn(server, folder_tokenizer):
    """ban_eos_token (text-generation-webui) / ignore_eos (llama.cpp): the end-of-turn tokens are masked, not
    just ignored as stops: none of them is in the reply's tokens."""
    ends = {folder_tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>")}
    ends.add(folder_tokenizer.eos_token_id)
    chat = "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"
    im_end = folder_tokenizer.convert_tokens_to_ids("<|im_end|>")
    eager = {"prompt": chat, "n_predict": 48, "logit_bias": [[im_end, 30.0]]}  # the turn would end at once
    free = post(server, "/completion", eager | {"temperature": 0}).json()
    assert free["stop_type"] == "eos" and free["tokens_predicted"] == 0
    for spelling in ("ban_eos_token", "ignore_eos"):
        for temperature in (0, 1.0):
            banned = post(server, "/completion", eager | {"temperature": temperature, "seed": 3, spelling: True}).json()
            assert banned["stop_type"] == "limit" and banned["tokens_predicted"] == 48
            assert not ends & set(banned["tokens"]), (spelling, temperature)


def test_koboldcpp_api(server, folder_tokenizer):
    count = post(server, "/api/extra/tokencount", {"prompt": CARD}).json()
    assert count["value"] == len(folder_tokenizer(CARD)["input_ids"]) and count["ids"][:1] == [folder_tokenizer.bos_token_id]
    kobold = {"prompt": PROMPT, "max_length": 12, "max_context_length": 2048, "temperature": 0, "rep_pen": 1.0,
              "stop_sequence": [], "genkey": "KCPP1234", "trim_stop": True}
    result = post(server, "/api/v1/generate", kobold).json()["results"][0]
    ours = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "temperature": 0}).json()
    assert result["text"] == ours["choices"][0]["text"]
    events = sse_payloads(server, "/api/extra/generate/stream", kobold)
    assert {e for e, _ in events} == {"message"}
    assert "".join(d["token"] for _, d in events) == result["text"]
    assert events[-1][1]["finish_reason"] == result["finish_reason"]
    assert httpx.get(server.url + "/api/v1/model", headers=HEADERS).json() == {"result": "koboldcpp/tiny-chat"}
    assert httpx.get(server.url + "/api/v1/config/max_context_length", headers=HEADERS).json() == {"value": 2048}
    memory = post(server, "/api/v1/generate", kobold | {"memory": "Aria: ", "prompt": PROMPT}).json()["results"][0]
    assert memory["prompt_tokens"] == len(folder_tokenizer("Aria: " + PROMPT)["input_ids"])


def test_stop_generation_and_abort_end_the_replies_in_flight(narrow_server):
    for route in ("/v1/internal/stop-generation", "/api/extra/abort"):
        result = {}

        def long_reply(result=result):
            r = httpx.post(narrow_server.url + "/v1/completions", timeout=120,
                           json={"prompt": "once upon a time", "max_tokens": 20000, "ignore_eos": True})
            result["body"] = r.json()

        t = threading.Thread(target=long_reply)
        t.start()
        deadline = time.time() + 30
        while narrow_server.health()["active"] == 0 and time.time() < deadline:
            time.sleep(0.05)
        started = time.time()
        stopped = httpx.post(narrow_server.url + route, timeout=10)
        assert stopped.status_code == 200
        t.join(30)
        assert time.time() - started < 10, route
        choice = result["body"]["choices"][0]
        assert choice["finish_reason"] == "cancelled" and result["body"]["usage"]["completion_tokens"] < 20000


def test_settings_sillytavern_sends_are_honoured_or_refused(server):
    base = {"prompt": PROMPT, "max_tokens": 16, "temperature": 1.0, "seed": 11}
    greedy = post(server, "/v1/completions", base | {"temperature": 0}).json()["choices"][0]["text"]
    assert post(server, "/v1/completions", base | {"do_sample": False}).json()["choices"][0]["text"] == greedy
    off = post(server, "/v1/completions", base | {"top_k": 0}).json()["choices"][0]["text"]
    vllm_off = post(server, "/v1/completions", base | {"top_k": -1})  # SillyTavern's vLLM type sends -1
    assert vllm_off.status_code == 200 and vllm_off.json()["choices"][0]["text"] == off
    for field, value in (("num_beams", 2), ("penalty_alpha", 0.6), ("guidance_scale", 1.5)):
        r = post(server, "/v1/completions", base | {field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field
    neutral = {"num_beams": 1, "penalty_alpha": 0, "guidance_scale": 1, "negative_prompt": ""}  # SillyTavern's
    assert post(server, "/v1/completions", base | neutral).status_code == 200
    # epsilon cutoff in text-generation-webui's units: 9999 keeps only a token of p >= 0.9999, else the top one
    assert post(server, "/v1/completions", base | {"epsilon_cutoff": 9999}).json()["choices"][0]["text"] == greedy
    # custom_token_bans ("id, id") wins over a logit bias that would pick the token every time
    favourite = post(server, "/tokenize", {"content": " the"}).json()["tokens"][-1]
    pushed = base | {"logit_bias": {str(favourite): 50}, "max_tokens": 6}
    assert set(post(server, "/completion", pushed).json()["tokens"]) == {favourite}
    banned = post(server, "/completion", pushed | {"custom_token_bans": f"{favourite}, 3"}).json()
    assert favourite not in banned["tokens"] and banned["tokens_predicted"] == 6
    assert post(server, "/v1/completions", base | {"custom_token_bans": "x, 2"}).status_code == 400
    # of SillyTavern's ooba fields, only those this server cannot serve are listed as ignored
    ignored = post(server, "/v1/completions", sillytavern_body(1) | {
        "temperature_last": True, "smoothing_factor": 0, "smoothing_curve": 1, "epsilon_cutoff": 0, "eta_cutoff": 0,
        "no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1, "min_length": 0, "custom_token_bans": "",
        "do_sample": True, "num_beams": 1, "penalty_alpha": 0}).headers["x-openhermes-ignored"].split(", ")
    assert not {"temperature_last", "smoothing_factor", "epsilon_cutoff", "eta_cutoff", "no_repeat_ngram_size",
                "encoder_repetition_penalty", "min_length", "custom_token_bans", "do_sample", "num_beams"} & set(ignored)


def test_any_model_name_is_served_unless_strict(server, chat_model_dir):
    r = post(server, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                               "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "tiny-chat"
    strict = Server(chat_model_dir, "--strict-model-name")
    try:
        r = httpx.post(strict.url + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    finally:
        strict.stop()


def test_a_cut_prompt_says_how_much_was_cut(server):
    body = {"prompt": "word " * 3000, "truncation_length": 512, "max_tokens": 8}
    r = post(server, "/v1/completions", body)
    assert r.status_code == 200
    full = len(post(server, "/tokenize", {"content": "word " * 3000, "add_special": True}).json()["tokens"])
    cut = full - (512 - 8)
    assert r.headers["x-openhermes-truncated-tokens"] == str(cut)
    assert r.json()["usage"]["truncated_prompt_tokens"] == cut
    assert post(server, "/completion", body).json()["truncated"] is True
    assert "x-openhermes-truncated-tokens" not in post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 1}).headers


def test_a_busy_port_is_one_line_before_serving(server, chat_model_dir):
    run = subprocess.run([sys.executable, "-m", "openhermes.cli", "serve", str(chat_model_dir), "--port",
                          str(server.port)], capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in out and "--port" in out
    assert "serving" not in out and "Traceback" not in out


def test_key_still_required_on_the_other_servers_routes(server):
    for method, path in (("GET", "/v1/internal/model/info"), ("POST", "/v1/internal/encode"),
                         ("POST", "/completion"), ("POST", "/api/extra/tokencount"), ("GET", "/api/v1/model")):
        r = httpx.request(method, server.url + path, json={"text": "a", "prompt": "a"}, timeout=30)
        assert r.status_code == 401, path
    assert API_KEY


# Sampler orders in the fields and shapes SillyTavern sends for each type: text-generation-webui's default
# `sampler_priority` (its names), llama.cpp's `samplers` (its names, list or ';'-joined), KoboldCpp's
# `sampler_order` (its numbers, default 6,0,1,3,4,2,5). The first two are SillyTavern 1.19's defaults
# (public/scripts/textgen-settings.js: OOBA_DEFAULT_ORDER, LLAMACPP_DEFAULT_ORDER), `adaptive_p` included.
WEBUI_PRIORITY = ["repetition_penalty", "presence_penalty", "frequency_penalty", "dry", "temperature",
                  "dynamic_temperature", "quadratic_sampling", "top_n_sigma", "top_k", "top_p", "typical_p",
                  "epsilon_cutoff", "eta_cutoff", "tfs", "top_a", "min_p", "adaptive_p", "mirostat", "xtc",
                  "encoder_repetition_penalty", "no_repeat_ngram"]
LLAMACPP_SAMPLERS = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature",
                     "adaptive_p"]
KOBOLD_ORDER = [6, 0, 1, 3, 4, 2, 5]


@pytest.mark.parametrize("field, order, temperature_first", [
    ("sampler_priority", WEBUI_PRIORITY, True), ("sampler_priority", "\n".join(WEBUI_PRIORITY), True),
    ("samplers", LLAMACPP_SAMPLERS, False), ("samplers", ";".join(LLAMACPP_SAMPLERS), False),
    ("sampler_order", KOBOLD_ORDER, False), ("sampler_order", [5, 6, 0, 1, 3, 4, 2], True)])
def test_the_sampler_order_each_type_sends_is_used(server, field, order, temperature_first):
    """Temperature 2 with min-p 0.9 (the test model is close to uniform): before min-p it lets twice the band of
    logits through, so over 24 seeded tokens the
    reply differs from the same request in the default order (temperature last) exactly when the order puts
    temperature first."""
    base = {"prompt": PROMPT, "max_tokens": 24, "temperature": 2.0, "min_p": 0.9, "seed": 5}
    default = post(server, "/v1/completions", base).json()["choices"][0]["text"]
    r = post(server, "/v1/completions", base | {field: order})
    assert r.status_code == 200, r.text
    assert field not in r.headers.get("x-openhermes-ignored", "")
    assert (r.json()["choices"][0]["text"] != default) == temperature_first


@pytest.mark.parametrize("field, order", [("sampler_priority", ["adaptive_p", "temperature", "beam", "min_p"]),
                                          ("samplers", "adaptive_p;temperature;min_p")])
def test_a_sampler_this_server_lacks_is_skipped_in_an_order(server, field, order):
    """SillyTavern 1.19's default orders for both types end in `adaptive_p`. llama.cpp's server skips a name it
    cannot match (common_sampler_types_from_names) and text-generation-webui's sorts only the samplers it has, so
    the rest of the order holds: here temperature before min-p, as with the name left out."""
    base = {"prompt": PROMPT, "max_tokens": 24, "temperature": 2.0, "min_p": 0.9, "seed": 5}
    known = post(server, "/v1/completions", base | {field: ["temperature", "min_p"]})
    r = post(server, "/v1/completions", base | {field: order})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == known.json()["choices"][0]["text"]
    assert r.json()["choices"][0]["text"] != post(server, "/v1/completions", base).json()["choices"][0]["text"]


def test_temperature_last_moves_temperature_after_the_order(server):
    base = {"prompt": PROMPT, "max_tokens": 24, "temperature": 2.0, "min_p": 0.9, "seed": 5}
    default = post(server, "/v1/completions", base).json()["choices"][0]["text"]
    last = post(server, "/v1/completions", base | {"sampler_priority": WEBUI_PRIORITY, "temperature_last": True})
    assert last.json()["choices"][0]["text"] == default


def test_banned_strings_never_reach_the_reply_through_each_types_route(server):
    """SillyTavern sends the quoted lines of its Banned Tokens/Strings box as `banned_strings` to every local type;
    KoboldCpp's own clients send phrases as `banned_tokens`. Each is taken back, streamed or not, in any case."""
    base = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    plain = post(server, "/v1/completions", base).json()["choices"][0]["text"]
    piece = plain[len(plain) // 3:][:3]
    assert piece.strip(), plain
    ban = piece.upper() if piece.upper() != piece else piece.lower()  # a different case: still banned
    r = post(server, "/v1/completions", base | {"banned_strings": [ban, ""]})
    text = r.json()["choices"][0]["text"]
    assert r.status_code == 200 and "banned_strings" not in r.headers.get("x-openhermes-ignored", "")
    assert piece.lower() not in text.lower() and text != plain
    kept = max(0, plain.lower().find(piece.lower()) - 10)  # before the token where it began (tokens are short)
    assert text[:kept] == plain[:kept]
    streamed = sse_payloads(server, "/v1/completions", base | {"banned_strings": [ban], "stream": True})
    assert "".join(d["choices"][0]["text"] for _, d in streamed if d != "[DONE]") == text
    llamacpp = post(server, "/completion", {"prompt": PROMPT, "n_predict": 24, "temperature": 0, "ignore_eos": True,
                                            "banned_strings": [ban]}).json()
    assert llamacpp["content"] == text
    kobold = {"prompt": PROMPT, "max_length": 24, "temperature": 0, "ban_eos_token": True}
    assert post(server, "/api/v1/generate", kobold | {"banned_tokens": [ban]}).json()["results"][0]["text"] == text
    one = post(server, "/v1/completions", base | {"banned_strings": ban}).json()["choices"][0]["text"]
    assert one == text  # one string for a list of one
    for bad in (["x" * 201], ["a"] * 257, [3]):  # bounded: each one is matched at every token
        assert post(server, "/v1/completions", base | {"banned_strings": bad}).status_code == 400


def test_dynamic_temperature_in_each_types_spelling(server):
    """SillyTavern sends dynamic temperature as text-generation-webui's switch and bounds and as llama.cpp's range
    around the temperature (the middle of the bounds); both spellings are one setting, and it is used."""
    base = {"prompt": PROMPT, "max_tokens": 24, "seed": 5, "ignore_eos": True}
    webui = base | {"temperature": 1.25, "dynamic_temperature": True, "dynatemp_low": 0.5, "dynatemp_high": 2.0,
                    "dynatemp_range": 0.75, "dynatemp_exponent": 1.0}
    r = post(server, "/v1/completions", webui)
    assert r.status_code == 200 and "dyna" not in r.headers.get("x-openhermes-ignored", "")
    text = r.json()["choices"][0]["text"]
    llamacpp = post(server, "/completion", base | {"n_predict": 24, "temperature": 1.25, "dynatemp_range": 0.75,
                                                   "dynatemp_exponent": 1.0}).json()["content"]
    assert llamacpp == text
    plain = post(server, "/v1/completions", base | {"temperature": 1.25}).json()["choices"][0]["text"]
    assert text != plain  # not the plain temperature 1.25
    off = post(server, "/v1/completions", webui | {"dynamic_temperature": False}).json()["choices"][0]["text"]
    assert off == plain  # the switch off: the range is not used either (text-generation-webui's rule)


def test_max_tokens_second_paces_a_stream_and_changes_nothing_else(server):
    """text-generation-webui's max_tokens_second: a stream sends at most that many tokens a second (it sleeps before
    each); the text is the same, and a reply that is not streamed is not slowed."""
    body = {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    plain = post(server, "/v1/completions", body).json()["choices"][0]["text"]
    started = time.perf_counter()
    events = sse_payloads(server, "/v1/completions", body | {"stream": True, "max_tokens_second": 20})
    took = time.perf_counter() - started
    texts = [d["choices"][0]["text"] for _, d in events if d != "[DONE]" and d["choices"][0]["text"]]
    assert "".join(texts) == plain and len(texts) >= 5  # a token each (one that ends mid-character waits)
    assert took >= (len(texts) - 1) / 20  # at least 1/20 s apart
    r = post(server, "/v1/completions", body | {"max_tokens_second": 20})
    assert r.json()["choices"][0]["text"] == plain and "max_tokens_second" not in r.headers.get("x-openhermes-ignored", "")
