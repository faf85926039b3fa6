"""What every objective returns, what it declares about itself, and the base class that checks it.

An objective is declared once, on its class: ``name`` (its registry key and the YAML key of its
settings, ``objective.<name>``), ``config_cls`` (its settings, every default in that class),
``view_recipe`` (the augmentation recipe written for it) and :meth:`Objective.view_needs` (which
views, per-view params and relative transform it reads). The registry, the run config, the
compatibility check before Ray starts and the per-batch check below all read these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel
from torch import Tensor, nn

from augment.batch import ViewBatch

ConfigT = TypeVar("ConfigT", bound=BaseModel)


@dataclass
class LossOutput:
    """Result of one objective forward pass.

    ``loss`` is the scalar to minimise; ``terms`` are named scalars logged as ``loss/<term>``
    (detached); ``embeddings`` are named ``B x D`` tensors that probes may attach to (detached).
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    embeddings: dict[str, Tensor] = field(default_factory=dict)


class ViewsMissing(ValueError):
    """A ``ViewBatch`` lacks what its objective declared; the message is one line."""


@dataclass(frozen=True)
class ViewNeeds:
    """What an objective reads from a ``ViewBatch``, given its settings.

    Attributes:
        views: views ``0 .. views - 1`` are read (their meaning is the objective's docstring's).
        params: ``(view index, key)`` of every per-view param read (e.g. CARE's chunk ids).
        action: the ``ViewBatch.relative`` key read as the action between views, or None.
            Latent actions (``rotation``, ``rotation_hue``) also need the data's latents; which
            ones is :data:`pretrain.config.compat.LATENTS_NEEDED`'s business.
        actions: relative transforms of ``action`` read (``relative[action].shape[1]``).
    """

    views: int
    params: tuple[tuple[int, str], ...] = ()
    action: str | None = None
    actions: int = 0

    def __post_init__(self) -> None:
        if self.views < 1 or self.actions < 0 or (self.actions > 0) != (self.action is not None):
            raise ValueError(f"inconsistent view needs {self}")
        if any(not 0 <= i < self.views for i, _ in self.params):
            raise ValueError(f"view needs name params of views outside 0..{self.views - 1}: {self}")

    def problem(self, batch: ViewBatch) -> str | None:
        """What ``batch`` lacks of these needs (one line), or None."""
        if len(batch.views) < self.views:
            return f"needs {self.views} views, the batch has {len(batch.views)}"
        for index, key in self.params:
            if key not in batch.params[index]:
                return f"needs params[{index}][{key!r}], which view {index} of the batch lacks"
        if self.action is not None:
            actions = batch.relative.get(self.action)
            if actions is None:
                return (f"needs the relative transform {self.action!r}; the batch has "
                        f"{sorted(batch.relative) or 'none'}")
            if actions.ndim < 2 or actions.shape[1] < self.actions:
                return (f"needs {self.actions} relative transform(s) {self.action!r}, the batch "
                        f"has {tuple(actions.shape)}")
        return None


class Objective(nn.Module, Generic[ConfigT]):
    """Base class: an encoder plus the heads of one self-supervised objective.

    Subclasses declare ``name``, ``config_cls``, ``view_recipe`` and, when their settings are
    also read by the view recipe, ``recipe_options`` (names of fields that their config and
    ``augment.AugmentConfig`` share; the run config copies them into the augmenter's settings
    when the recipe in use is this objective's). They implement :meth:`view_needs`, build their
    heads in ``__init__`` after ``super().__init__(cfg, encoder, num_features)`` and implement
    :meth:`compute_loss`. Calling the module checks the batch against :meth:`view_needs` (one
    line naming the objective and what is missing) before :meth:`compute_loss` runs. The
    backbone lives in ``self.encoder`` so that one module holds every trained parameter
    (DeepSpeed wraps it) and export takes exactly ``self.encoder``.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[BaseModel]]
    view_recipe: ClassVar[str]
    recipe_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ConfigT, encoder: nn.Module, num_features: int) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_cls):
            raise TypeError(f"objective {self.name!r} expects a {self.config_cls.__name__} "
                            f"config, got {type(cfg).__name__}")
        self.cfg = cfg
        self.needs = self.view_needs(cfg)
        self.encoder = encoder
        self.num_features = num_features

    @classmethod
    def view_needs(cls, cfg: ConfigT) -> ViewNeeds:  # pragma: no cover - abstract
        """What a batch must hold for this objective with settings ``cfg``."""
        raise NotImplementedError

    def check_views(self, batch: ViewBatch) -> None:
        """Raise :class:`ViewsMissing` (one line) when ``batch`` lacks what :meth:`view_needs`
        declared."""
        problem = self.needs.problem(batch)
        if problem is not None:
            raise ViewsMissing(f"objective {self.name}: {problem} (its recipe "
                               f"{self.view_recipe!r} produces them)")

    def forward(self, batch: ViewBatch) -> LossOutput:
        """:meth:`compute_loss` of ``batch`` after :meth:`check_views`."""
        self.check_views(batch)
        return self.compute_loss(batch)

    def compute_loss(self, batch: ViewBatch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Hook after each optimizer step (EMA targets update here). Default: nothing."""

    def probe_features(self) -> dict[str, nn.Module]:
        """Named parts of the representation that the probes evaluate besides the backbone
        output (``pretrain.probes.suite.run_probe_suite(parts=...)``): name -> a head from
        backbone features ``B x num_features`` to that part. A name is one of
        ``LossOutput.embeddings`` and its head gives the same values for a batch's first view
        (eval mode); only parts the objective's paper reads are declared, so the probes cost
        more only for objectives that declare some. Default: none."""
        return {}


class FeatureColumns(nn.Module):
    """Columns ``[start, stop)`` of the backbone features: a part of the representation that
    an objective keeps apart (``Objective.probe_features``)."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, features: Tensor) -> Tensor:
        return features[:, self.start:self.stop]

    def extra_repr(self) -> str:
        return f"dims {self.start}-{self.stop - 1}"
