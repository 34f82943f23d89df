"""The clients people really use, against a real `openhermes serve`: SillyTavern's text-completion
request body with the LimaRP preset, and the OpenAI SDK's n, logprobs and response_format."""

import json

import httpx
import jsonschema
import openai
import pytest
import torch

from openhermes.formats import limarp
from openhermes.formats.base import Conversation, Message, Roleplay
from tests.serve.conftest import API_KEY

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
ROLEPLAY = Roleplay("Aria", "Sam", "Aria is a cheerful bard.", "Sam is a traveller.", "They meet in a tavern.")
PROMPT = limarp.render(Conversation([Message("user", "Hello there! What are you doing here?")], roleplay=ROLEPLAY),
                       add_generation_prompt=True, length="short")
STOPS = ["\nSam:", "<|im_end|>", "### Input:"]


def sillytavern_body(seed: int, max_tokens: int = 24, stream: bool = False) -> dict:
    """The body SillyTavern's getTextGenGenerationData builds (its llama.cpp/text-generation-webui
    text-completion type) with the LimaRP card's preset: TFS 0.92, temperature 0.7, repetition
    penalty 1.1 over 2048 tokens, top-k and top-p off."""
    return {
        "prompt": PROMPT, "model": None, "max_new_tokens": max_tokens, "max_tokens": max_tokens,
        "temperature": 0.7, "top_p": 1, "typical_p": 1, "typical": 1, "sampler_seed": seed, "min_p": 0,
        "repetition_penalty": 1.1, "frequency_penalty": 0, "presence_penalty": 0, "top_k": 0, "skew": 0,
        "min_tokens": 0, "add_bos_token": True, "smoothing_factor": 0, "smoothing_curve": 1,
        "dry_allowed_length": 2, "dry_multiplier": 0, "dry_base": 1.75,
        "dry_sequence_breakers": "[\"\\n\", \":\", \"\\\"\", \"*\"]", "dry_penalty_last_n": 0,
        "max_tokens_second": 0, "samplers": ["top_k", "tfs_z", "typical_p", "top_p", "min_p", "xtc", "temperature"],
        "stopping_strings": STOPS, "stop": STOPS, "truncation_length": 2048, "ban_eos_token": False,
        "skip_special_tokens": True, "top_a": 0, "tfs": 0.92, "mirostat_mode": 0, "mirostat_tau": 5,
        "mirostat_eta": 0.1, "custom_token_bans": "", "banned_strings": [], "api_type": "llamacpp",
        "api_server": "http://127.0.0.1:5001", "xtc_threshold": 0.1, "xtc_probability": 0,
        # nonAphroditeParams
        "rep_pen": 1.1, "rep_pen_range": 2048, "repetition_penalty_range": 2048, "seed": seed,
        "guidance_scale": 1, "negative_prompt": "", "grammar_string": "", "repeat_penalty": 1.1, "tfs_z": 0.92,
        "repeat_last_n": 2048, "n_predict": max_tokens, "num_predict": max_tokens, "num_ctx": 2048, "mirostat": 0,
        "ignore_eos": False, "rep_pen_slope": 1,
        # llama.cpp extras
        "logit_bias": [], "grammar": "", "cache_prompt": True, "stream": stream,
    }


def our_body(seed: int, max_tokens: int = 24) -> dict:
    return {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.7, "tfs": 0.92, "repetition_penalty": 1.1,
            "repeat_last_n": 2048, "seed": seed, "stop": STOPS}


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=HEADERS, timeout=120)


def stream_text(server, body: dict) -> str:
    text = ""
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=HEADERS, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                text += "".join(c["text"] for c in json.loads(line[6:])["choices"])
    return text


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sillytavern_limarp_request_is_served_and_its_spellings_steer(server, seed):
    st = post(server, "/v1/completions", sillytavern_body(seed))
    assert st.status_code == 200, st.text
    text = st.json()["choices"][0]["text"]
    assert text.strip()
    ours = post(server, "/v1/completions", our_body(seed))
    assert ours.json()["choices"][0]["text"] == text  # the aliases set the same samplers and seed
    ignored = st.headers["x-openhermes-ignored"].split(", ")
    assert {"api_type", "cache_prompt", "num_ctx"} <= set(ignored)
    assert not {"rep_pen", "tfs_z", "sampler_seed", "n_predict", "stopping_strings", "typical", "samplers"} & set(ignored)
    assert stream_text(server, sillytavern_body(seed, stream=True)) == text


