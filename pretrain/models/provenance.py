"""What an exported encoder was trained on, in a form that means something on another machine.

A data path like ``/home/me/.pretrain/data/synth3d-3f2a...`` names a folder on the training
machine only. The exported files record instead:

- ``spec``: the data as configured: ``{"source": "synth3d", "settings": {...}}`` for the
  generated synthetic 3D set (the generator settings reproduce it bit for bit), else the path or
  URL pattern the config gave (credentials redacted);
- ``fingerprint``: ``sha256:`` of the shard set's layout: every shard's file name and sample count
  plus the index metadata (classes, generator settings). Two copies of a shard set on different
  machines or buckets get the same fingerprint; adding, dropping or re-cutting shards changes
  it. It does not hash the shard bytes (that would mean reading the whole data set at every
  checkpoint);
- ``samples``: the total sample count.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from pretrain.trust.redact import redact_text


@functools.lru_cache(maxsize=16)
def _describe(data: str) -> tuple[str, ...]:
    from pretrain.data.index import open_source

    shards = open_source(data)
    names = [url.rstrip("/").rsplit("/", 1)[-1] for url in shards.urls]
    layout = {"shards": [[n, c] for n, c in zip(names, shards.counts)],
              "metadata": shards.metadata}
    digest = hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()
    settings = shards.metadata.get("config") if shards.metadata.get("kind") == "synth3d" else None
    return (f"sha256:{digest}", str(shards.total), json.dumps(settings))


def data_provenance(data: str) -> dict[str, Any]:
    """``{"spec": ..., "fingerprint": ..., "samples": ...}`` of the shard source ``data``.

    Data that cannot be opened here (a remote store the exporting machine cannot reach) keeps
    its spec with ``fingerprint`` None: provenance must never stop a checkpoint."""
    from pretrain.data.errors import DataError

    try:
        fingerprint, samples, settings = _describe(str(data))
    except (DataError, OSError, ValueError):
        return {"spec": {"source": redact_text(str(data))}, "fingerprint": None, "samples": None}
    parsed = json.loads(settings)
    spec = {"source": "synth3d", "settings": parsed} if parsed is not None else \
        {"source": redact_text(str(data))}
    return {"spec": spec, "fingerprint": fingerprint, "samples": int(samples)}
