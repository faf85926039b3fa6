"""Checkpoint contents in a local folder: DeepSpeed engine state + our client state + an encoder.

Every rank calls ``save`` (DeepSpeed writes each rank's ZeRO partition); rank 0 also writes
``train_state.json`` and, through the loop, the encoder as safetensors under ``encoder/`` so
export never has to open a training checkpoint. Where the folder goes and how a complete one is
recognised (a hash manifest written last) is :mod:`pretrain.train.store`'s job.

Checkpoint storage is not trusted (a shared bucket may be writable by others), so nothing here
unpickles arbitrary objects: DeepSpeed's ``.pt`` files are read with ``torch.load(weights_only=
True)`` and the allow-list below, which holds the only non-tensor classes DeepSpeed writes.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from pretrain.config.safe_loading import unsafe_loading_problem

ENGINE_TAG = "engine"
STATE_NAME = "train_state.json"
ENCODER_DIR = "encoder"

# The classes DeepSpeed 0.19.8 pickles into its checkpoints besides tensors and builtins
# (found with torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO 0/1/2 checkpoints,
# AdamW and LARS, fp32 and bf16 autocast): all three are plain data (a loss-scale record, a
# (numel, start) pair, an int enum); rebuilding them runs no code of the file's choosing.
# A DeepSpeed upgrade that pickles another class makes resume refuse its checkpoints with a line
# naming the class: add it here only after reading what its reconstruction does.
SAFE_GLOBALS = [LossScaler, fragment_address, ZeroStageEnum]


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read without unpickling something outside the allow-list
    (or cannot be read at all)."""


@dataclass
class TrainState:
    """Where training stands; everything else (data position, augmentation seeds) derives from it."""

    step: int = 0
    mlflow_run_id: str | None = None
    # The data order depends on how many loader processes split a rank's shards; a resumed run
    # keeps the count it started with even where the derived count would differ (another device
    # kind, other cores). None: a checkpoint from before the count was recorded.
    loader_workers: int | None = None


def safe_load(path: str | Path, map_location=None, *, mmap: bool = False,
              label: str | None = None):
    """``torch.load`` that only rebuilds tensors, builtins and :data:`SAFE_GLOBALS`.

    Raises:
        UnsafeCheckpointError: the file asks for any other object (a pickle payload), or is no
            readable torch file; the message is one line naming the file (``label`` if given).
    """
    label = label or str(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"{label}: refused to unpickle it ({_unsafe_reason(err)})") \
            from None
    except Exception as err:  # noqa: BLE001 - a malformed pickle that the allow-list does not
        # stop raises whatever the unpickler meets (IndexError, KeyError, struct.error, ...):
        # every one means "skip this checkpoint", never a crash that repeats on every re-run.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(f"{label}: not a readable torch file ({first})") from None


def _unsafe_reason(err: pickle.UnpicklingError) -> str:
    """torch's many-line weights-only message cut to the line naming what was refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported" in line or "global" in line.lower()]
    reason = (named or lines or ["unpickling error"])[0].removeprefix("WeightsUnpickler error: ")
    return reason.split(" was not an allowed global")[0].split(". Please")[0]


class SafeTorchCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine with every load going through :func:`safe_load`
    (DeepSpeed 0.19.8's own ``load`` calls ``torch.load(weights_only=False)``). Saving is
    unchanged; every file DeepSpeed reads in ``load_checkpoint`` passes through ``load``."""

    def load(self, path: str, map_location=None):
        return safe_load(path, map_location)


def use_safe_loading(engine) -> None:
    """Make ``engine`` read checkpoints through :class:`SafeTorchCheckpointEngine`.

    Raises:
        ValueError: ``deepspeed.extra`` configured another checkpoint engine (its loader is not
            known to be safe), or universal checkpoints (DeepSpeed 0.19.8 reads their
            ``zero/*/*.pt`` files with ``torch.load(weights_only=False)`` directly, past any
            checkpoint engine). Config validation refuses both already, by the same rule
            (:func:`pretrain.config.safe_loading.unsafe_loading_problem`); this is the check on
            the config the engine was actually built from, then on the engine itself."""
    problem = unsafe_loading_problem(engine._config._param_dict)
    if problem is not None:
        raise ValueError(f"deepspeed.extra: {problem}")
    # Defence in depth, should DeepSpeed pick its loader by other settings than the rule knows.
    if engine.load_universal_checkpoint():
        raise ValueError("deepspeed.extra checkpoint.load_universal is not supported: DeepSpeed "
                         "reads universal checkpoints with torch.load(weights_only=False), which "
                         "runs any code planted in checkpoint storage")
    current = engine.checkpoint_engine
    if isinstance(current, SafeTorchCheckpointEngine):
        return
    if type(current) is not TorchCheckpointEngine:
        raise ValueError(f"checkpoint engine {type(current).__name__} is not supported: only "
                         "DeepSpeed's torch engine is loaded without unpickling (remove the "
                         "deepspeed.extra checkpoint writer settings)")
    engine.checkpoint_engine = SafeTorchCheckpointEngine(engine._config)


def save(engine, state: TrainState, out_dir: Path) -> None:
    """DeepSpeed's files of this rank under ``out_dir/engine``; rank 0 adds ``train_state.json``."""
    engine.save_checkpoint(str(out_dir), tag=ENGINE_TAG, client_state={"train_state": asdict(state)},
                           save_latest=False)
    if engine.global_rank == 0:
        (Path(out_dir) / STATE_NAME).write_text(json.dumps(asdict(state)))


def torch_files(ckpt_dir: Path) -> Iterator[Path]:
    return iter(sorted((Path(ckpt_dir) / ENGINE_TAG).glob("*.pt")))


def check_loadable(ckpt_dir: Path) -> None:
    """Unpickle every ``.pt`` file of the checkpoint the safe way without reading its tensors
    (memory-mapped), so a checkpoint that would be refused half-way through DeepSpeed's load is
    refused before the engine changes at all.

    Raises:
        UnsafeCheckpointError: naming the first file that is refused."""
    ckpt_dir = Path(ckpt_dir)
    for path in torch_files(ckpt_dir):
        safe_load(path, map_location="cpu", mmap=True,
                  label=path.relative_to(ckpt_dir).as_posix())


def load(engine, ckpt_dir: Path) -> TrainState:
    """Restore ``engine`` from ``ckpt_dir`` (never unpickling anything but plain data).

    Raises:
        UnsafeCheckpointError: a file the engine needs was refused."""
    use_safe_loading(engine)
    _, client_state = engine.load_checkpoint(str(ckpt_dir), tag=ENGINE_TAG,
                                             load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
    if client_state is None:
        raise RuntimeError(f"{ckpt_dir}: DeepSpeed could not load the checkpoint")
    return TrainState(**client_state["train_state"])


def read_state(ckpt_dir: Path) -> TrainState:
    return TrainState(**json.loads((Path(ckpt_dir) / STATE_NAME).read_text()))
