"""k8s/ (base and overlays) and docker/Dockerfile, validated offline.

Helpers: tests/k8s_build.py (kustomize loader), tests/k8s_checks.py (schemas, policy). The
renderer and the CLI: tests/test_k8s_render.py.
"""

from __future__ import annotations

import copy
import importlib.metadata
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

import k8s_build as kb
import k8s_checks as kc
from k8s_checks import one
from pretrain.config import load_config
from cluster.k8s_manifest import RAY_VERSION, render_rayjob

LAYOUTS = ["base", "overlays/cpu", "overlays/gpu"]
IMAGE = "registry.example.com/ml/invariant-pretrain:0.1.0"
DOCKERFILE = kc.REPO / "docker" / "Dockerfile"
QUICKSTART = kc.REPO / "configs" / "quickstart.yaml"
S3 = "cluster.storage_path=s3://bucket/runs"


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return {layout: kb.build_kustomization(kc.K8S / layout) for layout in LAYOUTS}


def ray_containers(doc: dict) -> list[dict]:
    return [c for _, pod in kc.pod_specs(doc) for c in pod["containers"]]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ----------------------------------------------------------------------------- manifests

@pytest.mark.parametrize("layout", LAYOUTS)
def test_kustomization_builds_and_every_document_validates(built, layout):
    docs = built[layout]
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "Service", "StatefulSet",
                                         "Deployment", "RayCluster", "RayJob"}
    problems = [p for d in docs
                for p in kc.validate_document(d) + kc.kuberay_rules(d) + kc.policy_violations(d)]
    assert problems == [], "\n".join(problems)


def test_every_file_under_k8s_is_built_or_is_a_patch():
    used: set[Path] = set()
    for kfile in kc.K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kfile.read_text())
        used.add(kfile)
        used.update((kfile.parent / r).resolve() for r in spec.get("resources", []))
        used.update((kfile.parent / p["path"]).resolve() for p in spec.get("patches", []))
    orphans = [p for p in kc.K8S.rglob("*.yaml") if p.resolve() not in used]
    assert orphans == []


def test_overlays_differ_as_documented(built):
    def groups(layout):
        return {g["groupName"]: g for g in one(built[layout], "RayCluster")["spec"]
                ["workerGroupSpecs"]}

    assert set(groups("overlays/cpu")) == {"cpu"}
    assert set(groups("base")) == set(groups("overlays/gpu")) == {"cpu", "gpu"}
    assert groups("overlays/gpu")["gpu"]["maxReplicas"] > groups("base")["gpu"]["maxReplicas"]
    entry = one(built["overlays/gpu"], "RayJob")["spec"]["entrypoint"]
    assert "cluster.use_gpu=true" in entry.split()
    for layout in LAYOUTS:
        docs = built[layout]
        assert all(d["metadata"].get("namespace") == "invariant-pretrain"
                   for d in docs if d["kind"] != "Namespace")
        images = {c["image"] for d in docs for _, pod in kc.pod_specs(d) for c in pod["containers"]}
        assert IMAGE in images and not any(i.startswith("invariant-pretrain:") for i in images)


def test_gpu_group_autoscaling_bounds_and_tolerations(built):
    cluster = one(built["overlays/gpu"], "RayCluster")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    container = gpu["template"]["spec"]["containers"][0]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        gpu["template"]["spec"]["tolerations"]
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]


def test_ray_token_auth_on_every_ray_process(built):
    for doc in built["base"]:
        if not doc["apiVersion"].startswith("ray.io/"):
            continue
        containers = ray_containers(doc)
        for _, cluster in kc.ray_cluster_specs(doc):
            assert cluster["authOptions"] == {"mode": "token", "secretName": "ray-auth-token"}
            containers.append(cluster["autoscalerOptions"])
        assert containers
        for container in containers:
            env = env_of(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
                "name": "ray-auth-token", "key": "auth_token"}


