"""deploy/kubernetes/: every manifest valid offline, and the properties the deployment relies on.

The base and the production overlay are rendered by ``tests/deploy/kustomize.py`` (and,
when ``kubectl`` is installed, compared with ``kubectl kustomize``), then:

- built-in kinds are validated against the Kubernetes JSON schemas bundled with
  ``kubernetes-validate`` (strict: an unknown field is an error); KEDA ScaledObjects against
  the part of KEDA's CRD schema these manifests use (below);
- each security property is checked by a function that returns the problems it finds, run
  on the real manifests (no problem) and on a broken copy (the problem is found);
- what the manifests claim about the application (probe paths, metrics port, queue names,
  queue-depth metric, settings names, shutdown grace) is checked against the code itself.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from jobs.kinds import KINDS, QUEUES
from jobs.metrics import QUEUE_COLLECTOR
from jobs.settings import CLIENT_VARIABLES, load_settings, variables
from service.app import create_app
from tests.deploy.kustomize import key, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"
KUSTOMIZATIONS = {"base": BASE, "production": PRODUCTION}
K8S_VERSION = kubernetes_validate.latest_version()
SECRET = "agentfarm-secrets"
# Variable names that carry a secret: never a literal value, never in a ConfigMap.
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|_KEYS$|REDIS_URL$)")
PRIVATE_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8", "100.64.0.0/10"]
PRIVATE_V6 = ["fc00::/7", "fe80::/10", "::1/128"]

Resource = dict[str, Any]

# KEDA's ScaledObject (keda.sh/v1alpha1), transcribed from its CRD for the fields these
# manifests use; anything else is refused (additionalProperties: false), and trigger
# metadata values must be strings, as in the CRD.
_INT = {"type": "integer", "minimum": 0}
_HPA_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": _INT,
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "value", "periodSeconds"],
                "properties": {"type": {"enum": ["Pods", "Percent"]}, "value": _INT, "periodSeconds": _INT},
            },
        },
    },
}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": _INT,
                "cooldownPeriod": _INT,
                "initialCooldownPeriod": _INT,
                "idleReplicaCount": _INT,
                "minReplicaCount": _INT,
                "maxReplicaCount": _INT,
                "fallback": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": _INT, "replicas": _INT},
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES},
                                },
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}
# KEDA's prometheus scaler: required and known metadata keys (keda.sh/docs/scalers/prometheus).
PROMETHEUS_REQUIRED = {"serverAddress", "query", "threshold"}
PROMETHEUS_KNOWN = PROMETHEUS_REQUIRED | {
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "queryParameters",
    "unsafeSsl",
    "timeout",
}


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def rendered(request: pytest.FixtureRequest) -> list[Resource]:
    """The resources of one kustomization (base, production)."""
    return render(KUSTOMIZATIONS[request.param])


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def by_key(resources: list[Resource]) -> dict[tuple[str, str], Resource]:
    return {key(r): r for r in resources}


def pod_specs(resources: list[Resource]) -> Iterator[tuple[Resource, dict[str, Any]]]:
    for resource in resources:
        if resource["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield resource, resource["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def component(resource: Resource) -> str:
    return resource["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def workers(resources: list[Resource]) -> list[Resource]:
    return [d for d in of_kind(resources, "Deployment") if component(d) == "worker"]


def container_env(resources: list[Resource], container: dict[str, Any]) -> dict[str, str]:
    """The literal environment a container gets: its ConfigMaps' data, then its `env` values."""
    maps = by_key(resources)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps["ConfigMap", source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def secret_refs(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e}


def known_variables() -> set[str]:
    return {name for name, *_ in variables()} | CLIENT_VARIABLES


def api_routes() -> set[str]:
    return {route.path for route in create_app(load_settings({}, env_file=None)).routes}


# --------------------------------------------------------------------------- the checks
def security_problems(resources: list[Resource]) -> list[str]:
    """Every pod: non-root, read-only root, no privilege escalation, no capability, RuntimeDefault seccomp,
    requests and limits, probes, no service-account token, secrets only from Secrets."""
    problems = []
    for resource, pod in pod_specs(resources):
        name = resource["metadata"]["name"]
        pod_sc = pod.get("securityContext", {})
        if pod_sc.get("runAsNonRoot") is not True:
            problems.append(f"{name}: pod securityContext.runAsNonRoot is not true")
        if not pod_sc.get("runAsUser"):
            problems.append(f"{name}: pod runs without a non-zero runAsUser")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: a service-account token is mounted")
        problems.extend(f"{name}: {flag}" for flag in ("hostNetwork", "hostPID", "hostIPC") if pod.get(flag))
        problems.extend(f"{name}: hostPath volume {v['name']}" for v in pod.get("volumes", []) if "hostPath" in v)
        for c in containers(pod):
            where = f"{name}/{c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation is allowed")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
                problems.append(f"{where}: capabilities are not exactly `drop: [ALL]`")
            if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
                problems.append(f"{where}: runs as root")
            resources_ = c.get("resources", {})
            problems.extend(
                f"{where}: no cpu and memory {kind_}"
                for kind_ in ("requests", "limits")
                if not {"cpu", "memory"} <= set(resources_.get(kind_, {}))
            )
            problems.extend(f"{where}: no {probe}" for probe in ("livenessProbe", "readinessProbe") if probe not in c)
            problems.extend(
                f"{where}: {env['name']} is not read from a Secret"
                for env in c.get("env", [])
                if SECRET_NAME.search(env["name"]) and "secretKeyRef" not in env.get("valueFrom", {})
            )
            problems.extend(
                f"{where}: envFrom {source}"
                for source in c.get("envFrom", [])
                if "secretRef" not in source and "configMapRef" not in source
            )
    for config_map in of_kind(resources, "ConfigMap"):
        for name, value in config_map.get("data", {}).items():
            if SECRET_NAME.search(name) and value:
                problems.append(f"ConfigMap {config_map['metadata']['name']}: secret-looking {name} has a value")
    problems.extend(
        f"Secret {secret['metadata']['name']}: values in the manifests"
        for secret in of_kind(resources, "Secret")
        if secret.get("data") or secret.get("stringData")
    )
    return problems


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if set(selector) - {"matchLabels"}:
        raise AssertionError(f"selector form not understood by this test: {selector}")
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _rules(resources: list[Resource], labels: dict[str, str], direction: str) -> list[dict[str, Any]] | None:
    """The rules that allow traffic for a pod with ``labels`` in ``direction``; None if no policy isolates it."""
    policies = [p for p in of_kind(resources, "NetworkPolicy") if _matches(p["spec"]["podSelector"], labels)]
    isolating = [p for p in policies if direction.capitalize() in p["spec"].get("policyTypes", [])]
    if not isolating:
        return None
    return [rule for p in isolating for rule in p["spec"].get(direction, [])]


