"""A small offline renderer of the kustomizations in deploy/kubernetes/ (no kubectl needed).

It implements the part of kustomize those files use, and refuses anything else, so a
kustomization that grows a feature this renderer does not know fails loudly instead of
being rendered wrong:

- ``resources``: files (one or more YAML documents) and directories holding a
  ``kustomization.yaml``, rendered recursively;
- ``namespace``: set on every namespaced resource;
- ``images``: ``name`` -> ``newName`` / ``newTag`` / ``digest`` in containers' ``image``;
- ``patches``: strategic-merge patch files (``path``) naming their target by kind and
  name. Maps merge recursively; for built-in kinds, lists of maps keyed by ``name``
  (containers, env, volumes, ports) merge item by item; any other list, and every list
  of a custom resource (e.g. a KEDA ScaledObject), is replaced whole, as kustomize does.

When ``kubectl`` is installed, tests/deploy/test_kubernetes.py also compares this
renderer's output with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
# Cluster-scoped kinds among those used here: they get no namespace.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass"}
# Kinds whose schema kustomize knows (strategic merge with merge keys); others merge as JSON.
BUILTIN_GROUPS = {"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "batch/v1", "autoscaling/v2"}


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is inconsistent."""


def load_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def render(directory: Path) -> list[dict[str, Any]]:
    """The resources ``directory``'s kustomization.yaml produces, in order."""
    kustomization_file = directory / "kustomization.yaml"
    if not kustomization_file.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    kustomization = yaml.safe_load(kustomization_file.read_text(encoding="utf-8"))
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{kustomization_file}: fields this renderer does not implement: {sorted(unknown)}")

    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        resources += render(target) if target.is_dir() else load_documents(target)
    _check_unique(resources, kustomization_file)

    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeError(f"{kustomization_file}: only `patches: - path:` is implemented, got {patch_entry}")
        for patch in load_documents(directory / patch_entry["path"]):
            target = _find(resources, patch)
            merged = _merge(copy.deepcopy(target), patch, _builtin(patch))
            target.clear()
            target.update(merged)

    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = kustomization["namespace"]

    for image in kustomization.get("images", []):
        _set_image(resources, image)
    return resources


def key(resource: dict[str, Any]) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def _check_unique(resources: list[dict[str, Any]], where: Path) -> None:
    seen: set[tuple[str, str]] = set()
    for resource in resources:
        if key(resource) in seen:
            raise KustomizeError(f"{where}: {key(resource)} defined twice")
        seen.add(key(resource))


def _find(resources: list[dict[str, Any]], patch: dict[str, Any]) -> dict[str, Any]:
    matches = [r for r in resources if key(r) == key(patch) and r["apiVersion"] == patch["apiVersion"]]
    if len(matches) != 1:
        raise KustomizeError(f"patch target {key(patch)} ({patch['apiVersion']}) not found")
    return matches[0]


def _builtin(resource: dict[str, Any]) -> bool:
    return resource["apiVersion"] in BUILTIN_GROUPS


def _merge(base: Any, patch: Any, builtin: bool) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        for k, v in patch.items():
            if isinstance(v, str) and v.startswith("$patch"):
                raise KustomizeError("$patch directives are not implemented")
            base[k] = _merge(base[k], v, builtin) if k in base else copy.deepcopy(v)
        return base
    if (
        builtin
        and isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        by_name = {item["name"]: item for item in base}
        out = list(base)
        for item in patch:
            if item["name"] in by_name:
                _merge(by_name[item["name"]], item, builtin)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name


def _set_image(resources: list[dict[str, Any]], image: dict[str, Any]) -> None:
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise KustomizeError(f"images: {sorted(unknown)} not implemented")
    found = False
    for resource in resources:
        for container in _containers(resource):
            if _image_name(container["image"]) != image["name"]:
                continue
            found = True
            name = image.get("newName", image["name"])
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            else:
                old = container["image"][len(image["name"]) :]
                container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else name + old
    if not found:
        raise KustomizeError(f"images: no container uses {image['name']}")
