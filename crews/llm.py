"""LLM settings and the offline demo model.

The real model is any crewai model string (``openai/gpt-4o-mini``,
``anthropic/...``, ``ollama/llama3.1``, or an OpenAI-compatible server given a
base URL). With no model configured, the offline demo model writes canned
reports so the whole flow can be seen on a machine without keys; it is named as
such everywhere it shows up.

``build_llm`` (worker processes only: it imports crewai when first called) is
how a job gets its model: a fresh crewai LLM per job, so its usage counters are
the job's own, on HTTP plumbing built once per process.
"""

# The API imports this module for LLMConfig and must not load crewai: crewai, openai and httpx are
# imported where they are used, in worker processes.
# ruff: noqa: PLC0415

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from crews.checked import Checked, env, http_url

if TYPE_CHECKING:
    import ssl

    import httpx
    from crewai.llms.base_llm import BaseLLM

DEMO_MODEL = "agentfarm-demo-offline"


def _model(raw: str) -> str:
    provider, sep, name = raw.partition("/")
    if not sep or not provider or not name:
        raise ValueError(raw)
    return raw


class LLMConfig(Checked, frozen=True, kw_only=True):
    """How workers reach the LLM."""

    # A bare name would fall back to LiteLLM, which is not installed: a provider prefix is required.
    model: Annotated[str, env(_model, "provider/model, e.g. openai/gpt-4o-mini")] = ""
    base_url: Annotated[str | None, env(http_url, "an http(s) URL")] = None
    api_key: Annotated[str | None, env(str, "the provider's key", secret=True)] = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0
    max_iter: Annotated[int, msgspec.Meta(ge=1, le=25)] = 5
    # Retries of one call inside the OpenAI-compatible client (5xx, timeouts), before the job's own retries.
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    # LLM calls per minute for this model across all workers; 0 means no limit.
    rpm: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    # What the model costs, in US dollars per million tokens; with both 0 no cost is reported.
    price_input_per_mtok: Annotated[float, msgspec.Meta(ge=0, le=100_000)] = 0.0
    price_output_per_mtok: Annotated[float, msgspec.Meta(ge=0, le=100_000)] = 0.0

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """What these tokens cost at the configured prices (None when no price is set)."""
        if not self.price_input_per_mtok and not self.price_output_per_mtok:
            return None
        cost = prompt_tokens * self.price_input_per_mtok + completion_tokens * self.price_output_per_mtok
        return round(cost / 1_000_000, 9)

    @property
    def is_demo(self) -> bool:
        return not self.model

    @property
    def model_name(self) -> str:
        """The model as reported in usage and logs."""
        return self.model or DEMO_MODEL

    def __repr__(self) -> str:
        key = "set" if self.api_key else None
        return f"LLMConfig(model={self.model_name!r}, base_url={self.base_url!r}, api_key={key})"


# --- One job's LLM on the process's shared HTTP plumbing (worker processes only) --------------------
#
# crewai's LLM(...) for an ``openai/...`` model builds a sync and an async OpenAI
# client, and each builds an httpx client with an SSL context of its own
# (``ssl.create_default_context`` + the CA bundle: 20-30 ms each, even for an
# http:// URL): ~44 ms of CPU per job, measured, of ~120. Here the sync HTTP
# client (its connection pool included: keep-alive across jobs) and the SSL
# context are built once per process; the async client, bound to an event loop,
# is still one per LLM but shares the SSL context. Usage stays per job (the LLM
# object is fresh); the per-call timeout and retries stay per client; stop
# points are crewai hooks, untouched. Other providers are built by crewai as
# before.


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """The process's verified TLS context, as httpx builds it (``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured)."""
    import httpx

    return httpx.create_ssl_context()


@functools.cache
def shared_http_client() -> httpx.Client:
    """The process's HTTP client for LLM calls from crew threads (thread-safe; proxies from the environment)."""
    from openai import DefaultHttpxClient  # the OpenAI SDK's defaults: limits, timeout, redirects

    return DefaultHttpxClient(verify=shared_ssl_context())


