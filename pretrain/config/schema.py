"""Typed run configuration: every default lives here; YAML files and ``key=value`` only override."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)

from augment.config import AugmentConfig
from pretrain.config.objective import ObjectiveConfig, move_renamed_keys
from pretrain.trust.redact import has_userinfo
from pretrain.config.safe_loading import unsafe_loading_problem
from pretrain.data.synth3d import Synth3DConfig
from pretrain.probes.config import ProbesConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    path: str | None = Field(
        None,
        description="Folder or URL pattern of webdataset shards. None: synthetic 3D objects are "
        "generated on the spot (settings in data.synth3d) into data.cache_dir.",
    )
    synth3d: Synth3DConfig = Field(default_factory=lambda: Synth3DConfig(
        classes=12, instances_per_class=48, views=2, size=64, shard_size=96))
    cache_dir: str = Field(".pretrain/data", description="Where generated data sets are kept.")
    image_size: int = Field(64, ge=8, description="Decoded image side in pixels.")
    views: int = Field(1, ge=1, description="Stored views decoded per sample (multi-view data).")
    batch_size: int = Field(64, ge=2, description="Samples per step per worker.")
    num_workers: int | None = Field(
        None, ge=0, description="Loader processes per training worker (0: in-process). None: "
        "derived from cluster.cpus_per_worker (see pretrain.train.resources).")
    shuffle_buffer: int = Field(512, ge=0, description="Undecoded samples in each loader "
                                "process's shuffle buffer (at most half its slice of an epoch).")
    max_skip_frac: float = Field(0.01, ge=0.0, le=1.0,
                                 description="Stop when more than this share of samples is bad.")
    gpu_decode: bool = Field(
        False, description="Decode JPEG shards in batches on the GPU (nvJPEG) instead of in the "
        "loader processes; CUDA only (elsewhere one log line, and the CPU decodes). Needs JPEG "
        "images (pretrain data import --format jpeg, or data.synth3d.image_format=jpeg).")

    @field_validator("gpu_decode")
    @classmethod
    def _gpu_decode_needs_jpeg(cls, gpu_decode: bool, info: ValidationInfo) -> bool:
        # Generated data is known before anything starts; imported shards are checked by the
        # loader (one line naming the sample) because only reading them tells.
        synth3d = info.data.get("synth3d")
        if gpu_decode and info.data.get("path") is None and synth3d is not None \
                and synth3d.image_format != "jpeg":
            raise ValueError("needs JPEG images, but the generated synthetic data is PNG; set "
                             "data.synth3d.image_format=jpeg")
        return gpu_decode


class EncoderConfig(_Section):
    model: str = Field("resnet18", description="Any timm model name (built with num_classes=0).")
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="Extra keyword arguments for timm.create_model.")
    stem: Literal["timm", "cifar"] = Field(
        "timm", description="'cifar': 3x3 stride-1 conv and no max-pool for timm ResNets on "
        "32-64 px images (pretrain.models.encoder.apply_stem); 'timm': the model's own stem.")

    @field_validator("model")
    @classmethod
    def _known_timm_model(cls, name: str) -> str:
        import timm

        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}")
        return name


class OptimConfig(_Section):
    name: Literal["adamw", "lars"] = "adamw"
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (after warmup).")
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, description="LARS momentum.")
    lars_eta: float = Field(0.02, gt=0, description="LARS trust coefficient.")
    warmup_frac: float = Field(0.1, ge=0, le=1, description="Share of steps with linear warmup.")
    min_lr_frac: float = Field(0.01, ge=0, le=1, description="Final LR as a share of the peak.")
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm; 0 disables clipping.")


class DeepSpeedConfig(_Section):
    zero_stage: Literal[0, 1, 2] = 0
    bf16: Literal["auto"] | bool = Field(
        "auto", description="bf16 autocast with fp32 master weights; auto: on GPU only.")
    extra: dict[str, Any] = Field(default_factory=dict,
                                  description="Merged into the generated DeepSpeed config.")

    @field_validator("extra")
    @classmethod
    def _keeps_checkpoint_loading_safe(cls, extra: dict[str, Any]) -> dict[str, Any]:
        # The generated config sets none of these keys, so checking ``extra`` checks the merge.
        problem = unsafe_loading_problem(extra)
        if problem is not None:
            raise ValueError(problem)
        return extra


class ClusterConfig(_Section):
    address: str | None = Field(None, description="Ray address; None starts an embedded local Ray.")
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: int = Field(
        2, ge=1, description="Cores each training worker asks Ray for; its loader processes and "
        "torch threads are counted in them (see pretrain.train.resources).")
    torch_threads: int | None = Field(
        None, ge=1, description="Torch threads per training worker. None: the cores left to it "
        "after the loader processes (at least 1).")
    use_gpu: bool | None = Field(None, description="None: use GPUs when the cluster has them.")
    max_failures: int = Field(0, ge=-1, description="Worker-group restarts; -1 = unlimited.")
    storage_path: str = Field(".pretrain/runs", description="Checkpoints: local path or s3:// URI "
                              "(shared by all nodes on a multi-node cluster).")
    storage_endpoint: str | None = Field(
        None, pattern=r"^https?://[^/\s]+/?$",
        description="Endpoint of an S3-compatible store for s3:// storage (MinIO, Ceph, ...), "
        "e.g. http://minio:9000. None: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS. "
        "Credentials only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).")
    storage_region: str | None = Field(
        None, description="S3 region; None: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1.")

    @field_validator("storage_path", "storage_endpoint")
    @classmethod
    def _no_userinfo(cls, value: str | None) -> str | None:
        # Storage locations are recorded with the run (the pretrain.storage tag) and pyarrow
        # cannot use an endpoint with userinfo anyway: keys never belong in them.
        if value is not None and has_userinfo(value):
            raise ValueError("holds URI userinfo (user:pass@), which would be stored with the "
                             "run; give S3 keys through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                             "(environment variables or a Kubernetes Secret)")
        return value


class CheckpointConfig(_Section):
    every_steps: int = Field(100, ge=1)
    keep: int = Field(2, ge=1, description="Checkpoints kept (oldest deleted first).")


class TrackingConfig(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; None: $MLFLOW_TRACKING_URI, "
                            "else a SQLite store in the working directory.")
    experiment: str = "invariant-pretrain"
    log_every_steps: int = Field(10, ge=1)
    system_metrics: bool = True


class RegistryConfig(_Section):
    enabled: bool = Field(True, description="Register the final encoder in the Model Registry.")
    name: str = Field("invariant-encoder", min_length=1)
    alias: str | None = Field(None, description="Extra alias besides 'latest'.")


class TrainConfig(_Section):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(
        None, ge=1, description="Stop at this global step (the LR schedule still spans all epochs); "
        "re-run the same name without it to continue.")


class RunConfig(_Section):
    name: str = Field("quickstart", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Run name; re-running the same name resumes it.")
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        # Keys moved from augment to the objective that owns them (pretrain.config.objective).
        return move_renamed_keys(data)

    @model_validator(mode="after")
    def _views_follow_objective(self) -> "RunConfig":
        # The recipe follows the objective unless the user picked one on purpose; the settings
        # the recipe shares with an objective (e.g. objective.care.chunk_size) reach the
        # augmenter through augment's excluded fields of the same name.
        if "recipe" not in self.augment.model_fields_set:
            self.augment.recipe = self.objective.objective_cls().view_recipe
        for option, value in self.objective.recipe_options(self.augment.recipe).items():
            setattr(self.augment, option, value)
        return self

    @model_validator(mode="after")
    def _enough_decoded_views(self) -> "RunConfig":
        from augment.recipes import build_recipe

        needed = max(spec.source for spec in build_recipe(self.augment).views) + 1
        if self.data.views < needed:
            raise ValueError(f"data.views: recipe {self.augment.recipe!r} cuts views from "
                             f"{needed} decoded views per sample; set data.views >= {needed}")
        return self

    @model_validator(mode="after")
    def _recipe_gives_the_objective_its_action(self) -> "RunConfig":
        from pretrain.config.compat import recipe_problem

        problem = recipe_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self
