"""One typed settings object, built once from the environment and passed explicitly.

Settings are nested frozen structs, one per area (Redis, API, LLM, worker,
logs, and one policy per job kind). Each field's type carries its bounds
(``msgspec.Meta``) and, where a variable has a format of its own (rate limits,
key lists), the parser for it. Variable names follow the structure:
``AGENTFARM_<AREA>_<FIELD>`` (``AGENTFARM_WORKER_CONCURRENCY``), the API's
fields and the task TTL directly under ``AGENTFARM_``, and each kind's policy as
``AGENTFARM_<KIND>_<FIELD>``.

``load_settings`` reads the variables (and an optional ``.env`` file; the real
environment wins) and reports every bad value at once, each naming its variable
and never echoing a secret; an ``AGENTFARM_*`` variable no field reads is a
typo and is refused with the closest name.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import msgspec
from dotenv import dotenv_values

from crews.checked import Checked, env
from crews.llm import LLMConfig
from crews.sources.config import FetchConfig, SearchConfig, SourcesConfig
from jobs.kinds import KINDS, Policy

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
_PERIOD_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

# Read by the command-line client, not by the service's processes.
CLIENT_VARIABLES = frozenset({"AGENTFARM_URL", "AGENTFARM_API_KEY"})


class SettingsError(Exception):
    """Raised when one or more settings are invalid; the message lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))


SECRET = msgspec.Meta(extra={"secret": True})


class RateLimit(msgspec.Struct, frozen=True):
    """At most ``count`` requests per ``period_s`` seconds."""

    count: Annotated[int, msgspec.Meta(ge=1)]
    period_s: Annotated[int, msgspec.Meta(ge=1)]

    @classmethod
    def parse(cls, raw: str) -> RateLimit:
        match = _RATE.match(raw)
        if not match or int(match.group(1)) <= 0:
            raise ValueError(raw)
        return cls(int(match.group(1)), _PERIOD_S[match.group(2)])

    def __str__(self) -> str:
        unit = {v: k for k, v in _PERIOD_S.items()}.get(self.period_s, f"{self.period_s}s")
        return f"{self.count}/{unit}"


class ApiKey(msgspec.Struct, frozen=True):
    """A tenant's API key, kept only as its SHA-256 digest, with its own rate limit if it has one."""

    tenant: str
    key_sha256: str
    rate_limit: RateLimit | None = None

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()


def _api_keys(raw: str) -> tuple[ApiKey, ...]:
    keys: list[ApiKey] = []
    for entry in raw.split(","):
        tenant, sep, rest = entry.strip().partition(":")
        key, _, rate = rest.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", tenant) or len(key) < 8:
            raise ValueError(entry)
        keys.append(ApiKey(tenant, ApiKey.digest(key), RateLimit.parse(rate) if rate else None))
    if len({k.key_sha256 for k in keys}) != len(keys):
        raise ValueError(raw)
    return tuple(keys)


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _admin_keys(raw: str) -> tuple[str, ...]:
    keys = _csv(raw)
    if not keys or any(len(k) < 8 for k in keys):
        raise ValueError(raw)
    return tuple(ApiKey.digest(k) for k in keys)


def _redis_url(raw: str) -> str:
    if urlsplit(raw).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(raw)
    return raw


def _host_ports(raw: str) -> tuple[str, ...]:
    items = _csv(raw)
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(item)
    return items


Seconds = Annotated[float, msgspec.Meta(gt=0, le=10**9)]


class RedisConfig(Checked, frozen=True, kw_only=True):
    """Where queues and task state live: one URL, or a Sentinel group that names the master."""

    url: Annotated[str, env(_redis_url, "a redis://, rediss:// or unix:// URL", secret=True)] = (
        "redis://127.0.0.1:6379/0"
    )
    # With sentinels set, the URL is not used: the sentinels say where the master is.
    sentinels: Annotated[tuple[str, ...], env(_host_ports, "comma-separated host:port pairs")] = ()
    sentinel_master: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "agentfarm"
    sentinel_db: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    sentinel_master_username: str = ""
    sentinel_master_password: Annotated[str, SECRET] = ""
    sentinel_password: Annotated[str, SECRET] = ""  # the sentinels' own, if they require one


