"""Input listing: a folder, an s3:// prefix or a manifest file -> one record per video."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import urllib.parse
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from proxyqa.core.config import Config
from proxyqa.core.storage import fresh, fs_is_s3, full_uri, get_fs, read_parquet
from proxyqa.pipeline.memory import release_freed_memory

MANIFEST_SUFFIXES = (".txt", ".csv", ".jsonl", ".parquet")

# The listing as the driver keeps it: Arrow columns, ~110 bytes per video (measured), not a
# dict of Python objects per video (~530 bytes): a million listed videos stay ~110 MB.
LISTING_SCHEMA = pa.schema([
    ("video_uri", pa.string()),
    ("video_id", pa.string()),
    ("size_bytes", pa.int64()),
    ("mtime", pa.string()),
    ("status", pa.string()),      # set only when the listing itself failed for the video
    ("reason", pa.string()),
])
_CHUNK = 4096   # records turned into Arrow at a time while listing


class SourceError(RuntimeError):
    """The input itself cannot be listed (missing, unreadable, malformed manifest)."""


def video_id_for(uri: str, size: int | None, mtime: str | None) -> str:
    """Stable id: the same file at the same URI keeps its id; a changed file gets a new one."""
    blob = f"{uri}\0{size}\0{mtime}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(blob).hexdigest()[:20]


def _mtime(info: dict) -> str | None:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return None


def portable_uri(uri: str) -> str:
    """A local name that is not valid UTF-8 (Python keeps its bytes as surrogates) cannot be
    stored in Arrow or JSON: such a path becomes a percent-encoded file:// URI."""
    try:
        uri.encode("utf-8")
        return uri
    except UnicodeEncodeError:
        return "file://" + urllib.parse.quote(os.fsencode(uri))


def _record(uri: str, info: dict | None, error: str | None = None) -> dict:
    uri = portable_uri(uri)
    size = int(info["size"]) if info and info.get("size") is not None else None
    mtime = _mtime(info) if info else None
    rec = {
        "video_uri": uri,
        "video_id": video_id_for(uri, size, mtime),
        "size_bytes": size,
        "mtime": mtime,
        "status": None,
        "reason": None,
    }
    if error:
        rec["status"], rec["reason"] = "failed", error
    elif info is not None and info.get("type") == "directory":
        rec["status"], rec["reason"] = "failed", "listing: not_a_file: a directory named like a video"
    return rec


def _stat(fs, path: str) -> tuple[dict | None, str | None]:
    try:
        return fs.info(path), None
    except FileNotFoundError:
        if os.path.islink(path):
            return None, "listing: missing: dangling symlink"
        return None, "listing: missing: file not found"
    except OSError as exc:
        return None, f"listing: unreadable: {exc.__class__.__name__}"


def _list_folder(fs, root: str, exts: tuple[str, ...]) -> Iterable[tuple[str, dict | None]]:
    """(path, info or None) of every entry named like a video under `root`."""
    if not fs_is_s3(fs):
        # os.walk sees dangling symlinks and directories named like videos; fs.find hides them.
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames + dirnames):
                if name.lower().endswith(exts):
                    yield os.path.join(dirpath, name), None
        return
    # One paginated LIST gives size and ETag of every object: no HEAD request per video.
    found = fresh(fs).find(root, withdirs=True, detail=True)
    for path in sorted(found):
        if path.lower().endswith(exts):
            yield path, found[path]


def _read_manifest(fs, path: str) -> list[str]:
    try:
        uris = _manifest_uris(fs, path)
    except SourceError:
        raise
    except (OSError, ValueError) as exc:   # undecodable text, not Parquet, ...
        raise SourceError(f"manifest {path} cannot be read: {exc.__class__.__name__}: "
                          f"{str(exc)[:200]}") from None
    for n, uri in enumerate(uris, 1):
        if not isinstance(uri, str) or not uri.strip():
            raise SourceError(f"manifest {path} entry {n}: 'uri' must be a non-empty string, "
                              f"got {uri!r:.80}")
    return [u.strip() for u in uris]


