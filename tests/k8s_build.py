"""Build ``k8s/`` offline: a small kustomize loader (RFC 6902 patches) and a Dockerfile parser.

``kubectl``/``kustomize`` are not available here, so ``build_kustomization`` follows
``resources``, JSON 6902 ``patches``, ``images`` and ``namespace`` itself and refuses any other
kustomization feature, so that nothing in ``k8s/`` goes unchecked.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from k8s_checks import SECRET_LIKE, Doc, image_pinned, load_documents, where

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


class KustomizeError(ValueError):
    """A kustomization that kustomize would reject, or one using features not modelled here."""


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
