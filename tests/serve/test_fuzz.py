"""An OpenAPI-driven fuzz (schemathesis' case generation from the server's /openapi.json, run by
hypothesis) of the real server: no valid or invalid input may produce a 5xx."""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

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
        if mode == schemathesis.GenerationMode.NEGATIVE and op.method.upper() != "POST":
            continue  # nothing to break in a GET without a body
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None, phases=[Phase.explicit, Phase.generate])  # no shrinking: report the first case
        def check(case):
            response = case.call(timeout=60)
            assert response.status_code < 500, (
                f"{case.as_curl_command()}\n-> {response.status_code} {response.text[:500]}")

        check()