def _ports(rule: dict[str, Any]) -> set[tuple[str, int]] | None:
    """The (protocol, port) pairs a rule allows; None = every port."""
    if not rule.get("ports"):
        return None
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}


def _internet_peers(rule: dict[str, Any], peer_key: str) -> list[dict[str, Any]]:
    """Peers of a rule that are outside the cluster's selectors: ipBlocks, or everything (no peers)."""
    peers = rule.get(peer_key)
    if not peers:
        return [{"ipBlock": {"cidr": "0.0.0.0/0", "except": []}}]
    return [p for p in peers if "ipBlock" in p]


def _reaches_private(peer: dict[str, Any]) -> list[str]:
    block = peer["ipBlock"]
    cidr = ipaddress.ip_network(block["cidr"])
    excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
    private = PRIVATE_V4 if cidr.version == 4 else PRIVATE_V6
    return [
        net
        for net in private
        if ipaddress.ip_network(net).overlaps(cidr)
        and not any(ipaddress.ip_network(net).subnet_of(e) for e in excepted if e.version == cidr.version)
    ]


def network_problems(resources: list[Resource]) -> list[str]:
    """Default deny; API ingress only; only workers reach the internet (no private ranges); all reach DNS, Redis."""
    problems = []
    denies = [
        p
        for p in of_kind(resources, "NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not denies:
        problems.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)")
    for resource, _pod in pod_specs(resources):
        name = resource["metadata"]["name"]
        labels = resource["spec"]["template"]["metadata"]["labels"]
        role = labels.get("app.kubernetes.io/component")
        egress = _rules(resources, labels, "egress")
        ingress = _rules(resources, labels, "ingress")
        if egress is None or ingress is None:
            problems.append(f"{name}: not isolated by a NetworkPolicy")
            continue
        allowed_ports = set().union(*[_ports(r) or {("*", 0)} for r in egress])
        problems.extend(
            f"{name}: cannot reach {needed} (DNS / Redis)"
            for needed in (("UDP", 53), ("TCP", 6379))
            if needed not in allowed_ports
        )
        internet = [(r, peer) for r in egress for peer in _internet_peers(r, "to")]
        if role != "worker" and internet:
            problems.append(f"{name}: egress outside the cluster's selectors ({internet[0][1]})")
        if role == "worker":
            if not internet:
                problems.append(f"{name}: workers cannot reach the internet (LLM, search)")
            for rule, peer in internet:
                if _ports(rule) is None:
                    problems.append(f"{name}: internet egress on every port")
                leaked = _reaches_private(peer)
                if leaked:
                    problems.append(f"{name}: internet egress also reaches {leaked}")
        for rule in ingress:
            ports = _ports(rule)
            if role == "api":
                if ports != {("TCP", 8000)}:
                    problems.append(f"{name}: API ingress on {ports} (only 8000)")
            elif rule.get("from") in (None, []) or _internet_peers(rule, "from"):
                problems.append(f"{name}: ingress from anywhere into a {role} pod")
    return problems


def _mutations() -> list[tuple[str, Callable[[list[Resource]], None], str]]:
    """Broken copies of the manifests and the problem each must produce."""

    def first_worker(rs: list[Resource]) -> dict[str, Any]:
        return workers(rs)[0]["spec"]["template"]["spec"]

    def api_pod(rs: list[Resource]) -> dict[str, Any]:
        return next(d for d in of_kind(rs, "Deployment") if component(d) == "api")["spec"]["template"]["spec"]

    def set_(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
        def apply(node: dict[str, Any]) -> None:
            *parents, last = path.split(".")
            for part in parents:
                node = node[part]
            node[last] = value

        return apply

    return [
        (
            "writable root",
            lambda rs: set_("securityContext.readOnlyRootFilesystem", False)(first_worker(rs)["containers"][0]),
            "root filesystem is writable",
        ),
        (
            "escalation",
            lambda rs: set_("securityContext.allowPrivilegeEscalation", True)(api_pod(rs)["containers"][0]),
            "privilege escalation",
        ),
        (
            "capability added",
            lambda rs: set_("securityContext.capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]})(
                api_pod(rs)["containers"][0]
            ),
            "capabilities",
        ),
        ("root", lambda rs: set_("securityContext.runAsNonRoot", False)(api_pod(rs)), "runAsNonRoot"),
        ("seccomp", lambda rs: api_pod(rs)["securityContext"].pop("seccompProfile"), "seccompProfile"),
        ("no limits", lambda rs: api_pod(rs)["containers"][0]["resources"].pop("limits"), "no cpu and memory limits"),
        ("no probe", lambda rs: first_worker(rs)["containers"][0].pop("livenessProbe"), "no livenessProbe"),
        (
            "literal secret",
            lambda rs: api_pod(rs)["containers"][0]["env"].append({"name": "AGENTFARM_LLM_API_KEY", "value": "sk-1"}),
            "not read from a Secret",
        ),
        (
            "secret in a ConfigMap",
            lambda rs: of_kind(rs, "ConfigMap")[0]["data"].update(AGENTFARM_REDIS_URL="redis://:pw@redis:6379"),
            "secret-looking",
        ),
    ]


def _network_mutations() -> list[tuple[str, Callable[[list[Resource]], None], str]]:
    def policy(rs: list[Resource], name: str) -> Resource:
        return by_key(rs)["NetworkPolicy", name]

    def api_internet(rs: list[Resource]) -> None:
        p = copy.deepcopy(policy(rs, "agentfarm-worker-internet-egress"))
        p["metadata"]["name"] = "api-internet"
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] = "api"
        rs.append(p)

    def metadata_reachable(rs: list[Resource]) -> None:
        policy(rs, "agentfarm-worker-internet-egress")["spec"]["egress"][0]["to"][0]["ipBlock"]["except"].remove(
            "169.254.0.0/16"
        )

    return [
        ("no default deny", lambda rs: rs.remove(policy(rs, "agentfarm-default-deny")), "no default-deny"),
        ("no dns", lambda rs: rs.remove(policy(rs, "agentfarm-allow-dns")), "DNS / Redis"),
        ("no redis", lambda rs: rs.remove(policy(rs, "agentfarm-allow-redis")), "DNS / Redis"),
        ("api internet", api_internet, "egress outside the cluster"),
        ("metadata endpoint", metadata_reachable, "169.254.0.0/16"),
        (
            "worker ingress from anywhere",
            lambda rs: policy(rs, "agentfarm-worker-metrics-ingress")["spec"]["ingress"][0].pop("from"),
            "ingress from anywhere",
        ),
        (
            "api ingress on every port",
            lambda rs: policy(rs, "agentfarm-api-ingress")["spec"]["ingress"][0].pop("ports"),
            "API ingress",
        ),
    ]


# --------------------------------------------------------------------------- validation
class TestManifestsAreValid:
    def test_both_kustomizations_render(self, rendered: list[Resource]) -> None:
        """The base and the overlay render (every resource and patch file exists, no duplicates)."""
        kinds = {r["kind"] for r in rendered}
        assert {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "NetworkPolicy"} <= kinds

    def test_builtin_kinds_match_the_kubernetes_schemas(self, rendered: list[Resource]) -> None:
        """Every built-in resource validates against Kubernetes' own schema (strict: no unknown fields)."""
        checked = 0
        for resource in rendered:
            if resource["apiVersion"].startswith("keda.sh/"):
                continue
            try:
                kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{key(resource)}: {exc.message} at {list(exc.path)}")
            checked += 1
        assert checked >= 10

    def test_every_manifest_file_is_in_a_kustomization(self) -> None:
        """No manifest file lies around unrendered (and so unvalidated)."""
        used = {BASE / "kustomization.yaml", PRODUCTION / "kustomization.yaml"}
        for directory in (BASE, PRODUCTION):
            kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
            used |= {(directory / r).resolve() for r in kustomization.get("resources", [])}
            used |= {(directory / p["path"]).resolve() for p in kustomization.get("patches", [])}
        files = {p.resolve() for p in K8S.rglob("*.yaml")}
        assert files <= {u.resolve() for u in used}, files - used

    def test_validation_catches_a_broken_manifest(self) -> None:
        """The schema check fails on a wrong type and on an unknown field."""
        deployment = copy.deepcopy(by_key(render(BASE))["Deployment", "agentfarm-api"])
        deployment["spec"]["replicas"] = "three"
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
        deployment["spec"]["replicas"] = 2
        deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True  # typo
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)

    def test_scaled_objects_match_kedas_schema(self, rendered: list[Resource]) -> None:
        """Each ScaledObject fits KEDA's CRD and its prometheus trigger has the scaler's fields."""
        for scaled in of_kind(rendered, "ScaledObject"):
            jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
            for trigger in scaled["spec"]["triggers"]:
                assert trigger["type"] == "prometheus"
                assert PROMETHEUS_REQUIRED <= set(trigger["metadata"]) <= PROMETHEUS_KNOWN, trigger["metadata"]
        broken = copy.deepcopy(of_kind(rendered, "ScaledObject")[0])
        broken["spec"]["triggers"][0]["metadata"]["threshold"] = 4  # must be a string
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCALED_OBJECT_SCHEMA)

    @pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: the offline renderer only")
    def test_renderer_agrees_with_kubectl_kustomize(self) -> None:
        """Where kubectl exists, `kubectl kustomize` renders exactly what the offline renderer does."""
        for directory in KUSTOMIZATIONS.values():
            out = subprocess.run(
                ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=True
            ).stdout
            theirs = by_key([d for d in yaml.safe_load_all(out) if d])
            assert theirs == by_key(render(directory))