def test_a_spelling_alone_changes_the_reply(server):
    """Each spelling on its own reaches the sampler: greedy with a strong repetition penalty under
    SillyTavern's name differs from greedy without one."""
    plain = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    base = post(server, "/v1/completions", plain).json()["choices"][0]["text"]
    for spelling in ("rep_pen", "repeat_penalty", "repetition_penalty"):
        other = post(server, "/v1/completions", plain | {spelling: 3.0}).json()["choices"][0]["text"]
        assert other != base, spelling
    short = post(server, "/v1/completions", plain | {"max_tokens": None, "n_predict": 3}).json()
    assert short["usage"]["completion_tokens"] == 3


def test_random_seed_and_truncation(server):
    body = sillytavern_body(-1) | {"prompt": "word " * 3000, "truncation_length": 512, "max_new_tokens": 8,
                                   "max_tokens": 8, "n_predict": 8, "num_predict": 8}
    r = post(server, "/v1/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 512 - 8  # text-generation-webui keeps the end


def test_disagreeing_spellings_use_the_first(server):
    body = our_body(5) | {"rep_pen": 1.5}  # repetition_penalty=1.1 wins
    assert post(server, "/v1/completions", body).json()["choices"][0]["text"] == \
        post(server, "/v1/completions", our_body(5)).json()["choices"][0]["text"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


MESSAGES = [{"role": "user", "content": "Repeat exactly: apple river"}]


def test_n_choices_are_decoded_together_and_reproducible(client):
    kw = {"model": "tiny-chat", "messages": MESSAGES, "max_tokens": 8, "temperature": 1.0, "n": 3, "seed": 11}
    r = client.chat.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    again = client.chat.completions.create(**kw)
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in r.choices}) > 1  # swipes differ
    streamed = ["", "", ""]
    for chunk in client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == [c.message.content for c in r.choices]


def test_chat_logprobs_are_the_models(client, chat_model, chatml_tokenizer, engine):
    r = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    ids = engine.chat_prompt(MESSAGES)
    with torch.no_grad():
        expected = torch.log_softmax(chat_model(torch.tensor([ids])).logits[0, -1].float(), -1)
    assert content[0].logprob == pytest.approx(float(expected.max()), abs=1e-4)
    for entry in content:  # greedy: the chosen token is the most likely one
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-6)
    assert "".join(e.token for e in content) == r.choices[0].message.content


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6}, "happy": {"type": "boolean"},
    "mood": {"enum": ["calm", "angry", "glad"]}}, "required": ["name", "happy", "mood"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_always_validates(client, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    for seed in range(20):
        kw = {"model": "tiny-chat", "messages": MESSAGES, "max_tokens": 60, "temperature": 1.0, "seed": seed,
              "response_format": fmt}
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True)
                           if c.choices)
        else:
            text = client.chat.completions.create(**kw).choices[0].message.content
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_gives_an_object(client):
    free = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=12, temperature=0)
    r = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=12, temperature=0,
                                       response_format={"type": "json_object"})
    assert not free.choices[0].message.content.startswith("{")  # the random model would not write JSON
    assert r.choices[0].message.content.startswith("{")


def test_completion_echo_logprobs_are_the_prompts(server, chat_model, chatml_tokenizer):
    ids = chatml_tokenizer.encode("The cat sat on the mat", add_special_tokens=False)
    r = post(server, "/v1/completions", {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1})
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and len(lp["token_logprobs"]) == len(ids)
    with torch.no_grad():
        logp = torch.log_softmax(chat_model(torch.tensor([ids])).logits[0].float(), -1)
    expected = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)


def test_tokenize_detokenize_and_model_length(server, chatml_tokenizer):
    text = "Hello <|im_start|> world"
    tokens = post(server, "/tokenize", {"content": text}).json()["tokens"]
    assert tokens == chatml_tokenizer.encode(text, add_special_tokens=False)
    assert post(server, "/detokenize", {"tokens": tokens}).json()["content"] == chatml_tokenizer.decode(tokens)
    pieces = post(server, "/tokenize", {"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == tokens
    card = httpx.get(server.url + "/v1/models/tiny-chat", headers=HEADERS).json()
    assert card["max_model_len"] == 2048
    assert post(server, "/detokenize", {"tokens": [10**9]}).status_code == 400
