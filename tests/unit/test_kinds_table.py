"""One row per kind: the routes, the OpenAPI document, the CLI and the settings all read the kinds table."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from jobs.kinds import KINDS, by_path
from jobs.settings import load_settings, variables
from service.app import create_app
from service.client import kinds_help

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def extra_kind() -> Iterator[str]:
    """A fictitious kind added to the table only (reusing the SWOT crew), for as long as the test runs."""
    row = dataclasses.replace(KINDS["swot"], name="due_diligence", path="due-diligence", summary="Due diligence")
    with mock.patch.dict(KINDS, {"due_diligence": row}):
        yield "due_diligence"


class TestEveryConsumerReadsTheTable:
    def test_submit_routes_and_openapi_come_from_the_table(self, extra_kind: str) -> None:
        """A row added to the table is a submit route in the API and in its OpenAPI document, with its summary."""
        schema = create_app(load_settings({}, env_file=None)).openapi_schema.to_schema()
        submit_paths = {p for p, item in schema["paths"].items() if p.startswith("/v1/tasks/") and "post" in item}

        expected = {f"/v1/tasks/{k.path}" for k in KINDS.values()}
        assert expected <= submit_paths
        assert schema["paths"]["/v1/tasks/due-diligence"]["post"]["summary"] == "Due diligence"

    def test_settings_have_a_policy_and_variables_per_row(self, extra_kind: str) -> None:
        """Each row gets a policy with its defaults and its AGENTFARM_<KIND>_* variables."""
        settings = load_settings({"AGENTFARM_DUE_DILIGENCE_MAX_ATTEMPTS": "7"}, env_file=None)

        assert set(settings.kinds) == set(KINDS)
        assert settings.policy(extra_kind).max_attempts == 7
        assert {n for n, *_ in variables() if n.startswith("AGENTFARM_DUE_DILIGENCE_")}

    def test_cli_help_and_spellings_come_from_the_table(self, extra_kind: str) -> None:
        """The CLI lists every row and accepts a kind by its name or its URL path."""
        text = kinds_help()
        assert all(name in text for name in KINDS)
        assert by_path("due-diligence") is by_path("due_diligence") is KINDS[extra_kind]

    def test_no_second_list_of_kinds_in_the_code(self) -> None:
        """Outside the table and the crew folders, no module of the service names a kind."""
        names = [k.name for k in KINDS.values() if k.name != k.queue] + [k.path for k in KINDS.values()]
        pattern = re.compile("|".join(rf"[\"']{re.escape(n)}[\"']" for n in set(names) if n != "research"))
        offenders = []
        for path in sorted(ROOT.glob("*/**/*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[0] not in {"service", "jobs", "crews"} or rel.as_posix() == "jobs/kinds.py":
                continue
            if rel.parts[0] == "crews" and len(rel.parts) > 2:
                continue  # a crew's own folder
            offenders += [
                f"{rel}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)
            ]
        assert not offenders, offenders
