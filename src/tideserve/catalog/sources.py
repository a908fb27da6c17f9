"""Custom models: models outside the plaza, registered by a source URI and fetched to local disk.

A source is a local path (a `.gguf` file or a Hugging Face safetensors directory), `s3://bucket/prefix`
(AWS S3 or an S3-compatible store such as MinIO or Ceph), or `hf://org/name[@revision]`. Fetched
copies live under `dest_root/<sha256 of where they came from>/` and appear there only once complete,
so an interrupted download leaves nothing that looks like a model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from tideserve.catalog.inspection import ModelMetadata, ModelSourceError, inspect_model

if TYPE_CHECKING:
    from botocore.client import BaseClient
    from botocore.exceptions import ClientError

__all__ = [
    "HfSource",
    "LocalSource",
    "ModelMetadata",
    "ModelSourceError",
    "S3Options",
    "S3Source",
    "Source",
    "inspect_model",
    "materialize",
    "parse_source",
]

log = logging.getLogger(__name__)

# An unreachable store should fail a registration in seconds: the default (60 s connect timeout,
# 5 attempts with backoff) keeps the user waiting minutes for the same answer.
_S3_CONNECT_TIMEOUT_S = 2
_S3_READ_TIMEOUT_S = 60
_S3_ATTEMPTS = 2
_HF_CONNECT_TIMEOUT_S = 3
_HF_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_SCHEMES = "a local path, s3://bucket/prefix or hf://org/name[@revision]"


@dataclass(frozen=True)
class LocalSource:
    path: Path


@dataclass(frozen=True)
class S3Source:
    bucket: str
    key: str  # a folder without its trailing "/", or the key of one .gguf object; "" is the whole bucket

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def single_file(self) -> bool:
        return self.key.endswith(".gguf")


@dataclass(frozen=True)
class HfSource:
    repo_id: str
    revision: str | None = None

    @property
    def uri(self) -> str:
        return f"hf://{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


Source = LocalSource | S3Source | HfSource


@dataclass(frozen=True)
class S3Options:
    """Where and as whom to read s3:// sources. Anything left None falls back to boto3's usual
    configuration: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_ENDPOINT_URL_S3
    or AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ~/.aws/ files."""

    endpoint_url: str | None = None  # an S3-compatible server (MinIO, Ceph RGW, ...)
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    region: str | None = None


def parse_source(source: str) -> Source:
    """Validate a source URI without touching the network or the disk."""
    scheme, sep, rest = source.partition("://")
    if not sep:
        if not source.strip():
            raise ModelSourceError(f"the model source is empty: give {_SCHEMES}")
        return LocalSource(Path(source).expanduser())
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ModelSourceError(f"{source!r} names no bucket: write s3://bucket/prefix")
        # "a/b" and "a/b/" name the same folder, and so the same downloaded copy.
        return S3Source(bucket, key.rstrip("/"))
    if scheme == "hf":
        repo_id, _, revision = rest.partition("@")
        if not _HF_REPO_ID.fullmatch(repo_id):
            raise ModelSourceError(
                f"{source!r} is not a Hugging Face repository: write hf://org/name[@revision]"
            )
        return HfSource(repo_id, revision or None)
    raise ModelSourceError(f"unsupported model source scheme {scheme!r} in {source!r}: give {_SCHEMES}")


def materialize(source: str, dest_root: Path, s3_options: S3Options | None = None) -> Path:
    """A local path holding the model of `source`: a `.gguf` file or a model directory.

    Local paths are used in place. Remote sources are fetched once; a later call for the same
    source returns the copy already under `dest_root` (delete it to fetch again).
    """
    src = parse_source(source)
    if isinstance(src, S3Source):
        return _materialize_s3(src, Path(dest_root), s3_options or S3Options())
    if isinstance(src, HfSource):
        return _materialize_hf(src, Path(dest_root))
    if not src.path.exists():
        raise ModelSourceError(
            f"local model path {src.path} does not exist: give an existing .gguf file or model directory "
            "(present on every node that serves it), or an s3:// or hf:// source"
        )
    return src.path.resolve()


def _install(target: Path, fill: Callable[[Path], None]) -> None:
    """Create directory `target` by filling a temporary sibling and renaming it into place, so
    `target` exists only when complete and a failure leaves no trace."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".materializing-"))
    try:
        fill(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():  # else a concurrent materialize of the same source won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _store_dir(dest_root: Path, location: str) -> Path:
    return dest_root / hashlib.sha256(location.encode()).hexdigest()


# --- s3:// --------------------------------------------------------------------------------------


def _materialize_s3(src: S3Source, dest_root: Path, options: S3Options) -> Path:
    try:
        client = _s3_client(options)
    except ValueError as e:  # botocore's "Invalid endpoint"
        raise ModelSourceError(
            f"invalid S3 endpoint URL {options.endpoint_url!r} ({e}): write it as http(s)://host[:port]"
        ) from e
    endpoint = client.meta.endpoint_url
    # The endpoint is part of the identity: the same bucket name on two servers is two models.
    target = _store_dir(dest_root, f"{endpoint}|{src.uri}")

    def fill(tmp: Path) -> None:
        with _s3_errors(src, endpoint):
            objects = _list_objects(client, src)
            log.info("downloading %d object(s) of %s from %s", len(objects), src.uri, endpoint)
            for key, rel in objects:
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(src.bucket, key, str(dest))

    _install(target, fill)
    return target / PurePosixPath(src.key).name if src.single_file else target


def _s3_client(options: S3Options) -> BaseClient:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=_S3_CONNECT_TIMEOUT_S,
        read_timeout=_S3_READ_TIMEOUT_S,
        retries={"total_max_attempts": _S3_ATTEMPTS, "mode": "standard"},
        # S3-compatible servers rarely have wildcard DNS for bucket.host names.
        s3={"addressing_style": "path"} if options.endpoint_url else None,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=options.endpoint_url,
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
        aws_session_token=options.session_token,
        region_name=options.region,
        config=config,
    )


