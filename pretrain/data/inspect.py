"""Inspect a shard set: what it holds, and which samples the reader would skip.

Every inspected sample goes through the reader's own decoder, so "unreadable" here means
exactly what the training reader would skip.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.data.decode import available_views, decode_sample
from pretrain.data.image import BadSample
from pretrain.data.errors import DataError
from pretrain.data.format import IMAGE_EXTENSIONS
from pretrain.data.index import shard_counts
from pretrain.data.sources import SourceLike, expand_sources, iter_shard

MAX_EXAMPLES = 10


@dataclass
class InspectReport:
    """Summary of a shard set (or its first ``max_samples`` samples).

    Attributes:
        source: what was inspected, as given.
        shards: number of shards in the source.
        samples: samples read.
        listed_samples: total the index (or a header scan) lists; ``None`` if it could not be
            determined.
        truncated: reading stopped at ``max_samples``.
        keys: file extension -> number of samples holding it.
        classes: label -> count (``-1`` counts samples without a label).
        class_names: class names from the index metadata, in label order.
        views_per_sample: number of images per sample -> count.
        image_sizes: ``(width, height)`` -> number of images.
        unreadable: samples the reader would skip.
        unreadable_examples: ``(shard name, key, reason)`` of the first few.
        broken_shards: ``(url, reason)`` of shards whose tar stream could not be read.
        metadata: extra keys of the index (e.g. ``kind``).
    """

    source: str
    shards: int = 0
    samples: int = 0
    listed_samples: int | None = None
    truncated: bool = False
    keys: dict[str, int] = field(default_factory=dict)
    classes: dict[int, int] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    views_per_sample: dict[int, int] = field(default_factory=dict)
    image_sizes: dict[tuple[int, int], int] = field(default_factory=dict)
    unreadable: int = 0
    unreadable_examples: list[tuple[str, str, str]] = field(default_factory=list)
    broken_shards: list[tuple[str, str]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def _image_count(sample: dict[str, Any]) -> int:
    views = available_views(sample)
    if views:
        return views
    return 1 if any(ext in sample for ext in IMAGE_EXTENSIONS) else 0


def inspect_shards(path_or_pattern: SourceLike, max_samples: int | None = None) -> InspectReport:
    """Read and decode the samples of a shard set (all, or the first ``max_samples``).

    Raises:
        DataError: the source is missing or empty (names the path). A shard whose tar cannot be
            read is recorded in ``broken_shards`` instead, so one bad shard does not hide the rest.
    """
    urls = expand_sources(path_or_pattern)
    report = InspectReport(source=str(path_or_pattern), shards=len(urls))
    try:
        counts, report.metadata = shard_counts(urls)
        report.listed_samples = sum(counts)
    except DataError:
        report.listed_samples = None
    names = report.metadata.get("classes")
    report.class_names = [str(n) for n in names] if isinstance(names, list) else []
    keys: Counter[str] = Counter()
    classes: Counter[int] = Counter()
    views: Counter[int] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    for url in urls:
        if max_samples is not None and report.samples >= max_samples:
            break
        stop = None if max_samples is None else max_samples - report.samples
        try:
            for sample in iter_shard(url, 0, stop):
                report.samples += 1
                keys.update(k for k in sample if not k.startswith("__"))
                count = _image_count(sample)
                views[count] += 1
                try:
                    decoded = decode_sample(sample, image_size=None, views=max(1, count), seed=(0,))
                except BadSample as exc:
                    report.unreadable += 1
                    if len(report.unreadable_examples) < MAX_EXAMPLES:
                        report.unreadable_examples.append(
                            (Path(url).name, str(sample["__key__"]), exc.reason))
                    continue
                classes[decoded.label] += 1
                height, width = decoded.images.shape[1:3]
                sizes[(width, height)] += count
        except DataError as exc:
            report.broken_shards.append((url, str(exc)))
    report.truncated = (max_samples is not None and report.samples >= max_samples
                        and (report.listed_samples is None or report.listed_samples > report.samples))
    report.keys = dict(sorted(keys.items()))
    report.classes = dict(sorted(classes.items()))
    report.views_per_sample = dict(sorted(views.items()))
    report.image_sizes = dict(sorted(sizes.items(), key=lambda kv: -kv[1]))
    return report


def _counts(items: dict[Any, int], limit: int = 12) -> str:
    parts = [f"{k}: {v}" for k, v in list(items.items())[:limit]]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(parts) + more if parts else "none"


def format_report(report: InspectReport) -> str:
    """A human-readable, multi-line summary of an ``InspectReport``."""
    listed = "unknown" if report.listed_samples is None else str(report.listed_samples)
    read = f"{report.samples} read" + (" (stopped at max_samples)" if report.truncated else "")
    broken = f" ({len(report.broken_shards)} broken)" if report.broken_shards else ""
    lines = [
        f"source:        {report.source}",
        f"shards:        {report.shards}{broken}",
        f"samples:       {read}; index/scan lists {listed}",
    ]
    if not report.truncated and report.listed_samples not in (None, report.samples):
        lines.append(f"  WARNING: {report.samples} samples read but {listed} listed (stale index?)")
    lines.append(f"keys:          {_counts(report.keys)}")
    names = report.class_names
    classes = {(f"{k} ({names[k]})" if 0 <= k < len(names) else ("unlabeled" if k == -1 else str(k))): v
               for k, v in report.classes.items()}
    lines.append(f"classes:       {_counts(classes, limit=20)}")
    lines.append(f"views/sample:  {_counts(report.views_per_sample)}")
    sizes = {f"{w}x{h}": n for (w, h), n in report.image_sizes.items()}
    lines.append(f"image sizes:   {_counts(sizes, limit=6)}")
    frac = f" ({report.unreadable / report.samples:.2%})" if report.samples else ""
    lines.append(f"unreadable:    {report.unreadable}{frac}")
    lines += [f"  {shard} {key}: {reason}" for shard, key, reason in report.unreadable_examples]
    lines += [f"  broken shard {url}: {reason}" for url, reason in report.broken_shards]
    extra = {k: v for k, v in report.metadata.items() if k != "classes"}
    if extra:
        lines.append("metadata:      " + ", ".join(f"{k}={v}" for k, v in extra.items()))
    return "\n".join(lines)
