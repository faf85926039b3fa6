"""Render a run config as a KubeRay ``RayJob`` plus the ``ConfigMap`` that holds the config.

The rendered RayJob brings its own ``rayClusterSpec``: an ephemeral Ray cluster sized for this
run (a head pod that runs the driver, ``pretrain run /config/run.yaml``, and one worker group),
created when the job is applied and deleted after it finishes. It expects what ``k8s/base``
installs in the namespace: the ``platform-config`` ConfigMap (MLflow and S3 endpoints) and the
Secrets named below (see ``k8s/base/secrets.example.md``). Secrets are only ever referenced.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from pretrain.config.load import ConfigError, build_config, config_to_yaml, refuse_secrets
from pretrain.trust.redact import strip_userinfo
from pretrain.config.schema import RunConfig

RAY_VERSION = "2.60.0"  # the Ray in the platform image (docker/Dockerfile); a test keeps them equal
RAY_AUTH_SECRET, RAY_AUTH_SECRET_KEY = "ray-auth-token", "auth_token"  # key name fixed by KubeRay
MLFLOW_CLIENT_SECRET = "mlflow-client-credentials"
S3_SECRET = "s3-credentials"
PLATFORM_CONFIG = "platform-config"
CONFIG_DIR, CONFIG_FILE = "/config", "run.yaml"
RAY_UID, RAY_GID = 1000, 100  # the `ray` user of the rayproject/ray base image
MAX_RAYJOB_NAME = 47  # KubeRay appends suffixes for the cluster and its pods
GPU_TAINT_KEY = "nvidia.com/gpu"
HEAD_CPUS, HEAD_MEMORY_GIB = 2, 8
MEMORY_GIB_PER_CPU, MEMORY_GIB_PER_GPU = 4, 16
LABELS = {"app.kubernetes.io/name": "invariant-pretrain",
          "app.kubernetes.io/part-of": "invariant-pretrain"}

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def image_is_pinned(image: str) -> bool:
    """True for ``repo@sha256:<digest>`` or ``repo:<tag>`` with a tag other than ``latest``."""
    if _DIGEST.search(image):
        return True
    name, sep, tag = image.rpartition(":")
    # A colon before the last '/' belongs to a registry port, not to a tag.
    return bool(sep and name and "/" not in tag and tag and tag.lower() != "latest")


def job_name(run_name: str) -> str:
    """A RayJob name (DNS-1035 label, at most 47 characters) derived from a run name."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"run-{name}".rstrip("-")
    return name[:MAX_RAYJOB_NAME].rstrip("-")


def cluster_config(cfg: RunConfig, gpus: int = 0) -> RunConfig:
    """The config as the job runs it in the cluster.

    The driver joins the RayJob's own cluster through ``$RAY_ADDRESS`` (so ``cluster.address`` is
    cleared), GPUs are used exactly when ``gpus > 0``, and a local tracking store gives way to the
    MLflow server named by ``$MLFLOW_TRACKING_URI`` (from the ``platform-config`` ConfigMap).
    Checkpoints must go to shared storage: pods do not share a file system. Credentials never
    go into the ConfigMap: the tracking URI loses its userinfo, any other credential is refused
    (the pods get theirs from the Secrets in ``k8s/base/secrets.example.md``)."""
    if "://" not in cfg.cluster.storage_path:
        raise ConfigError(
            f"cluster.storage_path: {cfg.cluster.storage_path!r} is a local path, not shared "
            "between pods; set cluster.storage_path=s3://BUCKET/PREFIX")
    tree = cfg.model_dump(mode="json")
    tree["cluster"].update(address=None, use_gpu=gpus > 0)
    uri = tree["tracking"]["uri"]
    if uri is not None and not uri.startswith(("http://", "https://")):
        tree["tracking"]["uri"] = None
    elif uri is not None:
        tree["tracking"]["uri"] = strip_userinfo(uri)
    shipped = build_config(tree)
    refuse_secrets(shipped, "the job's ConfigMap")
    return shipped


def render_rayjob(cfg: RunConfig, image: str, gpus: int = 0, name: str | None = None,
                  namespace: str | None = None) -> list[dict[str, Any]]:
    """``[ConfigMap, RayJob]`` that run ``cfg`` on its own KubeRay cluster.

    ``gpus`` is the number of GPUs per worker pod; each Ray Train worker uses one GPU, so
    ``cluster.num_workers`` must be a multiple of it and the GPU group gets
    ``num_workers / gpus`` pods. With ``gpus == 0`` every worker gets a CPU pod of its own.
    Bad input (unpinned image, bad name, local storage) raises ``ConfigError``."""
    if not image_is_pinned(image):
        raise ConfigError(f"--image: {image!r} is not pinned; use NAME:VERSION (not 'latest') "
                          "or NAME@sha256:DIGEST")
    if gpus < 0:
        raise ConfigError(f"--gpus: must be >= 0, got {gpus}")
    workers = cfg.cluster.num_workers
    if gpus and workers % gpus:
        raise ConfigError(f"cluster.num_workers: {workers} workers do not fill pods of {gpus} "
                          f"GPUs; use a multiple of --gpus {gpus}")
    name = name if name is not None else job_name(cfg.name)
    if len(name) > MAX_RAYJOB_NAME or not _DNS1035.match(name):
        raise ConfigError(f"--name: {name!r} must be a DNS-1035 label (lowercase letters, digits, "
                          f"'-', starting with a letter) of at most {MAX_RAYJOB_NAME} characters")
    if namespace is not None and (len(namespace) > 63 or not _DNS1123.match(namespace)):
        raise ConfigError(f"--namespace: {namespace!r} is not a valid namespace name")

    run_cfg = cluster_config(cfg, gpus)
    meta = _metadata(name, name, namespace)
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": _metadata(f"{name}-config", name, namespace),
                  "data": {CONFIG_FILE: config_to_yaml(run_cfg)}}
    per_pod = gpus if gpus else 1
    cluster_spec = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": False,
        # The operator reads the same Secret for its own calls to the dashboard.
        "authOptions": {"mode": "token", "secretName": RAY_AUTH_SECRET},
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            # No Ray tasks on the head: training workers land on worker pods only.
            "rayStartParams": {"num-cpus": "0"},
            "template": _pod_template(image, "ray-head", HEAD_CPUS, HEAD_MEMORY_GIB, 0,
                                      f"{name}-config", head=True),
        },
        "workerGroupSpecs": [_worker_group(
            image, f"{name}-config", pods=workers // per_pod, gpus=gpus,
            cpus=cfg.cluster.cpus_per_worker * per_pod + 1)],
    }
    rayjob = {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta,
        "spec": {
            "entrypoint": f"pretrain run {CONFIG_DIR}/{CONFIG_FILE}",
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            # A retry gets a fresh cluster; the same run name resumes from the last checkpoint.
            "backoffLimit": 1,
            "rayClusterSpec": cluster_spec,
            "submitterPodTemplate": _submitter_template(image),
        },
    }
    return [config_map, rayjob]


