"""Config: defaults in code, YAML + dotted overrides, one-line errors naming the key."""

from pathlib import Path

import pytest

from pretrain.config import ConfigError, RunConfig, flatten, load_config
from pretrain.config.load import apply_overrides, parse_override


def test_defaults_validate_and_follow_the_objective_recipe():
    cfg = RunConfig()
    assert cfg.objective.name == "vicreg"
    assert cfg.augment.recipe == "vicreg"
    assert cfg.data.path is None  # synthetic 3D data by default


def test_yaml_and_overrides_merge(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  batch_size: 16\noptim:\n  lr: 0.5\n")
    cfg = load_config(path, ["optim.lr=0.25", "encoder.model=resnet10t",
                             "objective.vicreg.expander_dims=[64,64]", "tracking.uri=sqlite:///x.db"])
    assert cfg.data.batch_size == 16
    assert cfg.optim.lr == 0.25
    assert cfg.encoder.model == "resnet10t"
    assert cfg.objective.vicreg.expander_dims == [64, 64]
    assert cfg.tracking.uri == "sqlite:///x.db"


def test_override_values_are_typed_by_yaml():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=hello") == (["a"], "hello")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize("overrides, key", [
    (["data.bacth_size=3"], "data.bacth_size"),
    (["data.batch_size=many"], "data.batch_size"),
    (["encoder.model=not_a_timm_model"], "encoder.model"),
    (["objective.name=nope"], "objective.name"),
    (["deepspeed.zero_stage=5"], "deepspeed.zero_stage"),
    (["nosection.x=1"], "nosection"),
    (["data=3"], "data"),
])
def test_errors_name_the_key_on_one_line(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert "\n" not in message


def test_unknown_objective_lists_known_ones():
    with pytest.raises(ConfigError, match="vicreg"):
        load_config(None, ["objective.name=nope"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["justakey"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_shipped_config_loads():
    configs = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


def test_flatten_gives_dotted_params():
    flat = flatten(RunConfig())
    assert flat["data.batch_size"] == "64"
    assert flat["objective.vicreg.sim_coeff"] == "25.0"


def test_recipe_needs_enough_decoded_views():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["objective.name=seq_jepa", "augment.source=distinct", "data.views=2"])
    assert str(info.value).startswith("data.views:")


@pytest.mark.parametrize("override, key, secret", [
    ("cluster.storage_path=s3://AKIAKEY:SECRETKEY@bucket/runs", "cluster.storage_path",
     "SECRETKEY"),
    ("cluster.storage_endpoint=http://AKIAKEY:SECRETKEY@minio:9000", "cluster.storage_endpoint",
     "SECRETKEY"),
    ("cluster.storage_endpoint=https://AKIAKEY@minio:9000", "cluster.storage_endpoint",
     "AKIAKEY"),
])
def test_storage_userinfo_is_refused_at_validation(override, key, secret):
    # It reached the run's pretrain.storage tag unredacted, and pyarrow cannot use it anyway.
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(key + ": holds URI userinfo"), message
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert secret not in message
    assert "\n" not in message


def test_storage_without_userinfo_still_validates():
    cfg = load_config(None, ["cluster.storage_path=/data/team@lab/runs",
                             "cluster.storage_endpoint=http://minio:9000"])
    assert cfg.cluster.storage_path == "/data/team@lab/runs"  # a local path: no URI, no userinfo
    assert load_config(None, ["cluster.storage_path=s3://bucket/runs"]).cluster.storage_path \
        == "s3://bucket/runs"


@pytest.mark.parametrize("override, setting", [
    # universal checkpoints are read with torch.load(weights_only=False), past any engine
    ("deepspeed.extra.checkpoint.load_universal=true", "checkpoint.load_universal"),
    # other checkpoint engines: fast, decoupled, DataStates
    ("deepspeed.extra.checkpoint.writer={type: fast}", "checkpoint.writer"),
    ("deepspeed.extra.checkpoint.writer.decoupled=true", "checkpoint.writer"),
    ("deepspeed.extra.datastates_ckpt={}", "datastates_ckpt"),
])
def test_unsafe_checkpoint_loading_is_refused_at_validation(override, setting):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(f"deepspeed.extra: {setting} is not supported"), message
    assert "\n" not in message


def test_safe_deepspeed_checkpoint_settings_still_validate():
    cfg = load_config(None, ["deepspeed.extra.checkpoint.load_universal=false",
                             "deepspeed.extra.checkpoint.tag_validation=Warn",
                             "deepspeed.extra.datastates_ckpt=false"])
    assert cfg.deepspeed.extra["checkpoint"] == {"load_universal": False,
                                                 "tag_validation": "Warn"}