def _webhook_secrets(raw: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for entry in _csv(raw):
        tenant, sep, secret = entry.partition(":")
        body = secret.removeprefix("whsec_")
        try:
            decoded = base64.b64decode(body + "==", validate=False)
        except ValueError:
            decoded = b""
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", tenant) or not secret.startswith("whsec_"):
            raise ValueError(entry)
        if len(decoded) < 16:  # at least 128 bits of key
            raise ValueError(entry)
        pairs.append((tenant, secret))
    if len({t for t, _ in pairs}) != len(pairs):
        raise ValueError(raw)
    return tuple(pairs)


class WebhookConfig(Checked, frozen=True, kw_only=True):
    """Signed callbacks when a task ends (Standard Webhooks)."""

    secrets: Annotated[
        tuple[tuple[str, str], ...],
        env(_webhook_secrets, "comma-separated tenant:whsec_<base64 of 16+ bytes> pairs, one per tenant", secret=True),
    ] = ()
    # Loopback, private, link-local and metadata addresses are refused unless this is set (tests, intranets).
    allow_private: bool = False
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=50)] = 8
    backoff_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0  # first retry; doubles, at most an hour
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0

    def secret_of(self, tenant: str) -> str | None:
        return dict(self.secrets).get(tenant)


class ApiConfig(Checked, frozen=True, kw_only=True):
    """What the HTTP API accepts, and from whom."""

    api_keys: Annotated[
        tuple[ApiKey, ...],
        env(_api_keys, "comma-separated tenant:key pairs, keys of 8+ characters, each key once", secret=True),
    ] = ()
    admin_keys: Annotated[tuple[str, ...], env(_admin_keys, "comma-separated keys of 8+ characters", secret=True)] = ()
    cors_origins: Annotated[tuple[str, ...], env(_csv, "comma-separated origins")] = ()
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 1_048_576
    # An idle event stream sends a comment this often, so proxies keep it open.
    events_keepalive_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0


class WorkerConfig(Checked, frozen=True, kw_only=True):
    """How a worker process runs its crews."""

    concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    poll_delay_s: Seconds = 0.05  # --burst runs only: a serving worker is woken by each enqueue (jobs/queue.py)
    heartbeat_s: Seconds = 5.0
    # A running task's lease: refreshed by its worker every lease/3; when it lapses, the task is re-queued.
    lease_s: Seconds = 15.0
    # On SIGTERM, how long running crews may finish before they are handed back to the queue.
    shutdown_grace_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 30.0
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65_535)] = 9100  # each worker's /metrics; 0: off


class LogConfig(Checked, frozen=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class KindPolicy(Checked, frozen=True, kw_only=True):
    """Limits of one job kind."""

    rate_limit: Annotated[RateLimit, env(RateLimit.parse, "N/second|minute|hour|day, e.g. 10/minute")]
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)]
    retry_backoff_s: Seconds
    soft_timeout_s: Seconds
    timeout_s: Seconds
    # Tokens (prompt + completion, all attempts) a task may spend unless it asks for max_tokens; 0: no budget.
    token_budget: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)] = 0
    # The largest max_tokens a task may ask for; 0: up to the API's own bound (10,000,000).
    max_tokens_limit: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 0

    def __post_init__(self) -> None:
        if self.soft_timeout_s > self.timeout_s:
            raise ValueError(f"must not exceed the hard timeout ({self.timeout_s:g} s)")
        super().__post_init__()

    @classmethod
    def of(cls, policy: Policy) -> KindPolicy:
        return cls(
            rate_limit=RateLimit.parse(policy.rate),
            max_attempts=policy.attempts,
            retry_backoff_s=policy.backoff_s,
            soft_timeout_s=policy.soft_timeout_s,
            timeout_s=policy.timeout_s,
            token_budget=policy.token_budget,
            max_tokens_limit=policy.max_tokens_limit,
        )


class Settings(Checked, frozen=True, kw_only=True):
    """Everything a process of Agent Farm is configured with."""

    redis: RedisConfig = RedisConfig()
    api: ApiConfig = ApiConfig()
    llm: LLMConfig = LLMConfig()
    worker: WorkerConfig = WorkerConfig()
    log: LogConfig = LogConfig()
    webhook: WebhookConfig = WebhookConfig()
    search: SearchConfig = SearchConfig()
    fetch: FetchConfig = FetchConfig()
    task_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=10**8)] = 86_400
    kinds: dict[str, KindPolicy] = msgspec.field(
        default_factory=lambda: {name: KindPolicy.of(kind.policy) for name, kind in KINDS.items()}
    )

    def policy(self, kind: str) -> KindPolicy:
        return self.kinds[kind]

    @property
    def sources(self) -> SourcesConfig:
        """What the sources stage of a crew's run needs: the search backend and how pages are read."""
        return SourcesConfig(search=self.search, fetch=self.fetch)


