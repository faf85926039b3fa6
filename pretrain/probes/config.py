"""Typed settings of the probe suite (``probes.*`` in the run config, and the offline driver)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Transformations probed by default: the 2D ones work on any image set; the 3D ones need a probe
# set with synthetic 3D latents and are skipped (with a log line) when it has none.
TRANSFORMS_2D = ("crop", "flip", "rotation", "brightness", "contrast", "saturation", "hue",
                 "grayscale", "blur")
TRANSFORMS_3D = ("object_rotation", "object_hue", "light")
# Ridge penalties (on standardised inputs) tried by default; cross-validation picks one.
RIDGE_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5)


class ProbesConfig(BaseModel):
    """What the probes measure and on how much data. Defaults fit a 2-core CPU end-of-run pass."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(True, description="Run the full suite at the end of a run.")
    every_steps: int = Field(0, ge=0, description="Online probes every N training steps (rank 0); "
                             "0 disables them.")
    data: str = Field("synth3d", description="Probe data: a preset ('synth3d', 'cifar10') or a "
                      "shard folder/pattern (a folder with train-*.tar and test-*.tar is split by "
                      "file name, any other source by position: every test_every-th sample is test).")
    cache_dir: str = Field(".pretrain/data", description="Where the synth3d probe set is rendered.")
    image_size: int | None = Field(None, ge=8, description="Decoded image side; None: the data's "
                                   "own size (the encoder input resize happens at encode time).")
    max_train: int = Field(512, ge=2, description="Probe-train samples at most.")
    max_test: int = Field(256, ge=2, description="Probe-test samples at most.")
    test_every: int = Field(5, ge=2, description="Position split of sources without train/test "
                            "files: sample i is test when i % test_every == test_every - 1.")
    batch_size: int = Field(128, ge=1, description="Images per encoder forward pass.")
    seed: int = Field(0, ge=0, description="Seeds transformations, regressors and the 3D set.")

    # synth3d preset: held-out objects, rendered with a seed the pretraining data does not use.
    synth3d_seed: int = Field(1_000_003, ge=0)
    synth3d_classes: int = Field(12, ge=2)
    synth3d_size: int = Field(64, ge=8)
    synth3d_max_angle_deg: float | None = Field(
        None, ge=0.0, le=180.0, description="Pose range of the 3D probe set (as "
        "data.synth3d.max_angle_deg): None is uniform on SO(3); match the pretraining data. The "
        "object_rotation probe draws its new poses from the same range.")

    transforms: list[str] = Field(default_factory=lambda: [*TRANSFORMS_2D, *TRANSFORMS_3D],
                                  description="Transformations for invariance and equivariance.")
    part_transforms: list[str] | None = Field(
        None, description="Transformations probed on an objective's named parts "
        "(Objective.probe_features, e.g. SIE's halves); None: the same as transforms.")
    pairs_train: int = Field(192, ge=4, description="Probe-train images transformed per T "
                             "(regressor training pairs).")
    pairs_test: int = Field(128, ge=4, description="Probe-test images transformed per T "
                            "(held-out regressor pairs; invariance uses all pairs).")

    linear: bool = Field(True, description="Linear probe (multinomial logistic regression).")
    linear_weight_decays: list[float] = Field(
        default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2],
        description="L2 penalties tried; the best on the last 20% of probe-train is refit.")
    linear_max_iter: int = Field(200, ge=1, description="L-BFGS iterations per fit.")
    knn: bool = Field(True, description="Weighted cosine kNN.")
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)

    ridge_alphas: list[float] = Field(
        default_factory=lambda: list(RIDGE_ALPHAS),
        description="Ridge penalties tried (on standardised features); best by 5-fold CV. The "
        "MLP read-out's linear path uses them too.")
    mlp: bool = Field(True, description="Also fit the MLP regressor (the ridge read-out plus an "
                      "MLP on its residual: nonlinear equivariance).")
    mlp_hidden: int = Field(128, ge=1)
    mlp_steps: int = Field(400, ge=1, description="Full-batch Adam steps.")
    mlp_lr: float = Field(3e-3, gt=0)
    mlp_weight_decay: float = Field(1e-4, ge=0)
    mlp_pca_dims: int | None = Field(None, ge=1, description="Project [f(x), f(Tx)] on its top "
                                     "principal directions before the MLP; None: no projection.")

    collapse_threshold: float = Field(
        0.01, gt=0, description="A dimension is collapsed when its std is below threshold * "
        "s / sqrt(dim), s the RMS feature norm (s / sqrt(dim) is the isotropic std).")
    rankme_eps: float = Field(1e-7, gt=0)

    online_max_train: int = Field(256, ge=2, description="Online probes: probe-train cap.")
    online_max_test: int = Field(128, ge=2, description="Online probes: probe-test cap.")
    online_pairs: int = Field(48, ge=4, description="Online probes: pairs per split and T.")
    online_mlp: bool = Field(False, description="Online probes: fit the MLP regressor too.")

    @field_validator("transforms", "part_transforms")
    @classmethod
    def _known(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return names
        known = (*TRANSFORMS_2D, *TRANSFORMS_3D)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown transformation(s) {unknown}; known: {', '.join(known)}")
        return names

    def for_online(self) -> "ProbesConfig":
        """The lighter variant used every ``every_steps`` (smaller sets, optional MLP)."""
        return self.model_copy(update={
            "max_train": min(self.max_train, self.online_max_train),
            "max_test": min(self.max_test, self.online_max_test),
            "pairs_train": min(self.pairs_train, self.online_pairs),
            "pairs_test": min(self.pairs_test, self.online_pairs),
            "mlp": self.mlp and self.online_mlp,
            "linear_weight_decays": self.linear_weight_decays[-2:-1] or self.linear_weight_decays,
        })
