"""Objective knobs that lived under ``augment`` (CARE's ``chunk_size``, seq-JEPA's
``sequence_length``) live in their objective's section; the old keys still load with one warning
line, and a run logged under the old keys resumes. Real MLflow (SQLite) store."""

from __future__ import annotations

import logging

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pretrain.config import ConfigError, config_to_yaml, flatten, load_config
from pretrain.config.objective import RENAMED_KEYS, renamed_params
from pretrain.tracking.runs import start_or_resume_run


def test_the_renames_come_from_the_declarations() -> None:
    assert RENAMED_KEYS == {"augment.chunk_size": "objective.care.chunk_size",
                            "augment.sequence_length": "objective.seq_jepa.sequence_length"}


def test_old_keys_load_with_one_warning_line_each_and_move(tmp_path, caplog) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("objective:\n  name: seq_jepa\n  seq_jepa: {action: augment}\n"
                    "augment:\n  chunk_size: 4\n  sequence_length: 2\n")
    with caplog.at_level(logging.WARNING, logger="pretrain.config"):
        cfg = load_config(path)
    lines = [r.getMessage() for r in caplog.records if r.name == "pretrain.config"]
    assert lines == [
        "config key augment.chunk_size is deprecated: read as objective.care.chunk_size=4 "
        "(write it there)",
        "config key augment.sequence_length is deprecated: read as "
        "objective.seq_jepa.sequence_length=2 (write it there)"]
    assert cfg.objective.care.chunk_size == 4 and cfg.objective.seq_jepa.sequence_length == 2
    # The augmenter gets the recipe's settings: 2 observed views + 1 target.
    assert cfg.augment.recipe == "sequence" and cfg.augment.sequence_length == 2
    # The resolved config names each setting once, under its new key, and reloads silently.
    params = flatten(cfg)
    assert "augment.chunk_size" not in params and "augment.sequence_length" not in params
    assert params["objective.care.chunk_size"] == "4"
    assert params["objective.seq_jepa.sequence_length"] == "2"
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(config_to_yaml(cfg))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pretrain.config"):
        again = load_config(resolved)
    assert caplog.records == []
    assert again == cfg


def test_old_key_as_an_override_and_both_keys_set() -> None:
    cfg = load_config(None, ["objective.name=care", "augment.chunk_size=8"])
    assert cfg.objective.care.chunk_size == 8 and cfg.augment.chunk_size == 8
    same = load_config(None, ["augment.chunk_size=8", "objective.care.chunk_size=8"])
    assert same.objective.care.chunk_size == 8
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["augment.chunk_size=8", "objective.care.chunk_size=4"])
    assert str(caught.value) == ("augment.chunk_size: renamed objective.care.chunk_size, and both "
                                 "are set (8 and 4); keep only objective.care.chunk_size")


def test_an_old_key_with_a_bad_value_names_the_new_key() -> None:
    with pytest.raises(ConfigError, match=r"^objective\.care\.chunk_size: "):
        load_config(None, ["augment.chunk_size=0"])


def test_renamed_params_only_renames_what_is_old() -> None:
    stored = {"augment.chunk_size": "16", "augment.recipe": "care", "optim.lr": "0.001"}
    assert renamed_params(stored) == {"objective.care.chunk_size": "16",
                                      "augment.recipe": "care", "optim.lr": "0.001"}
    assert renamed_params({"objective.care.chunk_size": "8", "augment.chunk_size": "16"}) == {
        "objective.care.chunk_size": "8"}  # both stored: the new key's value stands


def _old_params(params: dict[str, str]) -> dict[str, str]:
    """``params`` as a run logged before the rename stored them (the old keys)."""
    old = dict(params)
    for before, after in RENAMED_KEYS.items():
        old[before] = old.pop(after)
    return old


def test_a_run_logged_under_the_old_keys_resumes_and_a_changed_value_is_refused(tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, ["name=renamed", "objective.name=care"])
    old_yaml = yaml.safe_load(config_to_yaml(cfg))
    old_yaml["augment"]["chunk_size"] = 16
    run_id, resumed = start_or_resume_run(store, "renames", cfg.name, _old_params(flatten(cfg)),
                                          yaml.safe_dump(old_yaml))
    assert not resumed
    stored = MlflowClient(store).get_run(run_id).data.params
    assert stored["augment.chunk_size"] == "16" and "objective.care.chunk_size" not in stored
    # The same settings under the new keys: not a config change.
    assert start_or_resume_run(store, "renames", cfg.name, flatten(cfg),
                               config_to_yaml(cfg)) == (run_id, True)
    assert "pretrain.config_changed" not in MlflowClient(store).get_run(run_id).data.tags
    # A changed value under the new key is still a change of the old one.
    changed = load_config(None, ["name=renamed", "objective.name=care",
                                 "objective.care.chunk_size=8"])
    with pytest.raises(ConfigError) as caught:
        start_or_resume_run(store, "renames", cfg.name, flatten(changed), config_to_yaml(changed))
    assert "objective.care.chunk_size (16 -> 8)" in str(caught.value)
