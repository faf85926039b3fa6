"""Which DeepSpeed settings would make resume unpickle checkpoint files: the one rule, shared by
config validation (``deepspeed.extra``, before anything starts) and the worker
(:func:`pretrain.train.checkpoint.use_safe_loading`, on the engine's own config).

Resume reads checkpoints only through DeepSpeed's torch checkpoint engine with a weights-only
loader (:mod:`pretrain.train.checkpoint`). A DeepSpeed 0.19.8 config defeats that when it

- sets ``checkpoint.load_universal``: universal checkpoints' ``zero/*/*.pt`` files are read with
  ``torch.load(weights_only=False)`` directly, past any checkpoint engine;
- sets ``checkpoint.writer``: ``create_checkpoint_engine`` then builds the fast or decoupled
  engine, whose loader is not the one we make safe;
- sets ``datastates_ckpt`` to anything but ``false``: the DataStates engine, likewise.

Pure (no DeepSpeed import) so that validating a config stays cheap; the keys and their readings
follow DeepSpeed 0.19.8's ``runtime/config.py`` and ``runtime/checkpoint_engine/utils.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def unsafe_loading_problem(ds_config: Mapping[str, Any]) -> str | None:
    """One line naming the key of ``ds_config`` (a DeepSpeed config dict) that would make
    checkpoint loading unpickle arbitrary objects, and why; None when there is none."""
    section = ds_config.get("checkpoint")
    if isinstance(section, Mapping):
        if section.get("load_universal"):
            return ("checkpoint.load_universal is not supported: DeepSpeed reads universal "
                    "checkpoints with torch.load(weights_only=False), which runs any code "
                    "planted in checkpoint storage")
        if section.get("writer") is not None:
            return ("checkpoint.writer is not supported: it selects another DeepSpeed checkpoint "
                    "engine, and only DeepSpeed's torch engine is loaded without unpickling "
                    "(remove the setting)")
    if ds_config.get("datastates_ckpt", False) is not False:
        return ("datastates_ckpt is not supported: it selects the DataStates checkpoint engine, "
                "and only DeepSpeed's torch engine is loaded without unpickling (remove the "
                "setting)")
    return None
