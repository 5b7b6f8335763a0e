"""Trainer side: open a finished run and stream its rows (torch `IterableDataset`).

Only complete runs are read (manifest.json present), and only the shards its manifest
lists, so a half-written run or a stray file never leaks into training. torch is optional:
without it `RunDataset` is a plain iterable (rank 0 of 1, no workers).

Epoch semantics
- No `task_weights`: each epoch yields every row of the run exactly once across all ranks
  and dataloader workers. Rows are split into contiguous, balanced (shard, row-group, row
  range) pieces: first between ranks (rank totals differ by at most 1), then between the
  workers of a rank. With `shuffle=True` the row groups are permuted per (seed, epoch)
  before splitting (identically on every rank) and a shuffle buffer mixes rows inside
  each worker.
- With `task_weights`: an epoch is `samples_per_epoch` draws (default: the number of
  rows of the weighted tasks), split evenly between ranks and workers. Each draw picks a
  task with probability weight / sum(weights) and takes that task's next row; each worker
  cycles through its own share of every task, reshuffled each pass, so a row repeats
  only after the rest of its share has been seen. Small tasks are thus up-sampled, large
  ones sub-sampled. Tasks missing from the run are dropped and the rest renormalised.
"""
from __future__ import annotations

import itertools
import json
import posixpath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from proxyqa.core.config import S3Config
from proxyqa.core.layout import LATEST, MANIFEST, REPORT, REPORT_VIDEOS, RUN_META
from proxyqa.core.schema import DIFFICULTY_FIELDS, SPLITS
from proxyqa.core.storage import get_fs, join, read_parquet

try:  # torch is only needed to plug into a DataLoader
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover - exercised in torch-less installs
    _Base = object


class RunError(RuntimeError):
    """The path is not a complete run (or an output root with a `latest` run)."""


def resolve_run(uri: str, s3: S3Config | None = None) -> str:
    """A run dir/URI as given, or the `latest` complete run of an output root."""
    uri = uri.rstrip("/")
    fs, path = get_fs(uri, s3)
    if fs.exists(posixpath.join(path, MANIFEST)):
        return uri
    if fs.exists(posixpath.join(path, LATEST)):
        rel = fs.cat_file(posixpath.join(path, LATEST)).decode().strip()
        run = join(uri, rel)
        if not fs.exists(posixpath.join(path, rel, MANIFEST)):
            raise RunError(f"{uri}/latest points at {rel}, which has no manifest.json")
        return run
    if fs.exists(posixpath.join(path, RUN_META)):
        raise RunError(f"{uri} is an incomplete run (no manifest.json): not readable")
    raise RunError(f"{uri} is neither a run (manifest.json) nor an output root (latest)")


def load_json(run_uri: str, name: str, s3: S3Config | None = None) -> dict[str, Any]:
    fs, path = get_fs(run_uri, s3)
    return json.loads(fs.cat_file(posixpath.join(path, name)))


def _splits(split: str | Sequence[str] | None) -> set[str] | None:
    if split is None:
        return None
    wanted = {split} if isinstance(split, str) else set(split)
    unknown = wanted - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; splits: {list(SPLITS)}")
    return wanted


def read_report(run_uri: str, s3: S3Config | None = None, not_ok_only: bool = False,
                limit: int | None = None) -> list[dict]:
    """The per-video report of a run: one dict per listed video (uri, video_id, status,
    reason, rows, errors, carried_from), from report.parquet. `not_ok_only`: only videos
    that are not ok and not carried over (the failures); `limit`: at most this many.
    Runs made before report.parquet existed keep their videos in report.json."""
    fs, path = get_fs(run_uri, s3)
    file = posixpath.join(path, REPORT_VIDEOS)
    if not fs.exists(file):
        videos = load_json(run_uri, REPORT, s3).get("videos", [])
        if not_ok_only:
            videos = [v for v in videos if v["status"] != "ok" and not v.get("carried_from")]
        return videos[:limit] if limit is not None else videos
    import pyarrow.compute as pc

    with fs.open(file, "rb") as fh:
        table = read_parquet(fh)
    if not_ok_only:
        table = table.filter(pc.and_(pc.not_equal(table["status"], "ok"),
                                     pc.is_null(table["carried_from"])))
    if limit is not None:
        table = table.slice(0, limit)
    out = []
    for row in table.to_pylist():
        row["rows"] = json.loads(row.pop("rows_json") or "{}")
        row["errors"] = json.loads(row.pop("errors_json") or "[]")
        if row["carried_from"] is None:
            del row["carried_from"]
        out.append(row)
    return out


