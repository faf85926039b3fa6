"""Deterministic seeds derived from (seed, purpose, step, rank, ...)."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on every part, stable across processes and Python runs
    (unlike ``hash``), so each (seed, step, rank) gets its own independent stream."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator_for(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded with ``derive_seed(*parts)``."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(*parts))
    return gen
