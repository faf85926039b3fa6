"""seq-JEPA: autoregressive predictive learning of invariant-equivariant world models (Ghaemi,
Muller, Bakhtiari, NeurIPS 2025).

Each sample is a sequence of ``M`` observed views and one target view. Every observed view is
encoded by the online encoder, ``z_i = f(x_i)``; its token is ``[z_i ; e(a_i)]`` where ``a_i`` is
the relative action from view ``i`` to view ``i + 1`` and ``e`` a bias-free linear embedding
(128-d) followed by an affine-free BatchNorm; the last observed token's action slot is zero. A
learnable aggregation token joins the tokens, a transformer encoder (3 layers, 4 heads, no
positional encoding: the aggregate is invariant to the order of the observed tokens) mixes them,
and a predictor MLP on ``[z_AGG ; e(a_M->target)]`` predicts ``sg(f_EMA(x_target))``:
``L = 1 - mean_n cos(pred_n, target_n)``. The EMA momentum follows a cosine schedule from 0.996
to 1 and is applied after every optimizer step (:meth:`SeqJEPA.on_step_end`). The encoder
outputs are equivariant (actions must be inferable from them); ``z_AGG`` is invariant.

Choices between paper and official code (github.com/hafezgh/seq-jepa, ``SeqJEPA_Transforms``):

- Actions: the official 3DIEBench loader feeds scipy's ``as_quat()`` of ``R_i^-1 R_{i+1}``
  (``[x, y, z, w]``, sign not fixed); we feed the canonical ``[w, x, y, z]`` of
  ``augment.relative`` ('rotation'), or 'rotation_hue' / 'augment' (parameter differences,
  the released CIFAR setting).
- As in the official code the action embedding's BatchNorm normalises the ``B x M`` observed
  actions (the last, later zeroed, included) in one call and the target action in another.
- EMA: the released script recomputes the momentum once per *epoch*; we use the per-step
  schedule of BYOL over the run's total steps. Only parameters are averaged (as official).
- The transformer is ``nn.TransformerEncoder`` post-norm layers (feed-forward 4x, dropout 0.1 as
  PyTorch's default that the official code keeps) plus a final LayerNorm; the aggregation token
  starts at zero (official). ``(num_features + action_embed_dim)`` must divide by ``num_heads``.
- Predictor: Linear(no bias)-BN-ReLU-Linear to ``num_features`` (official, hidden 1024).
- The observed views go through the encoder in one call (joint BatchNorm statistics).
- Optimizer (set in the seq-JEPA YAML configs, the platform's optimizer is not per objective):
  AdamW lr 4e-4, weight decay 1e-3 off 1-D parameters, warmup then cosine. The released script
  warms up linearly from 1e-5 over 20 of 1000 epochs, then steps ``CosineAnnealingLR(T_max =
  epochs, eta_min = 1e-5)`` once per epoch (so it never quite reaches 1e-5); our schedule is
  per step with ``warmup_frac = 0.02`` and ``min_lr_frac = 0.025``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from augment.batch import ViewBatch
from augment.relative import relative_dim
from objectives.base import LossOutput, Objective, ViewNeeds
from objectives.ema import EMATarget, cosine_momentum
from objectives.heads import encode_together, full_precision


def action_tokens(z: Tensor, actions: Tensor) -> Tensor:
    """Tokens ``[z_i ; e(a_i)]`` (``B x M x (D + E)``) with the last observed action slot zeroed.

    ``z``: ``B x M x D`` encodings; ``actions``: ``B x M x E`` embedded actions, ``actions[:, i]``
    taking view ``i`` to view ``i + 1``. The last observed view has no next *observed* view, so
    its slot is zero (the action towards the target conditions the predictor instead).
    """
    if z.shape[:2] != actions.shape[:2]:
        raise ValueError(f"z {tuple(z.shape)} and actions {tuple(actions.shape)} disagree on B x M")
    keep = torch.ones(z.shape[1], 1, dtype=actions.dtype, device=actions.device)
    keep[-1] = 0.0
    return torch.cat([z, actions * keep], dim=-1)


def negative_cosine_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``1 - 1/n sum_n cos(prediction_n, target_n)``; ``target`` is detached (stop-gradient)."""
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        cos = F.cosine_similarity(full_precision(prediction), full_precision(target.detach()), dim=1)
        return 1.0 - cos.mean()


