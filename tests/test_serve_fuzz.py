"""No request body gets a 5xx: the API, arena and labeling routes fuzzed as a hostile client would,
from the app's own OpenAPI schema (schemathesis: bodies that fit the schema and bodies that do
not), against a real server on loopback with a real database file; then it still serves.
Derandomized, so a run repeats the last one's requests."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from conftest import pretrained_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from test_serve import run_server

EXAMPLES = 40  # generated requests per route


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory, corpus_dir):
    from llmos.serve.app import create_app
    from llmos.serve.openai_schema import Limits
    from llmos.serve.served import load_models

    _, ckpt = pretrained_tiny(tmp_path_factory, corpus_dir, "fuzz")
    # Two models, so that the arena has a battle to offer (with one it answers 503 by design).
    models = load_models([f"tiny={ckpt}", f"twin={ckpt}"], max_batch=4)
    db = f"sqlite:///{tmp_path_factory.mktemp('db') / 'fuzz.db'}"
    # A short answer cap keeps each generated request quick; larger ones get a 400.
    app = create_app(models, limits=Limits(max_tokens=8, max_n=2), database=db)
    with run_server(app) as url:
        yield url


def operations(url: str):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.slow  # a few hundred requests
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(fuzzed_server, mode):
    routes = operations(fuzzed_server)
    assert {"/v1/chat/completions", "/v1/completions"} <= {op.path for op in routes}
    unmalformable = []
    for operation in routes:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case):
            response = case.call(timeout=60)
            assert response.status_code < 500, (
                f"{case.method} {case.path} -> {response.status_code}: {response.text[:400]}"
                f"\nbody: {case.body!r}"[:2000])

        try:
            call()
        except Unsatisfiable:  # nothing in this route can be malformed (no body, no params)
            unmalformable.append(f"{operation.method.upper()} {operation.path}")
    assert not {"POST /v1/chat/completions", "POST /v1/completions"} & set(unmalformable)


@pytest.mark.slow
def test_the_server_still_serves_after_the_fuzzing(fuzzed_server):
    r = httpx.post(f"{fuzzed_server}/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
