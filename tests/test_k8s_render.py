"""``cluster.k8s_manifest.render_rayjob``, ``render_yaml`` and ``pretrain k8s render``, offline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import k8s_build as kb
import k8s_checks as kc
from k8s_checks import one
from pretrain.config import ConfigError, load_config
from cluster.k8s_manifest import render_rayjob, render_yaml

IMAGE = "registry.example.com/ml/invariant-pretrain:0.1.0"
QUICKSTART = kc.REPO / "configs" / "quickstart.yaml"
S3 = "cluster.storage_path=s3://bucket/runs"


def clean(doc: dict) -> list[str]:
    return kc.validate_document(doc) + kc.kuberay_rules(doc) + kc.policy_violations(doc)


def _run_yaml(docs: list[dict], tmp_path: Path):
    config_map, rayjob = docs
    assert (config_map["kind"], rayjob["kind"]) == ("ConfigMap", "RayJob")
    (tmp_path / "run.yaml").write_text(config_map["data"]["run.yaml"])
    return load_config(tmp_path / "run.yaml"), rayjob


def test_render_round_trips_the_config(tmp_path):
    cfg = load_config(QUICKSTART, [S3, "cluster.num_workers=3", "cluster.address=ray://x:10001",
                                   "tracking.uri=sqlite:///mlflow.db"])
    loaded, rayjob = _run_yaml(render_rayjob(cfg, IMAGE), tmp_path)
    expected = cfg.model_dump()
    expected["cluster"].update(address=None, use_gpu=False)
    expected["tracking"]["uri"] = None  # the pods' $MLFLOW_TRACKING_URI takes over
    assert loaded.model_dump() == expected
    group = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert [(g["groupName"], g["replicas"]) for g in group] == [("cpu", 3)]
    assert "nvidia.com/gpu" not in yaml.safe_dump(rayjob)
    assert rayjob["spec"]["entrypoint"] == "pretrain run /config/run.yaml"


def test_render_strips_tracking_credentials(tmp_path):
    cfg = load_config(QUICKSTART, [S3, "tracking.uri=https://user:s3cr3t@mlflow.example.com"])
    docs = render_rayjob(cfg, IMAGE)
    assert "s3cr3t" not in yaml.safe_dump(docs)
    loaded, _ = _run_yaml(docs, tmp_path)
    assert loaded.tracking.uri == "https://mlflow.example.com"


def test_render_with_two_gpus(tmp_path):
    cfg = load_config(QUICKSTART, [S3, "cluster.num_workers=4",
                                   "tracking.uri=http://mlflow.example.com"])
    docs = render_rayjob(cfg, IMAGE, gpus=2, name="vicreg-gpu", namespace="team-a")
    loaded, rayjob = _run_yaml(docs, tmp_path)
    assert loaded.cluster.use_gpu is True and loaded.cluster.num_workers == 4
    assert loaded.tracking.uri == "http://mlflow.example.com"
    assert rayjob["metadata"]["name"] == "vicreg-gpu"
    assert {d["metadata"]["namespace"] for d in docs} == {"team-a"}
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "gpu" and group["replicas"] == group["maxReplicas"] == 2
    spec = group["template"]["spec"]
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "2"
    assert int(resources["limits"]["cpu"]) >= 2 * cfg.cluster.cpus_per_worker
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    for doc in docs:
        assert clean(doc) == [], "\n".join(clean(doc))


@pytest.mark.parametrize("config", sorted((kc.REPO / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_shipped_config_renders_valid_manifests(config):
    cfg = load_config(config, [S3])
    for doc in render_rayjob(cfg, IMAGE, gpus=1):
        assert clean(doc) == [], "\n".join(clean(doc))


def test_rendered_pods_match_the_base_cluster():
    """The renderer and k8s/base wire Ray pods the same way (env, Secrets, security)."""
    built = {"base": kb.build_kustomization(kc.K8S / "base")}
    base = one(built["base"], "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    rayjob = render_rayjob(load_config(QUICKSTART, [S3]), IMAGE)[1]
    rendered = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert rendered["securityContext"] == base["securityContext"]
    for key in ("env", "envFrom", "securityContext"):
        assert rendered["containers"][0][key] == base["containers"][0][key], key
    submitter = one(built["base"], "RayJob")["spec"]["submitterPodTemplate"]["spec"]
    assert rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"] == \
        submitter["containers"][0]["env"]


def test_render_yaml_is_the_same_documents():
    cfg = load_config(QUICKSTART, [S3, "cluster.num_workers=2"])
    text = render_yaml(cfg, IMAGE, gpus=2)
    assert list(yaml.safe_load_all(text)) == render_rayjob(cfg, IMAGE, gpus=2)
    assert "run.yaml: |" in text  # the config stays readable in the ConfigMap


@pytest.mark.parametrize("image, gpus, name, overrides, needle", [
    ("registry.example.com/x", 0, None, [S3], "--image"),
    ("registry.example.com:5000/x:latest", 0, None, [S3], "--image"),
    (IMAGE, -1, None, [S3], "--gpus"),
    (IMAGE, 2, None, [S3, "cluster.num_workers=3"], "cluster.num_workers"),
    (IMAGE, 0, "Bad_Name", [S3], "--name"),
    (IMAGE, 0, "x" * 48, [S3], "--name"),
    (IMAGE, 0, None, [], "cluster.storage_path"),
    # credentials never go into the ConfigMap (issue 11 item 2)
    (IMAGE, 0, None, [S3, "data.path=https://data.example.com/s-{0..3}.tar?token=abc"],
     "data.path: holds a credential"),
    # (in cluster.storage_* validation refuses it already: tests/test_config.py)
    (IMAGE, 0, None, [S3, "deepspeed.extra.comet.url=http://KEY:SECRET@comet.example.com"],
     "deepspeed.extra.comet.url: holds a credential"),
    (IMAGE, 0, None, [S3, "deepspeed.extra.monitor.api_key=abc"],
     "deepspeed.extra.monitor.api_key: holds a credential"),
])
def test_render_rejects_bad_input(image, gpus, name, overrides, needle):
    cfg = load_config(QUICKSTART, overrides)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        render_rayjob(cfg, image, gpus=gpus, name=name)


def test_default_name_is_a_valid_rayjob_name():
    cfg = load_config(QUICKSTART, [S3, "name=0_My.Run" + "x" * 60])
    name = render_rayjob(cfg, "img@sha256:" + "a" * 64)[1]["metadata"]["name"]
    assert kc.kuberay_rules({"kind": "RayJob", "metadata": {"name": name},
                             "spec": {"clusterSelector": {"ray.io/cluster": "c"}}}) == []


# ----------------------------------------------------------------------------- CLI

def _cli(args: list[str], module: bool = True) -> subprocess.CompletedProcess:
    if module:
        command = [sys.executable, "-m", "pretrain.cli.k8s", "render", *args]
    else:
        command = [str(Path(sys.executable).with_name("pretrain")), "k8s", "render", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=kc.REPO)


def test_cli_render_prints_applyable_yaml():
    result = _cli([str(QUICKSTART), S3, "cluster.num_workers=2", "--image", IMAGE,
                   "--gpus", "2", "--name", "demo"])
    assert result.returncode == 0, result.stderr
    config_map, rayjob = yaml.safe_load_all(result.stdout)
    assert rayjob["metadata"]["name"] == "demo" and config_map["metadata"]["name"] == "demo-config"
    container = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_cli_bad_input_is_one_line_exit_2(capsys):
    """In-process through the same error layer as ``pretrain`` (saves an interpreter start)."""
    import typer

    from pretrain.cli.errors import run_cli
    from pretrain.cli.k8s import app

    with pytest.raises(SystemExit) as exit_info:
        run_cli(typer.main.get_command(app), ["render", str(QUICKSTART), "--image", IMAGE])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pretrain: error: cluster.storage_path")


def test_pretrain_k8s_is_registered():
    from pretrain.cli.main import app

    if "k8s" not in {group.name for group in app.registered_groups}:
        pytest.skip("register in pretrain/cli/main.py: app.add_typer(k8s_cli.app, name='k8s')")
    result = _cli([str(QUICKSTART), S3, "--image", "x:latest"], module=False)
    assert result.returncode == 2 and "--image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