def shard_list(run_uri: str, s3: S3Config | None = None,
               tasks: Sequence[str] | None = None,
               split: str | Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(URI, task) of each shard the manifest lists. An incremental run also lists shards
    of earlier runs ('../<run_id>/data/...'), so its folder alone is not the dataset.
    `run_uri` may also be an output root (its latest run). `split`: train / validation /
    test (or several); every shard holds one split."""
    run_uri = resolve_run(run_uri, s3)
    manifest = load_json(run_uri, MANIFEST, s3)
    wanted = _splits(split)
    if wanted is not None and any(s.get("split") is None for s in manifest["shards"]):
        raise RunError(f"{run_uri} has no splits (written before schema 2.0)")
    return [(join(run_uri, s["path"]), s["task"]) for s in manifest["shards"]
            if (tasks is None or s["task"] in tasks)
            and (wanted is None or s.get("split") in wanted)]


def shard_uris(run_uri: str, s3: S3Config | None = None,
               tasks: Sequence[str] | None = None,
               split: str | Sequence[str] | None = None) -> list[str]:
    """The manifest's shards as URIs (for pandas, DuckDB, HF datasets, Ray Data)."""
    return [uri for uri, _ in shard_list(run_uri, s3, tasks, split)]


class difficulty_at_least:  # noqa: N801 - used like a function: where=difficulty_at_least(...)
    """A row filter: keep rows whose `difficulty[field]` is known and >= value (or <= value
    with `at_most=True`), e.g. `difficulty_at_least("margin", 10)` keeps clear-cut
    body_part_state rows. Picklable, for DataLoader workers."""

    def __init__(self, field: str, value: float, at_most: bool = False):
        if field not in DIFFICULTY_FIELDS:
            raise ValueError(f"unknown difficulty field {field!r}; fields: {list(DIFFICULTY_FIELDS)}")
        self.field, self.value, self.at_most = field, float(value), at_most

    def __call__(self, row: dict) -> bool:
        got = (row.get("difficulty") or {}).get(self.field)
        if got is None:
            return False
        return got <= self.value if self.at_most else got >= self.value


def iter_rows(run_uri: str, columns: Sequence[str] | None = None,
              tasks: Sequence[str] | None = None, s3: S3Config | None = None,
              split: str | Sequence[str] | None = None,
              where: Callable[[dict], bool] | None = None) -> Iterator[dict]:
    """Every row of a complete run in manifest order, one shard in memory at a time.
    `where`: a row filter (e.g. `difficulty_at_least("time_gap_s", 0.5)`)."""
    fs, _ = get_fs(run_uri, s3)
    for uri in shard_uris(run_uri, s3, tasks, split):
        with fs.open(get_fs(uri, s3)[1], "rb") as fh:
            rows = read_parquet(fh, list(columns) if columns else None).to_pylist()
        yield from (r for r in rows if where is None or where(r))


@dataclass(frozen=True)
class RowGroup:
    path: str      # inside the filesystem
    task: str
    index: int
    rows: int


@dataclass(frozen=True)
class Piece:
    group: RowGroup
    start: int
    stop: int


def list_row_groups(run_uri: str, s3: S3Config | None = None,
                    tasks: Sequence[str] | None = None,
                    split: str | Sequence[str] | None = None) -> list[RowGroup]:
    """Row groups of the manifest's shards (reads each shard's footer)."""
    fs, _ = get_fs(run_uri, s3)
    groups = []
    for uri, task in shard_list(run_uri, s3, tasks, split):
        path = get_fs(uri, s3)[1]
        with fs.open(path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        groups.extend(RowGroup(path, task, i, meta.row_group(i).num_rows)
                      for i in range(meta.num_row_groups) if meta.row_group(i).num_rows)
    return groups


def pieces_in_range(groups: Sequence[RowGroup], lo: int, hi: int) -> list[Piece]:
    """The row ranges covering global positions [lo, hi) of `groups` laid end to end."""
    out, offset = [], 0
    for g in groups:
        start, stop = max(lo - offset, 0), min(hi - offset, g.rows)
        if start < stop:
            out.append(Piece(g, start, stop))
        offset += g.rows
        if offset >= hi:
            break
    return out


def share(total: int, parts: int, part: int) -> tuple[int, int]:
    """Balanced contiguous [lo, hi) of `total` for `part` of `parts` (sizes differ by <= 1)."""
    return total * part // parts, total * (part + 1) // parts


def split_for(groups: Sequence[RowGroup], rank: int, world_size: int,
              worker: int, num_workers: int) -> list[Piece]:
    """This worker's pieces: rank first (balanced ranks), then the workers of the rank."""
    total = sum(g.rows for g in groups)
    r_lo, r_hi = share(total, world_size, rank)
    w_lo, w_hi = share(r_hi - r_lo, num_workers, worker)
    return pieces_in_range(groups, r_lo + w_lo, r_lo + w_hi)


def _dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _worker() -> tuple[int, int]:
    try:
        from torch.utils.data import get_worker_info
    except ImportError:
        return 0, 1
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


class decode_images:  # noqa: N801 - used like a function: transform=decode_images("pil")
    """A transform that decodes `images` (JPEG bytes) to RGB numpy arrays or PIL images.
    A class, not a closure, so it pickles into spawned DataLoader workers."""

    def __init__(self, kind: str = "numpy"):
        if kind not in ("numpy", "pil"):
            raise ValueError(f"decode_images: kind must be 'numpy' or 'pil', not {kind!r}")
        self.kind = kind

    def __call__(self, row: dict) -> dict:
        import io

        from PIL import Image

        images = []
        for data in row.get("images") or []:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            images.append(np.array(img) if self.kind == "numpy" else img)  # writable: torch-friendly
        return {**row, "images": images}


class RunDataset(_Base):
    """Rows of a complete run, split across ranks and dataloader workers.

    Rows are dicts of the SAMPLE_SCHEMA columns (`images` stay JPEG bytes unless a
    `transform` such as `decode_images("pil")` decodes them). Use it with
    `DataLoader(ds, batch_size=None, num_workers=N)` or a custom `collate_fn`
    (rows hold variable-length lists). See the module doc for epoch semantics.
    """

    def __init__(self, run: str, *, s3: S3Config | None = None, rank: int | None = None,
                 world_size: int | None = None, shuffle: bool = False, shuffle_buffer: int = 1000,
                 seed: int = 0, task_weights: dict[str, float] | None = None,
                 samples_per_epoch: int | None = None, tasks: Sequence[str] | None = None,
                 columns: Sequence[str] | None = None,
                 transform: Callable[[dict], Any] | None = None,
                 split: str | Sequence[str] | None = None,
                 where: Callable[[dict], bool] | None = None):
        self.run_uri = resolve_run(run, s3)
        self.where = where
        self.s3 = s3
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (torch.distributed)")
        self.rank, self.world_size = (rank, world_size) if rank is not None else _dist_rank_world()
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, max(int(shuffle_buffer), 1), seed
        need = ["task"] + (["difficulty"] if where is not None else [])
        self.columns = list(dict.fromkeys([*columns, *need])) if columns else None
        self.transform = transform
        self.epoch = 0
        self.groups = list_row_groups(self.run_uri, s3, tasks, split)
        self.task_weights = self._weights(task_weights)
        total = sum(g.rows for g in self.groups if self.task_weights is None
                    or g.task in self.task_weights)
        self.samples_per_epoch = samples_per_epoch if samples_per_epoch is not None else total

    def _weights(self, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is None:
            return None
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"task_weights must be >= 0: {weights}")
        present = {g.task for g in self.groups}
        kept = {t: float(w) for t, w in weights.items() if w > 0 and t in present}
        if not kept:
            raise ValueError(f"no task with a positive weight is in the run "
                             f"(run has {sorted(present)})")
        norm = sum(kept.values())
        return {t: w / norm for t, w in sorted(kept.items())}

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for this epoch (call before iterating; needs non-persistent workers)."""
        self.epoch = int(epoch)

    def rows_this_rank(self) -> int:
        """Rows this rank yields per epoch (all its workers together)."""
        total = (self.samples_per_epoch if self.task_weights is not None
                 else sum(g.rows for g in self.groups))
        lo, hi = share(total, self.world_size, self.rank)
        return hi - lo

    def _ordered(self, groups: Sequence[RowGroup]) -> list[RowGroup]:
        if not self.shuffle:
            return list(groups)
        perm = _rng(self.seed, self.epoch).permutation(len(groups))
        return [groups[i] for i in perm]

    def _read(self, piece: Piece) -> Iterator[dict]:
        fs, _ = get_fs(self.run_uri, self.s3)
        with fs.open(piece.group.path, "rb") as fh:
            table = pq.ParquetFile(fh).read_row_group(piece.group.index, columns=self.columns)
        # Python objects for a few rows at a time; the Arrow row group stays columnar.
        for batch in table.slice(piece.start, piece.stop - piece.start).to_batches(max_chunksize=32):
            yield from batch.to_pylist()

    def _rows_once(self, pieces: Sequence[Piece]) -> Iterator[dict]:
        for piece in pieces:
            yield from self._read(piece)

    def _task_stream(self, groups: list[RowGroup], worker: int, workers: int,
                     task_index: int) -> Iterator[dict]:
        """Endless passes over this worker's share of one task (whole task if share empty)."""
        ordered = self._ordered(groups)
        pieces = split_for(ordered, self.rank, self.world_size, worker, workers)
        if not pieces:
            pieces = pieces_in_range(ordered, 0, sum(g.rows for g in ordered))
        for pass_no in itertools.count():
            if self.shuffle:
                rng = _rng(self.seed, self.epoch, self.rank, worker, task_index, pass_no)
                pieces = [pieces[i] for i in rng.permutation(len(pieces))]
            yield from self._rows_once(pieces)

    def _weighted(self, worker: int, workers: int) -> Iterator[dict]:
        tasks = list(self.task_weights)
        probs = np.array([self.task_weights[t] for t in tasks])
        streams = [self._task_stream([g for g in self.groups if g.task == t], worker, workers, i)
                   for i, t in enumerate(tasks)]
        r_lo, r_hi = share(self.samples_per_epoch, self.world_size, self.rank)
        w_lo, w_hi = share(r_hi - r_lo, workers, worker)
        rng = _rng(self.seed, self.epoch, self.rank, worker, 1)
        for choice in rng.choice(len(tasks), size=w_hi - w_lo, p=probs):
            yield next(streams[choice])

    def _buffered(self, rows: Iterator[dict], worker: int) -> Iterator[dict]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from rows
            return
        rng = _rng(self.seed, self.epoch, self.rank, worker, 2)
        buf: list[dict] = []
        for row in rows:
            if len(buf) < self.shuffle_buffer:
                buf.append(row)
                continue
            i = int(rng.integers(len(buf)))
            buf[i], row = row, buf[i]
            yield row
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[Any]:
        worker, workers = _worker()
        if self.task_weights is None:
            rows = self._rows_once(split_for(self._ordered(self.groups), self.rank,
                                             self.world_size, worker, workers))
        else:
            rows = self._weighted(worker, workers)
        for row in self._buffered(rows, worker):
            if self.where is not None and not self.where(row):
                continue   # filtered rows are skipped: an epoch yields fewer than rows_this_rank()
            yield self.transform(row) if self.transform else row
