"""How a training worker's cores are shared between its loader processes and torch's threads.

``cluster.cpus_per_worker`` is what every Ray training worker asks Ray for, and Ray sets
``OMP_NUM_THREADS`` from that request. The worker spends those cores on two things: its loader
processes (``data.num_workers``; torch gives each of them one thread) and torch's intra-op
threads in the training process (``cluster.torch_threads``). Both are derived from the cores
unless set, so that the loaders are counted in what Ray reserves instead of running on top of it:

- with one core, loading runs in-process (no loader process) and torch gets the core;
- with an accelerator, the loaders do nearly all the CPU work (decoding and collating; the
  augmentation and the model run on the device), so they get every core but one, which is the
  training process's own;
- on CPU only, the model's compute dominates and decoding is a small share of it, so the loaders
  get a quarter of the cores (at least one) and torch the rest.

Torch threads are at least one; explicit settings are taken as given (they may oversubscribe).
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.config.schema import RunConfig


@dataclass(frozen=True)
class CpuSplit:
    """One training worker's cores: ``loader_workers`` processes + ``torch_threads`` threads."""

    cpus: int
    loader_workers: int
    torch_threads: int


def cpu_split(cfg: RunConfig, *, accelerated: bool) -> CpuSplit:
    """The split for a worker of ``cfg`` that trains on an accelerator (``accelerated``) or on
    the CPU. A resumed run keeps the loader count its checkpoint records (the data order depends
    on it; ``pretrain.train.loop``), whatever this derives."""
    cpus = cfg.cluster.cpus_per_worker
    loaders = cfg.data.num_workers
    if loaders is None:
        if cpus == 1:
            loaders = 0
        elif accelerated:
            loaders = cpus - 1
        else:
            loaders = max(1, cpus // 4)
    threads = cfg.cluster.torch_threads
    if threads is None:
        threads = max(1, cpus - loaders)
    return CpuSplit(cpus=cpus, loader_workers=loaders, torch_threads=threads)
