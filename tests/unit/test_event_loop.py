"""The API runs its main loop on uvloop where it is installed (service.cli.run_service)."""

from __future__ import annotations

import asyncio

import pytest

from service.cli import run_service


class TestRunService:
    def test_the_main_coroutine_runs_on_uvloop(self) -> None:
        """The API gets uvloop's loop (≈ 15 % less CPU per request, docs/benchmarks.md)."""
        pytest.importorskip("uvloop")
        seen: list[str] = []

        async def main() -> None:
            seen.append(type(asyncio.get_running_loop()).__module__)

        run_service(main())
        assert seen and seen[0].startswith("uvloop")

    def test_an_error_in_the_main_coroutine_reaches_the_caller(self) -> None:
        """A service that fails to start exits with its error, not silently."""

        async def main() -> None:
            raise RuntimeError("bind failed")

        with pytest.raises(RuntimeError, match="bind failed"):
            run_service(main())
