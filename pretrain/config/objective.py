"""The ``objective`` section of the run config, derived from the objective registry.

``objective.name`` selects a registered objective; ``objective.<name>`` holds the settings of each
(its ``config_cls``, every default written there). The sections come from
:data:`objectives.registry.OBJECTIVES`, so a new objective needs no edit here.

Settings that an objective shares with its view recipe (``Objective.recipe_options``, e.g. CARE's
``chunk_size``) used to be ``augment.<option>``; those keys still load, moved to
``objective.<name>.<option>`` with a one-line warning (:func:`move_renamed_keys`), and stored run
params under the old key compare with the new one on resume (:func:`renamed_params`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from objectives.base import Objective, ViewNeeds
from objectives.registry import OBJECTIVES, get_objective, is_objective, list_objectives

log = logging.getLogger("pretrain.config")


class ObjectiveSelection(BaseModel):
    """``objective.name`` and the helpers every objective section shares; the per-objective
    sections are added by :data:`ObjectiveConfig`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("vicreg", description="Registered objective name.")

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if not is_objective(name):
            raise ValueError(f"unknown objective {name!r}; known: {', '.join(list_objectives())}")
        return name

    def objective_cls(self) -> type[Objective]:
        """The selected objective's class."""
        return get_objective(self.name)

    def settings(self) -> BaseModel:
        """The config section of the selected objective."""
        return getattr(self, self.name)

    def view_needs(self) -> ViewNeeds:
        """What the selected objective reads from a batch, with its settings."""
        return self.objective_cls().view_needs(self.settings())

    def recipe_options(self, recipe: str) -> dict[str, Any]:
        """Settings that recipe ``recipe`` reads from the objective that declares it as its own
        (``Objective.recipe_options``), whichever objective is selected: ``augment.chunk_size``
        used to be set for the ``care`` recipe under any objective, and still is, as
        ``objective.care.chunk_size``."""
        options: dict[str, Any] = {}
        for name, cls in OBJECTIVES.items():
            if cls.view_recipe == recipe:
                options |= {key: getattr(getattr(self, name), key) for key in cls.recipe_options}
        return options


def _objective_config() -> type[ObjectiveSelection]:
    sections: dict[str, Any] = {
        name: (cls.config_cls, Field(default_factory=cls.config_cls,
                                     description=f"Settings of objective {name}."))
        for name, cls in OBJECTIVES.items()}
    return create_model("ObjectiveConfig", __base__=ObjectiveSelection, __module__=__name__,
                        **sections)


if TYPE_CHECKING:
    ObjectiveConfig = ObjectiveSelection
else:
    ObjectiveConfig = _objective_config()

# Old key -> new key, from the declarations: ``augment.<option>`` -> ``objective.<name>.<option>``.
RENAMED_KEYS: dict[str, str] = {
    f"augment.{option}": f"objective.{name}.{option}"
    for name, cls in OBJECTIVES.items() for option in cls.recipe_options}


def _as_dict(node: Any) -> dict[str, Any] | None:
    """A config section given as a mapping or a model (only the keys set on it), else None."""
    if isinstance(node, dict):
        return dict(node)
    if isinstance(node, BaseModel):
        return {key: getattr(node, key) for key in node.model_fields_set}
    return None


def move_renamed_keys(tree: Any) -> Any:
    """``tree`` (a raw run config) with every old key of :data:`RENAMED_KEYS` moved to its new
    place, one warning line per moved key. Both keys set to different values is an error naming
    both; ``tree`` itself is not changed."""
    if not isinstance(tree, dict):
        return tree
    augment = _as_dict(tree.get("augment"))
    if augment is None or not any(old.split(".")[1] in augment for old in RENAMED_KEYS):
        return tree
    tree = dict(tree)
    objective = _as_dict(tree.get("objective", {}))
    if objective is None:
        return tree  # not a mapping: the section's own validation names the key
    for old, new in RENAMED_KEYS.items():
        option = old.split(".")[1]
        if option not in augment:
            continue
        value = augment.pop(option)
        section_name = new.split(".")[1]
        section = _as_dict(objective.get(section_name, {}))
        if section is None:
            continue
        if option in section and section[option] != value:
            raise ValueError(f"{old}: renamed {new}, and both are set ({value!r} and "
                             f"{section[option]!r}); keep only {new}")
        section[option] = value
        objective[section_name] = section
        log.warning("config key %s is deprecated: read as %s=%s (write it there)", old, new, value)
    tree["augment"], tree["objective"] = augment, objective
    return tree


def renamed_params(params: dict[str, str]) -> dict[str, str]:
    """Flattened run params (stored MLflow params) with old keys under their new names, so that
    a run logged before a rename compares with today's params by value."""
    out = dict(params)
    for old, new in RENAMED_KEYS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out
