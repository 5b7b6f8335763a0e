"""Bad media made on the fly (never committed): each maker writes one file or entry and the
test states the outcome it expects. Real encoders write the videos (OpenCV's mp4v); the
audio-only file is a real clip's own AAC track with its video track blanked out."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

# A real clip whose moov box comes first and that has an audio track (Pose2Sim demo).
AUDIO_CLIP = "pose2sim_single_cam02.mp4"
# A real clip whose moov box comes last (cut it anywhere: the index is gone).
MOOV_LAST_CLIP = "kinetics_clean_and_jerk.mp4"


def write_video(path: Path, width: int, height: int, frames: int, fps: float = 10.0) -> Path:
    """A real mp4 (MPEG-4 part 2): a white square crossing a black frame once over the whole
    video, so frames far apart in time differ (and the temporal tasks can use them)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened(), f"cv2 cannot write {width}x{height} mp4v"
    frame = np.zeros((height, width, 3), np.uint8)
    side = height // 2
    for i in range(frames):
        frame[:] = 0
        x = int((width - side) * i / max(frames - 1, 1))
        frame[height // 4:height // 4 + side, x:x + side] = 255
        writer.write(frame)
    writer.release()
    return path


def _boxes(data: bytes, start: int, end: int):
    """(offset, size, type) of the ISO-BMFF boxes in data[start:end]."""
    off = start
    while off + 8 <= end:
        size, kind = struct.unpack(">I4s", data[off:off + 8])
        if size == 1:
            size = struct.unpack(">Q", data[off + 8:off + 16])[0]
        elif size == 0:
            size = end - off
        yield off, size, kind
        off += size


def audio_only_mp4(src: Path, dst: Path) -> Path:
    """`src` with its video track renamed to a `free` box: same offsets, only the sound
    track is left, so demuxers see an audio-only mp4 (the video bytes lie unreferenced)."""
    data = bytearray(src.read_bytes())
    [(moov, moov_size, _)] = [b for b in _boxes(data, 0, len(data)) if b[2] == b"moov"]
    blanked = 0
    for off, size, kind in _boxes(data, moov + 8, moov + moov_size):
        hdlr = data.find(b"hdlr", off, off + size)   # type(4) version(4) pre_defined(4) handler
        if kind == b"trak" and hdlr > 0 and data[hdlr + 12:hdlr + 16] == b"vide":
            data[off + 4:off + 8] = b"free"
            blanked += 1
    assert blanked == 1 and b"soun" in data[moov:moov + moov_size], "need one video + one audio track"
    dst.write_bytes(bytes(data))
    return dst


def make_zoo(folder: Path, clips_dir: Path) -> dict[str, dict]:
    """Writes the bad-media zoo into `folder` -> {entry name: expected outcome}.

    Each expectation has `status`, the `reason` prefix the report must carry, and
    `rows` (True: the video must yield rows; False: it must yield none).
    """
    folder.mkdir(parents=True, exist_ok=True)
    real_moov_last = (clips_dir / MOOV_LAST_CLIP).read_bytes()
    real_moov_first = (clips_dir / AUDIO_CLIP).read_bytes()
    expect: dict[str, dict] = {}

    def add(name: str, status: str, reason: str | None, rows: bool = False) -> Path:
        expect[name] = {"status": status, "reason": reason, "rows": rows}
        return folder / name

    add("zero bytes.mp4", "failed", "decode: empty_file").write_bytes(b"")
    add("truncated.mp4", "failed", "decode: truncated_or_corrupt").write_bytes(
        real_moov_last[: len(real_moov_last) // 3])
    # Index intact, frame data cut: it opens, with fewer frames than its header lists.
    add("truncated_tail.mp4", "failed", "decode: truncated_or_corrupt").write_bytes(
        real_moov_first[: len(real_moov_first) // 2])
    add("random.mkv", "failed", "decode: not_a_video").write_bytes(
        np.random.default_rng(7).bytes(64_000))
    add("notes.mp4", "failed", "decode: not_a_video").write_text(
        "This is a text file with a video extension.\n" * 20)
    add("audio_only.mp4", "failed", "decode: no_video_stream")
    audio_only_mp4(clips_dir / AUDIO_CLIP, folder / "audio_only.mp4")
    # One black frame: decodes; no person and one frame give no rows; the report says why.
    write_video(add("one_frame.mp4", "ok", None), 64, 48, frames=1)
    write_video(add("huge 8000x8000.mp4", "skipped", "decode: over_limit: 8000x8000 pixels"),
                8000, 8000, frames=2)
    # 10 minutes: only the sampled frames are decoded. No person in it: the temporal tasks
    # abstain (a square sliding across is the same clip played either way), so no rows.
    write_video(add("long_10min.mp4", "ok", None, rows=False), 160, 120, frames=6000, fps=10)
    add("folder.mp4", "failed", "listing: not_a_file: a directory named like a video").mkdir()
    dangling = add("dangling.mp4", "failed", "listing: missing: dangling symlink")
    os.symlink(folder / "no such target.mp4", dangling)
    return expect
