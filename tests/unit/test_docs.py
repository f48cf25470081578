"""The documented settings are the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from jobs.settings import _Reader, load_settings

ROOT = Path(__file__).resolve().parents[2]


def variables_read() -> set[str]:
    """Every variable name ``load_settings`` asks for."""
    asked: set[str] = set()
    original = _Reader.get

    def recording_get(self: _Reader, name: str, *args: Any, **kwargs: Any) -> Any:
        asked.add(name)
        return original(self, name, *args, **kwargs)

    _Reader.get = recording_get  # type: ignore[method-assign]
    try:
        load_settings({}, env_file=None)
    finally:
        _Reader.get = original  # type: ignore[method-assign]
    return asked


class TestEnvExample:
    def test_lists_every_setting(self) -> None:
        """.env.example names every variable the service reads, and no others."""
        example = dotenv_values(ROOT / ".env.example")
        assert set(example) == variables_read()

    def test_defaults_match_the_code(self) -> None:
        """Loading .env.example as it is gives the same settings as loading nothing."""
        assert load_settings({}, env_file=ROOT / ".env.example") == load_settings({}, env_file=None)


class TestReadme:
    def test_settings_table_covers_every_setting(self) -> None:
        """The README's settings table documents every variable (per-kind ones as <KIND>)."""
        readme = (ROOT / "README.md").read_text()
        documented = set(re.findall(r"`(AGENTFARM_[A-Z_<>]+)`", readme))
        for name in variables_read():
            generic = re.sub(r"^AGENTFARM_(RESEARCH|SWOT|INVESTMENT|TECHNICAL_REVIEW)_", "AGENTFARM_<KIND>_", name)
            assert generic in documented, f"{name} is not in the README's settings table"
