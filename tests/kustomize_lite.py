"""A small renderer of the kustomize subset deploy/k8s uses, so the manifests render with no kustomize binary.

Debian 12 packages no kustomize, so a fresh machine has none; `kubectl kustomize` is only used, when present, to
cross-check this renderer (tests/unit/test_deploy_k8s.py). Anything outside the subset raises ``Unsupported``
instead of rendering something kustomize would not:

- ``resources``: YAML files and kustomization folders (rendered first, like kustomize bases)
- ``secretGenerator`` / ``configMapGenerator`` with ``envs`` and ``literals``, only with
  ``generatorOptions.disableNameSuffixHash: true`` (the content-hash suffix is not reproduced)
- ``patches`` as inline or file JSON 6902 operations (add, replace, remove) on a ``kind`` + ``name`` target
- ``namespace``, ``labels`` (``pairs`` on metadata only), ``images`` (``newName``, ``newTag``, ``digest``)
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KNOWN_FIELDS = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "labels",
        "images",
        "patches",
        "secretGenerator",
        "configMapGenerator",
        "generatorOptions",
    }
)
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
    }
)


class Unsupported(ValueError):
    """A kustomization uses something outside the rendered subset."""


def render(folder: Path) -> list[Resource]:
    """The resources `kustomize build folder` would print, for the supported subset (order not kept)."""
    kustomization = _load_kustomization(folder)
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise Unsupported(f"{folder}: unsupported kustomization fields {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        if path.is_dir():
            resources.extend(render(path))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    resources.extend(_generated(folder, kustomization))
    for patch in kustomization.get("patches", []):
        _apply_patch(folder, resources, patch)
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    for labels in kustomization.get("labels", []):
        if labels.get("includeSelectors") or labels.get("includeTemplates"):
            raise Unsupported(f"{folder}: labels with includeSelectors / includeTemplates")
        for resource in resources:
            resource.setdefault("metadata", {}).setdefault("labels", {}).update(labels["pairs"])
    for image in kustomization.get("images", []):
        for resource in resources:
            _set_images(resource, image)
    return resources


def _load_kustomization(folder: Path) -> dict[str, Any]:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (folder / name).is_file():
            data: dict[str, Any] = yaml.safe_load((folder / name).read_text()) or {}
            return data
    raise FileNotFoundError(f"no kustomization in {folder}")


def _generated(folder: Path, kustomization: dict[str, Any]) -> list[Resource]:
    generators = [("Secret", g) for g in kustomization.get("secretGenerator", [])]
    generators += [("ConfigMap", g) for g in kustomization.get("configMapGenerator", [])]
    if generators and not kustomization.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise Unsupported(f"{folder}: generators need generatorOptions.disableNameSuffixHash: true")
    out: list[Resource] = []
    for kind, generator in generators:
        unknown = set(generator) - {"name", "envs", "literals", "type"}
        if unknown:
            raise Unsupported(f"{folder}: unsupported generator fields {sorted(unknown)}")
        values: dict[str, str] = {}
        for env_file in generator.get("envs", []):
            values.update(parse_env_file(folder / env_file))
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            values[key] = value
        resource: Resource = {"apiVersion": "v1", "kind": kind, "metadata": {"name": generator["name"]}}
        if kind == "Secret":
            resource["type"] = generator.get("type", "Opaque")
            resource["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        else:
            resource["data"] = values
        out.append(resource)
    return out


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as kustomize reads them: blank lines and # comments skipped, values taken verbatim."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise Unsupported(f"{path}:{number}: not KEY=VALUE")
        values[key] = value
    return values


def _apply_patch(folder: Path, resources: list[Resource], patch: dict[str, Any]) -> None:
    target = patch.get("target") or {}
    if set(target) - {"kind", "name"} or not target:
        raise Unsupported(f"{folder}: patch targets other than kind + name: {target}")
    text = patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise Unsupported(f"{folder}: only JSON 6902 patches (a list of operations)")
    matched = [
        r
        for r in resources
        if r["kind"] == target.get("kind", r["kind"]) and r["metadata"]["name"] == target.get("name", "")
    ]
    if not matched:
        raise ValueError(f"{folder}: patch target {target} matches no resource")
    for resource in matched:
        for operation in operations:
            json_patch(resource, operation)


def json_patch(document: Resource, operation: dict[str, Any]) -> None:
    """One RFC 6902 add / replace / remove operation, in place."""
    op, path = operation["op"], operation["path"]
    if op not in ("add", "replace", "remove"):
        raise Unsupported(f"JSON patch op {op!r}")
    keys = [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]
    if not keys:
        raise Unsupported("a JSON patch on the whole document")
    parent: Any = document
    for key in keys[:-1]:
        parent = parent[int(key)] if isinstance(parent, list) else parent[key]
    last = keys[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        else:
            del parent[index]
        return
    if op in ("replace", "remove") and last not in parent:
        raise KeyError(f"JSON patch {op} of a missing path {path}")
    if op == "remove":
        del parent[last]
    else:
        parent[last] = copy.deepcopy(operation["value"])


def _set_images(node: Any, image: dict[str, str]) -> None:
    if isinstance(node, list):
        for item in node:
            _set_images(item, image)
        return
    if not isinstance(node, dict):
        return
    for key in ("containers", "initContainers"):
        for container in node.get(key) or []:
            if _image_name(container.get("image", "")) == image["name"]:
                container["image"] = _new_image(container["image"], image)
    for value in node.values():
        _set_images(value, image)


def _image_name(ref: str) -> str:
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _new_image(ref: str, image: dict[str, str]) -> str:
    name = image.get("newName", image["name"])
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    rest = ref[len(_image_name(ref)) :]
    return name + rest


if __name__ == "__main__":
    import sys

    print(yaml.safe_dump_all(render(Path(sys.argv[1])), sort_keys=False), end="")
