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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Every module of the three packages and the modules it imports (also under ``TYPE_CHECKING``)."""
    graph: dict[str, set[str]] = {}
    for package in ("service", "jobs", "crews"):
        for path in (ROOT / package).rglob("*.py"):
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module)
                    names.update(f"{node.module}.{a.name}" for a in node.names)
            graph[_module_name(path)] = names
    return {module: {n for n in names if n in graph and n != module} for module, names in graph.items()}


class TestModuleMap:
    def test_no_import_cycle_between_modules_even_under_type_checking(self) -> None:
        graph = _imports()
        # A package's __init__ that re-exports its own modules is not a cycle of the code.
        edges = {m: {n for n in deps if not (m.startswith(n + ".") and n in graph)} for m, deps in graph.items()}
        state: dict[str, int] = {}
        path: list[str] = []

        def visit(module: str) -> None:
            state[module] = 1
            path.append(module)
            for dep in sorted(edges[module]):
                if state.get(dep) == 1:
                    cycle = [*path[path.index(dep) :], dep]
                    pytest.fail("import cycle: " + " -> ".join(cycle))
                if dep not in state:
                    visit(dep)
            path.pop()
            state[module] = 2

        for module in sorted(edges):
            if module not in state:
                visit(module)

    def test_only_the_queue_module_imports_arq(self) -> None:
        """arq is fenced in jobs/queue.py (its internals are pinned by test_arq_contract.py)."""
        for path in [p for package in ("service", "jobs", "crews") for p in (ROOT / package).rglob("*.py")]:
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n.split(".")[0] == "arq" for n in names):
                    assert path.relative_to(ROOT).as_posix() == "jobs/queue.py", f"{path} imports arq"

    def test_worker_only_modules_are_reached_only_from_the_worker_command(self) -> None:
        """jobs.worker.*, crews.runner and crews.executor (crewai): imported only by the worker and its CLI entry."""
        graph = _imports()
        worker_only = {m for m in graph if m.startswith("jobs.worker") or m in {"crews.runner", "crews.executor"}}
        for module, deps in graph.items():
            if module in worker_only or module.startswith("crews"):
                continue
            reached = deps & worker_only
            if module == "service.cli":
                assert reached <= {"jobs.worker"}, reached  # `agentfarm worker` imports it lazily
                continue
            assert not reached, f"{module} (API or shared) imports worker-only {sorted(reached)}"
