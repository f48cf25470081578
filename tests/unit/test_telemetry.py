"""OpenTelemetry set-up: spans and log lines reach a real OTLP/HTTP receiver, and a missing collector never hurts.

Each test builds its own providers (``set_global=False``) because OpenTelemetry's
global providers can be set once per process; the test of the global set-up runs
in a subprocess. The SDK reads ``os.environ`` itself, so tests set variables there
(``monkeypatch``), starting from an environment without any ``OTEL_*`` variable.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from opentelemetry import trace

from jobs.telemetry import (
    Telemetry,
    add_trace_context,
    current_trace_id,
    extract_context,
    inject_traceparent,
    package_version,
    setup_telemetry,
)
from tests.support.otlp_receiver import OTLPReceiver

ROOT = Path(__file__).resolve().parents[2]
HEX32 = "0123456789abcdef"

Build = Callable[..., Telemetry]


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable from the developer's shell or CI leaks into a test."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def build(monkeypatch: pytest.MonkeyPatch) -> Iterator[Build]:
    """Set the given OTEL_* variables and build independent providers from them; shut them all down afterwards."""
    built: list[Telemetry] = []

    def make(service_name: str = "agentfarm-test", **env: str) -> Telemetry:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        tel = setup_telemetry(service_name, set_global=False)
        built.append(tel)
        return tel

    yield make
    for tel in built:
        tel.shutdown(timeout_s=1)


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as server:
        yield server


@pytest.fixture
def telemetry(build: Build, receiver: OTLPReceiver) -> Telemetry:
    return build(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)


@pytest.fixture
def otel_logger(telemetry: Telemetry) -> Iterator[logging.Logger]:
    """A stdlib logger whose only handler is the OTLP one (the root logger is left alone)."""
    handler = telemetry.log_handler()
    assert handler is not None
    stdlib = logging.getLogger("agentfarm.test.otlp")
    stdlib.handlers[:] = [handler]
    stdlib.setLevel(logging.INFO)
    stdlib.propagate = False
    yield stdlib
    stdlib.handlers.clear()


def structlog_over(stdlib: logging.Logger) -> structlog.stdlib.BoundLogger:
    """A structlog logger with the service's chain (service/logs.py) plus add_trace_context, without global config."""
    logger: structlog.stdlib.BoundLogger = structlog.wrap_logger(
        stdlib,
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            add_trace_context,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    return logger


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def hanging_collector() -> Iterator[str]:
    """An endpoint that accepts connections and never answers, like a collector stuck under load."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def exported_span(tel: Telemetry, receiver: OTLPReceiver, name: str = "probe") -> bool:
    """Record one span, flush, and tell whether the receiver got it."""
    with tel.tracer("test").start_as_current_span(name):
        trace_id = current_trace_id()
    tel.force_flush(timeout_s=5)
    return receiver.wait_for(lambda r: len(r.spans(trace_id)) == 1)


class TestSpansExported:
    def test_spans_reach_the_collector_with_their_trace_and_resource(
        self, telemetry: Telemetry, receiver: OTLPReceiver
    ) -> None:
        """A job's spans arrive at the collector as one trace, labelled with service, version and instance."""
        tracer = telemetry.tracer("test")
        with (
            tracer.start_as_current_span("submit") as parent,
            tracer.start_as_current_span("enqueue", attributes={"task.kind": "research"}),
        ):
            trace_id = current_trace_id()
        assert telemetry.force_flush(timeout_s=5)

        assert trace_id == trace.format_trace_id(parent.get_span_context().trace_id)
        assert receiver.wait_for(lambda r: len(r.spans(trace_id)) == 2)
        spans = {s.name: s for s in receiver.spans(trace_id)}
        assert spans["enqueue"].parent_span_id == spans["submit"].span_id
        assert spans["submit"].parent_span_id is None
        assert spans["enqueue"].attributes == {"task.kind": "research"}
        resource = spans["submit"].resource
        assert spans["submit"].service_name == "agentfarm-test"
        assert resource["service.version"] == package_version()
        assert resource["service.instance.id"] == f"{socket.gethostname()}:{os.getpid()}"

    def test_base_endpoint_gets_each_signal_on_its_own_path(
        self, telemetry: Telemetry, receiver: OTLPReceiver, otel_logger: logging.Logger
    ) -> None:
        """OTEL_EXPORTER_OTLP_ENDPOINT is a base URL: spans go to /v1/traces and log records to /v1/logs."""
        with telemetry.tracer("test").start_as_current_span("both"):
            otel_logger.info("inside")
        telemetry.force_flush(timeout_s=5)
        assert receiver.wait_for(lambda r: {"/v1/traces", "/v1/logs"} <= set(r.requests))

    def test_gzip_compression_is_honoured(self, build: Build, receiver: OTLPReceiver) -> None:
        """OTEL_EXPORTER_OTLP_COMPRESSION=gzip still delivers spans (collectors accept gzip bodies)."""
        tel = build(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_EXPORTER_OTLP_COMPRESSION="gzip")
        assert exported_span(tel, receiver)

    def test_signal_endpoint_is_used_as_is(self, build: Build, receiver: OTLPReceiver) -> None:
        """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the full URL, and sends only traces (logs have no endpoint)."""
        tel = build(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.endpoint}/v1/traces")
        assert exported_span(tel, receiver)
        assert tel.log_handler() is None

    def test_operator_overrides_name_and_attributes(self, build: Build, receiver: OTLPReceiver) -> None:
        """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME override the code's values: a deployment relabels itself."""
        tel = build(
            "agentfarm-api",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_RESOURCE_ATTRIBUTES="deployment.environment=staging,service.name=ignored,service.version=9,team=a%20b",
            OTEL_SERVICE_NAME="agentfarm-api-eu",
        )
        assert exported_span(tel, receiver)
        resource = receiver.spans()[0].resource
        assert resource["service.name"] == "agentfarm-api-eu"
        assert resource["service.version"] == "9"
        assert resource["deployment.environment"] == "staging"
        assert resource["team"] == "a b"


class TestLogsExported:
    def test_structlog_lines_carry_the_trace_of_their_span(
        self, telemetry: Telemetry, receiver: OTLPReceiver, otel_logger: logging.Logger
    ) -> None:
        """A structlog line logged inside a span is exported with that span's trace and span ids and its fields."""
        log = structlog_over(otel_logger)
        with telemetry.tracer("test").start_as_current_span("run_task") as span:
            log.info("task_started", task_id="t-1", attempt=2, params={"depth": "basic"})
        telemetry.force_flush(timeout_s=5)

        trace_id = trace.format_trace_id(span.get_span_context().trace_id)
        assert receiver.wait_for(lambda r: len(r.logs(trace_id)) == 1)
        record = receiver.logs(trace_id)[0]
        assert record.body == "task_started"
        assert record.span_id == trace.format_span_id(span.get_span_context().span_id)
        assert record.severity == "INFO"
        assert record.service_name == "agentfarm-test"
        assert record.attributes["task_id"] == "t-1"
        assert record.attributes["attempt"] == 2
        assert record.attributes["params"] == "{'depth': 'basic'}"
        assert "trace_id" not in record.attributes  # it is the record's own field

    def test_plain_stdlib_lines_and_exceptions_are_exported(
        self, telemetry: Telemetry, receiver: OTLPReceiver, otel_logger: logging.Logger
    ) -> None:
        """Third-party stdlib lines are exported formatted, and a logged exception keeps its type and message."""
        log = structlog_over(otel_logger)
        otel_logger.warning("retrying %s in %d s", "llm call", 3)
        try:
            int("quota exhausted")
        except ValueError:
            log.exception("crew_failed")
        telemetry.force_flush(timeout_s=5)

        assert receiver.wait_for(lambda r: len(r.logs()) == 2)
        plain, failure = receiver.logs()
        assert plain.body == "retrying llm call in 3 s"
        assert plain.severity == "WARN"
        assert plain.trace_id is None
        assert failure.body == "crew_failed"
        assert failure.severity == "ERROR"
        assert failure.attributes["exception.type"] == "ValueError"
        assert "quota exhausted" in failure.attributes["exception.message"]
        assert "Traceback" in failure.attributes["exception.stacktrace"]

    def test_the_sdks_own_lines_are_not_fed_back(
        self, telemetry: Telemetry, receiver: OTLPReceiver, otel_logger: logging.Logger
    ) -> None:
        """The exporter's own warnings (a collector down) are not exported, so failures cannot feed on themselves."""
        handler = telemetry.log_handler()
        assert handler is not None
        handler.handle(logging.makeLogRecord({"name": "opentelemetry.exporter.otlp", "msg": "export failed"}))
        otel_logger.info("kept")
        telemetry.force_flush(timeout_s=5)

        assert receiver.wait_for(lambda r: len(r.logs()) >= 1)
        assert [r.body for r in receiver.logs()] == ["kept"]


class TestWithoutCollector:
    def test_without_endpoint_trace_ids_still_exist(self, build: Build) -> None:
        """With no exporter or endpoint set, spans still get trace ids (for tasks and log lines); nothing is sent.

        Nor recorded: a span nobody exports costs CPU for nothing (≈ 4 ms per job in the worker).
        """
        tel = build()
        with tel.tracer("test").start_as_current_span("local") as span:
            trace_id = current_trace_id()
            traceparent = inject_traceparent()
        assert not span.is_recording()
        assert tel.enabled
        assert trace_id is not None
        assert len(trace_id) == 32
        assert set(trace_id) <= set(HEX32)
        assert traceparent is not None
        assert trace_id in traceparent
        assert tel.traces_target is None
        assert tel.logs_target is None
        assert tel.log_handler() is None

    def test_collector_down_never_blocks_or_raises(self, build: Build) -> None:
        """With the collector unreachable, spans, log lines and shutdown return promptly and raise nothing."""
        tel = build(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
        handler = tel.log_handler()
        assert handler is not None
        stdlib = logging.getLogger("agentfarm.test.down")
        stdlib.handlers[:] = [handler]
        stdlib.propagate = False
        started = time.monotonic()
        try:
            for n in range(200):
                with tel.tracer("test").start_as_current_span(f"span-{n}"):
                    stdlib.warning("line %d", n)
            tel.shutdown(timeout_s=1.5)
        finally:
            stdlib.handlers.clear()
        assert time.monotonic() - started < 2.5

    def test_shutdown_is_bounded_when_the_collector_hangs(self, build: Build, hanging_collector: str) -> None:
        """A collector that never answers, with a 30 s export timeout set, still cannot hold shutdown past its bound."""
        tel = build(OTEL_EXPORTER_OTLP_ENDPOINT=hanging_collector, OTEL_EXPORTER_OTLP_TIMEOUT="30")
        with tel.tracer("test").start_as_current_span("stuck"):
            pass
        started = time.monotonic()
        assert not tel.force_flush(timeout_s=0.5)
        tel.shutdown(timeout_s=0.5)
        assert time.monotonic() - started < 1.5

    def test_exports_give_up_soon_when_no_timeout_is_set(self, build: Build, hanging_collector: str) -> None:
        """Without OTEL_EXPORTER_OTLP_TIMEOUT, an export to a hanging collector gives up in ~3 s, not the SDK's 10 s."""
        tel = build(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{hanging_collector}/v1/traces")
        with tel.tracer("test").start_as_current_span("stuck"):
            pass
        started = time.monotonic()
        assert tel.force_flush(timeout_s=8)
        assert 2 < time.monotonic() - started < 6

    def test_the_operators_timeout_is_honoured(self, build: Build, hanging_collector: str) -> None:
        """OTEL_EXPORTER_OTLP_TRACES_TIMEOUT is the SDK's to apply: a 0.5 s setting is not replaced by the default."""
        tel = build(
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{hanging_collector}/v1/traces", OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="0.5"
        )
        with tel.tracer("test").start_as_current_span("stuck"):
            pass
        started = time.monotonic()
        assert tel.force_flush(timeout_s=8)
        assert time.monotonic() - started < 2

    def test_shutdown_twice_is_harmless(self, telemetry: Telemetry) -> None:
        """Calling shutdown again (an exit hook after an explicit stop) does nothing."""
        telemetry.shutdown(timeout_s=2)
        telemetry.shutdown(timeout_s=2)


class TestDisabled:
    def test_sdk_disabled_installs_nothing(self, build: Build, receiver: OTLPReceiver) -> None:
        """OTEL_SDK_DISABLED=true: no spans, no trace ids, no handler, and every method still works."""
        tel = build(OTEL_SDK_DISABLED="true", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        with tel.tracer("test").start_as_current_span("nothing"):
            assert current_trace_id() is None
            assert inject_traceparent() is None
        assert not tel.enabled
        assert tel.log_handler() is None
        assert tel.force_flush(timeout_s=1)
        tel.shutdown(timeout_s=1)
        time.sleep(0.2)
        assert receiver.requests == []


HTTP = "opentelemetry.exporter.otlp.proto.http"
GRPC = "opentelemetry.exporter.otlp.proto.grpc"
CONSOLE = "opentelemetry.sdk"


def exporter_package(tel: Telemetry, signal: str) -> str | None:
    """The package of the exporter a signal goes to (None: not exported)."""
    target = tel.traces_target if signal == "traces" else tel.logs_target
    if target is None:
        return None
    module = type(target.exporter).__module__
    return next(package for package in (HTTP, GRPC, CONSOLE) if module.startswith(package))


class TestExporterChoice:
    @pytest.mark.parametrize(
        ("env", "traces", "logs"),
        [
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, HTTP, HTTP),
            (
                {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
                GRPC,
                GRPC,
            ),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc"}, HTTP, GRPC),
            (
                {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                },
                HTTP,
                GRPC,
            ),
            ({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://c:4318/v1/logs"}, None, HTTP),
            ({"OTEL_TRACES_EXPORTER": "otlp"}, HTTP, None),
            ({"OTEL_TRACES_EXPORTER": "console", "OTEL_LOGS_EXPORTER": "console"}, CONSOLE, CONSOLE),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_LOGS_EXPORTER": "none"}, HTTP, None),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "NONE"}, None, HTTP),
        ],
    )
    def test_exporter_per_signal(self, build: Build, env: dict[str, str], traces: str | None, logs: str | None) -> None:
        """The exporter (http, grpc, console or none) of each signal follows its *_EXPORTER and *_PROTOCOL variables."""
        if GRPC in (traces, logs):
            pytest.importorskip(GRPC)
        tel = build(**env)
        assert (exporter_package(tel, "traces"), exporter_package(tel, "logs")) == (traces, logs)
        assert tel.enabled

    @pytest.mark.parametrize(
        ("env", "traces_to", "logs_to"),
        [
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces", "http://c:4318/v1/logs"),
            ({"OTEL_TRACES_EXPORTER": "otlp"}, "http://localhost:4318/v1/traces", None),
            (
                {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9/x"},
                "http://t:9/x",
                "http://c:4318/v1/logs",
            ),
            (
                {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
                "c:4317",
                "c:4317",
            ),
        ],
    )
    def test_endpoint_per_signal(
        self, build: Build, env: dict[str, str], traces_to: str | None, logs_to: str | None
    ) -> None:
        """Where each signal is sent for a given environment (OTLP/HTTP appends the signal's path to a base URL)."""
        if env.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc":
            pytest.importorskip(GRPC)
        tel = build(**env)
        assert tel.traces_target is not None
        assert tel.traces_target.endpoint == traces_to
        assert (tel.logs_target.endpoint if tel.logs_target else None) == logs_to

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_LOGS_EXPORTER", "otlp_proto_carrier_pigeon"),
        ],
    )
    def test_unknown_exporter_or_protocol_fails_at_start_naming_the_variable(
        self, build: Build, variable: str, value: str
    ) -> None:
        """A misconfigured deployment fails at start with the variable named, not silently without telemetry."""
        with pytest.raises(ValueError, match=variable):
            build(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318", **{variable: value})

    def test_grpc_without_its_exporter_is_refused_clearly(self, build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_EXPORTER_OTLP_PROTOCOL=grpc without the gRPC exporter names the variable and the package."""
        installed = importlib.metadata.entry_points

        def without_grpc(**selection: str) -> importlib.metadata.EntryPoints:
            found = installed(**selection)
            return importlib.metadata.EntryPoints(e for e in found if e.name != "otlp_proto_grpc")

        monkeypatch.setattr(importlib.metadata, "entry_points", without_grpc)
        with pytest.raises(ValueError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL.*opentelemetry-exporter-otlp-proto-grpc"):
            build(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")

    def test_a_switched_off_signal_keeps_the_other_flowing(self, build: Build, receiver: OTLPReceiver) -> None:
        """OTEL_LOGS_EXPORTER=none exports no logs (no handler to attach) while spans still reach the collector."""
        tel = build(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_LOGS_EXPORTER="none")
        assert tel.log_handler() is None
        assert exported_span(tel, receiver)
        assert set(receiver.requests) == {"/v1/traces"}


class TestPropagation:
    def test_traceparent_round_trip_continues_the_trace(self, build: Build, receiver: OTLPReceiver) -> None:
        """A job started from the stored traceparent is a child of the API's span, in the same trace."""
        tel = build(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        tracer = tel.tracer("test")
        with tracer.start_as_current_span("POST /v1/tasks") as api_span:
            traceparent = inject_traceparent()
        assert traceparent is not None

        with tracer.start_as_current_span("run_task", context=extract_context(traceparent)) as job_span:
            assert current_trace_id() == trace.format_trace_id(api_span.get_span_context().trace_id)
        parent = getattr(job_span, "parent", None)
        assert parent is not None
        assert parent.span_id == api_span.get_span_context().span_id

    @pytest.mark.parametrize("traceparent", [None, "", "not-a-traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
    def test_missing_or_bad_traceparent_starts_a_new_trace(
        self, build: Build, receiver: OTLPReceiver, traceparent: str | None
    ) -> None:
        """A task stored without (or with a corrupt) traceparent still runs, as the root of a new trace."""
        tel = build(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        with tel.tracer("test").start_as_current_span("run_task", context=extract_context(traceparent)) as span:
            assert current_trace_id() is not None
        assert getattr(span, "parent", "missing") is None

    def test_no_traceparent_outside_a_span(self) -> None:
        """Outside any span there is nothing to propagate and no trace id to record."""
        assert inject_traceparent() is None
        assert current_trace_id() is None


class TestStructlogProcessor:
    def test_adds_ids_inside_a_span(self, build: Build) -> None:
        """Inside a span, every log line gets its trace_id (32 hex) and span_id (16 hex)."""
        tel = build()
        with tel.tracer("test").start_as_current_span("work") as span:
            event = add_trace_context(None, "info", {"event": "x"})
        context = span.get_span_context()
        assert event["trace_id"] == f"{context.trace_id:032x}"
        assert event["span_id"] == f"{context.span_id:016x}"

    def test_leaves_lines_outside_spans_alone(self) -> None:
        """Outside a span, lines get no empty or zero ids."""
        assert add_trace_context(None, "info", {"event": "x"}) == {"event": "x"}


class TestGlobalSetup:
    @pytest.mark.slow  # a process of its own: set-up must happen once per process
    def test_process_wide_setup_exports_through_global_providers(self, receiver: OTLPReceiver) -> None:
        """setup_telemetry sets the global providers once; service logging plus the handler exports structlog lines."""
        script = textwrap.dedent(
            """
            import json, logging, structlog
            from opentelemetry import trace
            from jobs.telemetry import add_trace_context, current_trace_id, setup_telemetry
            from service.logs import configure_logging

            first = setup_telemetry("agentfarm-worker")
            second = setup_telemetry("agentfarm-other")
            configure_logging("INFO", "json")
            logging.getLogger().addHandler(first.log_handler())
            with trace.get_tracer("job").start_as_current_span("run_task"):
                structlog.get_logger("jobs.worker").info("task_started", task_id="t-9")
                trace_id = current_trace_id()
            first.shutdown(timeout_s=5)
            print(json.dumps({
                "same": first is second,
                "global": trace.get_tracer_provider() is first.tracer_provider,
                "trace_id": trace_id,
            }))
            """
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["same"]
        assert result["global"]
        trace_id = result["trace_id"]
        assert receiver.wait_for(lambda r: len(r.spans(trace_id)) == 1 and len(r.logs(trace_id)) == 1)
        assert receiver.spans(trace_id)[0].service_name == "agentfarm-worker"
        line = receiver.logs(trace_id)[0]
        assert line.body == "task_started"
        assert line.attributes["task_id"] == "t-9"
