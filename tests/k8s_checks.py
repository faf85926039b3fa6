"""Offline checks for Kubernetes manifests: schema validation, KubeRay rules and the policy.

Built-in kinds are validated with ``kubernetes_validate`` in strict mode (unknown fields are
errors). ``ray.io`` kinds are validated against the KubeRay CRD schemas in
``../shared/schemas/kuberay``, made strict the same way, and every pod template inside them is
validated again as a core ``PodTemplate``. Building ``k8s/`` itself: tests/k8s_build.py.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
KUBERAY_SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "kuberay"
K8S_VERSION = "1.35.0"
RAY_SCHEMA_FILES = {"RayCluster": "raycluster-v1.json", "RayJob": "rayjob-v1.json"}
SECRET_LIKE = re.compile(r"PASSW(OR)?D|TOKEN|SECRET|KEY|CREDENTIAL", re.IGNORECASE)
EXPOSED_SERVICE_TYPES = {"LoadBalancer", "NodePort"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_VAR_REF = re.compile(r"^\$\([A-Za-z_][A-Za-z0-9_]*\)$")
_URI_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://([^/\s:@]+):([^@\s]+)@")

Doc = dict[str, Any]


def load_documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def where(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    """The single document of ``kind`` (and ``name``) in ``docs``."""
    hits = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(hits) == 1, (kind, name, [where(d) for d in docs])
    return hits[0]


# ----------------------------------------------------------------------------- schemas

def strict_schema(node: Any) -> Any:
    """Copy of a CRD schema where objects with declared properties reject unknown fields, as the
    API server does with ``kubectl apply --validate=strict``."""
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_schema(value) for key, value in node.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def ray_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = strict_schema(json.loads((KUBERAY_SCHEMAS / RAY_SCHEMA_FILES[kind]).read_text()))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _k8s_errors(doc: Doc, label: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{label}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{label}: {exc.message}"]
    return []


def validate_document(doc: Doc) -> list[str]:
    """Schema errors of one manifest (empty when it validates)."""
    kind, label = doc.get("kind"), where(doc)
    if str(doc.get("apiVersion", "")).startswith("ray.io/"):
        if kind not in RAY_SCHEMA_FILES:
            return [f"{label}: no schema for ray.io kind {kind}"]
        errors = [f"{label}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in ray_validator(kind).iter_errors(doc)]
        for path, template in ray_pod_templates(doc):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": "embedded"}, "template": template}
            errors += _k8s_errors(wrapped, f"{label} {path}")
        return errors
    return _k8s_errors(doc, label)


# ----------------------------------------------------------------------------- walking manifests

def ray_cluster_specs(doc: Doc) -> Iterator[tuple[str, Doc]]:
    spec = doc.get("spec", {})
    if doc.get("kind") == "RayCluster":
        yield "spec", spec
    elif doc.get("kind") == "RayJob" and "rayClusterSpec" in spec:
        yield "spec.rayClusterSpec", spec["rayClusterSpec"]


def ray_pod_templates(doc: Doc) -> Iterator[tuple[str, Doc]]:
    for path, cluster in ray_cluster_specs(doc):
        yield f"{path}.headGroupSpec.template", cluster["headGroupSpec"]["template"]
        for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
            yield f"{path}.workerGroupSpecs[{i}].template", group["template"]
    if doc.get("kind") == "RayJob" and "submitterPodTemplate" in doc.get("spec", {}):
        yield "spec.submitterPodTemplate", doc["spec"]["submitterPodTemplate"]


def pod_specs(doc: Doc) -> Iterator[tuple[str, Doc]]:
    kind = doc.get("kind")
    if kind in WORKLOAD_KINDS:
        yield "spec.template.spec", doc["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield "spec.jobTemplate", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield "spec", doc["spec"]
    for path, template in ray_pod_templates(doc):
        yield path, template.get("spec", {})


def all_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from all_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_strings(value)


# ----------------------------------------------------------------------------- policy

def image_pinned(image: str) -> bool:
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    last = image.split("/")[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    return bool(tag) and tag.lower() != "latest"


def _flag_violations(label: str, tokens: list[str]) -> list[str]:
    """``--some-password=literal`` (or the literal as the next token) in command/args."""
    out = []
    for i, token in enumerate(tokens):
        if not token.startswith("--"):
            continue
        flag, eq, value = token.partition("=")
        if not SECRET_LIKE.search(flag):
            continue
        value = value if eq else (tokens[i + 1] if i + 1 < len(tokens) else "")
        if not _VAR_REF.match(value):
            out.append(f"{label}: argument {flag} carries a literal secret")
    return out


def container_violations(label: str, container: Doc, pod_security: Doc,
                         image_required: bool = True) -> list[str]:
    out = []
    image = container.get("image")
    if image is None and image_required:
        out.append(f"{label}: no image")
    elif image is not None and not image_pinned(image):
        out.append(f"{label}: image {image} is not pinned to a version")
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(part, {}):
                out.append(f"{label}: no {part}.{resource}")
    security = container.get("securityContext", {})
    if security.get("privileged"):
        out.append(f"{label}: privileged")
    if security.get("allowPrivilegeEscalation") is not False:
        out.append(f"{label}: allowPrivilegeEscalation is not false")
    if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
        out.append(f"{label}: runAsNonRoot is not true")
    if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
        out.append(f"{label}: runs as uid 0")
    for env in container.get("env", []):
        if SECRET_LIKE.search(env["name"]) and (
                "value" in env or "secretKeyRef" not in env.get("valueFrom", {})):
            out.append(f"{label}: env {env['name']} is not taken from a Secret")
    return out + _flag_violations(label, container.get("command", []) + container.get("args", []))


def pod_violations(label: str, pod: Doc) -> list[str]:
    out = [f"{label}: {flag}" for flag in ("hostNetwork", "hostPID", "hostIPC") if pod.get(flag)]
    security = pod.get("securityContext", {})
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        out += container_violations(f"{label} container {container.get('name')}", container,
                                    security)
    return out


def policy_violations(doc: Doc) -> list[str]:
    """Everything in one manifest that breaks the platform's rules (empty when it is clean)."""
    label, kind = where(doc), doc.get("kind")
    out = []
    if kind == "Secret":
        out.append(f"{label}: Secrets are created by hand (secrets.example.md), never committed")
    if kind == "Service" and doc.get("spec", {}).get("type") in EXPOSED_SERVICE_TYPES:
        out.append(f"{label}: Service of type {doc['spec']['type']}")
    if kind == "ConfigMap":
        out += [f"{label}: ConfigMap key {key} looks like a secret"
                for key in doc.get("data", {}) if SECRET_LIKE.search(key)]
    for path, cluster in ray_cluster_specs(doc):
        head = cluster["headGroupSpec"]
        if head.get("serviceType") in EXPOSED_SERVICE_TYPES:
            out.append(f"{label}: Ray head Service of type {head['serviceType']}")
        if head.get("enableIngress"):
            out.append(f"{label}: Ray head ingress enabled")
        if "autoscalerOptions" in cluster:
            out += container_violations(f"{label} {path}.autoscalerOptions",
                                        cluster["autoscalerOptions"],
                                        head["template"].get("spec", {}).get("securityContext",
                                                                             {}),
                                        image_required=False)
    for path, pod in pod_specs(doc):
        out += pod_violations(f"{label} {path}", pod)
    for text in all_strings(doc):
        for user, password in _URI_CREDENTIALS.findall(text):
            if not (_VAR_REF.match(user) and _VAR_REF.match(password)):
                out.append(f"{label}: credentials written into a URI")
    return out


