"""No single request stalls the server: oversized bodies and prompts are refused before they cost anything,
long prompts are tokenized off the event loop, a grammar at a dead end fails its own reply only, and /health
says when the scheduler has stopped or stalled."""

import concurrent.futures
import json
import logging
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.serve.conftest import API_KEY, Server

MB = 2**20


def chat(text: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 5, "temperature": 0, **extra}


def health_latencies(url: str, stop: threading.Event) -> list[float]:
    """/health round trips, one after another, until `stop` is set."""
    out = []
    while not stop.is_set():
        start = time.perf_counter()
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        out.append(time.perf_counter() - start)
    return out


@pytest.fixture(scope="module")
def big_body_server(chat_model_dir):
    """Bodies up to 64 MB are read, so the prompt checks behind the body limit are what refuses them."""
    s = Server(chat_model_dir, "--max-body-mb", "64", api_key=API_KEY)
    yield s
    s.stop()


def test_a_body_over_the_limit_is_413_at_once(server):
    start = time.perf_counter()
    r = httpx.post(server.url + "/v1/chat/completions", json=chat("x" * (10 * MB)), headers=server.headers,
                   timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "--max-body-mb" in r.json()["error"]["message"]
    assert time.perf_counter() - start < 10  # generous: what matters is that nothing was tokenized
    # A chunked body (no Content-Length) is counted as it arrives.
    r = httpx.post(server.url + "/v1/completions", content=iter([b'{"prompt": "', b"y" * (5 * MB), b'"}']),
                   headers=server.headers, timeout=60)
    assert r.status_code == 413
    assert httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                      headers=server.headers, timeout=60).status_code == 200


def test_ten_mb_prompts_are_refused_without_blocking_other_clients(big_body_server):
    s = big_body_server
    stop = threading.Event()
    # Serialized before the clock starts: this process's own json.dumps of 80 MB would hold the interpreter
    # that the /health pinger here needs, and be measured as the server's delay.
    bodies = [("/v1/chat/completions", json.dumps(chat("z" * (10 * MB))).encode())] * 4 + [
        ("/v1/completions", json.dumps({"prompt": "z" * (10 * MB), "max_tokens": 5}).encode())] * 4
    headers = s.headers | {"Content-Type": "application/json"}
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        pinger = pool.submit(health_latencies, s.url, stop)
        huge = [pool.submit(httpx.post, s.url + route, content=body, headers=headers, timeout=120)
                for route, body in bodies]
        plain = httpx.post(s.url + "/v1/chat/completions", json=chat("What is 2 + 2?"), headers=s.headers,
                           timeout=60)
        refused = [f.result() for f in huge]
        stop.set()
        latencies = pinger.result()
    assert plain.status_code == 200
    for r in refused:
        error = r.json()["error"]
        assert r.status_code == 400 and error["code"] == "context_length_exceeded"
        assert "not tokenized" in error["message"] and error["param"] in ("messages", "prompt")
    assert latencies and max(latencies) < 1.0  # generous bound; the benchmark has the figures


def test_a_long_prompt_with_truncation_is_tokenized_off_the_loop(big_body_server):
    """truncation_length asks the server to tokenize the whole text and keep its end: that takes seconds
    for megabytes, during which /health still answers."""
    s = big_body_server
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pinger = pool.submit(health_latencies, s.url, stop)
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "word " * 400_000 + "end", "max_tokens": 3,
                                                         "truncation_length": 256, "temperature": 0},
                       headers=s.headers, timeout=120)
        stop.set()
        latencies = pinger.result()
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] <= 256 - 3
    assert max(latencies) < 1.0


