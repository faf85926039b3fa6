"""Checkpoint contents: DeepSpeed engine state + our client state + an encoder export.

Every rank calls ``save`` (DeepSpeed writes each rank's ZeRO partition); rank 0 also writes the
encoder as safetensors under ``encoder/`` so export never has to open a training checkpoint.
Atomicity comes from the reporter: Ray Train only records a checkpoint after every rank's files
are in storage, so a crash mid-write never leaves one that resume would pick.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

ENGINE_TAG = "engine"
STATE_NAME = "train_state.json"
ENCODER_DIR = "encoder"


@dataclass
class TrainState:
    """Where training stands; everything else (data position, augmentation seeds) derives from it."""

    step: int = 0
    mlflow_run_id: str | None = None


def save(engine, state: TrainState, out_dir: Path) -> None:
    engine.save_checkpoint(str(out_dir), tag=ENGINE_TAG, client_state={"train_state": asdict(state)},
                           save_latest=False)
    (out_dir / STATE_NAME).write_text(json.dumps(asdict(state)))


def load(engine, ckpt_dir: Path) -> TrainState:
    _, client_state = engine.load_checkpoint(str(ckpt_dir), tag=ENGINE_TAG,
                                             load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
    if client_state is None:
        raise RuntimeError(f"{ckpt_dir}: DeepSpeed could not load the checkpoint")
    return TrainState(**client_state["train_state"])


def read_state(ckpt_dir: Path) -> TrainState:
    return TrainState(**json.loads((Path(ckpt_dir) / STATE_NAME).read_text()))
