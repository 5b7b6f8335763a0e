"""Decode: sample frames with decord, resize, JPEG-encode. Bad media becomes a failed row."""
from __future__ import annotations

import hashlib
import io
from typing import Any

import cv2
import numpy as np

from pipeline.config import DecodeConfig, Limits, S3Config
from stages.base import RowStage, StageError

# Container signatures: a file that has one but fails to open is damaged, not a non-video.
_SIGNATURES = {
    "mp4/mov": lambda h: h[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"),
    "matroska/webm": lambda h: h[:4] == b"\x1a\x45\xdf\xa3",
    "avi": lambda h: h[:4] == b"RIFF" and h[8:12] == b"AVI ",
}


HEAD_BYTES = 1 << 16


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
        if uri.startswith("s3://"):
            from pipeline.storage import get_fs

            fs, path = get_fs(uri, self.s3)
            data = fs.cat_file(path)
            return io.BytesIO(data), data[:HEAD_BYTES]
        with open(uri, "rb") as fh:
            return uri, fh.read(HEAD_BYTES)

    def _reader(self, source: Any, **kwargs):
        from decord import VideoReader

        if isinstance(source, io.BytesIO):
            source.seek(0)
        return VideoReader(source, num_threads=self.cfg.num_threads, **kwargs)

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        uri, size = row["video_uri"], row.get("size_bytes")
        if size == 0:
            raise StageError("empty_file", "0 bytes")
        if size is not None and size > self.limits.max_bytes:
            raise StageError("over_limit", f"{size} bytes > limits.max_bytes={self.limits.max_bytes}")
        try:
            source, head = self._open_source(uri)
        except IsADirectoryError:
            raise StageError("not_a_file", "a directory") from None
        except FileNotFoundError:
            raise StageError("missing", "file not found") from None
        try:
            probe = self._reader(source)
        except Exception as exc:  # decord raises RuntimeError/DECORDError with ffmpeg text
            kind = sniff_container(head)
            msg = str(exc).splitlines()[0][:160]
            if kind is None:
                raise StageError("not_a_video", f"no known video container signature ({msg})") from None
            if "stream" in msg.lower():
                raise StageError("no_video_stream", f"{kind} container has no video stream") from None
            raise StageError("truncated_or_corrupt", f"{kind} container cannot be opened ({msg})") from None
        n_frames = len(probe)
        if n_frames <= 0:
            raise StageError("no_video_stream", "no decodable frames")
        fps = float(probe.get_avg_fps() or 0.0)
        height, width = probe[0].shape[:2]
        duration = n_frames / fps if fps > 0 else 0.0
        if width * height > self.limits.max_pixels:
            raise StageError("over_limit", f"{width}x{height} > limits.max_pixels={self.limits.max_pixels}")
        if duration > self.limits.max_duration_s:
            raise StageError("over_limit", f"{duration:.0f}s > limits.max_duration_s={self.limits.max_duration_s}")
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
        )
        return row

    def _decode(self, source: Any, idx: np.ndarray, out_w: int, out_h: int):
        """Decoder-side resize is fastest; decord rejects some sizes, so fall back to cv2."""
        try:
            reader = self._reader(source, width=out_w, height=out_h)
            return reader.get_batch(idx.tolist()).asnumpy(), self._times(reader, idx)
        except Exception:  # noqa: BLE001 - retried natively below; a real fault fails there too
            pass
        try:
            reader = self._reader(source)
            frames = reader.get_batch(idx.tolist()).asnumpy()
            times = self._times(reader, idx)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[-1][:160]
            raise StageError("truncated_or_corrupt", f"frames cannot be decoded ({msg})") from None
        if frames.shape[0] != len(idx):
            raise StageError("truncated_or_corrupt", f"decoded {frames.shape[0]} of {len(idx)} frames")
        resized = [cv2.resize(f, (out_w, out_h), interpolation=cv2.INTER_AREA) for f in frames]
        return np.stack(resized), times

    @staticmethod
    def _times(reader, idx: np.ndarray) -> np.ndarray:
        return reader.get_frame_timestamp(idx.tolist())[:, 0]
