"""One typed settings object, built once from the environment and passed explicitly.

``load_settings`` reads ``AGENTFARM_*`` variables (and an optional ``.env``
file; the real environment wins) and reports every bad value at once, each
naming its variable, so a misconfigured process stops before it serves.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from dotenv import dotenv_values

from crews.llm import LLMConfig
from crews.registry import Kind
from jobs.kinds import KINDS

T = TypeVar("T")

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
_PERIOD_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class SettingsError(Exception):
    """Raised when one or more settings are invalid; the message lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))


class RateLimit(msgspec.Struct, frozen=True):
    """At most ``count`` requests per ``period_s`` seconds."""

    count: int
    period_s: int

    def __str__(self) -> str:
        unit = {v: k for k, v in _PERIOD_S.items()}.get(self.period_s, f"{self.period_s}s")
        return f"{self.count}/{unit}"


class KindPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Limits of one job kind."""

    rate_limit: RateLimit
    max_attempts: int
    retry_backoff_s: float
    soft_timeout_s: float
    timeout_s: float


class ApiKey(msgspec.Struct, frozen=True):
    """A tenant's API key, kept only as its SHA-256 digest, with its own rate limit if it has one."""

    tenant: str
    key_sha256: str
    rate_limit: RateLimit | None = None

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()