# --------------------------------------------------------------------------- security
class TestSecurity:
    def test_pods_are_hardened_and_secrets_come_from_secrets(self, rendered: list[Resource]) -> None:
        """non-root, read-only root, no escalation, drop ALL, RuntimeDefault, limits, probes, secretKeyRef only."""
        assert security_problems(rendered) == []

    @pytest.mark.parametrize(("case", "mutate", "expected"), _mutations(), ids=[m[0] for m in _mutations()])
    def test_each_security_check_can_fail(
        self, case: str, mutate: Callable[[list[Resource]], None], expected: str
    ) -> None:
        """Each property above is really checked: breaking it in a copy is reported."""
        resources = copy.deepcopy(render(BASE))
        mutate(resources)
        problems = security_problems(resources)
        assert any(expected in p for p in problems), (case, problems)

    def test_network_policies(self, rendered: list[Resource]) -> None:
        """Default deny, API ingress only, internet only for workers (no private ranges), DNS and Redis for all."""
        assert network_problems(rendered) == []

    @pytest.mark.parametrize(
        ("case", "mutate", "expected"), _network_mutations(), ids=[m[0] for m in _network_mutations()]
    )
    def test_each_network_check_can_fail(
        self, case: str, mutate: Callable[[list[Resource]], None], expected: str
    ) -> None:
        resources = copy.deepcopy(render(BASE))
        mutate(resources)
        problems = network_problems(resources)
        assert any(expected in p for p in problems), (case, problems)

    def test_secret_references_name_the_secret(self, rendered: list[Resource]) -> None:
        """Every secretKeyRef reads agentfarm-secrets under the variable's name; only the API keys are required."""
        refs = 0
        for _resource, pod in pod_specs(rendered):
            for c in containers(pod):
                for name, ref in secret_refs(c).items():
                    refs += 1
                    assert ref["name"] == SECRET and ref["key"] == name, (name, ref)
                    assert ref.get("optional", False) is (name != "AGENTFARM_API_KEYS"), name
        assert refs >= 5

    def test_production_namespace_enforces_restricted_pod_security(self) -> None:
        """The overlay's namespace makes the cluster reject any pod that breaks the restricted profile."""
        resources = render(PRODUCTION)
        namespace = of_kind(resources, "Namespace")[0]
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        assert {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"} == {
            namespace["metadata"]["name"]
        }


