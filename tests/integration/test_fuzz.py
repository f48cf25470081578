"""Property fuzzing of the HTTP API against its own OpenAPI document (schemathesis).

Every operation gets generated requests with a valid bearer key; no answer may be
a 5xx, and every answer must match what the document promises (status, content
type, headers, body schema). ``make test`` tries Hypothesis's default 100 cases per
operation (derandomized, so a run repeats); ``pytest tests/integration/test_fuzz.py
--hypothesis-profile=thorough`` tries 2,000.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from jobs.settings import load_settings
from service.app import create_app
from tests.conftest import ACME, service_env
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow


# The app starts without Redis (it connects on first use), so the schema can be loaded at import;
# the module's own redis-server then listens on this port, so the tasks the fuzzer creates never
# reach another test's worker.
REDIS_PORT = free_port()
APP = create_app(load_settings(service_env(f"redis://127.0.0.1:{REDIS_PORT}/0", None), env_file=None))
schema = schemathesis.openapi.from_asgi("/schema/openapi.json", APP)
schema.config.generation.update(
    # Undocumented query parameters are ignored, as HTTP APIs conventionally do; not a defect to report.
    allow_extra_parameters=False,
    # Every request carries the valid key below; a fuzzed Authorization header would only be overwritten by it.
    with_security_parameters=False,
)


@pytest.fixture(scope="module", autouse=True)
def fuzz_redis() -> Iterator[RedisServer]:
    redis = RedisServer(appendonly=False)
    redis.port = REDIS_PORT
    redis.start()
    yield redis
    redis.close()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_every_answer_matches_the_document(case: Any) -> None:
    """Whatever a client sends, the API never answers 5xx and never contradicts its OpenAPI document."""
    skipped = []
    if case.path == "/v1/tasks" and (case.query or {}).get("cursor") is not None:
        skipped.append(positive_data_acceptance)  # a cursor is opaque: only ones the API returned are valid
    if (case.headers or {}).get("Idempotency-Key") is not None:
        skipped.append(positive_data_acceptance)  # a reused key with another body is 422 by earlier requests
    if isinstance(case.body, dict) and case.body.get("webhook_url") is not None:
        # A webhook needs a tenant secret and an address that resolves to a public host: rules about the
        # deployment and DNS that a schema cannot state, so a schema-valid address may rightly be 422.
        skipped.append(positive_data_acceptance)
    case.call_and_validate(headers=ACME, excluded_checks=skipped)
