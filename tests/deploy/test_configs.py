"""Offline checks of the deployment and observability configuration.

Covers deploy/ (OTel collector, Tempo, Loki, Prometheus + alert rules, Grafana
provisioning and dashboard), compose.yaml, Containerfile and .dockerignore.
No network and no container runtime: YAML/JSON parsing plus `promtool` (from
Debian's `prometheus` package) for the Prometheus config and rule unit tests.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COLLECTOR = DEPLOY / "otel-collector.yaml"
TEMPO = DEPLOY / "tempo.yaml"
LOKI = DEPLOY / "loki.yaml"
PROM_DIR = DEPLOY / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "agentfarm.json"
COMPOSE = ROOT / "compose.yaml"
CONTAINERFILE = ROOT / "Containerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# The metrics the application exports (service/ and jobs/). Dashboards and
# alerts may only query these; histograms may also be queried via the
# _bucket/_sum/_count series.
COUNTERS = {
    "agentfarm_http_requests_total",
    "agentfarm_http_requests_error_total",
    "agentfarm_tasks_submitted_total",
    "agentfarm_tasks_finished_total",
    "agentfarm_task_retries_total",
    "agentfarm_llm_calls_total",
    "agentfarm_llm_tokens_total",
    "agentfarm_llm_cost_usd_total",
    "agentfarm_llm_errors_total",
}
GAUGES = {"agentfarm_queue_depth", "agentfarm_workers_live"}
HISTOGRAMS = {
    "agentfarm_http_request_duration_seconds",
    "agentfarm_task_duration_seconds",
    "agentfarm_dispatch_latency_seconds",
}
KNOWN_METRICS = COUNTERS | GAUGES | HISTOGRAMS
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_RE = re.compile(r"agentfarm_[a-z_]+")

# Current collector component type names. `otlp`/`otlphttp` exporters are
# deprecated aliases (collector >= 0.144) and `logging` was removed.
ALLOWED_EXPORTER_TYPES = {"otlp_grpc", "otlp_http", "prometheus", "debug"}
APP_SERVICES = ("api", "worker-research", "worker-specialized")
WORKERS = ("worker-research", "worker-specialized")


# --------------------------------------------------------------------------- helpers
def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def component_type(component_id: str) -> str:
    """`otlp_http/loki` -> `otlp_http` (collector component ids are type[/name])."""
    return component_id.split("/", 1)[0]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Yield (path, key, value) for every mapping entry in a nested JSON/YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def host_port(endpoint: str) -> tuple[str, int | None]:
    """Host and port of `http://h:p/x` or `h:p`."""
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    return parts.hostname or "", parts.port


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install Debian's `prometheus` package "
            "(apt-get install -y prometheus), which ships promtool"
        )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=PROM_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def metric_names(text: str) -> set[str]:
    return set(METRIC_RE.findall(text))


def unknown_metrics(names: set[str]) -> set[str]:
    bad = set()
    for name in names:
        if name in KNOWN_METRICS:
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base not in HISTOGRAMS:
            bad.add(name)
    return bad


def scrape_targets(job: dict[str, Any]) -> set[str]:
    """`host:port` of a scrape job: static targets, and the names x port of DNS discovery."""
    targets = {t for sc in job.get("static_configs", []) for t in sc["targets"]}
    for sd in job.get("dns_sd_configs", []):
        targets |= {f"{name}:{sd['port']}" for name in sd["names"]}
    return targets


def compose_services() -> dict[str, Any]:
    return load_yaml(COMPOSE)["services"]


def service_networks(svc: dict[str, Any]) -> set[str]:
    nets = svc.get("networks", [])
    return set(nets) if isinstance(nets, (list, dict)) else set()


def service_env(svc: dict[str, Any]) -> dict[str, Any]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def bind_sources(svc: dict[str, Any]) -> list[str]:
    """Host paths of bind mounts (short `src:dst[:mode]` or long syntax)."""
    out = []
    for vol in svc.get("volumes", []):
        if isinstance(vol, str):
            src = vol.split(":", 1)[0]
            if src.startswith((".", "/")):
                out.append(src)
        elif isinstance(vol, dict) and vol.get("type") == "bind":
            out.append(vol["source"])
    return out


def bind_targets(svc: dict[str, Any]) -> dict[str, str]:
    out = {}
    for vol in svc.get("volumes", []):
        if isinstance(vol, str) and vol.startswith("."):
            src, dst = vol.split(":")[:2]
            out[src.rstrip("/")] = dst
    return out


def datasources() -> dict[str, dict[str, Any]]:
    return {ds["uid"]: ds for ds in load_yaml(DATASOURCES)["datasources"]}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def prometheus_exprs_in_dashboard() -> list[str]:
    """PromQL strings of the dashboard: Prometheus targets and query variables."""
    dash = dashboard()
    exprs = []
    for _path, key, value in walk(dash):
        if key == "targets":
            for target in value:
                ds = target.get("datasource") or {}
                if ds.get("type", "prometheus") == "prometheus" and "expr" in target:
                    exprs.append(target["expr"])
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            exprs.append(query["query"] if isinstance(query, dict) else str(query))
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


# --------------------------------------------------------------------------- collector
@pytest.fixture(scope="module")
def cfg() -> dict[str, Any]:
    """Parsed deploy/otel-collector.yaml."""
    return load_yaml(COLLECTOR)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """Parsed compose.yaml (variables left uninterpolated)."""
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def lines() -> list[str]:
    """Containerfile instructions: continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


