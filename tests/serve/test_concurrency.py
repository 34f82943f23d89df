"""Concurrent requests are batched, disconnects free their place, a full queue answers 503."""

import asyncio
import time

import httpx
import openai

from tests.serve.conftest import API_KEY

TOPICS = ["apples", "rivers", "sums", "code", "tea", "moons", "trains", "bread", "rain", "maps", "owls", "salt",
          "glass", "wind", "stone", "snow"]


async def _stream_text(client, topic: str) -> str:
    stream = await client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": f"Tell me about {topic}."}], temperature=0,
        max_tokens=24, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def _batch_rows(server) -> tuple[float, float]:
    return server.metric("openhermes_batch_rows_sum"), server.metric("openhermes_batch_rows_count")


def test_16_concurrent_streams_equal_the_same_requests_one_at_a_time(server):
    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
        one_by_one = [await _stream_text(client, t) for t in TOPICS]
        s0, c0 = _batch_rows(server)
        together = await asyncio.gather(*(_stream_text(client, t) for t in TOPICS))
        s1, c1 = _batch_rows(server)
        await client.close()
        return one_by_one, together, (s1 - s0) / (c1 - c0)

    one_by_one, together, mean_rows = asyncio.run(main())
    assert together == one_by_one
    assert mean_rows > 4  # decoded together, not one by one


LONG = {"messages": [{"role": "user", "content": "Go on forever."}], "stream": True, "max_tokens": 30000,
        "ignore_eos": True}


def test_disconnect_mid_stream_frees_its_place(narrow_server):
    server = narrow_server
    before = server.metric("openhermes_cancelled_requests_total")
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=LONG, timeout=30) as r:
        lines = 0
        for line in r.iter_lines():
            lines += line.startswith("data: ")
            if lines == 4:
                assert server.health()["active"] == 1  # mid-stream
                break  # leaving the loop closes the response: the client is gone
    deadline = time.time() + 10
    while time.time() < deadline and (server.health()["active"] or
                                      server.metric("openhermes_cancelled_requests_total") == before):
        time.sleep(0.05)
    assert server.health()["active"] == 0
    assert server.metric("openhermes_cancelled_requests_total") == before + 1


def test_full_queue_answers_503(narrow_server):
    body = LONG
    url = narrow_server.url + "/v1/chat/completions"
    with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
        with a.stream("POST", url, json=body) as running:
            lines = running.iter_lines()
            while not next(lines).startswith('data: {"id"') or narrow_server.health()["active"] < 1:
                pass  # read on until it is decoding
            with b.stream("POST", url, json=body):  # waits in the queue
                deadline = time.time() + 10
                while narrow_server.health()["queued"] < 1 and time.time() < deadline:
                    time.sleep(0.05)
                r = httpx.post(url, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "queue_full"


def test_max_queue_counts_the_requests_beyond_the_batch(long_context_dir):
    """--max-batch-size 4 --max-queue 2: of 10 long requests sent at once, 4 decode, 2 wait, 4 are refused,
    however many arrived before the scheduler's next step."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.serve.conftest import Server

    s = Server(long_context_dir, "--max-batch-size", "4", "--max-queue", "2")
    release = __import__("threading").Event()

    def one(_):
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=LONG, timeout=60) as r:
            if r.status_code == 200:  # an admitted stream keeps its place until released; a refusal returns
                release.wait(60)
            return r.status_code

    try:
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(one, i) for i in range(10)]
            deadline = time.time() + 30
            while time.time() < deadline and sum(f.done() for f in futures) < 4:
                time.sleep(0.05)  # the refused ones come back at once
            time.sleep(0.5)
            health = s.health()
            release.set()
            codes = sorted(f.result() for f in futures)
        assert codes == [200] * 6 + [503] * 4, (codes, health)
        assert health["active"] + health["queued"] == 6, health
    finally:
        s.stop()