def render_yaml(cfg: RunConfig, image: str, gpus: int = 0, name: str | None = None,
                namespace: str | None = None) -> str:
    """``render_rayjob`` as multi-document YAML, ready for ``kubectl apply -f -``."""
    docs = render_rayjob(cfg, image, gpus=gpus, name=name, namespace=namespace)
    return yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)


class _BlockDumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings (the embedded run.yaml) as ``|`` blocks."""


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_presenter)


def _metadata(name: str, job: str, namespace: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**LABELS, "invariant-pretrain/job": job}}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def ray_auth_env() -> list[dict[str, Any]]:
    """``RAY_AUTH_MODE=token`` and the token from its Secret: every Ray process and client."""
    return [{"name": "RAY_AUTH_MODE", "value": "token"},
            _secret_env("RAY_AUTH_TOKEN", RAY_AUTH_SECRET, RAY_AUTH_SECRET_KEY)]


def _ray_env() -> list[dict[str, Any]]:
    return ray_auth_env() + [
        _secret_env("MLFLOW_TRACKING_USERNAME", MLFLOW_CLIENT_SECRET, "username"),
        _secret_env("MLFLOW_TRACKING_PASSWORD", MLFLOW_CLIENT_SECRET, "password"),
    ]


def container_security() -> dict[str, Any]:
    """Restricted-profile container settings (non-root, no escalation, no capabilities)."""
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RAY_UID, "runAsGroup": RAY_GID,
            "fsGroup": RAY_GID, "seccompProfile": {"type": "RuntimeDefault"}}


def _resources(cpus: int | str, memory: str, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        amounts[GPU_TAINT_KEY] = str(gpus)
    # Requests equal limits: Ray sizes itself from the limits, the scheduler from the requests.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_template(image: str, container: str, cpus: int, memory_gib: int, gpus: int,
                  config_map: str, head: bool = False) -> dict[str, Any]:
    ray = {
        "name": container, "image": image,
        "env": _ray_env(),
        "envFrom": [{"configMapRef": {"name": PLATFORM_CONFIG}},
                    {"secretRef": {"name": S3_SECRET}}],
        "resources": _resources(cpus, f"{memory_gib}Gi", gpus),
        "securityContext": container_security(),
        "volumeMounts": [{"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if head:
        ray["ports"] = [{"containerPort": 6379, "name": "gcs-server"},
                        {"containerPort": 8265, "name": "dashboard"},
                        {"containerPort": 10001, "name": "client"}]
    spec: dict[str, Any] = {
        "securityContext": pod_security(),
        "containers": [ray],
        "volumes": [
            {"name": "run-config", "configMap": {"name": config_map}},
            # Ray's object store lives in /dev/shm, which is 64 MiB unless backed like this.
            {"name": "dshm", "emptyDir": {"medium": "Memory",
                                          "sizeLimit": f"{max(1, memory_gib // 4)}Gi"}},
        ],
    }
    if gpus:
        spec["tolerations"] = [{"key": GPU_TAINT_KEY, "operator": "Exists",
                                "effect": "NoSchedule"}]
    return {"metadata": {"labels": dict(LABELS)}, "spec": spec}


def _worker_group(image: str, config_map: str, pods: int, gpus: int, cpus: int) -> dict[str, Any]:
    memory = MEMORY_GIB_PER_CPU * cpus + MEMORY_GIB_PER_GPU * gpus
    return {
        "groupName": "gpu" if gpus else "cpu",
        "replicas": pods, "minReplicas": pods, "maxReplicas": pods,
        "rayStartParams": {},
        "template": _pod_template(image, "ray-worker", cpus, memory, gpus, config_map),
    }


def _submitter_template(image: str) -> dict[str, Any]:
    """The pod that runs ``ray job submit``: it needs the token like any other Ray client."""
    return {
        "metadata": {"labels": dict(LABELS)},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security(),
            "containers": [{
                "name": "ray-job-submitter", "image": image,
                "env": ray_auth_env(),
                "resources": _resources("500m", "512Mi"),
                "securityContext": container_security(),
            }],
        },
    }
