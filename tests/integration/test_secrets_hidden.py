"""Secrets never reach logs or telemetry.

A full run — the API and a worker as real processes, a Redis that requires an ACL user's
password, the scripted LLM, a webhook receiver and an OTLP receiver standing in for the
collector — with a distinctive value for every secret the service holds. Then everything the
processes wrote (stdout and stderr) and everything they exported (spans, log records, with
their attributes and resources) is searched for each value.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ApiProcess, WorkerProcess, service_env
from tests.support.llm_server import ScriptedLLM
from tests.support.otlp_receiver import OTLPReceiver
from tests.support.sentinel import RedisProcess
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.slow

API_KEY = "apikey-Zq8vR3tWm5K1secretA"
ADMIN_KEY = "adminkey-Lp4Hs9XcB2secretB"
LLM_KEY = "sk-llmkey-Yt6Nf1Gd7Jsecret"
WEBHOOK_KEY = base64.b64encode(b"webhook-Qm2Vx8secretD").decode()
WEBHOOK_SECRET = f"whsec_{WEBHOOK_KEY}"
REDIS_USER = "agentfarm-app"
REDIS_PASSWORD = "redispw-Kc3Rb7Tz0secretE"
SECRETS = {
    "API key": API_KEY,
    "admin key": ADMIN_KEY,
    "LLM key": LLM_KEY,
    "webhook secret": WEBHOOK_SECRET,
    "webhook key (base64 body)": WEBHOOK_KEY,
    "Redis password": REDIS_PASSWORD,
}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def redis_acl(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis whose default user is off: only the app's ACL user, with a password, gets in."""
    server = RedisProcess(
        "redis-acl",
        "--save",
        "",
        folder=tmp_path / "redis",
        username=REDIS_USER,
        password=REDIS_PASSWORD,
        config=f"user default off\nuser {REDIS_USER} on >{REDIS_PASSWORD} ~* &* +@all\n",
    )
    server.start()
    yield server
    server.stop()


def test_no_secret_in_logs_or_telemetry(tmp_path: Path, redis_acl: RedisProcess, llm_server: ScriptedLLM) -> None:
    assert REDIS_PASSWORD in redis_acl.url and REDIS_USER in redis_acl.url
    llm_server.reset()
    hooks = WebhookReceiver()
    with OTLPReceiver() as otlp:
        env = service_env(
            redis_acl.url,
            llm_server,
            AGENTFARM_API_KEYS=f"acme:{API_KEY}",
            AGENTFARM_ADMIN_KEYS=f"ops:{ADMIN_KEY}",
            AGENTFARM_LLM_API_KEY=LLM_KEY,
            AGENTFARM_WEBHOOK_SECRETS=f"acme:{WEBHOOK_SECRET}",
            AGENTFARM_WEBHOOK_ALLOW_PRIVATE="true",
            AGENTFARM_WEBHOOK_BACKOFF_S="0.2",
            AGENTFARM_LOG_LEVEL="debug",  # the most the service ever writes
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_BLRP_SCHEDULE_DELAY="100",
        )
        api = ApiProcess(env, tmp_path / "api.log")
        worker = WorkerProcess(env, tmp_path / "worker.log")
        try:
            worker.wait_started(redis_acl.url)
            hooks.answer(500)  # one failed delivery first: the retry path logs too
            response = httpx.post(
                f"{api.url}/v1/tasks/research",
                json={"topic": "secret hygiene", "webhook_url": hooks.url},
                headers=AUTH,
                timeout=10,
            )
            assert response.status_code == 202, response.text
            task_id = response.json()["id"]
            # Paths that log about credentials: a wrong key, a key in the wrong place, an admin call.
            assert httpx.get(f"{api.url}/v1/tasks", headers={"Authorization": "Bearer wrong"}).status_code == 401
            httpx.get(f"{api.url}/v1/tasks", params={"api_key": API_KEY}, timeout=10)
            httpx.get(f"{api.url}/v1/admin/dead-letters", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                task = httpx.get(f"{api.url}/v1/tasks/{task_id}", headers=AUTH, timeout=10).json()
                if task["status"] == "completed" and len(hooks.received) >= 2:
                    break
                time.sleep(0.1)
            assert task["status"] == "completed", task
            assert len(hooks.received) >= 2, "the webhook was not retried"
            # The LLM did get its key: the secret was really in use, not just configured.
            assert any(LLM_KEY in str(call.headers) for call in llm_server.received())
            assert otlp.wait_for(lambda r: len(r.spans()) > 5 and len(r.logs()) > 5, timeout_s=10)
            time.sleep(0.5)  # the last batches
        finally:
            worker.stop()
            api.stop()
            hooks.close()

        captured = {
            "API output": (tmp_path / "api.log").read_text(errors="replace"),
            "worker output": (tmp_path / "worker.log").read_text(errors="replace"),
            "spans": "\n".join(repr(span) for span in otlp.spans()),
            "log records": "\n".join(repr(record) for record in otlp.logs()),
        }
    # Not vacuous: each source captured a real run (the task id appears everywhere).
    for where, text in captured.items():
        assert task_id in text, f"{where} did not capture the run"
    leaks = [
        f"{name} in {where}" for where, text in captured.items() for name, value in SECRETS.items() if value in text
    ]
    assert leaks == [], leaks
