"""Load a RunConfig from YAML plus dotted ``key=value`` overrides, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pretrain.trust.redact import redact, secret_keys
from pretrain.config.schema import RunConfig


class ConfigError(ValueError):
    """A configuration problem; the message is one line and names the offending key."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-typed value (``1`` -> int, ``[1,2]`` -> list)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``tree`` with every dotted override set (intermediate dicts created)."""
    merged: dict[str, Any] = _deep_copy(tree)
    for item in overrides:
        path, value = parse_override(item)
        node = merged
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path[:depth + 1])}: is a value, cannot set {item!r}")
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return tree


def build_config(tree: dict[str, Any]) -> RunConfig:
    """Validate a config tree; the first problem becomes a one-line ConfigError naming the key."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    extra = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    # Whole-config checks carry no location; their messages start with the key themselves.
    return f"{key}: {message}{extra}" if key else f"{message}{extra}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (optional) + overrides -> validated RunConfig."""
    tree = read_yaml(path) if path is not None else {}
    return build_config(apply_overrides(tree, list(overrides or [])))


def config_to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, secrets redacted (:mod:`pretrain.trust.redact`): this text is
    stored as the run's ``config.yaml`` artifact and shipped with jobs, never a credential."""
    return yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False)


def flatten(cfg: RunConfig) -> dict[str, str]:
    """Dotted-key view of the resolved config, secrets redacted, for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            out[prefix] = str(node)

    walk("", redact(cfg.model_dump(mode="json")))
    return out


def refuse_secrets(cfg: RunConfig, shipped_as: str) -> None:
    """Raise ``ConfigError`` naming the first key of ``cfg`` that holds a credential: a config that
    is shipped (a Ray job, a Kubernetes ConfigMap) must carry none, since the job would get only
    ``***``. Credentials reach jobs through environment variables or Kubernetes Secrets."""
    found = secret_keys(cfg.model_dump(mode="json"))
    if found:
        raise ConfigError(
            f"{found[0]}: holds a credential (URI userinfo, a token or a secret-named key), which "
            f"{shipped_as} would expose; give jobs credentials through their environment "
            "(MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or a "
            "Kubernetes Secret")