def kuberay_rules(doc: Doc) -> list[str]:
    """A few of the KubeRay operator's own admission checks, which no schema expresses."""
    kind, label, out = doc.get("kind"), where(doc), []
    name = doc.get("metadata", {}).get("name", "")
    limit = {"RayCluster": 53, "RayJob": 47}.get(kind)
    if limit and (len(name) > limit or not _DNS1035.match(name)):
        out.append(f"{label}: name must be a DNS-1035 label of at most {limit} characters")
    for _, cluster in ray_cluster_specs(doc):
        if cluster.get("authOptions", {}).get("mode") == "token":
            version = tuple(int(p) for p in cluster.get("rayVersion", "0").split(".")[:3])
            if version < (2, 52, 0):
                out.append(f"{label}: token auth needs rayVersion >= 2.52.0")
        for group in cluster.get("workerGroupSpecs", []):
            low, high = group["minReplicas"], group["maxReplicas"]
            replicas = group.get("replicas", low)
            if not 0 <= low <= replicas <= high:
                out.append(f"{label}: group {group['groupName']} replicas outside its bounds")
    if kind == "RayJob":
        spec = doc["spec"]
        selector = spec.get("clusterSelector", {})
        if bool(selector) == ("rayClusterSpec" in spec):
            out.append(f"{label}: exactly one of rayClusterSpec and clusterSelector")
        if selector and not selector.get("ray.io/cluster"):
            out.append(f"{label}: clusterSelector needs ray.io/cluster")
        if selector and ("backoffLimit" in spec or spec.get("shutdownAfterJobFinishes")):
            out.append(f"{label}: backoffLimit/shutdownAfterJobFinishes need an own cluster")
        if "ttlSecondsAfterFinished" in spec and not spec.get("shutdownAfterJobFinishes"):
            out.append(f"{label}: ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
    return out
