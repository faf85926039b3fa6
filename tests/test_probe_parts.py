"""Named parts of the representation reach the probes: the heads an objective declares
(``Objective.probe_features``) give its ``LossOutput.embeddings`` of those names, and the probe
suite measures each part as it measures the whole."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import Tensor, nn

from augment import AugmentConfig, ViewAugmenter
from augment.quaternion import random_quaternion
from objectives.base import FeatureColumns
from objectives.seq_jepa import SeqJEPA, SeqJEPAConfig
from objectives.sie import SIE, SIEConfig
from objectives.vicreg import VICReg, VICRegConfig
from probe_encoders import Orientation, Rot90Invariant, blob_images, in_memory_set
from pretrain.probes.config import ProbesConfig
from pretrain.probes.features import Preprocess, apply_head
from pretrain.probes.suite import run_probe_suite

pytestmark = pytest.mark.usefixtures("one_thread")


def _views(recipe: str, m: int, batch: int = 6, size: int = 16):
    images = torch.randint(0, 256, (batch, m + 1, 3, size, size), dtype=torch.uint8)
    q = random_quaternion(batch * (m + 1), torch.Generator().manual_seed(1)).view(batch, m + 1, 4)
    cfg = AugmentConfig(recipe=recipe, source="distinct", sequence_length=m)
    return ViewAugmenter(cfg, (0.5,) * 3, (0.25,) * 3, size)(
        images, torch.Generator().manual_seed(0), latents={"quaternion": q})


def _heads_match_embeddings(model: nn.Module, batch, names: set[str]) -> None:
    model.eval()
    with torch.no_grad():
        out = model(batch)
    heads = model.probe_features()
    assert set(heads) == names
    for name, head in heads.items():
        got = apply_head(head, out.embeddings["backbone"])
        torch.testing.assert_close(got, out.embeddings[name].float(), atol=1e-5, rtol=1e-5)
    assert not model.training  # the heads left the objective's mode alone


def test_sie_declares_its_halves_as_they_are_trained():
    torch.manual_seed(0)
    encoder = timm.create_model("test_resnet", num_classes=0)
    model = SIE(SIEConfig(equivariant_dims=24, expander_dims=[16]), encoder, encoder.num_features)
    _heads_match_embeddings(model, _views("pair", 1), {"invariant", "equivariant"})
    heads = model.probe_features()
    features = torch.randn(3, encoder.num_features)
    assert apply_head(heads["equivariant"], features).shape == (3, 24)  # the last 24 dims


@pytest.mark.parametrize("conditioned", [True, False])
def test_seq_jepa_declares_its_aggregate_of_one_view(conditioned):
    torch.manual_seed(0)
    encoder = timm.create_model("test_resnet", num_classes=0)
    cfg = SeqJEPAConfig(sequence_length=1, action_embed_dim=8, predictor_hidden=16, num_layers=2,
                        action_conditioning=conditioned)
    model = SeqJEPA(cfg, encoder, encoder.num_features)
    # With one observed view the trained aggregate is the probe's: its action slot is zero.
    _heads_match_embeddings(model, _views("sequence", 1), {"aggregate"})
    model.train()
    apply_head(model.probe_features()["aggregate"], torch.randn(4, encoder.num_features))
    assert model.training and model.aggregator.training  # mode restored, submodules too


def test_objectives_without_parts_declare_none():
    encoder = timm.create_model("test_resnet", num_classes=0)
    assert VICReg(VICRegConfig(expander_dims=[16]), encoder, encoder.num_features
                  ).probe_features() == {}


class InvariantAndOrientation(nn.Module):
    """[rot90-invariant features (64), orientation (cos, sin)]: one part ignores rotation, the
    other follows it."""

    def __init__(self) -> None:
        super().__init__()
        self.invariant, self.orientation = Rot90Invariant(), Orientation()

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.invariant(x), 4.0 * self.orientation(x)), dim=1)


def test_the_suite_probes_each_declared_part_like_the_whole():
    images = blob_images(320, seed=2)
    probe_set = in_memory_set(images, 240)
    cfg = ProbesConfig(transforms=["rotation", "flip"], part_transforms=["rotation"],
                       pairs_train=240, pairs_test=80)
    encoder = InvariantAndOrientation().eval()
    parts = {"invariant": FeatureColumns(0, 64), "equivariant": FeatureColumns(64, 66)}
    m = run_probe_suite(encoder, probe_set, cfg, preprocess=Preprocess(), parts=parts)
    inv, equi = "probe/parts/invariant", "probe/parts/equivariant"
    assert m[f"{inv}/invariance/rotation"] == pytest.approx(1.0, abs=1e-4)
    assert abs(m[f"{inv}/equivariance_r2_mlp/rotation"]) < 0.1
    assert m[f"{equi}/equivariance_r2_mlp/rotation"] > 0.9
    assert m[f"{equi}/invariance/rotation"] < 0.1
    assert f"{inv}/invariance/flip" not in m  # only part_transforms on the parts
    assert m[f"{equi}/health/rankme"] <= 2.0 + 1e-6 and f"{inv}/health/pos_cos" in m
    # The parts add metrics and change none of the whole's.
    whole = run_probe_suite(encoder, probe_set, cfg, preprocess=Preprocess())
    assert {k: v for k, v in m.items() if not k.startswith("probe/parts/")
            and k != "probe/seconds"} == {k: v for k, v in whole.items() if k != "probe/seconds"}
