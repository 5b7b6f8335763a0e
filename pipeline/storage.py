"""Local and S3 paths behind one fsspec interface (s3fs for s3://)."""
from __future__ import annotations

import posixpath
from typing import Any

import fsspec

from pipeline.config import S3Config


def storage_options(uri: str, s3: S3Config | None) -> dict[str, Any]:
    if not uri.startswith("s3://") or s3 is None:
        return {}
    opts: dict[str, Any] = {"anon": s3.anon}
    client_kwargs: dict[str, Any] = {}
    if s3.endpoint_url:
        client_kwargs["endpoint_url"] = s3.endpoint_url
    if s3.region:
        client_kwargs["region_name"] = s3.region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    if s3.key is not None and s3.secret is not None:
        opts["key"] = s3.key.get_secret_value()
        opts["secret"] = s3.secret.get_secret_value()
    return opts


def get_fs(uri: str, s3: S3Config | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or s3:// URI."""
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri, s3))
    return fs, path


def join(base: str, *parts: str) -> str:
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return posixpath.join(base, *parts)


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URI a user would type for `path` on `fs`."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}" if protocol != "s3a" else f"s3://{path}"


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write then rename, so readers never see half a file (an S3 PUT is atomic already)."""
    if full_uri(fs, path).startswith("s3://"):
        fs.pipe_file(path, data)
        return
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    fs.pipe_file(tmp, data)
    fs.mv(tmp, path)
