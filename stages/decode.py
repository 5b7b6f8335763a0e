"""Decode: sample frames with decord, resize, JPEG-encode. Bad media becomes a failed row."""
from __future__ import annotations

import hashlib
import io
import os
import urllib.parse
from typing import Any

import cv2
import numpy as np

from proxyqa.core.config import DecodeConfig, Limits, S3Config
from proxyqa.stages.base import RowStage, StageError, add_error, message_line, one_line

# Container signatures: a file that has one but fails to open is damaged, not a non-video.
_SIGNATURES = {
    "mp4/mov": lambda h: h[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"),
    "matroska/webm": lambda h: h[:4] == b"\x1a\x45\xdf\xa3",
    "avi": lambda h: h[:4] == b"RIFF" and h[8:12] == b"AVI ",
}


HEAD_BYTES = 1 << 16
# An mp4/mov header counts its frames exactly; an index this much shorter means the file
# was cut short (the frames past the cut are gone, the rest would decode as a shorter clip).
MISSING_FRAMES_TOLERANCE = 0.1
FALLBACK_CHUNK = 4   # frames decoded at native size at a time when decoder-side resize fails


def _utf8(path: str) -> bool:
    """False for a file name that is not valid UTF-8 (Python keeps its bytes as surrogates)."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def header_probe(source: Any) -> tuple[int, int, int] | None:
    """(width, height, frame count) from the container header, without decoding a frame;
    None when OpenCV cannot open it (decord's open then says why)."""
    if isinstance(source, io.BytesIO):
        source.seek(0)
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, [])
    else:
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            return None
        dims = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT),
                cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    width, height, count = (int(max(v, 0)) for v in dims)
    return (width, height, count) if width and height else None


def content_fingerprint(head: bytes, size: int | None, n_frames: int, fps: float,
                        width: int, height: int) -> str:
    """Same bytes -> same id wherever the file lives (local, S3, renamed), unlike video_id."""
    h = hashlib.sha256(head)
    h.update(f"{size}|{n_frames}|{fps:.6f}|{width}x{height}".encode())
    return h.hexdigest()[:20]


def sniff_container(head: bytes) -> str | None:
    for name, test in _SIGNATURES.items():
        if len(head) >= 12 and test(head):
            return name
    return None


def sample_indices(n_frames: int, fps: float, cfg: DecodeConfig) -> np.ndarray:
    """Uniform `num_frames` (segment centres), or every 1/target_fps s; at most max_frames."""
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if cfg.target_fps and fps > 0:
        step = max(fps / cfg.target_fps, 1.0)
        idx = np.arange(0, n_frames, step)
    else:
        count = min(cfg.num_frames, n_frames)
        idx = (np.arange(count) + 0.5) * (n_frames / count)
    idx = np.unique(np.clip(idx.astype(np.int64), 0, n_frames - 1))
    if len(idx) > cfg.max_frames:
        pick = ((np.arange(cfg.max_frames) + 0.5) * (len(idx) / cfg.max_frames)).astype(np.int64)
        idx = idx[pick]
    return idx