class TestCollectorConfig:
    """deploy/otel-collector.yaml"""

    def test_pipeline_components_are_defined(self, cfg: dict[str, Any]) -> None:
        """The collector starts: every component a pipeline references is defined."""
        for name, pipeline in cfg["service"]["pipelines"].items():
            for kind in ("receivers", "processors", "exporters"):
                for comp in pipeline.get(kind, []):
                    assert comp in (cfg.get(kind) or {}), f"{name}: {kind[:-1]} {comp} undefined"

    def test_defined_components_are_used(self, cfg: dict[str, Any]) -> None:
        """No dead config: every defined receiver/processor/exporter/extension is used."""
        pipelines = cfg["service"]["pipelines"].values()
        for kind in ("receivers", "processors", "exporters"):
            used = {c for p in pipelines for c in p.get(kind, [])}
            assert set(cfg.get(kind) or {}) == used, f"unused {kind}: {set(cfg[kind]) - used}"
        assert set(cfg.get("extensions") or {}) == set(cfg["service"].get("extensions", []))

    def test_has_traces_logs_and_metrics_pipelines(self, cfg: dict[str, Any]) -> None:
        """Traces, logs and metrics sent by the app all have a pipeline to a backend."""
        pipelines = cfg["service"]["pipelines"]
        for signal in ("traces", "logs", "metrics"):
            assert any(component_type(p) == signal for p in pipelines), signal
            assert pipelines[signal]["receivers"] == ["otlp"]
            assert pipelines[signal]["exporters"], signal

    def test_otlp_receiver_binds_all_interfaces(self, cfg: dict[str, Any]) -> None:
        """The app containers can reach the collector: OTLP grpc/http bind 0.0.0.0:4317/4318."""
        protocols = cfg["receivers"]["otlp"]["protocols"]
        assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
        assert protocols["http"]["endpoint"] == "0.0.0.0:4318"

    def test_exporter_types_are_current_names(self, cfg: dict[str, Any]) -> None:
        """No deprecated exporter aliases (otlp, otlphttp, logging) that newer collectors drop."""
        for exporter in cfg["exporters"]:
            assert component_type(exporter) in ALLOWED_EXPORTER_TYPES, exporter

    def test_memory_limiter_runs_first(self, cfg: dict[str, Any]) -> None:
        """Under load the collector sheds data before it runs out of memory."""
        for name, pipeline in cfg["service"]["pipelines"].items():
            assert pipeline["processors"][0] == "memory_limiter", name
            assert pipeline["processors"][-1] == "batch", name

    def test_signals_go_to_the_right_backends(self, cfg: dict[str, Any]) -> None:
        """Traces reach Tempo over gRPC, logs Loki's OTLP endpoint, metrics Prometheus."""
        pipelines, exporters = cfg["service"]["pipelines"], cfg["exporters"]

        def endpoints(signal: str) -> list[tuple[str, str]]:
            return [(component_type(e), exporters[e].get("endpoint", "")) for e in pipelines[signal]["exporters"]]

        assert ("otlp_grpc", "tempo:4317") in endpoints("traces")
        assert ("otlp_http", "http://loki:3100/otlp") in endpoints("logs")
        assert any(
            (t == "otlp_http" and e == "http://prometheus:9090/api/v1/otlp") or t == "prometheus"
            for t, e in endpoints("metrics")
        )

    def test_exporter_hosts_are_compose_services(self, cfg: dict[str, Any]) -> None:
        """Every exporter endpoint host resolves on the compose network."""
        services = compose_services()
        for name, exporter in cfg["exporters"].items():
            if "endpoint" in exporter:
                host, _ = host_port(exporter["endpoint"])
                assert host in services, f"{name} -> {host}"