@functools.cache
def _shared_clients_class() -> type[BaseLLM]:
    from crewai.llms.providers.openai.completion import OpenAICompletion
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient, OpenAI

    class SharedClientsOpenAICompletion(OpenAICompletion):
        """crewai's native OpenAI LLM, its clients on the process's HTTP client and SSL context."""

        def _build_sync_client(self) -> Any:
            if self.interceptor:
                return super()._build_sync_client()
            return OpenAI(**{"http_client": shared_http_client(), **self._get_client_params()})

        def _build_async_client(self) -> Any:
            if self.interceptor:
                return super()._build_async_client()
            http_client = DefaultAsyncHttpxClient(verify=shared_ssl_context())
            return AsyncOpenAI(**{"http_client": http_client, **self._get_client_params()})

    return SharedClientsOpenAICompletion


def _llm_arguments(config: LLMConfig) -> dict[str, Any]:
    return {
        "base_url": config.base_url,
        "api_key": config.api_key,
        "timeout": config.timeout_s,
        "max_retries": config.max_retries,
    }


@functools.cache
def _native_openai_route(config: LLMConfig) -> dict[str, Any] | None:
    """How crewai routes this config, learnt once per process from one LLM it builds: the model, provider
    and ``custom_openai`` its native OpenAI class got, or None when it routes elsewhere (another provider)."""
    from crewai import LLM
    from crewai.llms.providers.openai.completion import OpenAICompletion

    prototype: BaseLLM = LLM(model=config.model, **_llm_arguments(config))
    if type(prototype) is not OpenAICompletion:
        return None
    route: dict[str, Any] = {"model": prototype.model, "provider": prototype.provider}
    if getattr(prototype, "custom_openai", False):
        route["custom_openai"] = True
    return route


class _NoTaskOutputs:
    """crewai's task-output store (``KickoffTaskOutputsSQLiteStorage``) with nothing stored.

    crewai writes every task's output to a SQLite file (and empties it at each kickoff) only so that
    ``crewai replay`` can re-run a crew from a task; jobs never replay (a retry is a new run), and the
    task record is the result. That store was ~13 % of a worker's samples on a 2-call job (py-spy).
    """

    def __init__(self, db_path: str | None = None) -> None:
        self.db_path = db_path

    def add(self, *args: Any, **kwargs: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def load(self) -> list[dict[str, Any]]:
        return []  # (not None: crewai's handler refuses to update "None" logs)

    def delete_all(self) -> None:
        return None


@functools.cache
def lean_crewai() -> None:
    """Turn off, once per worker process, crewai work that no job uses: the task-output SQLite store."""
    from crewai.utilities import task_output_storage_handler

    if hasattr(task_output_storage_handler, "KickoffTaskOutputsSQLiteStorage"):
        task_output_storage_handler.KickoffTaskOutputsSQLiteStorage = _NoTaskOutputs


def build_llm(config: LLMConfig) -> BaseLLM:
    """A fresh crewai LLM for one job (crewai's usage counters are per instance) for a configured model.

    Built as ``crewai.LLM(model=..., base_url=..., api_key=..., timeout=..., max_retries=...)`` is, and
    for crewai's native OpenAI class (``openai/...``, any OpenAI-compatible server) on the process's
    shared HTTP client and SSL context: ~0.2 ms instead of ~44 ms.
    """
    if config.is_demo:
        raise ValueError("the demo model is not a crewai LLM: build crews.demo_llm.DemoLLM")
    lean_crewai()
    route = _native_openai_route(config)
    if route is None:
        from crewai import LLM

        llm: BaseLLM = LLM(model=config.model, **_llm_arguments(config))
        return llm
    return _shared_clients_class()(**route, **_llm_arguments(config))