# The sections read from the environment, each with the prefix of its variables.
_SECTIONS: dict[str, tuple[type[msgspec.Struct], str]] = {
    "redis": (RedisConfig, "AGENTFARM_REDIS_"),
    "api": (ApiConfig, "AGENTFARM_"),
    "llm": (LLMConfig, "AGENTFARM_LLM_"),
    "worker": (WorkerConfig, "AGENTFARM_WORKER_"),
    "log": (LogConfig, "AGENTFARM_LOG_"),
    "webhook": (WebhookConfig, "AGENTFARM_WEBHOOK_"),
    "search": (SearchConfig, "AGENTFARM_SEARCH_"),
    "fetch": (FetchConfig, "AGENTFARM_FETCH_"),
}


def variables() -> Iterator[tuple[str, str, str, Any]]:
    """Every variable the settings read: (name, section, field, annotation); a kind's section is the kind."""
    for section, (struct, prefix) in _SECTIONS.items():
        for field, annotation in get_type_hints(struct, include_extras=True).items():
            if not field.startswith("env_"):
                yield prefix + field.upper(), section, field, annotation
    yield "AGENTFARM_TASK_TTL_S", "", "task_ttl_s", get_type_hints(Settings, include_extras=True)["task_ttl_s"]
    for kind in KINDS:
        for field, annotation in get_type_hints(KindPolicy, include_extras=True).items():
            yield f"AGENTFARM_{kind.upper()}_{field.upper()}", kind, field, annotation


def _extra(annotation: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for meta in get_args(annotation)[1:] if get_origin(annotation) is Annotated else ():
        if isinstance(meta, msgspec.Meta) and meta.extra:
            extra.update(meta.extra)
    return extra


def _read(name: str, raw: str, annotation: Any) -> Any:
    """The value of one variable, or ``ValueError`` naming it and saying what was expected."""
    extra = _extra(annotation)
    shown = "a value that does not fit (not shown: it holds a secret)" if extra.get("secret") else repr(raw)
    parse = extra.get("parse")
    if parse is not None:
        try:
            return parse(raw)
        except (ValueError, TypeError):
            raise ValueError(f"{name}: expected {extra['expected']}, got {shown}") from None
    base = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
    if get_origin(base) is Literal:
        choices = get_args(base)
        if raw.lower() not in choices:
            raise ValueError(f"{name}: expected {'|'.join(choices)}, got {shown}")
        return raw.lower()
    try:
        # Plain typed fields: msgspec checks the type and the bounds the annotation declares.
        return msgspec.convert(raw, type=annotation, strict=False)
    except msgspec.ValidationError as exc:
        reason = str(exc).removesuffix(" - at `$`")
        raise ValueError(f"{name}: expected {reason.removeprefix('Expected ')}, got {shown}") from None


def load_settings(environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")) -> Settings:
    """Build the settings from the environment (and ``env_file`` when it exists)."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    problems: list[str] = []
    tree: dict[str, Any] = {"kinds": {}}
    known: set[str] = set(CLIENT_VARIABLES)
    for name, section, field_name, annotation in variables():
        known.add(name)
        raw = values.get(name, "").strip()
        if not raw:
            continue
        try:
            value = _read(name, raw, annotation)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if not section:
            tree[field_name] = value
        elif section in KINDS:
            tree["kinds"].setdefault(section, {})[field_name] = value
        else:
            tree.setdefault(section, {})[field_name] = value
    problems += unknown_variables(values, known)
    if problems:
        raise SettingsError(problems)
    return _build(tree)


def _build(tree: dict[str, Any]) -> Settings:
    sections: dict[str, Any] = {name: struct(**tree.get(name, {})) for name, (struct, _) in _SECTIONS.items()}
    kinds: dict[str, KindPolicy] = {}
    problems: list[str] = []
    for name, kind in KINDS.items():
        default = KindPolicy.of(kind.policy)
        try:
            kinds[name] = msgspec.structs.replace(default, **tree["kinds"].get(name, {}))
        except ValueError as exc:
            problems.append(f"AGENTFARM_{name.upper()}_SOFT_TIMEOUT_S: {exc}")
    if problems:
        raise SettingsError(problems)
    return Settings(**sections, task_ttl_s=tree.get("task_ttl_s", Settings().task_ttl_s), kinds=kinds)


def unknown_variables(env: Mapping[str, str], known: set[str]) -> list[str]:
    """A problem for each ``AGENTFARM_*`` variable no setting reads: a typo must not be ignored silently."""
    problems = []
    for name in sorted(n for n in env if n.startswith("AGENTFARM_") and n not in known):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see .env.example for every setting"
        problems.append(f"{name}: not a setting of Agent Farm; {hint}")
    return problems