# --------------------------------------------------------------------------- the application
class TestMatchesTheApplication:
    def test_one_worker_deployment_per_queue(self, rendered: list[Resource]) -> None:
        """Each queue of jobs/kinds.py has its own worker Deployment consuming only that queue."""
        pools = {d["metadata"]["labels"]["agentfarm.io/queue"]: d for d in workers(rendered)}
        assert set(pools) == set(QUEUES)
        assert {KINDS[k].queue for k in KINDS} == set(QUEUES)
        for queue, deployment in pools.items():
            (worker,) = deployment["spec"]["template"]["spec"]["containers"]
            assert worker["command"] == ["agentfarm", "worker", "--queue", queue]
            assert worker["image"].split("@")[0].rsplit(":", 1)[0].endswith("agentfarm-worker")

    def test_api_image_and_command(self, rendered: list[Resource]) -> None:
        (api,) = [d for d in of_kind(rendered, "Deployment") if component(d) == "api"]
        (container,) = api["spec"]["template"]["spec"]["containers"]
        assert container["command"][:2] == ["agentfarm", "serve"]
        assert container["image"].split("@")[0].rsplit(":", 1)[0].endswith("agentfarm-api")

    def test_container_environments_are_valid_settings(self, rendered: list[Resource]) -> None:
        """What each container is given loads with the service's own settings parser, and every
        AGENTFARM_* name it is given (literal or from the Secret) is a real setting."""
        known = known_variables()
        for _resource, pod in pod_specs(rendered):
            for c in containers(pod):
                env = container_env(rendered, c)
                names = {n for n in [*env, *secret_refs(c)] if n.startswith("AGENTFARM_")}
                assert names <= known, names - known
                load_settings(env, env_file=None)

    def test_worker_grace_period_exceeds_the_shutdown_grace(self, rendered: list[Resource]) -> None:
        """Kubernetes waits longer than the worker's own shutdown grace before SIGKILL (with time to hand back)."""
        for deployment in workers(rendered):
            pod = deployment["spec"]["template"]["spec"]
            settings = load_settings(container_env(rendered, pod["containers"][0]), env_file=None)
            assert pod["terminationGracePeriodSeconds"] >= settings.worker.shutdown_grace_s + 30, deployment

    def test_worker_probes_and_scrape_port_are_the_metrics_port(self, rendered: list[Resource]) -> None:
        """Probes, the container port and the scrape annotation all use AGENTFARM_WORKER_METRICS_PORT."""
        for deployment in workers(rendered):
            template = deployment["spec"]["template"]
            (c,) = template["spec"]["containers"]
            port = load_settings(container_env(rendered, c), env_file=None).worker.metrics_port
            assert port > 0
            named = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert named["metrics"] == port
            assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert c[probe]["httpGet"]["port"] in ("metrics", port)
                assert c[probe]["httpGet"]["path"] == "/metrics"

    def test_api_probes_use_the_health_routes(self, rendered: list[Resource]) -> None:
        """Liveness is /health/live, readiness /health/ready (which fails while Redis is unreachable):
        both routes exist in the app, as does the scraped /metrics."""
        routes = api_routes()
        (api,) = [d for d in of_kind(rendered, "Deployment") if component(d) == "api"]
        (c,) = api["spec"]["template"]["spec"]["containers"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert c["startupProbe"]["httpGet"]["path"] in routes
        assert {
            "/health/live",
            "/health/ready",
            api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"],
        } <= routes
        assert c["ports"][0]["containerPort"] == int(c["command"][c["command"].index("--port") + 1])

    def test_api_service_and_pdb_select_the_api_pods(self, rendered: list[Resource]) -> None:
        (api,) = [d for d in of_kind(rendered, "Deployment") if component(d) == "api"]
        labels = api["spec"]["template"]["metadata"]["labels"]
        (service,) = of_kind(rendered, "Service")
        assert _matches({"matchLabels": service["spec"]["selector"]}, labels)
        assert service["spec"]["ports"][0]["targetPort"] in ("http", 8000)
        pdbs = {p["metadata"]["name"]: p for p in of_kind(rendered, "PodDisruptionBudget")}
        assert _matches(pdbs["agentfarm-api"]["spec"]["selector"], labels)
        assert pdbs["agentfarm-api"]["spec"]["minAvailable"] < api["spec"]["replicas"]
        for deployment in workers(rendered):
            pdb = pdbs[deployment["metadata"]["name"]]
            assert _matches(pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])

    def test_each_worker_scales_on_its_queue_depth(self, rendered: list[Resource]) -> None:
        """A ScaledObject per worker Deployment queries the app's real queue-depth gauge for that queue,
        with one replica per `concurrency` jobs, and never scales to zero."""
        gauges = {m.name: m for m in QUEUE_COLLECTOR.describe()}
        scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(rendered, "ScaledObject")}
        assert set(scaled) == {d["metadata"]["name"] for d in workers(rendered)}
        for deployment in workers(rendered):
            queue = deployment["metadata"]["labels"]["agentfarm.io/queue"]
            spec = scaled[deployment["metadata"]["name"]]["spec"]
            assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
            (trigger,) = spec["triggers"]
            query = trigger["metadata"]["query"]
            metric = re.fullmatch(r"max\((\w+)\{(.*)\}\)", query)
            assert metric, query
            assert metric.group(1) == "agentfarm_queue_depth" and metric.group(1) in gauges
            assert "queue" in gauges[metric.group(1)]._labelnames
            assert f'queue="{queue}"' in metric.group(2)
            c = deployment["spec"]["template"]["spec"]["containers"][0]
            concurrency = load_settings(container_env(rendered, c), env_file=None).worker.concurrency
            assert float(trigger["metadata"]["threshold"]) == concurrency
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            assert trigger["metadata"]["ignoreNullValues"] == "false" and spec["fallback"]["replicas"] >= 1
