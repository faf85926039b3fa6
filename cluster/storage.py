"""Where checkpoints live: a local folder or an ``s3://`` bucket on AWS or any S3-compatible
store (MinIO, Ceph, ...). Credentials are never configured here: they come from the standard
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) of every node."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pretrain.config.schema import ClusterConfig
from pretrain.train.store import CheckpointStore

S3_SCHEME = "s3://"
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class Storage:
    """A storage root as Ray Train wants it: a filesystem (None: let Ray resolve the URI) and a
    path inside it; ``uri`` is the user-facing form (``s3://bucket/prefix`` or an absolute path)."""

    filesystem: pafs.FileSystem | None
    path: str
    uri: str

    def join(self, *parts: str) -> str:
        """A path below the root, in the filesystem's own spelling."""
        return "/".join([self.path.rstrip("/"), *parts])


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def first_env(names: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    """The value of the first of ``names`` that is set and not empty."""
    return next((env[n] for n in names if env.get(n)), None)


def s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    """An S3 filesystem for ``endpoint`` (``http://host:port``; None: AWS itself). Keys are not
    passed, so the AWS SDK's default chain reads them from the environment of the process."""
    kwargs: dict[str, object] = {"region": region or DEFAULT_REGION}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"storage endpoint {endpoint!r} is not an http(s) URL")
        kwargs.update(scheme=parsed.scheme, endpoint_override=parsed.netloc)
    return pafs.S3FileSystem(**kwargs)


def storage_uri(storage_path: str) -> str:
    """``storage_path`` in the form shown to users: an absolute local path or a URI."""
    if "://" in storage_path:
        scheme, _, rest = storage_path.partition("://")
        return f"{scheme}://{rest.rstrip('/')}"
    return str(Path(storage_path).expanduser().resolve())


def resolve_storage(cluster: ClusterConfig, env: Mapping[str, str] | None = None) -> Storage:
    """``cluster.storage_path`` as a :class:`Storage`: local paths become absolute; ``s3://``
    gets an explicit filesystem whose endpoint is ``cluster.storage_endpoint``, else
    ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL`` (AWS itself when none is set)."""
    env = os.environ if env is None else env
    uri = storage_uri(cluster.storage_path)
    if not is_s3(uri):  # local, or gs:// / hdfs:// that Ray resolves through pyarrow itself
        return Storage(None, uri, uri)
    bucket_path = uri.removeprefix(S3_SCHEME).strip("/")
    if not bucket_path:
        raise ValueError(f"cluster.storage_path {cluster.storage_path!r} names no bucket")
    endpoint = cluster.storage_endpoint or first_env(ENDPOINT_ENV, env)
    region = cluster.storage_region or first_env(REGION_ENV, env)
    return Storage(s3_filesystem(endpoint, region), bucket_path, f"{S3_SCHEME}{bucket_path}")


def run_uri(cluster: ClusterConfig, name: str) -> str:
    """Where one run's checkpoints live, as a URI or absolute path (for tags and messages)."""
    return f"{storage_uri(cluster.storage_path)}/{name}"


def store_at(uri: str, endpoint: str | None = None, region: str | None = None,
             env: Mapping[str, str] | None = None) -> CheckpointStore:
    """The checkpoint store of one run folder given as a URI or local path (as in
    :func:`run_uri`); ``s3://`` uses ``endpoint``, else the environment's endpoint."""
    env = os.environ if env is None else env
    uri = storage_uri(uri)
    if is_s3(uri):
        endpoint = endpoint or first_env(ENDPOINT_ENV, env)
        region = region or first_env(REGION_ENV, env)
        return CheckpointStore(s3_filesystem(endpoint, region), uri.removeprefix(S3_SCHEME).strip("/"))
    if "://" in uri:  # gs://, hdfs://, ...: whatever pyarrow resolves
        fs, path = pafs.FileSystem.from_uri(uri)
        return CheckpointStore(fs, path.rstrip("/"))
    return CheckpointStore(pafs.LocalFileSystem(), uri)


def run_store(cluster: ClusterConfig, name: str,
              env: Mapping[str, str] | None = None) -> CheckpointStore:
    """Where run ``name``'s checkpoints live, as a :class:`CheckpointStore`."""
    return store_at(run_uri(cluster, name), cluster.storage_endpoint, cluster.storage_region, env)