def test_mlflow_server_settings(built):
    docs = built["base"]
    container = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    assert args["app-name"] == "basic-auth"
    assert args["artifacts-destination"].startswith("s3://")
    hosts = args["allowed-hosts"].split(",")
    assert "*" not in hosts
    tracking = urlparse(one(docs, "ConfigMap", "platform-config")["data"]["MLFLOW_TRACKING_URI"])
    assert tracking.netloc in hosts  # the Host header the Ray pods send
    env = env_of(container)
    auth_dir = str(Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"]).parent)
    pod = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == auth_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "mlflow-basic-auth"
    assert env["MLFLOW_S3_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["name"] == \
        "platform-config"
    backend = urlparse(env["MLFLOW_BACKEND_STORE_URI"]["value"])
    postgres = one(docs, "Service", "mlflow-postgres")["spec"]
    assert backend.scheme == "postgresql" and backend.hostname == "mlflow-postgres"
    assert backend.port == postgres["ports"][0]["port"]
    service = one(docs, "Service", "mlflow")["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    assert service["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    statefulset = one(docs, "StatefulSet", "mlflow-postgres")["spec"]
    claim = statefulset["volumeClaimTemplates"][0]["metadata"]["name"]
    assert claim in {m["name"] for m in statefulset["template"]["spec"]["containers"][0]
                     ["volumeMounts"]}


def test_mlflow_auth_grants_nothing_by_default():
    # Issue 11 item 2: default_permission = READ let every account read every run.
    text = (kc.K8S / "base" / "secrets.example.md").read_text()
    settings = dict(re.findall(r"^(\w+) = (.+)$", text, flags=re.MULTILINE))
    assert settings["default_permission"] == "NO_PERMISSIONS"


def _secret_references(node) -> set[tuple[str, str | None]]:
    """(secret name, key or None for a whole Secret) for every reference in a manifest."""
    found: set[tuple[str, str | None]] = set()
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            found.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
        if "secretRef" in node:
            found.add((node["secretRef"]["name"], None))
        if "secretName" in node and isinstance(node["secretName"], str):
            found.add((node["secretName"], None))
        for value in node.values():
            found |= _secret_references(value)
    elif isinstance(node, list):
        for value in node:
            found |= _secret_references(value)
    return found


def test_secret_references_match_the_documented_secrets(built):
    text = (kc.K8S / "base" / "secrets.example.md").read_text()
    documented: dict[str, set[str]] = {}
    for block in re.split(r"(?=create secret generic )", text)[1:]:
        name = re.match(r"create secret generic ([a-z0-9-]+)", block).group(1)
        command = block.split("\n\n")[0]
        documented[name] = set(re.findall(r"--from-(?:literal|file)=([A-Za-z_.]+)=", command))
    refs = set().union(*(_secret_references(d) for layout in LAYOUTS for d in built[layout]))
    rendered = render_rayjob(load_config(QUICKSTART, [S3]), IMAGE, gpus=1)
    refs |= set().union(*(_secret_references(d) for d in rendered))
    assert {name for name, _ in refs} == set(documented)
    for name, key in refs:
        assert key is None or key in documented[name], (name, key)


def test_configmap_references_resolve(built):
    for layout in LAYOUTS:
        maps = {d["metadata"]["name"]: d["data"] for d in built[layout] if d["kind"] == "ConfigMap"}

        def walk(node):
            if isinstance(node, dict):
                if "configMapKeyRef" in node:
                    ref = node["configMapKeyRef"]
                    assert ref["key"] in maps[ref["name"]], ref
                for key in ("configMapRef", "configMap"):
                    if key in node:
                        assert node[key]["name"] in maps, node[key]
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(built[layout])


@pytest.mark.parametrize("layout", ["overlays/cpu", "overlays/gpu"])
def test_example_job_config_is_a_valid_run_config(built, layout, tmp_path):
    docs = built[layout]
    job = one(docs, "RayJob", "pretrain-job")["spec"]
    program, command, path, *overrides = job["entrypoint"].split()
    assert (program, command) == ("pretrain", "run")
    head = one(docs, "RayCluster", job["clusterSelector"]["ray.io/cluster"])["spec"][
        "headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"]
                 if m["mountPath"] == str(Path(path).parent))
    source = next(v for v in head["volumes"] if v["name"] == mount["name"])["configMap"]["name"]
    (tmp_path / "run.yaml").write_text(one(docs, "ConfigMap", source)["data"][Path(path).name])
    cfg = load_config(tmp_path / "run.yaml", overrides)
    assert cfg.cluster.storage_path.startswith("s3://")
    assert cfg.cluster.use_gpu is (layout == "overlays/gpu")
    group = "gpu" if cfg.cluster.use_gpu else "cpu"
    spec = one(docs, "RayCluster")["spec"]
    pod = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == group)
    assert cfg.cluster.cpus_per_worker <= int(pod["template"]["spec"]["containers"][0]
                                              ["resources"]["limits"]["cpu"])


def test_policy_and_schema_catch_a_broken_copy(built):
    cluster = copy.deepcopy(one(built["base"], "RayCluster"))
    head = cluster["spec"]["headGroupSpec"]
    container = head["template"]["spec"]["containers"][0]
    container["image"] = "rayproject/ray:latest"
    del container["resources"]["limits"]
    container["securityContext"].update(privileged=True, runAsNonRoot=False)
    container["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"})
    container["args"] = ["--db-password", "hunter2"]
    head["serviceType"] = "LoadBalancer"
    cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] = "x"
    problems = "\n".join(kc.policy_violations(cluster))
    for needle in ("rayproject/ray:latest is not pinned", "image x is not pinned",
                   "no limits.cpu", "no limits.memory", "privileged", "runAsNonRoot is not true",
                   "AWS_SECRET_ACCESS_KEY is not taken from a Secret", "--db-password",
                   "Ray head Service of type LoadBalancer"):
        assert needle in problems
    service = copy.deepcopy(one(built["base"], "Service", "mlflow"))
    service["spec"]["type"] = "LoadBalancer"
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
              "data": {"S3_KEY": "x", "url": "postgresql://mlflow:hunter2@db/mlflow"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    assert kc.policy_violations(service) and kc.policy_violations(secret)
    assert len(kc.policy_violations(config)) == 2
    cluster = copy.deepcopy(one(built["base"], "RayCluster"))
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = 1
    problems = "\n".join(kc.validate_document(cluster))
    assert "'maxReplica' was unexpected" in problems and "'imagePullPolicyy'" in problems
    deployment = copy.deepcopy(one(built["base"], "Deployment"))
    deployment["spec"]["replica"] = 1
    assert kc.validate_document(deployment)
    cluster["spec"]["workerGroupSpecs"][0].update(minReplicas=5, maxReplicas=2)
    assert kc.kuberay_rules(cluster)


def test_json_patch_known_answers():
    doc = {"a": [1, 2, 3], "b": {"c": "x", "d/e": 1}}
    ops = [{"op": "add", "path": "/a/1", "value": 9}, {"op": "add", "path": "/a/-", "value": 7},
           {"op": "remove", "path": "/a/0"}, {"op": "replace", "path": "/b/c", "value": "y"},
           {"op": "test", "path": "/b/d~1e", "value": 1}]
    assert kb.apply_json_patch(doc, ops) == {"a": [9, 2, 3, 7], "b": {"c": "y", "d/e": 1}}
    assert doc == {"a": [1, 2, 3], "b": {"c": "x", "d/e": 1}}
    for bad in ({"op": "test", "path": "/b/c", "value": "z"},
                {"op": "replace", "path": "/missing", "value": 1},
                {"op": "remove", "path": "/a/3"}, {"op": "move", "path": "/a", "from": "/b"}):
        with pytest.raises(kb.KustomizeError):
            kb.apply_json_patch(doc, [bad])


def test_kustomize_loader_rejects_broken_layouts(tmp_path):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    header = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
    cases = {
        "resources: [missing.yaml]\n": "does not exist",
        "resources: [cm.yaml, cm.yaml]\n": "defined twice",
        "resources: [cm.yaml]\nconfigMapGenerator: []\n": "not modelled",
        "resources: [cm.yaml]\npatches: [{path: p.yaml, target: {kind: ConfigMap, name: b}}]\n":
            "matches no resource",
    }
    (tmp_path / "p.yaml").write_text("- {op: add, path: /data, value: {}}\n")
    for body, message in cases.items():
        (tmp_path / "kustomization.yaml").write_text(header + body)
        with pytest.raises(kb.KustomizeError, match=message):
            kb.build_kustomization(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        header + "namespace: ns\nresources: [cm.yaml]\n"
        "patches: [{path: p.yaml, target: {kind: ConfigMap, name: a}}]\n")
    assert kb.build_kustomization(tmp_path) == [{"apiVersion": "v1", "kind": "ConfigMap",
                                                 "metadata": {"name": "a", "namespace": "ns"},
                                                 "data": {}}]


# ----------------------------------------------------------------------------- Dockerfile

def test_dockerfile_policy_and_its_failures():
    text = DOCKERFILE.read_text()
    assert kb.dockerfile_violations(text) == []
    base = next(args for ins, args in kb.dockerfile_instructions(text) if ins == "FROM")
    broken = {
        text.replace(base, "rayproject/ray:latest"): "not pinned",
        text.replace(base, "rayproject/ray"): "not pinned",
        re.sub(r"(?m)^USER .*$", "USER root", text): "root",
        re.sub(r"(?m)^USER .*$", "USER ray", text): "not numeric",
        re.sub(r"(?m)^USER .*$", "", text): "no USER",
        text + "ENV AWS_SECRET_ACCESS_KEY=abc\n": "AWS_SECRET_ACCESS_KEY",
        text + "ARG HF_TOKEN\n": "HF_TOKEN",
        text.replace("pip install . ", "pip install "): "not installed",
    }
    for variant, needle in broken.items():
        assert needle in "\n".join(kb.dockerfile_violations(variant)), needle


def test_ray_version_agrees_everywhere(built):
    """Image, manifests, renderer and the installed client must run the same Ray."""
    text = DOCKERFILE.read_text()
    base = next(args for ins, args in kb.dockerfile_instructions(text) if ins == "FROM")
    assert re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-cu\d+", base).group(1) == RAY_VERSION
    assert f'"ray[train,default]=={RAY_VERSION}"' in text
    assert importlib.metadata.version("ray") == RAY_VERSION
    for layout in LAYOUTS:
        for doc in built[layout]:
            for _, cluster in kc.ray_cluster_specs(doc):
                assert cluster["rayVersion"] == RAY_VERSION