def _list_objects(client: BaseClient, src: S3Source) -> list[tuple[str, str]]:
    """(key, path relative to the download directory) of every object to fetch."""
    # "models/llama" means the folder, not also "models/llama-70b/".
    folder = src.key + "/" if src.key else ""
    prefix = src.key if src.single_file else folder
    objects: list[tuple[str, str]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=src.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if src.single_file:
                if key == src.key:
                    objects.append((key, PurePosixPath(key).name))
            elif not key.endswith("/"):  # folder markers some tools create
                objects.append((key, _relative_path(key, prefix, src)))
    if not objects:
        what = "object at" if src.single_file else "objects under"
        raise ModelSourceError(
            f"no {what} {src.uri}: check the key (a model directory prefix, or the key of one .gguf file)"
        )
    return objects


def _relative_path(key: str, prefix: str, src: S3Source) -> str:
    rel = PurePosixPath(key[len(prefix) :])
    # A key is any string; one with ".." must not write outside the download directory.
    if rel.is_absolute() or ".." in rel.parts:
        raise ModelSourceError(f"object key {key!r} in {src.uri} escapes its prefix: rename the object")
    return rel.as_posix()


@contextmanager
def _s3_errors(src: S3Source, endpoint: str) -> Iterator[None]:
    """Turn boto3's exceptions into messages that say which setting to fix."""
    from boto3.exceptions import RetriesExceededError
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise ModelSourceError(
            f"no S3 credentials to read {src.uri}: give an access key and secret, or set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from e
    except (BotoConnectionError, HTTPClientError, RetriesExceededError) as e:
        raise ModelSourceError(
            f"cannot reach the S3 endpoint {endpoint} for {src.uri} ({e}): check the endpoint URL and "
            "that this machine can reach the model storage"
        ) from e
    except ClientError as e:
        raise ModelSourceError(_client_error_message(e, src, endpoint)) from e


def _client_error_message(e: ClientError, src: S3Source, endpoint: str) -> str:
    code = e.response.get("Error", {}).get("Code", "")
    if code == "NoSuchBucket":
        return f"bucket {src.bucket!r} does not exist at {endpoint}: check the bucket name and endpoint"
    if code in ("AccessDenied", "403", "Forbidden"):
        return f"access denied to {src.uri} at {endpoint}: check the credentials and the bucket policy"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"{endpoint} rejected the S3 credentials ({code}): check the access key and secret"
    return f"S3 error reading {src.uri} at {endpoint}: {e}"


# --- hf:// --------------------------------------------------------------------------------------


def _materialize_hf(src: HfSource, dest_root: Path) -> Path:
    target = _store_dir(dest_root, src.uri)
    if target.exists():  # fetched before: works offline
        return target
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ModelSourceError(
            _hf_unavailable(src, endpoint, "the huggingface_hub package is not installed")
        ) from e
    if _env_flag("HF_HUB_OFFLINE"):
        raise ModelSourceError(_hf_unavailable(src, endpoint, "HF_HUB_OFFLINE is set"))
    # Checked up front: the hub client retries an unreachable host for minutes before giving up.
    if not _reachable(endpoint):
        raise ModelSourceError(_hf_unavailable(src, endpoint, f"{endpoint} is unreachable from this machine"))

    def fill(tmp: Path) -> None:
        log.info("downloading %s from %s", src.uri, endpoint)
        try:
            snapshot_download(src.repo_id, revision=src.revision, local_dir=tmp, endpoint=endpoint)
        except (OSError, ValueError) as e:  # the hub's errors (not found, gated, HTTP) are OSErrors
            raise ModelSourceError(f"cannot download {src.uri} from {endpoint}: {e}") from e

    _install(target, fill)
    return target


def _hf_unavailable(src: HfSource, endpoint: str, reason: str) -> str:
    return (
        f"cannot fetch {src.uri}: hf:// sources need the huggingface_hub package and network access to "
        f"huggingface.co ({endpoint}), but {reason}. Download the model where there is network "
        f"(hf download {src.repo_id} --local-dir DIR), then register DIR as a local path, or upload it "
        "to object storage and register the s3:// copy"
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=_HF_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False