LogFormat = Literal["auto", "json", "console"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a process of Agent Farm is configured with."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    api_keys: tuple[ApiKey, ...] = ()
    llm: LLMConfig = LLMConfig()
    cors_origins: tuple[str, ...] = ()
    task_ttl_s: int = 86_400
    max_body_bytes: int = 1_048_576
    kinds: dict[Kind, KindPolicy] = msgspec.field(default_factory=dict)
    worker_concurrency: int = 4
    worker_poll_delay_s: float = 0.05
    worker_heartbeat_s: float = 5.0
    # A running task's lease: refreshed by its worker every lease/3; when it lapses, the task is re-queued.
    worker_lease_s: float = 15.0
    # On SIGTERM, how long running crews may finish before they are handed back to the queue.
    worker_shutdown_grace_s: float = 30.0
    worker_metrics_port: int = 9100  # each worker serves Prometheus /metrics here; 0: off
    admin_keys: tuple[str, ...] = ()  # SHA-256 digests of operator keys (dead-letter endpoints)
    log_level: str = "INFO"
    log_format: LogFormat = "auto"

    def policy(self, kind: Kind) -> KindPolicy:
        return self.kinds[kind]


DEFAULT_POLICIES: dict[Kind, KindPolicy] = {
    "research": KindPolicy(
        rate_limit=RateLimit(10, 60), max_attempts=4, retry_backoff_s=60, soft_timeout_s=780, timeout_s=900
    ),
    "swot": KindPolicy(
        rate_limit=RateLimit(5, 60), max_attempts=3, retry_backoff_s=30, soft_timeout_s=480, timeout_s=600
    ),
    "investment": KindPolicy(
        rate_limit=RateLimit(5, 60), max_attempts=3, retry_backoff_s=30, soft_timeout_s=480, timeout_s=600
    ),
    "technical_review": KindPolicy(
        rate_limit=RateLimit(5, 60), max_attempts=3, retry_backoff_s=30, soft_timeout_s=480, timeout_s=600
    ),
}


class _Reader:
    """Reads variables, collecting a problem per bad value instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.read: set[str] = set()

    def get(self, name: str, default: T, parse: Callable[[str], T], expected: str, *, secret: bool = False) -> T:
        self.read.add(name)
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError):
            shown = "a value that does not fit (not shown: it holds a secret)" if secret else repr(raw)
            self.problems.append(f"{name}: expected {expected}, got {shown}")
            return default


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError(raw)
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise ValueError(raw)
    return value


def _admin_keys(raw: str) -> tuple[str, ...]:
    keys = _csv(raw)
    if not keys or any(len(k) < 8 for k in keys):
        raise ValueError(raw)
    return tuple(ApiKey.digest(k) for k in keys)


def _rate(raw: str) -> RateLimit:
    match = _RATE.match(raw)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(raw)
    return RateLimit(int(match.group(1)), _PERIOD_S[match.group(2)])


def _redis_url(raw: str) -> str:
    if urlsplit(raw).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(raw)
    return raw


def _api_keys(raw: str) -> tuple[ApiKey, ...]:
    keys: list[ApiKey] = []
    for entry in raw.split(","):
        tenant, sep, rest = entry.strip().partition(":")
        key, _, rate = rest.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", tenant) or len(key) < 8:
            raise ValueError(entry)
        keys.append(ApiKey(tenant, ApiKey.digest(key), _rate(rate) if rate else None))
    if len({k.key_sha256 for k in keys}) != len(keys):
        raise ValueError(raw)
    return tuple(keys)


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _model(raw: str) -> str:
    provider, sep, name = raw.partition("/")
    if not sep or not provider or not name:
        raise ValueError(raw)
    return raw


def _choice(*allowed: str) -> Callable[[str], Any]:
    def parse(raw: str) -> str:
        if raw.lower() not in allowed:
            raise ValueError(raw)
        return raw.lower()

    return parse


def load_settings(environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")) -> Settings:
    """Build the settings from the environment (and ``env_file`` when it exists)."""
    env: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    env.update(os.environ if environ is None else environ)
    r = _Reader(env)
    seconds = "a number of seconds > 0"
    seconds_or_0 = "a number of seconds >= 0"
    whole = "a whole number > 0"
    kinds: dict[Kind, KindPolicy] = {}
    for kind, default in DEFAULT_POLICIES.items():
        prefix = f"AGENTFARM_{kind.upper()}_"
        policy = KindPolicy(
            rate_limit=r.get(
                prefix + "RATE_LIMIT", default.rate_limit, _rate, "N/second|minute|hour|day, e.g. 10/minute"
            ),
            max_attempts=r.get(prefix + "MAX_ATTEMPTS", default.max_attempts, _positive_int, whole),
            retry_backoff_s=r.get(prefix + "RETRY_BACKOFF_S", default.retry_backoff_s, _positive_float, seconds),
            soft_timeout_s=r.get(prefix + "SOFT_TIMEOUT_S", default.soft_timeout_s, _positive_float, seconds),
            timeout_s=r.get(prefix + "TIMEOUT_S", default.timeout_s, _positive_float, seconds),
        )
        if policy.soft_timeout_s > policy.timeout_s:
            r.problems.append(f"{prefix}SOFT_TIMEOUT_S: must not exceed {prefix}TIMEOUT_S ({policy.timeout_s:g})")
        kinds[kind] = policy
    assert set(kinds) == set(KINDS)
    defaults = Settings()
    llm = LLMConfig(
        model=r.get("AGENTFARM_LLM_MODEL", "", _model, "provider/model, e.g. openai/gpt-4o-mini"),
        base_url=r.get("AGENTFARM_LLM_BASE_URL", None, _http_url, "an http(s) URL"),
        api_key=r.get("AGENTFARM_LLM_API_KEY", None, str, "the provider's key", secret=True),
        timeout_s=r.get("AGENTFARM_LLM_TIMEOUT_S", LLMConfig().timeout_s, _positive_float, seconds),
        max_iter=r.get("AGENTFARM_LLM_MAX_ITER", LLMConfig().max_iter, _bounded_int(1, 25), "a whole number 1-25"),
        max_retries=r.get(
            "AGENTFARM_LLM_MAX_RETRIES", LLMConfig().max_retries, _bounded_int(0, 10), "a whole number 0-10"
        ),
        rpm=r.get("AGENTFARM_LLM_RPM", 0, _bounded_int(0, 1_000_000), "a whole number of calls per minute (0: off)"),
    )
    settings = Settings(
        redis_url=r.get(
            "AGENTFARM_REDIS_URL", defaults.redis_url, _redis_url, "a redis://, rediss:// or unix:// URL", secret=True
        ),
        api_keys=r.get(
            "AGENTFARM_API_KEYS",
            (),
            _api_keys,
            "comma-separated tenant:key pairs, keys of 8+ characters, each key once",
            secret=True,
        ),
        llm=llm,
        cors_origins=r.get("AGENTFARM_CORS_ORIGINS", (), _csv, "comma-separated origins"),
        task_ttl_s=r.get("AGENTFARM_TASK_TTL_S", defaults.task_ttl_s, _positive_int, whole),
        max_body_bytes=r.get("AGENTFARM_MAX_BODY_BYTES", defaults.max_body_bytes, _positive_int, whole),
        kinds=kinds,
        worker_concurrency=r.get(
            "AGENTFARM_WORKER_CONCURRENCY", defaults.worker_concurrency, _bounded_int(1, 256), "a whole number 1-256"
        ),
        worker_poll_delay_s=r.get(
            "AGENTFARM_WORKER_POLL_DELAY_S", defaults.worker_poll_delay_s, _positive_float, seconds
        ),
        worker_heartbeat_s=r.get("AGENTFARM_WORKER_HEARTBEAT_S", defaults.worker_heartbeat_s, _positive_float, seconds),
        worker_lease_s=r.get("AGENTFARM_WORKER_LEASE_S", defaults.worker_lease_s, _positive_float, seconds),
        worker_shutdown_grace_s=r.get(
            "AGENTFARM_WORKER_SHUTDOWN_GRACE_S", defaults.worker_shutdown_grace_s, _non_negative_float, seconds_or_0
        ),
        worker_metrics_port=r.get(
            "AGENTFARM_WORKER_METRICS_PORT", defaults.worker_metrics_port, _bounded_int(0, 65535), "a port 0-65535"
        ),
        admin_keys=r.get("AGENTFARM_ADMIN_KEYS", (), _admin_keys, "comma-separated keys of 8+ characters", secret=True),
        log_level=r.get(
            "AGENTFARM_LOG_LEVEL",
            defaults.log_level,
            _choice("debug", "info", "warning", "error"),
            "debug|info|warning|error",
        ).upper(),
        log_format=r.get(
            "AGENTFARM_LOG_FORMAT", defaults.log_format, _choice("auto", "json", "console"), "auto|json|console"
        ),
    )
    r.problems += unknown_variables(env, r.read | CLIENT_VARIABLES)
    if r.problems:
        raise SettingsError(r.problems)
    return settings


# Read by the command-line client, not by the service's processes.
CLIENT_VARIABLES = frozenset({"AGENTFARM_URL", "AGENTFARM_API_KEY"})


def unknown_variables(env: Mapping[str, str], known: set[str] | frozenset[str]) -> list[str]:
    """A problem for each ``AGENTFARM_*`` variable no setting reads: a typo must not be ignored silently."""
    problems = []
    for name in sorted(n for n in env if n.startswith("AGENTFARM_") and n not in known):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see .env.example for every setting"
        problems.append(f"{name}: not a setting of Agent Farm; {hint}")
    return problems


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(raw)
    return raw


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(raw)
        return value

    return parse