class SeqJEPAConfig(BaseModel):
    """Hyper-parameters of seq-JEPA; defaults are the paper's 3DIEBench settings.

    ``sequence_length`` (M) is also read by the view recipe (``SeqJEPA.recipe_options``): the run
    config hands it to the augmenter, whose ``sequence`` recipe makes M + 1 views.
    """

    model_config = ConfigDict(extra="forbid")

    sequence_length: int = Field(
        3, ge=1, description="Observed views M per training sequence (the recipe makes M + 1 views).")

    action: Literal["rotation", "rotation_hue", "augment"] = Field(
        "rotation", description="Key of ViewBatch.relative used as actions.")
    action_conditioning: bool = Field(
        True, description="False: the ablation without actions (tokens z_i, predictor on z_AGG).")
    action_embed_dim: int = Field(128, ge=1, description="Width of the action embedding e(a).")
    num_heads: int = Field(4, ge=1, description="Attention heads of the aggregator.")
    num_layers: int = Field(3, ge=1, description="Transformer encoder layers of the aggregator.")
    mlp_ratio: int = Field(4, ge=1, description="Feed-forward width as a multiple of the token width.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Transformer dropout (PyTorch's default).")
    predictor_hidden: int = Field(1024, ge=1, description="Hidden width of the predictor MLP.")
    ema_base: float = Field(0.996, ge=0, le=1, description="EMA momentum at step 0.")
    ema_final: float = Field(1.0, ge=0, le=1, description="EMA momentum at the last step.")


