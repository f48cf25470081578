"""Package boundaries users rely on: the API never loads crewai; crews know nothing of jobs or service."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class TestImports:
    @pytest.mark.slow  # starts a Python process: a fresh interpreter is the only honest check
    def test_api_process_never_imports_crewai(self) -> None:
        """Building the API app does not import crewai (seconds of start-up and ~170 MB the API does not need)."""
        code = (
            "import sys; from jobs.settings import load_settings; from service.app import create_app; "
            "create_app(load_settings({}, env_file=None)); print('crewai' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "False"

    def test_imports_flow_from_service_to_jobs_to_crews(self) -> None:
        """crews imports neither jobs nor service, and jobs does not import service."""
        forbidden = {"crews": ("jobs", "service"), "jobs": ("service",)}
        for package, banned in forbidden.items():
            for path in (ROOT / package).rglob("*.py"):
                tree = ast.parse(path.read_text())
                for node in ast.walk(tree):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                    if isinstance(node, ast.ImportFrom) and node.module:
                        names = [node.module]
                    for name in names:
                        assert name.split(".")[0] not in banned, f"{path.relative_to(ROOT)} imports {name}"
