"""The run lock: one run at a time per output root.

OUT/_lock.json is created atomically: locally by an exclusive create (O_EXCL temp file, then a
hard link that fails if the name exists), on S3 with a conditional
PUT (If-None-Match: *), so of two runs started at once exactly one creates it. It holds the
holder (user@host:pid), the run's start time and a heartbeat that a daemon thread refreshes
every `lock.heartbeat_s`. A second run on the same OUT finds it and exits 2 with one line
naming the holder. A lock whose heartbeat is older than `lock.expiry_s` belongs to a run that
died without releasing it: it is taken over (logged). So is, at once, a lock whose holder
ran on this host and whose process is gone (kill -9, OOM): the rerun need not wait. On S3 the takeover and every heartbeat
are compare-and-swap writes (If-Match: <ETag>), so two runs taking over one expired lock
cannot both win, and a holder whose lock was taken over notices it at its next heartbeat.
Locally the takeover renames the expired file away first (one rename wins).

A holder that lost its lock (its heartbeat stalled past the expiry and another run took it)
must not commit: `check()` raises then.
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Any

from proxyqa.core.config import LockConfig
from proxyqa.core.layout import LOCK
from proxyqa.core.storage import fs_is_s3

log = logging.getLogger(__name__)


class LockHeld(RuntimeError):
    """Another run holds the output's lock (exit 2)."""


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _pid_started(pid: int) -> float | None:
    """When process `pid` started (None: no such process)."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - gone, or no psutil: treat as unknown
        return None


def holder_is_gone(holder: dict) -> bool:
    """The holder ran on this host and its process no longer exists (killed -9, OOM):
    its lock is stale now, whatever its heartbeat says. Another host's process is never
    judged gone: only its heartbeat tells."""
    if holder.get("host") != socket.gethostname() or not holder.get("pid"):
        return False
    started = _pid_started(int(holder["pid"]))
    if started is None:
        return True
    return holder.get("pid_started") is not None and abs(started - holder["pid_started"]) > 1


def _owner() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "?"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


class RunLock:
    """Acquire with `acquire()` (or as a context manager); `release()` when the run ends."""

    def __init__(self, fs, root: str, output: str, cfg: LockConfig, mode: str = "full"):
        self.fs, self.output, self.cfg, self.mode = fs, output, cfg, mode
        self.path = posixpath.join(root, LOCK)
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self.etag: str | None = None          # S3: the ETag of our last write
        self.lost: str | None = None          # set when another run took the lock over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.s3 = fs_is_s3(fs)

    # -- content ---------------------------------------------------------------------
    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": _owner(), "host": socket.gethostname(), "pid": os.getpid(),
                           "pid_started": _pid_started(os.getpid()),
                           "token": self.token, "mode": self.mode,
                           "started_at": _iso(self.started), "heartbeat_at": _iso(now),
                           "heartbeat": now, "expiry_s": self.cfg.expiry_s}).encode()

    # -- storage primitives: (created?, current holder) ---------------------------------
    def _s3_split(self) -> tuple[str, str]:
        bucket, _, key = self.path.partition("/")
        return bucket, key

    def _s3_put(self, **cond: Any) -> str | None:
        """Conditional PUT -> new ETag, or None when the condition failed (412/409)."""
        bucket, key = self._s3_split()
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._body(),
                                  ContentType="application/json", **cond)
        except FileExistsError:   # s3fs's name for 412 PreconditionFailed
            return None
        except Exception as exc:  # noqa: BLE001 - s3fs maps errors loosely; inspect the code
            text = f"{exc.__class__.__name__} {exc} {exc.__cause__}"
            if any(s in text for s in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                       "409")):
                return None
            raise
        return str(out.get("ETag", "")).strip('"') or None

    def _read(self) -> tuple[dict | None, str | None]:
        """(holder's content, ETag on S3) or (None, None) when there is no lock."""
        try:
            if self.s3:
                body, etag = self._s3_get()
                return json.loads(body or b"{}"), etag
            with open(self.path, "rb") as fh:
                return json.loads(fh.read() or b"{}"), None
        except FileNotFoundError:
            return None, None
        except json.JSONDecodeError:
            return {}, None     # half-written by a holder that died at once: treat as expired

    def _s3_get(self) -> tuple[bytes, str]:
        """Body and ETag from one GET, so the ETag is that of the content read."""
        from fsspec.asyn import sync

        bucket, key = self._s3_split()

        async def get() -> tuple[bytes, str]:
            out = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with out["Body"] as body:
                data = await body.read()
            return data, str(out.get("ETag", "")).strip('"')

        return sync(self.fs.loop, get)

    def _create(self) -> bool:
        if self.s3:
            self.etag = self._s3_put(IfNoneMatch="*")
            return self.etag is not None
        os.makedirs(posixpath.dirname(self.path), exist_ok=True)
        # Content first, then an exclusive create of the name (a hard link fails if the name
        # exists, like O_EXCL), so no reader ever sees an empty lock.
        tmp = f"{self.path}.{self.token[:8]}.new"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._body())
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)
        return True

    def _take_over(self, stale: dict, etag: str | None) -> bool:
        if self.s3:
            self.etag = self._s3_put(IfMatch=etag) if etag else None
            return self.etag is not None
        aside = f"{self.path}.expired-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)   # of several runs taking over, one rename wins
        except FileNotFoundError:
            return False
        os.remove(aside)
        return self._create()

    # -- public ----------------------------------------------------------------------
    def acquire(self) -> RunLock:
        for _ in range(3):   # create; else take over an expired lock; else report the holder
            if self._create():
                break
            holder, etag = self._read()
            if holder is None:
                continue      # released between our create and read: try again
            age = time.time() - float(holder.get("heartbeat") or 0)
            gone = holder_is_gone(holder)
            if age <= self.cfg.expiry_s and not gone:
                raise LockHeld(
                    f"output {self.output} is locked by {holder.get('owner', '?')} "
                    f"({holder.get('mode', '?')} run started {holder.get('started_at', '?')}, "
                    f"last heartbeat {age:.0f}s ago); one run at a time per output "
                    f"(the lock expires {self.cfg.expiry_s:.0f}s after its last heartbeat)")
            if self._take_over(holder, etag):
                why = ("its process is gone" if gone else
                       f"its last heartbeat was {age:.0f}s ago (> lock.expiry_s={self.cfg.expiry_s:.0f})")
                log.warning("took over the lock of %s on %s: %s", holder.get("owner", "?"),
                            self.output, why)
                print(f"proxyqa: took over the run lock of {holder.get('owner', '?')}: {why}",
                      flush=True)
                break
        else:
            raise LockHeld(f"output {self.output}: could not take the run lock {LOCK} "
                           "(other runs are racing for it); try again")
        self._thread = threading.Thread(target=self._beat, name="proxyqa-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.cfg.heartbeat_s):
            try:
                self.heartbeat()
            except Exception as exc:  # noqa: BLE001 - a storage hiccup: try again next time
                log.warning("lock heartbeat failed: %s", exc)
            if self.lost:
                return

    def heartbeat(self) -> None:
        if self.s3:
            etag = self._s3_put(IfMatch=self.etag)
            if etag is None:
                holder, _ = self._read()
                self.lost = (holder or {}).get("owner", "another run")
            else:
                self.etag = etag
            return
        holder, _ = self._read()
        if not holder or holder.get("token") != self.token:
            self.lost = (holder or {}).get("owner", "nobody (removed)")
            return
        tmp = f"{self.path}.{self.token[:8]}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(self._body())
        os.replace(tmp, self.path)

    def check(self) -> None:
        """Raise LockHeld when the lock was taken over: this run must not commit."""
        if self.lost:
            raise LockHeld(f"output {self.output}: the run lock was taken over by {self.lost} "
                           "(heartbeats stopped longer than lock.expiry_s); this run stops "
                           "before committing")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            holder, _ = self._read()
            if holder and holder.get("token") == self.token:
                if self.s3:
                    bucket, key = self._s3_split()
                    self.fs.call_s3("delete_object", Bucket=bucket, Key=key)
                else:
                    os.remove(self.path)
        except Exception as exc:  # noqa: BLE001 - it expires anyway
            log.warning("could not release the lock %s: %s", self.path, exc)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