def _manifest_uris(fs, path: str) -> list:
    lower = path.lower()
    if lower.endswith(".parquet"):
        with fs.open(path, "rb") as fh:
            table = read_parquet(fh)
        if "uri" not in table.column_names:
            raise SourceError(f"manifest {path} has no 'uri' column")
        return table.column("uri").to_pylist()
    text = fs.cat_file(path).decode("utf-8")
    if lower.endswith(".txt"):
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if lower.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and "uri" not in rows[0]:
            raise SourceError(f"manifest {path} has no 'uri' column")
        return [r["uri"] for r in rows]
    uris = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            uris.append(json.loads(line)["uri"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SourceError(f"manifest {path} line {n}: expected a JSON object with 'uri'") from None
    return uris


def list_videos(cfg: Config, input_uri: str | None = None) -> list[dict]:
    """Every input video as a record (uri, video_id, size, mtime, status/reason if unusable)."""
    return list_videos_table(cfg, input_uri).to_pylist()


def list_videos_table(cfg: Config, input_uri: str | None = None) -> pa.Table:
    """The listing as an Arrow table (LISTING_SCHEMA), one row per video in listing order:
    what the driver keeps from listing to commit."""
    table = _dedupe(_to_table(_records(cfg, input_uri)))
    release_freed_memory()   # the records and chunks built on the way
    return table


def as_listing(videos: pa.Table | list[dict]) -> pa.Table:
    """A listing given either way (tests and benches pass record dicts) as LISTING_SCHEMA."""
    if isinstance(videos, pa.Table):
        return videos
    return _to_table(iter(videos))


def _to_table(records: Iterator[dict]) -> pa.Table:
    chunks, chunk = [], []
    for rec in records:
        chunk.append(rec)
        if len(chunk) == _CHUNK:
            chunks.append(pa.Table.from_pylist(chunk, schema=LISTING_SCHEMA))
            chunk = []
    chunks.append(pa.Table.from_pylist(chunk, schema=LISTING_SCHEMA))
    return pa.concat_tables(chunks).combine_chunks()


def _records(cfg: Config, input_uri: str | None) -> Iterator[dict]:
    uri = input_uri or cfg.input
    if not uri:
        raise SourceError("no input given (--input or `input:` in the config)")
    if not _supported(uri):
        raise SourceError(f"input {uri}: only local paths and s3:// are supported")
    fs, path = get_fs(uri, cfg.s3)
    fresh(fs)  # a long-lived process (tests, notebooks) must see objects added since
    exts = tuple(e.lower() for e in cfg.video_extensions)
    try:
        is_dir = fs.isdir(path)
        exists = is_dir or fs.exists(path)
    except OSError as exc:
        raise SourceError(f"cannot access input {uri}: {exc}") from None
    if not exists:
        raise SourceError(f"input not found: {uri}")
    if is_dir:
        entries: Iterable[tuple[str, dict | None]] = _list_folder(fs, path, exts)
    elif path.lower().endswith(MANIFEST_SUFFIXES):
        for item in _read_manifest(fs, path):
            if not _supported(item):
                # Workers read local files and S3 only: say so instead of failing later.
                yield _record(item, None, "listing: unsupported_scheme: "
                              f"{item.split('://', 1)[0]}:// (local paths and s3:// only)")
                continue
            item_fs, item_path = get_fs(item, cfg.s3)
            info, err = _stat(item_fs, item_path)
            yield _record(full_uri(item_fs, item_path), info, err)
        return
    else:
        entries = [(path, None)]
    for p, info in entries:
        err = None
        if info is None:
            info, err = _stat(fs, p)
        yield _record(full_uri(fs, p), info, err)


def _supported(uri: str) -> bool:
    return "://" not in uri or uri.startswith(("file://", "s3://", "s3a://"))


def _dedupe(table: pa.Table) -> pa.Table:
    """The first row of each video_uri, in listing order (a manifest may list a URI twice)."""
    if table.num_rows == 0:
        return table
    numbered = table.append_column("_i", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    first = numbered.group_by("video_uri", use_threads=False).aggregate([("_i", "min")])["_i_min"]
    if len(first) == table.num_rows:
        return table
    return table.take(np.sort(first.to_numpy()))