# --------------------------------------------------------------------------- tempo / loki
class TestTempoAndLoki:
    """deploy/tempo.yaml and deploy/loki.yaml"""

    def test_tempo_otlp_grpc_receiver_binds_all_interfaces(self) -> None:
        """The collector's traces reach Tempo: its OTLP gRPC receiver listens on 0.0.0.0:4317."""
        grpc = load_yaml(TEMPO)["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]
        assert grpc["endpoint"] == "0.0.0.0:4317"

    def test_tempo_uses_local_storage(self) -> None:
        """Single-binary Tempo keeps traces on its volume, not in an object store."""
        trace = load_yaml(TEMPO)["storage"]["trace"]
        assert trace["backend"] == "local"
        assert trace["local"]["path"].startswith("/var/tempo")

    def test_tempo_metrics_generator_writes_to_prometheus(self) -> None:
        """Grafana's service map has data: Tempo remote-writes span metrics to Prometheus."""
        cfg = load_yaml(TEMPO)
        urls = [rw["url"] for rw in cfg["metrics_generator"]["storage"]["remote_write"]]
        assert "http://prometheus:9090/api/v1/write" in urls
        processors = cfg["overrides"]["defaults"]["metrics_generator"]["processors"]
        assert {"service-graphs", "span-metrics"} <= set(processors)

    def test_loki_accepts_otlp_logs(self) -> None:
        """OTLP logs (trace_id as structured metadata) need schema v13, tsdb and structured metadata."""
        cfg = load_yaml(LOKI)
        assert cfg["limits_config"]["allow_structured_metadata"] is True
        latest = cfg["schema_config"]["configs"][-1]
        assert latest["schema"] == "v13"
        assert latest["store"] == "tsdb"
        assert latest["object_store"] == "filesystem"

    def test_collector_log_exporter_matches_loki_port(self) -> None:
        """The collector posts logs to the port Loki actually listens on."""
        loki_port = load_yaml(LOKI)["server"]["http_listen_port"]
        exporters = load_yaml(COLLECTOR)["exporters"]
        loki = [e["endpoint"] for e in exporters.values() if "loki" in e.get("endpoint", "")]
        assert loki and all(host_port(e)[1] == loki_port for e in loki)


# --------------------------------------------------------------------------- prometheus
class TestPrometheus:
    """deploy/prometheus/: scrape config and alert rules, validated with promtool."""

    def test_promtool_check_config(self) -> None:
        """Prometheus accepts prometheus.yml and the rule files it loads."""
        result = run_promtool("check", "config", PROM_CONFIG.name)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_promtool_check_rules(self) -> None:
        """The alert rules parse and their PromQL is valid."""
        result = run_promtool("check", "rules", ALERTS.name)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_promtool_rule_unit_tests_pass(self) -> None:
        """Alerts fire (and stay quiet) exactly in the scenarios of alerts_test.yml."""
        result = run_promtool("test", "rules", ALERTS_TEST.name)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_scrape_jobs_cover_api_and_workers(self) -> None:
        """Prometheus scrapes the API and both worker pools, each replica of a scaled pool
        (DNS discovery: compose answers a service name with every replica's address)."""
        jobs = {j["job_name"]: j for j in load_yaml(PROM_CONFIG)["scrape_configs"]}
        targets = {name: scrape_targets(job) for name, job in jobs.items()}
        assert targets["agentfarm-api"] == {"api:8000"}
        assert targets["agentfarm-worker"] == {"worker-research:9100", "worker-specialized:9100"}
        for name in ("agentfarm-api", "agentfarm-worker"):
            assert jobs[name]["dns_sd_configs"][0]["type"] == "A", name
        # worker-research -> worker_queue="research", as the alerts and their tests expect
        relabel = jobs["agentfarm-worker"]["relabel_configs"][0]
        assert relabel["target_label"] == "worker_queue"
        assert re.fullmatch(relabel["regex"], "worker-research").group(1) == "research"
        assert load_yaml(PROM_CONFIG)["rule_files"] == [ALERTS.name]

    def test_scrape_targets_are_compose_services(self) -> None:
        """Every scrape target host is a compose service (or Prometheus itself)."""
        services = compose_services()
        for job in load_yaml(PROM_CONFIG)["scrape_configs"]:
            for target in scrape_targets(job):
                host, _ = host_port(target)
                assert host in services or host == "localhost", f"{job['job_name']}: {target}"

    def test_worker_scrape_port_matches_worker_metrics_port(self) -> None:
        """Workers serve /metrics on the port Prometheus scrapes."""
        services = compose_services()
        jobs = {j["job_name"]: j for j in load_yaml(PROM_CONFIG)["scrape_configs"]}
        for target in scrape_targets(jobs["agentfarm-worker"]):
            host, port = host_port(target)
            env = service_env(services[host])
            assert str(env.get("AGENTFARM_WORKER_METRICS_PORT", "9100")) == str(port)

    def test_every_alert_has_severity_and_runbook_annotations(self) -> None:
        """On-call gets a severity, a summary and a description with a runbook hint."""
        for rule in alert_rules():
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert "Runbook:" in rule["annotations"]["description"], rule["alert"]

    def test_expected_alerts_exist(self) -> None:
        """The alerts the runbooks and README refer to are all defined."""
        names = {rule["alert"] for rule in alert_rules()}
        assert names == {
            "AgentFarmWorkerDown",
            "AgentFarmQueueBacklog",
            "AgentFarmTaskFailureRate",
            "AgentFarmDispatchLatencyHigh",
            "AgentFarmLLMErrorRate",
        }

    def test_every_alert_has_a_firing_unit_test(self) -> None:
        """No alert ships without a promtool case proving it can fire."""
        firing: set[str] = set()
        quiet: set[str] = set()
        for case in load_yaml(ALERTS_TEST)["tests"]:
            for art in case.get("alert_rule_test", []):
                (firing if art.get("exp_alerts") else quiet).add(art["alertname"])
        assert {rule["alert"] for rule in alert_rules()} <= firing
        # The two alerts most prone to false positives also prove they stay quiet.
        assert {"AgentFarmTaskFailureRate", "AgentFarmQueueBacklog"} <= quiet

    def test_redis_derived_gauges_are_aggregated_with_max(self) -> None:
        """Queue depth/live workers are reported by every API replica: never sum them."""
        texts = [rule["expr"] for rule in alert_rules()] + prometheus_exprs_in_dashboard()
        for text in texts:
            for gauge in GAUGES:
                for m in re.finditer(rf"(\w+)\s*(?:by\s*\([^)]*\)\s*)?\(\s*{gauge}\b", text):
                    assert m.group(1) == "max", f"{m.group(1)}(... {gauge}) in: {text}"


# --------------------------------------------------------------------------- metric names
class TestMetricNames:
    """Dashboards and alerts only query metrics the application exports."""

    def test_dashboard_queries_use_known_metrics(self) -> None:
        """Every agentfarm_* series in the dashboard exists in the app (no silently empty panels)."""
        names = set().union(*(metric_names(e) for e in prometheus_exprs_in_dashboard()))
        assert len(names) >= 10, "dashboard queries found suspiciously few metrics"
        assert not unknown_metrics(names), unknown_metrics(names)

    def test_alert_rules_use_known_metrics(self) -> None:
        """Every agentfarm_* series in an alert exists in the app (no alert that can never fire)."""
        names = set().union(*(metric_names(rule["expr"]) for rule in alert_rules()))
        assert names, "no agentfarm_* metric found in alerts"
        assert not unknown_metrics(names), unknown_metrics(names)

    def test_alert_unit_test_series_use_known_metrics(self) -> None:
        """The rule tests feed the same series names the app exports."""
        series = [s["series"] for c in load_yaml(ALERTS_TEST)["tests"] for s in c["input_series"]]
        names = set().union(*(metric_names(s) for s in series))
        assert not unknown_metrics(names), unknown_metrics(names)

    def test_histograms_are_queried_via_their_series(self) -> None:
        """Histograms are queried as _bucket/_sum/_count (a bare histogram name returns nothing)."""
        texts = prometheus_exprs_in_dashboard() + [r["expr"] for r in alert_rules()]
        for name in set().union(*(metric_names(t) for t in texts)):
            if name in HISTOGRAMS:
                pytest.fail(f"histogram {name} queried without _bucket/_sum/_count")

    def test_dashboard_covers_every_metric(self) -> None:
        """Each exported metric is visible on the dashboard."""
        names = set().union(*(metric_names(e) for e in prometheus_exprs_in_dashboard()))
        covered = {n for n in KNOWN_METRICS if n in names or any(n + s in names for s in HISTOGRAM_SUFFIXES)}
        assert covered == KNOWN_METRICS, KNOWN_METRICS - covered


# --------------------------------------------------------------------------- grafana
class TestGrafana:
    """deploy/grafana/: datasource provisioning, dashboard provider and dashboard JSON."""

    def test_datasource_uids(self) -> None:
        """Prometheus, Tempo and Loki are provisioned under the uids dashboards use."""
        ds = datasources()
        assert {uid: d["type"] for uid, d in ds.items()} == {
            "prometheus": "prometheus",
            "tempo": "tempo",
            "loki": "loki",
        }
        for uid, d in ds.items():
            host, _ = host_port(d["url"])
            assert host in compose_services(), f"{uid} -> {d['url']}"

    def test_all_provisioning_links_point_to_existing_uids(self) -> None:
        """Every datasourceUid inside the provisioning file refers to a provisioned datasource."""
        ds = datasources()
        refs = [(p, v) for p, k, v in walk(load_yaml(DATASOURCES)) if k == "datasourceUid"]
        assert refs
        for path, uid in refs:
            assert uid in ds, f"{path}: unknown datasourceUid {uid}"

    def test_traces_link_to_logs(self) -> None:
        """From a span in Tempo, 'Logs for this span' opens the matching Loki logs."""
        ds = datasources()
        t2l = ds["tempo"]["jsonData"]["tracesToLogsV2"]
        assert ds[t2l["datasourceUid"]]["type"] == "loki"
        assert t2l["filterByTraceID"] is True
        if t2l.get("customQuery"):
            assert "__trace.traceId" in t2l["query"]
        assert ds[ds["tempo"]["jsonData"]["serviceMap"]["datasourceUid"]]["type"] == "prometheus"

    def test_logs_link_to_traces(self) -> None:
        """A Loki log line's trace_id is a link that opens the trace in Tempo."""
        ds = datasources()
        fields = ds["loki"]["jsonData"]["derivedFields"]
        assert fields
        assert any(f.get("matcherType") == "label" and f["matcherRegex"] == "trace_id" for f in fields)
        for field in fields:
            assert ds[field["datasourceUid"]]["type"] == "tempo"
            if field.get("matcherType", "regex") == "regex":
                re.compile(field["matcherRegex"])

    def test_dashboard_datasources_exist(self) -> None:
        """Every panel/target/variable datasource of the dashboard resolves to a provisioned uid and type."""
        ds = datasources()
        dash = dashboard()
        variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
        refs = [(p, v) for p, k, v in walk(dash) if k == "datasource" and v is not None]
        assert refs
        for path, ref in refs:
            uid = ref.get("uid") if isinstance(ref, dict) else ref
            if uid in ("-- Grafana --", "grafana"):
                continue  # built-in annotations datasource
            if isinstance(uid, str) and uid.startswith("$"):
                var = variables.get(uid.strip("${}"))
                assert var is not None and var["type"] == "datasource", f"{path}: {uid}"
                continue
            assert uid in ds, f"{path}: unknown datasource uid {uid!r}"
            if isinstance(ref, dict) and "type" in ref:
                assert ref["type"] == ds[uid]["type"], f"{path}: type {ref['type']} != {ds[uid]['type']}"

    def test_dashboard_is_well_formed(self) -> None:
        """The dashboard has a stable uid, unique panel ids and a query in every panel."""
        dash = dashboard()
        assert dash["uid"] == "agentfarm-overview"
        panels = dash["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids))
        for panel in panels:
            if panel["type"] != "row":
                assert panel.get("targets"), panel["title"]

    def test_dashboard_provider_path_is_mounted(self) -> None:
        """Grafana loads the dashboard: the provider path is where compose mounts the JSON."""
        provider = load_yaml(DASHBOARD_PROVIDERS)["providers"][0]
        mounts = bind_targets(compose_services()["grafana"])
        assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
        assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


# --------------------------------------------------------------------------- compose
class TestCompose:
    """compose.yaml"""

    def test_expected_services(self, compose: dict[str, Any]) -> None:
        """`make up` starts the app, Redis and the whole telemetry stack."""
        expected = {
            "redis",
            "api",
            "worker-research",
            "worker-specialized",
            "otel-collector",
            "tempo",
            "loki",
            "prometheus",
            "grafana",
        }
        assert expected <= set(compose["services"])

    def test_redis_is_never_exposed(self, compose: dict[str, Any]) -> None:
        """Redis publishes no port and sits only on the internal backend network."""
        redis = compose["services"]["redis"]
        assert "ports" not in redis
        assert "network_mode" not in redis
        for net in service_networks(redis):
            assert compose["networks"][net].get("internal") is True, net

    def test_redis_is_password_protected_and_durable(self, compose: dict[str, Any]) -> None:
        """Redis requires the password, persists jobs (AOF) and never evicts them."""
        redis = compose["services"]["redis"]
        cmd = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
        assert "--requirepass ${REDIS_PASSWORD:?" in cmd
        assert "--appendonly yes" in cmd
        assert "--maxmemory-policy noeviction" in cmd
        assert any(v.endswith(":/data") for v in redis["volumes"])
        test = " ".join(redis["healthcheck"]["test"])
        assert "redis-cli" in test
        assert "REDISCLI_AUTH" in service_env(redis) or "-a" in test

    def test_images_are_pinned(self, compose: dict[str, Any]) -> None:
        """Every image has an explicit version: no implicit or explicit :latest."""
        for name, svc in compose["services"].items():
            image = svc.get("image")
            if image is None:
                assert "build" in svc, f"{name}: neither image nor build"
                continue
            if "@sha256:" in image:
                continue
            assert ":" in image.rsplit("/", 1)[-1], f"{name}: untagged image {image}"
            tag = image.rsplit(":", 1)[1]
            assert "latest" not in tag, f"{name}: {image}"
            if "build" not in svc:
                assert re.search(r"\d", tag), f"{name}: tag {tag} is not a version"

    def test_app_services_use_the_containerfile(self, compose: dict[str, Any]) -> None:
        """api and workers run images built from Containerfile: the api target, and one worker
        image (the worker target) for both pools, all under one tag."""
        images = {}
        for name in APP_SERVICES:
            svc = compose["services"][name]
            assert svc["build"]["dockerfile"] == CONTAINERFILE.name
            assert svc["build"]["target"] == ("api" if name == "api" else "worker"), name
            images[name] = svc["image"]
        assert images["api"] == "agentfarm-api:${IMAGE_TAG:-dev}"
        assert {images[w] for w in WORKERS} == {"agentfarm-worker:${IMAGE_TAG:-dev}"}

    def test_depends_on_targets_exist(self, compose: dict[str, Any]) -> None:
        """Every depends_on names a real service."""
        services = compose["services"]
        for name, svc in services.items():
            for dep in svc.get("depends_on", []):
                assert dep in services, f"{name} depends on unknown {dep}"

    def test_app_waits_for_healthy_redis(self, compose: dict[str, Any]) -> None:
        """api and workers start only once Redis answers PING."""
        for name in APP_SERVICES:
            deps = compose["services"][name]["depends_on"]
            assert deps["redis"]["condition"] == "service_healthy", name

    def test_mounted_deploy_files_exist(self, compose: dict[str, Any]) -> None:
        """Every bind-mounted ./deploy path exists (a missing one becomes an empty dir)."""
        found = 0
        for name, svc in compose["services"].items():
            for src in bind_sources(svc):
                assert (ROOT / src).exists(), f"{name}: {src} missing"
                found += src.startswith("./deploy")
        assert found >= 6

    def test_app_services_have_healthchecks(self, compose: dict[str, Any]) -> None:
        """api and workers report health even under podman, which drops image HEALTHCHECKs."""
        for name in APP_SERVICES:
            hc = compose["services"][name].get("healthcheck")
            assert hc and not hc.get("disable"), name
            assert hc["test"][0] in ("CMD", "CMD-SHELL") and hc["test"][1:] != ["NONE"], name
        assert "/health/live" in " ".join(compose["services"]["api"]["healthcheck"]["test"])
        for name in WORKERS:
            # The image's HEALTHCHECK probes the API port; workers must override it.
            assert "/health/live" not in " ".join(compose["services"][name]["healthcheck"]["test"])

    def test_workers_run_their_queue(self, compose: dict[str, Any]) -> None:
        """Each worker consumes its own queue with a configured concurrency."""
        for name in WORKERS:
            svc = compose["services"][name]
            queue = name.removeprefix("worker-")
            assert svc["command"] == ["agentfarm", "worker", "--queue", queue]
            assert "AGENTFARM_WORKER_CONCURRENCY" in service_env(svc)
        assert compose["services"]["api"]["command"][:2] == ["agentfarm", "serve"]

    def test_networks(self, compose: dict[str, Any]) -> None:
        """Backend is internal; workers get egress for LLM calls; published services can publish."""
        nets = compose["networks"]
        assert nets["backend"]["internal"] is True
        assert not (nets.get("egress") or {}).get("internal")
        for name, svc in compose["services"].items():
            for net in service_networks(svc):
                assert net in nets, f"{name}: undefined network {net}"
            if svc.get("ports"):
                # Docker cannot publish ports of a container that is only on internal networks.
                assert any(not (nets[n] or {}).get("internal") for n in service_networks(svc)), name
        for name in WORKERS:
            assert {"backend", "egress"} <= service_networks(compose["services"][name])

    def test_published_ports(self, compose: dict[str, Any]) -> None:
        """Only the API (8000), Grafana (3000) and Prometheus (9090) are published."""
        published = {
            name: [str(p).rsplit(":", 1)[-1] for p in svc["ports"]]
            for name, svc in compose["services"].items()
            if svc.get("ports")
        }
        assert published == {"api": ["8000"], "grafana": ["3000"], "prometheus": ["9090"]}

    def test_app_telemetry_environment(self, compose: dict[str, Any]) -> None:
        """api and workers export OTLP/HTTP to the collector under their service names."""
        collector_http = load_yaml(COLLECTOR)["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        port = host_port(collector_http)[1]
        for name in APP_SERVICES:
            env = service_env(compose["services"][name])
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{port}"
            assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
            assert env["OTEL_SERVICE_NAME"] == ("agentfarm-api" if name == "api" else "agentfarm-worker")
            assert env["AGENTFARM_REDIS_URL"].endswith("@redis:6379/0")
            assert "otel-collector" in env["NO_PROXY"] and "redis" in env["NO_PROXY"]
            assert "HTTPS_PROXY" in env
        assert "AGENTFARM_API_KEYS" in service_env(compose["services"]["api"])

    def test_prometheus_receivers_enabled(self, compose: dict[str, Any]) -> None:
        """Prometheus accepts Tempo's remote-write and the collector's OTLP metrics."""
        prom = compose["services"]["prometheus"]
        assert "--web.enable-remote-write-receiver" in prom["command"]
        assert "--web.enable-otlp-receiver" in prom["command"]
        assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
        assert bind_targets(prom)["./deploy/prometheus"] == "/etc/prometheus"

    def test_persistent_state_uses_named_volumes(self, compose: dict[str, Any]) -> None:
        """Redis, Tempo, Loki, Prometheus and Grafana keep their data across `down`/`up`."""
        volumes = set(compose["volumes"])
        for name in ("redis", "tempo", "loki", "prometheus", "grafana"):
            mounts = [v.split(":", 1)[0] for v in compose["services"][name]["volumes"] if isinstance(v, str)]
            assert any(m in volumes for m in mounts), name

    def test_no_secrets_with_defaults(self, compose: dict[str, Any]) -> None:
        """Passwords and API keys must come from .env: no hard-coded fallback values."""
        text = COMPOSE.read_text(encoding="utf-8")
        for var in ("REDIS_PASSWORD", "AGENTFARM_API_KEYS", "GRAFANA_ADMIN_PASSWORD"):
            assert re.search(rf"\$\{{{var}:-", text) is None, var
            assert re.search(rf"\$\{{{var}:\?", text), var


# --------------------------------------------------------------------------- image
class TestContainerfile:
    """Containerfile and .dockerignore"""

    @staticmethod
    def instructions(lines: list[str], name: str) -> list[str]:
        return [ln.split(None, 1)[1] for ln in lines if ln.split(None, 1)[0].upper() == name]

    def test_base_images(self, lines: list[str]) -> None:
        """One pinned python:3.11 slim-bookworm base (by digest); every other stage builds on a stage."""
        froms = [f.split() for f in self.instructions(lines, "FROM")]
        stages = {f[2] for f in froms if len(f) == 3}
        external = [f[0] for f in froms if f[0] not in stages]
        assert len(external) == 1
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", external[0]), external
        assert {"builder", "build-api", "build-worker", "runtime", "api", "worker"} <= stages
        assert froms[-1][2] == "api"  # a plain `docker build` gives the API image, as before

    def test_dependencies_install_from_hashed_lock(self, lines: list[str]) -> None:
        """The images install exactly the locked, hash-verified dependencies (uv too), then the project."""
        runs = " ".join(self.instructions(lines, "RUN"))
        assert "pip install --no-deps --require-hashes -r /tmp/uv.txt" in runs
        assert "uv pip install --python /opt/venv/bin/python --require-hashes -r requirements-api.lock" in runs
        assert "uv pip install --python /opt/venv/bin/python --require-hashes -r requirements.lock" in runs
        assert runs.count("uv pip install --python /opt/venv/bin/python --no-deps .") == 2

    def test_runs_as_non_root(self, lines: list[str]) -> None:
        """The final stages run as uid 10001, not root."""
        users = self.instructions(lines, "USER")
        assert users and {u.split(":")[0] for u in users} == {"10001"}

    def test_runtime_contract(self, lines: list[str]) -> None:
        """Ports, environment, healthchecks and default commands match what compose and Kubernetes expect."""
        assert self.instructions(lines, "EXPOSE") == ["9100", "8000"]  # worker, then api
        env = " ".join(self.instructions(lines, "ENV"))
        for item in ("PYTHONUNBUFFERED=1", "HOME=/home/app", "CREWAI_STORAGE_DIR=/home/app/.crewai"):
            assert item in env
        assert "PATH=/opt/venv/bin:" in env
        worker_health, api_health = self.instructions(lines, "HEALTHCHECK")
        assert "http://127.0.0.1:8000/health/live" in api_health and "python" in api_health
        assert "AGENTFARM_WORKER_METRICS_PORT" in worker_health and "/metrics" in worker_health
        worker_cmd, api_cmd = self.instructions(lines, "CMD")[-2:]
        assert json.loads(worker_cmd) == ["agentfarm", "worker"]
        assert json.loads(api_cmd) == ["agentfarm", "serve", "--host", "0.0.0.0", "--port", "8000"]

    def test_dockerignore_keeps_context_clean(self) -> None:
        """Local venvs, git history, caches and .env secrets never enter the build context."""
        patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
        for required in (".venv", ".git", ".env", ".pytest_cache", "**/__pycache__"):
            assert required in patterns, required

    def test_dockerignore_keeps_copied_sources(self, lines: list[str]) -> None:
        """Everything the Containerfile COPYs from the context survives .dockerignore."""
        patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
        for copy in self.instructions(lines, "COPY"):
            if copy.startswith("--from"):
                continue
            for raw_src in copy.split()[:-1]:
                src = raw_src.rstrip("/")
                for pattern in patterns:
                    assert not fnmatch.fnmatch(src, pattern.rstrip("/")), f"{src} excluded by {pattern}"