def resized_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    # Even sizes keep the decoder's scaler happy.
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def frame_dhash(rgb: np.ndarray) -> int:
    """64-bit difference hash of a frame (9x8 grey, each bit: is a pixel brighter than its
    right neighbour), as a signed int64. Re-encoding, resizing and small shifts change few
    bits, so near-duplicate videos share close hashes (pipeline/dataset.py groups them)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= (1 << 63) else value


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise StageError("encode_error", "JPEG encoding failed")
    return buf.tobytes()


class DecodeStage(RowStage):
    """Adds width/height/fps/duration, frame_indices, timestamps (s) and frames_jpeg."""

    name = "decode"

    def __init__(self, cfg: DecodeConfig, limits: Limits, s3: S3Config | None = None):
        self.cfg, self.limits, self.s3 = cfg, limits, s3

    def _open_source(self, uri: str) -> tuple[Any, bytes]:
        """A path or file object decord can read, and the first bytes for sniffing."""
        try:
            if uri.startswith("s3://"):
                from proxyqa.core.storage import get_fs

                fs, path = get_fs(uri, self.s3)
                data = fs.cat_file(path)
                return io.BytesIO(data), data[:HEAD_BYTES]
            if uri.startswith("file://"):  # a name that is not UTF-8 (pipeline/sources.py)
                uri = os.fsdecode(urllib.parse.unquote_to_bytes(uri[len("file://"):]))
            with open(uri, "rb") as fh:
                if not _utf8(uri):  # decord rejects such a path and OpenCV crashes on it
                    data = fh.read()
                    return io.BytesIO(data), data[:HEAD_BYTES]
                return uri, fh.read(HEAD_BYTES)
        except IsADirectoryError:
            raise StageError("not_a_file", "a directory") from None
        except FileNotFoundError:
            raise StageError("missing", "file not found") from None
        except Exception as exc:  # noqa: BLE001 - storage down, permissions: a failed row, retried next run
            raise StageError("unreadable", one_line(exc, 200)) from None

    def _reader(self, source: Any, **kwargs):
        from decord import VideoReader

        if isinstance(source, io.BytesIO):
            source.seek(0)
        return VideoReader(source, num_threads=self.cfg.num_threads, **kwargs)

    def _over(self, key: str, value: float, shown: str) -> None:
        limit = getattr(self.limits, key)
        if value > limit:
            raise StageError("over_limit", f"{shown} > limits.{key}={limit}")

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        uri, size = row["video_uri"], row.get("size_bytes")
        if size == 0:
            raise StageError("empty_file", "0 bytes")
        if size is not None:
            self._over("max_bytes", size, f"{size} bytes")
        source, head = self._open_source(uri)
        kind = sniff_container(head)
        header = header_probe(source)
        if header is not None:  # before decord: it would decode a full-size frame first
            self._over("max_pixels", header[0] * header[1], f"{header[0]}x{header[1]} pixels")
        try:
            probe = self._reader(source)
        except Exception as exc:  # noqa: BLE001 - decord raises RuntimeError/DECORDError with ffmpeg text
            msg = message_line(exc)[:160]
            if kind is None:
                raise StageError("not_a_video", f"no known video container signature ({msg})") from None
            if "stream" in msg.lower():
                raise StageError("no_video_stream", f"{kind} container has no video stream") from None
            raise StageError("truncated_or_corrupt", f"{kind} container cannot be opened ({msg})") from None
        n_frames = len(probe)
        if n_frames <= 0:
            raise StageError("no_video_stream", "no decodable frames")
        declared = header[2] if header is not None and kind == "mp4/mov" else 0
        if declared - n_frames > max(2, MISSING_FRAMES_TOLERANCE * declared):
            raise StageError("truncated_or_corrupt",
                             f"{n_frames} of the {declared} frames its header lists are present (cut short?)")
        fps = float(probe.get_avg_fps() or 0.0)
        duration = n_frames / fps if fps > 0 else 0.0
        self._over("max_frames", n_frames, f"{n_frames} frames")
        self._over("max_duration_s", duration, f"{duration:.0f} s")
        height, width = probe[0].shape[:2]  # the decoded size (no header, or rotated streams)
        self._over("max_pixels", width * height, f"{width}x{height} pixels")
        del probe
        idx = sample_indices(n_frames, fps, self.cfg)
        out_w, out_h = resized_size(width, height, self.cfg.max_side)
        frames, times = self._decode(source, idx, out_w, out_h)
        row.update(
            content_id=content_fingerprint(head, size, n_frames, fps, width, height),
            width=int(width), height=int(height), fps=fps, duration_s=float(duration),
            num_frames_total=int(n_frames), frame_indices=[int(i) for i in idx],
            timestamps=[float(t) for t in times],
            frames_jpeg=[encode_jpeg(f, self.cfg.jpeg_quality) for f in frames],
            frame_hashes=[frame_dhash(f) for f in frames],
        )
        if n_frames < 2:
            add_error(row, "temporal", "single_frame", "the video has one frame: no temporal task")
        return row

    def _decode(self, source: Any, idx: np.ndarray, out_w: int, out_h: int):
        """Decoder-side resize is fastest; decord rejects some sizes, so fall back to cv2,
        a few native-size frames at a time (memory stays bounded for large frames)."""
        try:
            reader = self._reader(source, width=out_w, height=out_h)
            return reader.get_batch(idx.tolist()).asnumpy(), self._times(reader, idx)
        except Exception:  # noqa: BLE001 - retried natively below; a real fault fails there too
            pass
        resized = []
        try:
            reader = self._reader(source)
            for start in range(0, len(idx), FALLBACK_CHUNK):
                chunk = reader.get_batch(idx[start:start + FALLBACK_CHUNK].tolist()).asnumpy()
                resized.extend(cv2.resize(f, (out_w, out_h), interpolation=cv2.INTER_AREA)
                               for f in chunk)
            times = self._times(reader, idx)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this video's error
            msg = message_line(exc, last=True)[:160]
            raise StageError("truncated_or_corrupt", f"frames cannot be decoded ({msg})") from None
        if len(resized) != len(idx):
            raise StageError("truncated_or_corrupt", f"decoded {len(resized)} of {len(idx)} frames")
        return np.stack(resized), times

    @staticmethod
    def _times(reader, idx: np.ndarray) -> np.ndarray:
        return reader.get_frame_timestamp(idx.tolist())[:, 0]
