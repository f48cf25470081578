"""The documented settings are the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from dotenv import dotenv_values

from jobs.kinds import KINDS
from jobs.settings import load_settings, variables

ROOT = Path(__file__).resolve().parents[2]


def variables_read() -> set[str]:
    """Every variable name the settings read."""
    return {name for name, *_ in variables()}


def generic(name: str) -> str:
    """A per-kind variable as the docs write it: ``AGENTFARM_<KIND>_TIMEOUT_S``."""
    kinds = "|".join(kind.upper() for kind in KINDS)
    return re.sub(rf"^AGENTFARM_({kinds})_", "AGENTFARM_<KIND>_", name)


class TestEnvExample:
    def test_lists_every_setting(self) -> None:
        """.env.example names every variable the service reads (per-kind ones once, as <KIND>), and no others."""
        text = (ROOT / ".env.example").read_text()
        example = dotenv_values(ROOT / ".env.example")
        shared = {name for name in variables_read() if generic(name) == name}
        assert set(example) == shared
        per_kind = {generic(name) for name in variables_read()} - shared
        assert per_kind, "the kinds table has no policy variables"
        for name in per_kind:
            assert f"# {name}=" in text, f"{name} is not in .env.example"

    def test_defaults_match_the_code(self) -> None:
        """Loading .env.example as it is gives the same settings as loading nothing."""
        assert load_settings({}, env_file=ROOT / ".env.example") == load_settings({}, env_file=None)


class TestReadme:
    def test_settings_table_covers_every_setting(self) -> None:
        """The README's settings table documents every variable (per-kind ones as <KIND>)."""
        readme = (ROOT / "README.md").read_text()
        documented = set(re.findall(r"`(AGENTFARM_[A-Z_<>]+)`", readme))
        for name in variables_read():
            assert generic(name) in documented, f"{name} is not in the README's settings table"
