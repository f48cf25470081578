"""Security scans of the code and the locked dependencies.

- ``bandit`` on the service's packages, with the skips configured (and justified) in
  pyproject.toml's [tool.bandit]; it must find nothing.
- ``pip-audit`` on both runtime locks (the worker's and the API's) against an advisory
  source, when one is reachable: PyPI's JSON API, else OSV. Offline (or behind a mirror
  without that API) the test is skipped, saying so.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
PACKAGES = ("service", "jobs", "crews")
LOCKS = ("requirements.lock", "requirements-api.lock")
# Advisories accepted for now, each with why: {"GHSA-...": "reason"}. Empty: none is.
ACCEPTED_ADVISORIES: dict[str, str] = {}


def bandit(*targets: str) -> dict[str, object]:
    done = subprocess.run(
        [str(BIN / "bandit"), "-c", "pyproject.toml", "-q", "-f", "json", "-r", *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


class TestBandit:
    def test_packages_have_no_findings(self) -> None:
        """bandit -c pyproject.toml -r service jobs crews reports nothing."""
        report = bandit(*PACKAGES)
        found = [
            f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}"
            for r in report["results"]  # type: ignore[attr-defined]
        ]
        assert found == []
        assert report["metrics"]["_totals"]["loc"] > 1000  # type: ignore[index]

    def test_skips_are_few_and_justified(self) -> None:
        """Only the listed checks are skipped, each with a reason in pyproject.toml."""
        text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        skips = tomllib.loads(text)["tool"]["bandit"]["skips"]
        assert set(skips) <= {"B101", "B104", "B105", "B311", "B404", "B603"}
        for skip in skips:
            assert re.search(rf'"{skip}",\s*#\s*\S', text), f"{skip} has no reason"

    def test_bandit_still_finds_real_problems(self, tmp_path: Path) -> None:
        """The configuration does not silence what matters: shell injection, eval, weak hashes, no TLS checks."""
        bad = tmp_path / "bad.py"
        bad.write_text(
            "import hashlib, subprocess, requests\n"
            "def f(user):\n"
            "    subprocess.run('ls ' + user, shell=True)\n"
            "    eval(user)\n"
            "    hashlib.md5(user.encode())\n"
            "    requests.get(user, verify=False, timeout=5)\n",
            encoding="utf-8",
        )
        found = {r["test_id"] for r in bandit(str(bad))["results"]}  # type: ignore[attr-defined]
        assert {"B602", "B307", "B324", "B501"} <= found, found


def _pinned_in_lock() -> tuple[str, str]:
    match = re.search(r"^([a-z0-9_.-]+)==([^\s;\\]+)", (ROOT / LOCKS[0]).read_text(), re.MULTILINE)
    assert match
    return match.group(1), match.group(2)


@functools.cache
def advisory_source() -> str | None:
    """The first of pip-audit's own advisory services (`pypi`, `osv`) that pip-audit reaches for one locked
    package within 5 s; None when neither answers (no network: the audit is skipped, never failed)."""
    name, version = _pinned_in_lock()
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.txt"
        probe.write_text(f"{name}=={version}\n")
        for source in ("pypi", "osv"):
            done = subprocess.run(
                [
                    *(str(BIN / "pip-audit"), "-r", str(probe), "--no-deps", "--disable-pip", "-s", source),
                    *("--timeout", "5", "-f", "json", "--progress-spinner", "off"),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            try:
                audited = json.loads(done.stdout)["dependencies"]
            except (ValueError, KeyError):
                continue
            if audited and not audited[0].get("skip_reason"):  # offline, pip-audit skips it: not reached
                return source
    return None


def pip_audit(lock: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """pip-audit on one hashed lock, without pip (nothing is installed or resolved)."""
    return subprocess.run(
        [str(BIN / "pip-audit"), "-r", lock, "--require-hashes", "--disable-pip", "--progress-spinner", "off", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


class TestPipAudit:
    @pytest.mark.parametrize("lock", LOCKS)
    def test_locks_are_auditable(self, lock: str) -> None:
        """Offline part: pip-audit reads each lock as hashed requirements (a dry run collects every package)."""
        done = pip_audit(lock, "--dry-run", "-s", "pypi")
        assert done.returncode == 0, done.stderr
        count = re.search(r"would have audited (\d+) packages", done.stderr)
        assert count and int(count.group(1)) > 50, done.stderr

    @pytest.mark.parametrize("lock", LOCKS)
    def test_locked_dependencies_have_no_known_vulnerabilities(self, lock: str) -> None:
        """pip-audit finds no advisory for any package of the lock (one run per lock: pip-audit
        refuses the same package from two files)."""
        source = advisory_source()
        if source is None:
            pytest.skip("pip-audit skipped: neither of its advisory services (pypi, osv) answered within 5 s")
        done = pip_audit(lock, "-s", source, "-f", "json", "--timeout", "15")
        assert done.stdout, done.stderr
        dependencies = json.loads(done.stdout)["dependencies"]
        skipped = [f"{d['name']}: {d['skip_reason']}" for d in dependencies if d.get("skip_reason")]
        assert not skipped, f"{source} reachable, yet these were not audited: {skipped[:10]}"
        found = [
            f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v['fix_versions']) or 'no release'})"
            for d in dependencies
            for v in d.get("vulns", [])
            if v["id"] not in ACCEPTED_ADVISORIES and not set(v.get("aliases", [])) & set(ACCEPTED_ADVISORIES)
        ]
        assert found == [], f"known vulnerabilities in {lock}:\n" + "\n".join(found)
        assert len(dependencies) > 50
