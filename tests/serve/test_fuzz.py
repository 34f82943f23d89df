"""An OpenAPI-driven fuzz (schemathesis' case generation from the server's /openapi.json, run by
hypothesis) of the real server: no valid or invalid input may produce a 5xx."""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzzing import CASES
from tests.serve.conftest import Server


@pytest.fixture(scope="module")
def fuzz_server(small_context_dir):
    s = Server(small_context_dir)
    yield s
    s.stop()


def operations(url: str):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_input_gives_a_server_error(fuzz_server, mode):
    ops = operations(fuzz_server.url)
    assert {op.path for op in ops} >= {"/v1/chat/completions", "/v1/completions", "/v1/models"}
    for op in ops:
        if mode == schemathesis.GenerationMode.NEGATIVE and (op.method.upper() != "POST" or not len(op.body)):
            continue  # nothing to break in a request without a body (a GET, /v1/internal/stop-generation)
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None, phases=[Phase.explicit, Phase.generate])  # no shrinking: report the first case
        def check(case):
            CASES[f"API schema ({mode.name.lower()})"] += 1
            response = case.call(timeout=60)
            assert response.status_code < 500, (
                f"{case.as_curl_command()}\n-> {response.status_code} {response.text[:500]}")

        check()


NUMERIC_FIELDS = ["seed", "max_tokens", "temperature", "top_p", "top_k", "min_p", "typical_p", "tfs", "tfs_z",
                  "repetition_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty", "n"]
extreme = (st.integers() | st.integers(min_value=2**63 - 2, max_value=2**65) | st.integers(-(2**65), 0)
           | st.floats(allow_nan=False, allow_infinity=False) | st.floats(-1e300, 1e300) | st.booleans() | st.none())


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
@given(fields=st.dictionaries(st.sampled_from(NUMERIC_FIELDS), extreme, min_size=1, max_size=4),
       chat=st.booleans(), stream=st.booleans())
def test_extreme_sampler_values_never_give_a_server_error(fuzz_server, fields, chat, stream):
    """Values at and beyond the edges of every numeric field (seed >= 2**64 once gave a 500)."""
    CASES["API numeric fields"] += 1
    body = {"max_tokens": 2, **fields, "stream": stream}
    if chat:
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    r = httpx.post(fuzz_server.url + ("/v1/chat/completions" if chat else "/v1/completions"), json=body, timeout=60)
    assert r.status_code < 500, f"{body} -> {r.status_code} {r.text[:300]}"
