"""Offline checks for ``k8s/``: a small kustomize loader, schema validation and the policy.

Built-in kinds are validated with ``kubernetes_validate`` in strict mode (unknown fields are
errors). ``ray.io`` kinds are validated against the KubeRay CRD schemas in
``../shared/schemas/kuberay``, made strict the same way, and every pod template inside them is
validated again as a core ``PodTemplate``. ``kubectl``/``kustomize`` are not available here, so
``build_kustomization`` follows ``resources``, JSON 6902 ``patches``, ``images`` and
``namespace`` itself and refuses any other kustomization feature (so nothing goes unchecked).
"""

from __future__ import annotations

import copy
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
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_VAR_REF = re.compile(r"^\$\([A-Za-z_][A-Za-z0-9_]*\)$")
_URI_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://([^/\s:@]+):([^@\s]+)@")

Doc = dict[str, Any]


class KustomizeError(ValueError):
    """A kustomization that kustomize would reject, or one using features not modelled here."""


def load_documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def where(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


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


# ----------------------------------------------------------------------------- kustomize

def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _step(node: Any, key: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, allow_end=False)]
    if isinstance(node, dict) and key in node:
        return node[key]
    raise KustomizeError(f"path element {key!r} not found")


def _index(node: list, key: str, allow_end: bool) -> int:
    if key == "-" and allow_end:
        return len(node)
    if not key.isdigit() or int(key) > len(node) - (0 if allow_end else 1):
        raise KustomizeError(f"list index {key!r} out of range")
    return int(key)


def apply_json_patch(doc: Doc, ops: list[Doc]) -> Doc:
    """RFC 6902 ``add``/``remove``/``replace``/``test`` on a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, key = _pointer(op["path"])
        parent = doc
        for part in parents:
            parent = _step(parent, part)
        kind = op["op"]
        if kind == "test":
            if _step(parent, key) != op["value"]:
                raise KustomizeError(f"test failed at {op['path']}")
        elif kind == "remove":
            _step(parent, key)
            del parent[int(key) if isinstance(parent, list) else key]
        elif kind == "replace":
            _step(parent, key)
            parent[int(key) if isinstance(parent, list) else key] = copy.deepcopy(op["value"])
        elif kind == "add":
            if isinstance(parent, list):
                parent.insert(_index(parent, key, allow_end=True), copy.deepcopy(op["value"]))
            else:
                parent[key] = copy.deepcopy(op["value"])
        else:
            raise KustomizeError(f"JSON patch op {kind!r} is not modelled here")
    return doc


def _matches(doc: Doc, target: Doc) -> bool:
    unsupported = set(target) - {"group", "version", "kind", "name"}
    if unsupported:
        raise KustomizeError(f"patch target keys {sorted(unsupported)} are not modelled here")
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    actual = {"group": group, "version": version, "kind": doc.get("kind"),
              "name": doc.get("metadata", {}).get("name")}
    return all(actual[key] == value for key, value in target.items())


def _set_image(doc: Any, rule: Doc) -> None:
    if isinstance(doc, list):
        for item in doc:
            _set_image(item, rule)
        return
    if not isinstance(doc, dict):
        return
    for key, value in doc.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for container in value:
                image = container.get("image", "")
                name, digest = image.split("@", 1) if "@" in image else (image, "")
                last = name.split("/")[-1]
                tag = last.split(":", 1)[1] if ":" in last else ""
                base = name[: len(name) - len(tag) - 1] if tag else name
                if base == rule["name"]:
                    new_tag = rule.get("newTag", tag)
                    container["image"] = rule.get("newName", base) + (
                        f"@{rule['digest']}" if "digest" in rule else
                        f":{new_tag}" if new_tag else (f"@{digest}" if digest else ""))
        else:
            _set_image(value, rule)


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}


def build_kustomization(directory: Path) -> list[Doc]:
    """The documents ``kustomize build directory`` would print, for the features used in k8s/."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(kfile.read_text()) or {}
    if spec.get("kind") != "Kustomization" or not str(spec.get("apiVersion", "")).startswith(
            "kustomize.config.k8s.io/"):
        raise KustomizeError(f"{kfile}: not a kustomize.config.k8s.io Kustomization")
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: fields {sorted(unknown)} are not modelled here")
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += build_kustomization(path)
        elif path.is_file():
            docs += load_documents(path)
        else:
            raise KustomizeError(f"{kfile}: resource {entry} does not exist")
    for patch in spec.get("patches", []):
        path = directory / patch.get("path", "")
        if "path" not in patch or not path.is_file():
            raise KustomizeError(f"{kfile}: patch file {patch.get('path')} does not exist")
        ops = yaml.safe_load(path.read_text())
        if not isinstance(ops, list):
            raise KustomizeError(f"{path}: only JSON 6902 patches (a list of ops) are modelled")
        hits = [i for i, doc in enumerate(docs) if _matches(doc, patch.get("target", {}))]
        if not hits:
            raise KustomizeError(f"{kfile}: patch {patch['path']} matches no resource")
        for i in hits:
            docs[i] = apply_json_patch(docs[i], ops)
    for rule in spec.get("images", []):
        _set_image(docs, rule)
    if "namespace" in spec:
        for doc in docs:
            if doc.get("kind") not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    seen = set()
    for doc in docs:
        ident = (doc.get("apiVersion"), doc.get("kind"), doc["metadata"].get("namespace"),
                 doc["metadata"]["name"])
        if ident in seen:
            raise KustomizeError(f"{kfile}: {where(doc)} is defined twice")
        seen.add(ident)
    return docs


# ----------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with line continuations joined and comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def _env_keys(args: str) -> list[str]:
    if "=" not in args.split()[0]:
        return [args.split()[0]]  # legacy form: ENV KEY value
    return [token.split("=", 1)[0] for token in re.findall(r'\S+="[^"]*"|\S+', args)
            if "=" in token]


def dockerfile_violations(text: str) -> list[str]:
    out = []
    steps = dockerfile_instructions(text)
    stages: set[str] = set()
    froms = [args for ins, args in steps if ins == "FROM"]
    if not froms:
        out.append("no FROM")
    for args in froms:
        tokens = [t for t in args.split() if not t.startswith("--")]
        if tokens[0] not in stages and not image_pinned(tokens[0]):
            out.append(f"FROM {tokens[0]} is not pinned to a version")
        if len(tokens) == 3 and tokens[1].upper() == "AS":
            stages.add(tokens[2])
    users = [args for ins, args in steps if ins == "USER"]
    if not users:
        out.append("no USER: the image would run as root")
    else:
        user = users[-1].split(":")[0]
        if user in ("root", "0"):
            out.append("the final USER is root")
        elif not user.isdigit():
            out.append("the final USER is not numeric: Kubernetes cannot verify runAsNonRoot")
    for ins, args in steps:
        if ins in ("ENV", "ARG"):
            out += [f"{ins} {key} looks like a secret" for key in _env_keys(args)
                    if SECRET_LIKE.search(key)]
    if not any(ins == "RUN" and re.search(r"pip install\b.*\s\.(\s|$)", args)
               for ins, args in steps):
        out.append("the package is not installed (no 'pip install ... .')")
    return out
