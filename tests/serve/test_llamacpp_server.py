"""`serve --engine llama.cpp` decodes concurrent requests together (llama.cpp sequences in one context), each
reply equal to the same request alone, through a stock OpenAI client (needs llama-cpp-python)."""

import asyncio

import openai
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[llamacpp]')")

from openhermes.export.gguf import export_gguf  # noqa: E402
from tests.serve.conftest import Server  # noqa: E402
from tests.serve.test_concurrency import TOPICS, _batch_rows  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cpp_server(embedded_default_run, tmp_path_factory):
    gguf = export_gguf(embedded_default_run / "model", tmp_path_factory.mktemp("cpp-serve") / "tiny-f16.gguf", "f16",
                       progress=False)
    s = Server(gguf, "--engine", "llama.cpp", "--parallel", "4")
    yield s
    s.stop()


async def _stream_text(client, topic: str) -> str:
    """48 tokens whatever the model says (eos ignored), so the requests overlap long enough to batch."""
    stream = await client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": f"Tell me about {topic}."}], temperature=0,
        max_tokens=48, stream=True, extra_body={"ignore_eos": True})
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def test_concurrent_streams_decode_together_and_equal_one_at_a_time(cpp_server):
    async def main():
        client = openai.AsyncOpenAI(base_url=cpp_server.url + "/v1", api_key="none", max_retries=0)
        one_by_one = [await _stream_text(client, t) for t in TOPICS[:8]]
        s0, c0 = _batch_rows(cpp_server)
        together = await asyncio.gather(*(_stream_text(client, t) for t in TOPICS[:8]))
        s1, c1 = _batch_rows(cpp_server)
        await client.close()
        return one_by_one, together, (s1 - s0) / (c1 - c0)

    one_by_one, together, mean_rows = asyncio.run(main())
    assert together == one_by_one
    assert all(one_by_one)
    assert mean_rows > 2.5  # 8 requests over 4 slots: mostly 4 rows a step, not one