class SeqJEPA(Objective[SeqJEPAConfig]):
    """Online encoder, EMA target encoder, action embedding, aggregator and predictor."""

    name = "seq_jepa"
    config_cls = SeqJEPAConfig
    view_recipe = "sequence"
    recipe_options = ("sequence_length",)

    @classmethod
    def view_needs(cls, cfg: SeqJEPAConfig) -> ViewNeeds:
        m = cfg.sequence_length
        if not cfg.action_conditioning:
            return ViewNeeds(views=m + 1)
        return ViewNeeds(views=m + 1, action=cfg.action, actions=m)

    def __init__(self, cfg: SeqJEPAConfig, encoder: nn.Module, num_features: int) -> None:
        super().__init__(cfg, encoder, num_features)
        self.target_encoder = EMATarget(encoder)
        cond = cfg.action_conditioning
        act = cfg.action_embed_dim if cond else 0
        width = num_features + act
        if width % cfg.num_heads:
            raise ValueError(f"seq-JEPA token width {width} (num_features {num_features} + action "
                             f"embedding {act}) must be divisible by num_heads {cfg.num_heads}")
        self.action_embed = (nn.Sequential(nn.Linear(relative_dim(cfg.action), act, bias=False),
                                           nn.BatchNorm1d(act, affine=False)) if cond else None)
        self.agg_token = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerEncoderLayer(width, cfg.num_heads, dim_feedforward=cfg.mlp_ratio * width,
                                           dropout=cfg.dropout, batch_first=True)
        self.aggregator = nn.TransformerEncoder(layer, cfg.num_layers, norm=nn.LayerNorm(width),
                                                enable_nested_tensor=False)
        self.predictor = nn.Sequential(
            nn.Linear(width + act, cfg.predictor_hidden, bias=False),
            nn.BatchNorm1d(cfg.predictor_hidden), nn.ReLU(inplace=True),
            nn.Linear(cfg.predictor_hidden, num_features))

    def embed_actions(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """``e(a)`` of the ``B x M x A`` actions (tokens) and of ``actions[:, -1]`` (predictor)."""
        assert self.action_embed is not None
        b, m, a = actions.shape
        actions = actions.to(self.action_embed[0].weight.dtype)
        tokens = self.action_embed(actions.reshape(b * m, a)).view(b, m, -1)
        return tokens, self.action_embed(actions[:, -1])

    def aggregate(self, z: Tensor, embedded_actions: Tensor | None) -> Tensor:
        """``z_AGG`` (``B x width``) of ``B x M x D`` encodings and their embedded actions."""
        tokens = z if embedded_actions is None else action_tokens(z, embedded_actions.to(z.dtype))
        return self.aggregate_tokens(tokens)

    def aggregate_tokens(self, tokens: Tensor) -> Tensor:
        """Output of the aggregation token after the transformer over ``[AGG, tokens]``."""
        agg = self.agg_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return self.aggregator(torch.cat([agg, tokens], dim=1))[:, 0]

    def encode_sequence(self, views: list[Tensor]) -> Tensor:
        """``B x M x D`` online encodings of ``M`` equally shaped views (one encoder call)."""
        features = encode_together(self.encoder, views)
        return features.view(len(views), views[0].shape[0], -1).transpose(0, 1)

    def aggregate_one_view(self, features: Tensor) -> Tensor:
        """``z_AGG`` of each row observed alone (``M = 1``) from its backbone features ``B x D``.

        The one token is ``[z ; 0]``: the last observed view's action slot is zero, so no action
        is needed. Longer sequences would need several views of one object with the training's
        actions between them, which probe sets do not carry."""
        z = features[:, None]
        if self.action_embed is None:
            return self.aggregate(z, None)
        return self.aggregate(z, z.new_zeros(z.shape[0], 1, self.cfg.action_embed_dim))

    def probe_features(self) -> dict[str, nn.Module]:
        """``aggregate``: ``z_AGG`` of each image observed alone (:meth:`aggregate_one_view`), the
        representation the paper reads as invariant, next to the equivariant backbone output."""
        return {"aggregate": OneViewAggregate(self)}

    def _sequence(self, batch: ViewBatch) -> tuple[Tensor, Tensor, Tensor | None]:
        """Online encodings ``B x M x D`` of the observed views ``0..M-1``, the EMA target's
        encoding of view ``M``, and the ``B x M x A`` actions (``None`` without action
        conditioning); ``M = cfg.sequence_length``."""
        m = self.cfg.sequence_length
        z = self.encode_sequence(batch.views[:m])
        target = self.target_encoder(batch.views[m])
        if self.action_embed is None:
            return z, target, None
        return z, target, batch.relative[self.cfg.action][:, :m]

    def _predict(self, z: Tensor, actions: Tensor | None) -> tuple[Tensor, Tensor]:
        """The predictor's output for the target and ``z_AGG``, from encodings and actions."""
        embedded = target_action = None
        if actions is not None:
            embedded, target_action = self.embed_actions(actions)
        agg = self.aggregate(z, embedded)
        pred_in = agg if target_action is None else torch.cat([agg, target_action.to(agg.dtype)], 1)
        return self.predictor(pred_in), agg

    @torch.no_grad()
    def predictor_losses(self, batch: ViewBatch, permutation: Tensor) -> dict[str, Tensor]:
        """The loss ``1 - cos(pred, target)`` with the true actions (``true``), with every row's
        actions taken from row ``permutation[i]`` (``shuffled``; the same dropout masks), and
        with the target predicted as the last observed view's encoding (``no_change``)."""
        self.check_views(batch)
        z, target, actions = self._sequence(batch)
        # fork_rng restores the CPU and the CUDA generator, so both passes draw the same masks.
        with torch.random.fork_rng(devices=[z.device] if z.is_cuda else []):
            true = negative_cosine_loss(self._predict(z, actions)[0], target)
        shuffled = negative_cosine_loss(
            self._predict(z, None if actions is None else actions[permutation])[0], target)
        return {"true": true, "shuffled": shuffled,
                "no_change": negative_cosine_loss(z[:, -1], target)}

    def compute_loss(self, batch: ViewBatch) -> LossOutput:
        """Views ``0..M-1`` observed, view ``M`` the target; actions ``batch.relative[action]``."""
        z, target, actions = self._sequence(batch)
        prediction, agg = self._predict(z, actions)
        loss = negative_cosine_loss(prediction, target)
        return LossOutput(loss=loss, terms={"cosine": (1.0 - loss).detach()},
                          embeddings={"backbone": z[:, 0].detach(), "aggregate": agg.detach()})

    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update of the target encoder with the cosine momentum of ``step``."""
        momentum = cosine_momentum(step, total_steps, self.cfg.ema_base, self.cfg.ema_final)
        self.target_encoder.update_(self.encoder, momentum)


class OneViewAggregate(nn.Module):
    """Probe head of :meth:`SeqJEPA.aggregate_one_view` (backbone features -> ``z_AGG``); it
    shares the objective's aggregator, so probes see it in eval mode through this module."""

    def __init__(self, objective: SeqJEPA) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, features: Tensor) -> Tensor:
        return self.objective.aggregate_one_view(features)
