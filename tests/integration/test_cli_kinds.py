"""A command per kind (`agentfarm research "topic" --wait`) and `report ID --format pdf -o FILE`, end to end."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pypdf import PdfReader

from jobs.kinds import KINDS
from tests.conftest import ROOT, ApiProcess, service_env
from tests.support.llm_server import ScriptedLLM
from tests.support.redis_server import RedisServer

KEY = "cli-kinds-key-0004"
AGENTFARM = [sys.executable, "-m", "service.cli"]
# (command, argument, options, kind it submits, params it must store)
COMMANDS: list[tuple[str, str, list[str], str, dict[str, Any]]] = [
    (
        "research",
        "tidal energy in Norway",
        ["--depth", "basic", "--language", "ru", "--crew-type", "academic"],
        "research",
        {"topic": "tidal energy in Norway", "depth": "basic", "language": "ru", "crew_type": "academic"},
    ),
    ("swot", "Acme Robotics", [], "swot", {"company": "Acme Robotics", "language": "en"}),
    (
        "investment",
        "Acme Robotics",
        ["--horizon", "long"],
        "investment",
        {"company": "Acme Robotics", "horizon": "long"},
    ),
    (
        "review",
        "the payment service",
        ["--context", "def pay(): ..."],
        "technical_review",
        {"subject": "the payment service", "context": "def pay(): ..."},
    ),
]


def env_for(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFARM_", "OTEL_"))}
    env.update(AGENTFARM_URL=url, AGENTFARM_API_KEY=KEY, NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    return env


def agentfarm(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTFARM, *args], cwd=ROOT, env=env_for(url), capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def api_url(
    redis_server: RedisServer, llm_server: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`agentfarm serve` as a process of its own, with a tenant of its own."""
    env = service_env(redis_server.url, llm_server, AGENTFARM_API_KEYS=f"clikinds:{KEY}")
    api = ApiProcess(env, tmp_path_factory.mktemp("api") / "api.log")
    yield api.url
    api.stop()


@pytest.fixture
def slow_llm(llm_server: ScriptedLLM) -> Iterator[ScriptedLLM]:
    """Each LLM call takes 2 s, so a task is still running when the test acts on it."""
    llm_server.default_delay_s = 2.0
    yield llm_server
    llm_server.default_delay_s = 0.0


def task(url: str, task_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {KEY}"}, trust_env=False)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class TestWithoutAServer:
    def test_every_kind_has_a_command_with_its_fields(self) -> None:
        """Each row of the kinds table is a command whose options are the kind's fields, choices included."""
        for kind, spec in KINDS.items():
            text = subprocess.run(
                [*AGENTFARM, spec.path, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout
            assert spec.summary.split()[0] in text, kind
            assert "--wait" in text and "--language {en,ru}" in text, kind
        research = agentfarm("http://127.0.0.1:9", "research", "--help").stdout
        assert "--depth {basic,comprehensive,standard}" in research and "TOPIC" in research

    def test_a_bad_choice_is_refused_before_sending(self) -> None:
        """`--depth deep` is refused by the command line with the allowed values, exit code 2."""
        done = agentfarm("http://127.0.0.1:9", "research", "some topic", "--depth", "deep")

        assert done.returncode == 2
        assert "invalid choice: 'deep'" in done.stderr and "basic" in done.stderr


@pytest.mark.slow
class TestAgainstTheApi:
    @pytest.mark.parametrize(
        ("command", "argument", "options", "kind", "params"), COMMANDS, ids=[c[0] for c in COMMANDS]
    )
    def test_kind_command_with_wait_completes(
        self,
        api_url: str,
        worker: Any,
        command: str,
        argument: str,
        options: list[str],
        kind: str,
        params: dict[str, Any],
    ) -> None:
        """`agentfarm <kind> ARG --options --wait` submits that kind, follows it and exits 0 when it completes."""
        done = agentfarm(api_url, command, argument, *options, "--wait")

        assert done.returncode == 0, done.stderr
        task_id = done.stdout.splitlines()[0].strip()
        final = task(api_url, task_id)
        assert final["kind"] == kind and final["status"] == "completed"
        assert params.items() <= final["params"].items()
        assert "100%" in done.stdout, done.stdout

    def test_report_saved_as_pdf_and_printed_as_markdown(self, api_url: str, worker: Any, tmp_path: Path) -> None:
        """`report ID --format pdf -o FILE` writes the PDF; `-o x.html` follows the suffix; no -o prints Markdown."""
        done = agentfarm(api_url, "swot", "Globex", "--wait")
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.splitlines()[0].strip()
        title = task(api_url, task_id)["result"]["title"]

        pdf_path = tmp_path / "out" / "report.bin"
        pdf_path.parent.mkdir()
        saved = agentfarm(api_url, "report", task_id, "--format", "pdf", "-o", str(pdf_path))
        html_path = tmp_path / "report.html"
        as_html = agentfarm(api_url, "report", task_id, "-o", str(html_path))
        printed = agentfarm(api_url, "report", task_id)

        assert saved.returncode == 0, saved.stderr
        pdf = pdf_path.read_bytes()
        assert pdf.startswith(b"%PDF-")
        assert " ".join(title.split()) in " ".join(PdfReader(io.BytesIO(pdf)).pages[0].extract_text().split())
        assert f"{pdf_path}: pdf" in saved.stderr
        assert as_html.returncode == 0 and html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
        assert printed.returncode == 0 and printed.stdout.startswith(f"# {title}")
        assert not list(tmp_path.rglob("*.part")), "no partial file is left behind"

    def test_report_of_a_task_without_one_is_one_error_line(
        self, api_url: str, slow_llm: ScriptedLLM, tmp_path: Path
    ) -> None:
        """The report of a cancelled task: one line saying why (409), exit code 1, and no file written."""
        submitted = agentfarm(api_url, "swot", "Initech")
        assert submitted.returncode == 0, submitted.stderr
        task_id = submitted.stdout.strip()
        cancelled = agentfarm(api_url, "cancel", task_id)
        assert cancelled.returncode == 0, cancelled.stderr
        out = tmp_path / "never.pdf"

        done = agentfarm(api_url, "report", task_id, "-o", str(out))

        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            f"agentfarm: 409 Conflict: task {task_id} is cancelled; it has no report"
        ]
        assert not out.exists() and not list(tmp_path.glob("*.part"))
