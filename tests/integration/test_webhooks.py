"""Signed webhooks: verified with the reference implementation, retried durably, logged, never to private addresses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import ACME, BETA, ApiProcess
from tests.support.cluster import Cluster
from tests.support.llm_server import ScriptedLLM
from tests.support.polling import eventually
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.slow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # acme's; beta has none
HOOKS = {
    "AGENTFARM_WEBHOOK_SECRETS": f"acme:{SECRET}",
    "AGENTFARM_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
    "AGENTFARM_WEBHOOK_BACKOFF_S": "0.5",
    "AGENTFARM_WEBHOOK_TIMEOUT_S": "2",
}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hooks = WebhookReceiver()
    yield hooks
    hooks.close()


def submit(api: ApiProcess, body: dict[str, Any], headers: dict[str, str] = ACME) -> httpx.Response:
    return httpx.post(f"{api.url}/v1/tasks/research", json=body, headers=headers, timeout=10)


def deliveries(api: ApiProcess, task_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api.url}/v1/tasks/{task_id}/webhooks", headers=ACME, timeout=5)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


class TestDelivery:
    async def test_signed_retried_with_one_id_logged_and_it_survives_a_worker_restart(
        self, make_cluster: Any, tmp_path: Path, receiver: WebhookReceiver, llm_server: ScriptedLLM
    ) -> None:
        cluster: Cluster = make_cluster(**{**HOOKS, "AGENTFARM_WEBHOOK_BACKOFF_S": "3"})
        api = ApiProcess(cluster.env, tmp_path / "api.log")
        try:
            receiver.answer(500, 503)  # fails twice, then 204
            first = cluster.start_worker()
            response = submit(api, {"topic": "webhooks", "webhook_url": receiver.url})
            assert response.status_code == 202, response.text
            task_id = response.json()["id"]
            assert response.json()["webhook_url"] == receiver.url and "webhook_url" not in response.json()["params"]
            assert await eventually(lambda: len(receiver.received) >= 1, timeout_s=60)
            first.stop()  # between attempts: the retry waits in Redis, not in this process
            assert len(receiver.received) == 1
            cluster.start_worker()
            assert await eventually(lambda: len(receiver.received) >= 3, timeout_s=60)
            assert await eventually(lambda: deliveries(api, task_id)[0]["state"] == "delivered", timeout_s=10)

            ids = {r.headers["webhook-id"] for r in receiver.received}
            assert len(receiver.received) == 3 and len(ids) == 1, "one event, one webhook-id on every retry"
            last = receiver.received[-1]
            payload = Webhook(SECRET).verify(last.body, last.headers)  # the reference implementation's check
            assert payload["type"] == "task.completed" and payload["data"]["id"] == task_id
            assert payload["data"]["result"]["title"]
            (delivery,) = deliveries(api, task_id)
            assert delivery["webhook_id"] in ids and delivery["event"] == "completed"
            assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 204]
            assert all(a["duration_ms"] >= 0 and a["at"] for a in delivery["attempts"])
            print("\nwebhook as received:\n" + json.dumps(last.headers, indent=1) + "\n" + last.body.decode()[:600])
        finally:
            api.stop()

    async def test_a_receiver_that_never_answers_well_ends_failed_after_max_attempts(
        self, make_cluster: Any, tmp_path: Path, receiver: WebhookReceiver
    ) -> None:
        cluster: Cluster = make_cluster(
            **{**HOOKS, "AGENTFARM_WEBHOOK_MAX_ATTEMPTS": "2", "AGENTFARM_WEBHOOK_BACKOFF_S": "0.2"}
        )
        api = ApiProcess(cluster.env, tmp_path / "api.log")
        try:
            receiver.answer(500, 500, 500)
            cluster.start_worker()
            task_id = submit(api, {"topic": "never ok", "webhook_url": receiver.url}).json()["id"]
            assert await eventually(lambda: (deliveries(api, task_id) or [{}])[0].get("state") == "failed", 60)
            assert len(receiver.received) == 2
        finally:
            api.stop()


class TestRefusals:
    @pytest.fixture
    def api(self, cluster: Cluster, tmp_path: Path) -> Iterator[ApiProcess]:
        env = {**cluster.env, "AGENTFARM_WEBHOOK_SECRETS": f"acme:{SECRET}"}  # private addresses not allowed
        process = ApiProcess(env, tmp_path / "api.log")
        yield process
        process.stop()

    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/hook",
            "http://[::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
        ],
    )
    def test_private_and_metadata_addresses_are_refused_at_submit(self, api: ApiProcess, url: str) -> None:
        response = submit(api, {"topic": "ssrf check", "webhook_url": url})
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "webhook_url"

    def test_a_tenant_without_a_secret_gets_422_and_bad_urls_400(self, api: ApiProcess) -> None:
        response = submit(api, {"topic": "no secret", "webhook_url": "https://example.com/hook"}, headers=BETA)
        assert response.status_code == 422 and "secret" in response.json()["errors"][0]["message"]
        for url in ("ftp://example.com/x", "https://" + "a" * 2050 + ".com", "not a url"):
            assert submit(api, {"topic": "bad url", "webhook_url": url}).status_code == 400
