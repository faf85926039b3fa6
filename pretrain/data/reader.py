"""The streaming shard reader: IterableDatasets that serve exactly their epoch plans.

A run reads through one persistent, endless loader (``make_endless_loader``): its worker
processes start once and go from one epoch to the next without a restart, each epoch in the
order of its plan (``plan_epoch(..., seed, epoch)``). ``make_loader`` serves a single epoch.

Per loader worker and epoch: read the worker's segments in order (webdataset tar primitives, any
URL webdataset opens), optionally pass the raw samples through a seeded shuffle buffer (bounded by
half the worker's slice, so batches flow long before the slice has been read), skip the batches a
resumed run already consumed without decoding them, then decode and collate only the batches that
are served.

Unreadable samples are skipped and counted, and the batch is filled from the worker's next
samples. ``max_skip_frac`` is judged over everything the loader worker reads this epoch, never on
a prefix (two bad samples among the first hundred of a healthy shard are no reason to stop): the
stream stops as soon as the unreadable samples exceed that share of the worker's whole range,
which is then certain, or at the end of the range; the error names each shard with its counts.
A worker's slice holds exactly ``batches * batch_size`` samples, so every skipped
sample leaves its last batch short; those places are filled by repeating the worker's most
recently decoded good samples (cycling through up to ``batch_size`` of them), counted as
``padded``. This keeps ``steps_per_epoch`` identical on every rank whatever the data holds.
Resume with ``skip_batches`` is exact when the skipped batches held no unreadable sample;
otherwise the resumed stream starts up to that many samples earlier than the original did.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pretrain.data.decode import DecodedSample, collate, decode_sample
from pretrain.data.image import BadSample
from pretrain.data.errors import DataError
from pretrain.data.format import ShardBatch
from pretrain.data.plan import RankPlan, WorkerPlan, plan_epoch, steps_per_epoch
from pretrain.data.sources import iter_shard, validate_sources

logger = logging.getLogger("pretrain.data")


@dataclass
class LoaderBatch(ShardBatch):
    """A ``ShardBatch`` as the loader yields it, with the worker's bookkeeping.

    Attributes:
        padded: samples this worker repeated since the epoch began to fill batches left short
            by unreadable samples.
        worker: the plan worker (of this epoch's plan) that produced the batch.
        epoch: the epoch the batch belongs to.
        index: its rank batch index within the epoch (the run's step is
            ``epoch * steps_per_epoch + index``).
    """

    padded: int = 0
    worker: int = 0
    epoch: int = 0
    index: int = 0

    def pin_memory(self) -> "LoaderBatch":
        """Page-locked copy (torch's pin-memory thread calls this for custom batch types)."""
        return LoaderBatch(
            images=self.images.pin_memory(), labels=self.labels.pin_memory(),
            latents={k: v.pin_memory() for k, v in self.latents.items()},
            skipped=self.skipped, seen=self.seen, padded=self.padded, worker=self.worker,
            epoch=self.epoch, index=self.index,
        )


def shuffle_buffer_size(requested: int, worker_samples: int) -> int:
    """The shuffle buffer a loader worker uses: ``requested``, but at most half of the worker's
    slice, so its first batch never waits for the whole slice to be read."""
    return min(requested, worker_samples // 2)


def _shuffled(items: Iterator[tuple], size: int, rng: np.random.Generator) -> Iterator[tuple]:
    """A shuffle buffer of ``size`` items: deterministic given ``rng``."""
    buffer: list[tuple] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        out, buffer[j] = buffer[j], item
        yield out
    order = rng.permutation(len(buffer))
    for j in order:
        yield buffer[j]


class ShardStream(IterableDataset):
    """Serves one rank's plan for one epoch; each DataLoader worker serves its own part.

    Iterated outside a DataLoader worker it serves all of the plan's workers in the order the
    DataLoader would (rank batch ``b`` from worker ``b % num_workers``), so the sequence is the
    same either way.
    """

    def __init__(self, plan: RankPlan, *, image_size: int | None, views: int = 1,
                 shuffle_buffer: int = 0, skip_batches: int = 0, max_skip_frac: float = 0.01,
                 keep_encoded: bool = False) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if not 0 <= skip_batches <= plan.steps_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {plan.steps_per_epoch}], got {skip_batches}")
        for worker in plan.workers:
            if any(seg.url is None for seg in worker.segments):
                raise ValueError("the plan's segments need URLs (pass urls= to plan_epoch)")
        self.plan = plan
        self.image_size = image_size
        self.views = views
        self.shuffle_buffer = shuffle_buffer
        self.skip_batches = skip_batches
        self.max_skip_frac = max_skip_frac
        self.keep_encoded = keep_encoded

    def __len__(self) -> int:
        return self.plan.steps_per_epoch - self.skip_batches

    def __iter__(self) -> Iterator[LoaderBatch]:
        info = get_worker_info()
        if info is not None:
            if info.num_workers != self.plan.num_workers:
                raise DataError(f"the loader has {info.num_workers} workers but the epoch was planned "
                                f"for {self.plan.num_workers}")
            # The DataLoader asks its worker 0 first, but after skipping k batches the next rank
            # batch (k) belongs to plan worker k % n: loader worker i therefore plays plan worker
            # (i + k) % n, which keeps the output order exactly the tail of the full epoch.
            yield from self.worker_batches((info.id + self.skip_batches) % self.plan.num_workers)
            return
        streams = [self.worker_batches(w) for w in range(self.plan.num_workers)]
        for b in range(self.skip_batches, self.plan.steps_per_epoch):
            yield next(streams[b % self.plan.num_workers])

    def _raw(self, worker: WorkerPlan) -> Iterator[tuple]:
        """``(shard_index, offset, raw sample)`` over the worker's segments, in plan order."""
        for seg in worker.segments:
            assert seg.url is not None
            offset = seg.start
            for sample in iter_shard(seg.url, seg.start, seg.stop):
                yield seg.shard_index, offset, sample
                offset += 1
            if offset < seg.stop:
                raise DataError(f"shard {seg.url} ended after {offset} samples but its count says "
                                f"at least {seg.stop} (stale index.json or truncated shard)")

    def worker_batches(self, w: int) -> Iterator[LoaderBatch]:
        """The batches loader worker ``w`` serves this epoch (after ``skip_batches``)."""
        plan, worker = self.plan, self.plan.workers[w]
        size = plan.batch_size
        skip = worker.batches_before(self.skip_batches)
        to_serve = worker.batches - skip
        if to_serve <= 0:
            return
        raw = self._raw(worker)
        buffer = shuffle_buffer_size(self.shuffle_buffer, worker.samples)
        if buffer > 0:
            rng = np.random.default_rng([plan.seed, plan.epoch, plan.rank, w])
            raw = _shuffled(raw, buffer, rng)
        # Resume: the already-consumed batches are read past without being decoded.
        next(itertools.islice(raw, skip * size, skip * size), None)

        recent: deque[DecodedSample] = deque(maxlen=size)
        pending: list[DecodedSample] = []
        seen = skipped = padded = served = 0
        bad_urls: dict[str, int] = {}
        read_urls: dict[str, int] = {}
        # The samples this worker reads this epoch: its range after the resumed batches.
        planned = to_serve * size

        def batch() -> LoaderBatch:
            images, labels, latents = collate(pending)
            return LoaderBatch(images=images, labels=labels, latents=latents, skipped=skipped,
                               seen=seen, padded=padded, worker=w, epoch=plan.epoch,
                               index=worker.first_batch + (skip + served) * worker.stride)

        for shard_index, offset, sample in raw:
            seen += 1
            url = str(sample.get("__url__", ""))
            read_urls[url] = read_urls.get(url, 0) + 1
            try:
                decoded: DecodedSample | None = decode_sample(
                    sample, image_size=self.image_size, views=self.views,
                    seed=(plan.seed, plan.epoch, plan.rank, shard_index, offset),
                    keep_encoded=self.keep_encoded)
            except BadSample as exc:
                decoded = None
                skipped += 1
                if url not in bad_urls:
                    logger.warning("shard %s: skipping unreadable sample %s (%s); further unreadable "
                                   "samples of this shard are only counted", _shown(url),
                                   sample.get("__key__"), exc.reason)
                bad_urls[url] = bad_urls.get(url, 0) + 1
                # Already certain to exceed the limit over the whole range: stop now.
                self._check_skips(skipped, max(planned, seen), bad_urls, read_urls, w)
            if decoded is None:
                continue
            pending.append(decoded)
            recent.append(decoded)
            if len(pending) == size:
                yield batch()
                pending = []
                served += 1
                if served == to_serve:
                    return
        if skipped:
            self._check_skips(skipped, seen, bad_urls, read_urls, w)
        if not recent:
            raise DataError(f"no readable sample in the range of loader worker {w} of rank "
                            f"{plan.rank} (shards: {', '.join(bad_urls) or 'none'})")
        missing = (to_serve - served) * size - len(pending)
        logger.warning("rank %d loader worker %d: %d of %d samples unreadable; repeating %d good "
                       "samples so the epoch keeps its %d steps", plan.rank, w, skipped, seen,
                       missing, plan.steps_per_epoch)
        fill = itertools.cycle(list(recent))
        while served < to_serve:
            while len(pending) < size:
                pending.append(next(fill))
                padded += 1
            yield batch()
            pending = []
            served += 1

    def _check_skips(self, skipped: int, out_of: int, bad_urls: dict[str, int],
                     read_urls: dict[str, int], w: int) -> None:
        """Raise when ``skipped`` unreadable samples exceed ``max_skip_frac`` of ``out_of``
        (the worker's whole range, or all it read); the message names the shards and counts."""
        if skipped <= self.max_skip_frac * out_of:
            return
        worst = sorted(bad_urls.items(), key=lambda kv: -kv[1])[:3]
        # DataError redacts its own message, shard URLs included.
        shards = ", ".join(f"{url} ({n} of {read_urls.get(url, n)} read)" for url, n in worst)
        more = f" and {len(bad_urls) - 3} more" if len(bad_urls) > 3 else ""
        raise DataError(f"too many unreadable samples: {skipped} of {out_of} = "
                        f"{skipped / out_of:.1%} > max_skip_frac {self.max_skip_frac:.1%} (rank "
                        f"{self.plan.rank}, loader worker {w}); shards: {shards}{more}")


def _shown(url: str) -> str:
    """``url`` as logs and errors may show it (a token in a shard URL is redacted)."""
    from pretrain.trust.redact import redact_text  # lazy: pretrain.config imports pretrain.data

    return redact_text(url)


def _as_is(batch: LoaderBatch) -> LoaderBatch:
    """Batches are collated in the worker already."""
    return batch


def _check_shards(urls: Sequence[str], counts: Sequence[int], *, world_size: int,
                  batch_size: int) -> int:
    """Validate the shard list; returns the steps per epoch (``DataError`` when there are none)."""
    validate_sources(urls)
    if len(urls) != len(counts):
        raise ValueError(f"{len(urls)} shard URLs but {len(counts)} counts")
    steps = steps_per_epoch(counts, world_size, batch_size)
    if steps == 0:
        raise DataError(f"{sum(counts)} samples in {urls[0]} and {len(urls) - 1} other shard(s) are "
                        f"too few for one batch of {batch_size} on each of {world_size} rank(s)")
    return steps


def _data_loader(dataset: IterableDataset, num_workers: int, prefetch_factor: int,
                 pin_memory: bool | None) -> DataLoader:
    return DataLoader(
        dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )


def make_loader(urls: Sequence[str], counts: Sequence[int], *, world_size: int, rank: int,
                batch_size: int, num_workers: int, image_size: int | None, views: int = 1,
                seed: int, epoch: int, skip_batches: int = 0, shuffle_buffer: int = 1000,
                max_skip_frac: float = 0.01, prefetch_factor: int = 2,
                pin_memory: bool | None = None, keep_encoded: bool = False
                ) -> tuple[DataLoader, RankPlan]:
    """A DataLoader serving this rank's batches of ONE epoch, and the plan behind it (training
    uses ``make_endless_loader``; this serves inspection and tests of a single epoch).

    Every rank gets ``plan.steps_per_epoch`` batches of exactly ``batch_size`` samples
    (``LoaderBatch``, uint8 images ``B x V x 3 x H x W``); ``skip_batches`` drops the first
    batches of the rank (resume). The raw shuffle buffer holds ``shuffle_buffer`` undecoded
    samples per worker (memory: that many samples' bytes), at most half the worker's slice.

    Raises:
        DataError: empty or missing shards, or too few samples for one batch per rank.
    """
    _check_shards(urls, counts, world_size=world_size, batch_size=batch_size)
    plan = plan_epoch(counts, world_size=world_size, rank=rank, num_workers=num_workers,
                      batch_size=batch_size, seed=seed, epoch=epoch, urls=urls)
    dataset = ShardStream(plan, image_size=image_size, views=views, shuffle_buffer=shuffle_buffer,
                          skip_batches=skip_batches, max_skip_frac=max_skip_frac,
                          keep_encoded=keep_encoded)
    return _data_loader(dataset, num_workers, prefetch_factor, pin_memory), plan


class EndlessStream(IterableDataset):
    """Serves one rank's batches epoch after epoch, from global step ``start_step`` on.

    Rank batch ``b`` of epoch ``e`` is global step ``g = e * steps_per_epoch + b``. Torch's
    DataLoader takes the batches of an IterableDataset from its workers in turn, so loader
    worker ``i`` serves the global steps ``start_step + i + j * n`` (``n`` workers,
    ``j = 0, 1, ...``) and never runs out. Within epoch ``e`` those are exactly the batches of
    plan worker ``(i + start_step - e * steps_per_epoch) mod n`` of ``plan_epoch(..., epoch=e)``
    (the plan deals batch ``b`` to worker ``b mod n``), so loader worker ``i`` plays that plan
    worker, epoch after epoch, and the output order is the concatenation of the per-epoch
    plans from ``start_step`` on. The first epoch skips its already consumed batches without
    decoding them; later epochs start at their beginning. Each epoch's bookkeeping (``seen``,
    ``skipped``, ``padded``, the skip limit) starts afresh, as with a loader per epoch.

    Iterated outside a DataLoader worker it plays all ``n`` loader workers in that same turn,
    so the sequence is the same either way.
    """

    def __init__(self, urls: Sequence[str], counts: Sequence[int], *, world_size: int, rank: int,
                 batch_size: int, num_workers: int, seed: int, start_step: int = 0,
                 image_size: int | None, views: int = 1, shuffle_buffer: int = 0,
                 max_skip_frac: float = 0.01, keep_encoded: bool = False) -> None:
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.urls, self.counts = list(urls), list(counts)
        self.world_size, self.rank, self.batch_size = world_size, rank, batch_size
        self.num_workers, self.seed, self.start_step = num_workers, seed, start_step
        self.image_size, self.views = image_size, views
        self.shuffle_buffer, self.max_skip_frac = shuffle_buffer, max_skip_frac
        self.keep_encoded = keep_encoded
        self.steps_per_epoch = steps_per_epoch(self.counts, world_size, batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError("too few samples for one batch per rank")

    def plan(self, epoch: int) -> RankPlan:
        """This rank's plan of ``epoch`` (what the loader serves then)."""
        return plan_epoch(self.counts, world_size=self.world_size, rank=self.rank,
                          num_workers=self.num_workers, batch_size=self.batch_size,
                          seed=self.seed, epoch=epoch, urls=self.urls)

    def __iter__(self) -> Iterator[LoaderBatch]:
        n = max(1, self.num_workers)
        info = get_worker_info()
        if info is not None:
            if info.num_workers != n:
                raise DataError(f"the loader has {info.num_workers} workers but the stream was "
                                f"planned for {n}")
            yield from self.loader_worker_batches(info.id)
            return
        streams = [self.loader_worker_batches(i) for i in range(n)]
        for i in itertools.cycle(range(n)):
            yield next(streams[i])

    def loader_worker_batches(self, i: int) -> Iterator[LoaderBatch]:
        """The endless batch sequence of loader worker ``i`` (see the class docstring)."""
        n = max(1, self.num_workers)
        epoch, skip = divmod(self.start_step, self.steps_per_epoch)
        while True:
            stream = ShardStream(self.plan(epoch), image_size=self.image_size, views=self.views,
                                 shuffle_buffer=self.shuffle_buffer, skip_batches=skip,
                                 max_skip_frac=self.max_skip_frac,
                                 keep_encoded=self.keep_encoded)
            plan_worker = (i + self.start_step - epoch * self.steps_per_epoch) % n
            yield from stream.worker_batches(plan_worker)
            epoch, skip = epoch + 1, 0


class EndlessLoader:
    """One run's persistent data loader: iterate it for ``LoaderBatch`` after ``LoaderBatch``,
    epoch after epoch, without end (the caller stops; ``close()`` or ``with`` ends the worker
    processes). Only one pass: iterating again continues where the last one stopped, and after
    ``close()`` it serves nothing more.

    Attributes:
        steps_per_epoch: batches per epoch on every rank.
        start_step: global step of the first batch served.
        num_workers: loader worker processes (0: in-process).
    """

    def __init__(self, stream: EndlessStream, loader: DataLoader) -> None:
        self.stream = stream
        self.loader = loader
        self.steps_per_epoch = stream.steps_per_epoch
        self.start_step = stream.start_step
        self.num_workers = stream.num_workers
        self._iterator: Iterator[LoaderBatch] | None = None
        self._closed = False

    def __iter__(self) -> "EndlessLoader":
        return self

    def __next__(self) -> LoaderBatch:
        if self._iterator is None:
            if self._closed:
                raise StopIteration  # closed for good: a new pass would restart at start_step
            self._iterator = iter(self.loader)  # starts the worker processes, once
        return next(self._iterator)

    def close(self) -> None:
        """Stop the worker processes now (also done when the loader is garbage collected)."""
        self._closed = True
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's multi-process iterator
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> "EndlessLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_endless_loader(urls: Sequence[str], counts: Sequence[int], *, world_size: int, rank: int,
                        batch_size: int, num_workers: int, image_size: int | None, views: int = 1,
                        seed: int, start_step: int = 0, shuffle_buffer: int = 512,
                        max_skip_frac: float = 0.01, prefetch_factor: int = 2,
                        pin_memory: bool | None = None, keep_encoded: bool = False
                        ) -> EndlessLoader:
    """The run's one persistent loader: this rank's batches from global step ``start_step`` on,
    epoch after epoch, in the order of the per-epoch plans ``plan_epoch(counts, ..., seed, epoch)``.

    Iterating the result yields ``LoaderBatch``es (uint8 images ``B x V x 3 x H x W``, labels,
    latents) of exactly ``batch_size`` samples; each names its place: ``batch.epoch`` and
    ``batch.index`` (rank batch index within the epoch), so the global step of a batch is
    ``batch.epoch * loader.steps_per_epoch + batch.index`` and the first one is ``start_step``.
    The worker processes start on the first ``next()`` and keep running across epoch boundaries
    until ``close()`` (or leaving a ``with`` block). Resuming at ``start_step`` skips the consumed
    batches of that epoch without decoding them; the data order is the same as without the
    interruption. ``shuffle_buffer`` undecoded samples per loader worker (at most half its
    slice) are shuffled, deterministically in (seed, epoch, rank, worker). ``pin_memory``
    None: pin when CUDA is available. ``keep_encoded``: the workers check JPEG headers and keep
    the bytes, and ``batch.images`` is a ``PackedJpegs`` that ``batch.to(cuda)`` decodes there
    (``pretrain.data.gpu_decode``).

    Raises:
        DataError: empty or missing shards, or too few samples for one batch per rank.
    """
    _check_shards(urls, counts, world_size=world_size, batch_size=batch_size)
    stream = EndlessStream(urls, counts, world_size=world_size, rank=rank, batch_size=batch_size,
                           num_workers=num_workers, seed=seed, start_step=start_step,
                           image_size=image_size, views=views, shuffle_buffer=shuffle_buffer,
                           max_skip_frac=max_skip_frac, keep_encoded=keep_encoded)
    return EndlessLoader(stream, _data_loader(stream, num_workers, prefetch_factor, pin_memory))