def test_a_grammar_at_a_dead_end_fails_its_reply_not_as_a_stop(server):
    """A schema with no finite instance: the reply can never be valid JSON. It must not end as a normal
    'stop' with a fragment (it did: '{'), and the requests beside it go on."""
    schema = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"], "additionalProperties": False}
    bodies = [chat("json please", max_tokens=200, response_format={"type": "json_schema", "json_schema": {
        "name": "loop", "schema": s}}) for s in (schema, {"$ref": "#"})]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        plain = pool.submit(httpx.post, server.url + "/v1/chat/completions", json=chat("hello", max_tokens=20),
                            headers=server.headers, timeout=60)
        results = [httpx.post(server.url + "/v1/chat/completions", json=b, headers=server.headers, timeout=60)
                   for b in bodies]
        assert plain.result().status_code == 200
    for r in results:
        if r.status_code == 200:  # the model may run out of room first
            choice = r.json()["choices"][0]
            assert choice["finish_reason"] == "length", choice
        else:
            assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text


def test_logit_bias_outside_the_vocabulary_is_400(server):
    r = httpx.post(server.url + "/v1/chat/completions", json=chat("hi", logit_bias={"999999": -100}),
                   headers=server.headers, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"
    assert "999999" in r.json()["error"]["message"]


def test_the_hostile_sequence_replayed_leaves_a_serving_server(big_body_server):
    """The bodies after which a server was once seen stuck (/health ok, requests timing out), back to back,
    several times: each gets its answer and a plain request is served after every round."""
    s = big_body_server
    stop_strings = [f"stop{i}" for i in range(10_000)]
    hostile = [("/v1/chat/completions", chat("go", max_tokens=30, response_format={
                   "type": "json_schema", "json_schema": {"name": "r", "schema": {"$ref": "#"}}})),
               ("/v1/chat/completions", chat("q" * (10 * MB))),
               ("/v1/completions", {"prompt": "q" * (10 * MB)}),
               ("/v1/chat/completions", chat("stop", stop=stop_strings)),
               ("/v1/completions", {"prompt": "hi", "stop": stop_strings[:64], "max_tokens": 8})]
    for _ in range(4):
        with concurrent.futures.ThreadPoolExecutor(len(hostile)) as pool:
            answers = list(pool.map(lambda rb: httpx.post(s.url + rb[0], json=rb[1], headers=s.headers,
                                                          timeout=60), hostile))
        assert all(r.status_code in (200, 400) for r in answers), [r.status_code for r in answers]
        r = httpx.post(s.url + "/v1/chat/completions", json=chat("still there?"), headers=s.headers, timeout=30)
        assert r.status_code == 200
        assert s.health() | {"active": 0, "queued": 0} == s.health()  # nothing left behind


# ---- /health and the watchdog, on the app in this process (its scheduler is the test hook) --------------

@pytest.fixture
def app_factory(engine):
    from openhermes.serve.app import create_app

    return lambda **kw: create_app(engine, **kw)


def test_health_is_503_when_the_scheduler_has_stopped(app_factory):
    with TestClient(app_factory()) as client:
        assert client.get("/health").status_code == 200
        client.app.state.openhermes.scheduler.stop()
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "error"


def test_a_stalled_scheduler_is_503_and_its_stack_is_logged(app_factory, caplog):
    app = app_factory(stall_seconds=1)
    with TestClient(app) as client:
        scheduler = app.state.openhermes.scheduler
        release = threading.Event()
        step = scheduler.batch.step

        def stuck_step():  # the hook: this step hangs until the test lets it go
            release.wait(30)
            return step()

        scheduler.batch.step = stuck_step
        with caplog.at_level(logging.ERROR, logger="openhermes.infer.scheduler"), \
                concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            deadline = time.time() + 20
            while time.time() < deadline and client.get("/health").status_code == 200:
                time.sleep(0.2)
            r = client.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "stalled", r.json()
            while time.time() < deadline and "stuck_step" not in caplog.text:
                time.sleep(0.2)
            assert "its stack" in caplog.text and "stuck_step" in caplog.text
            release.set()
            assert pending.result(timeout=30).status_code == 200
        assert client.get("/health").status_code == 200
