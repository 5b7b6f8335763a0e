import shutil

import cv2
import numpy as np
import pytest

from proxyqa.core.config import DecodeConfig, Limits
from proxyqa.stages.decode import DecodeStage, resized_size, sample_indices


def _row(path, size=None):
    return {"video_uri": str(path), "video_id": "v", "size_bytes": size if size is not None
            else path.stat().st_size, "status": None, "reason": None}


def _decode(path, **cfg):
    stage = DecodeStage(DecodeConfig(**cfg), Limits())
    out = stage({k: [v] for k, v in _row(path).items()})
    return {k: v[0] for k, v in out.items()}


def test_uniform_and_fps_sampling():
    cfg = DecodeConfig(num_frames=4)
    assert sample_indices(100, 25.0, cfg).tolist() == [12, 37, 62, 87]
    assert sample_indices(3, 25.0, cfg).tolist() == [0, 1, 2]        # fewer frames than asked
    fps_cfg = DecodeConfig(target_fps=2.0, max_frames=64)
    idx = sample_indices(300, 30.0, fps_cfg)
    assert idx[:3].tolist() == [0, 15, 30] and len(idx) == 20
    capped = sample_indices(3000, 30.0, DecodeConfig(target_fps=2.0, max_frames=10))
    assert len(capped) == 10 and (np.diff(capped) > 0).all()


def test_resize_keeps_aspect_and_caps_long_side():
    assert resized_size(1920, 1080, 512) == (512, 288)
    assert resized_size(1080, 1920, 512) == (288, 512)
    assert resized_size(340, 256, 512) == (340, 256)


def test_real_clip_decodes_with_true_timestamps(clips_dir):
    row = _decode(clips_dir / "pose2sim_single_cam02.mp4", num_frames=8, max_side=256)
    assert row["status"] == "ok", row["reason"]
    assert (row["width"], row["height"]) == (1080, 1920)
    assert len(row["frames_jpeg"]) == 8 == len(row["timestamps"]) == len(row["frame_indices"])
    img = cv2.imdecode(np.frombuffer(row["frames_jpeg"][0], np.uint8), cv2.IMREAD_COLOR)
    assert max(img.shape[:2]) == 256 and img.shape[0] > img.shape[1]
    fps = row["fps"]
    for idx, ts in zip(row["frame_indices"], row["timestamps"]):
        assert abs(ts - idx / fps) < 1.5 / fps
    assert row["content_id"]


def test_mkv_decodes(clips_dir):
    row = _decode(clips_dir / "decord_flipping_a_pancake.mkv", num_frames=6)
    assert row["status"] == "ok" and len(row["frames_jpeg"]) == 6


def test_content_id_follows_bytes_not_path(tmp_path, clips_dir):
    a, b = tmp_path / "a.mp4", tmp_path / "other name.mp4"
    shutil.copy(clips_dir / "kinetics_ta_chi.mp4", a)
    shutil.copy(clips_dir / "kinetics_ta_chi.mp4", b)
    assert _decode(a, num_frames=4)["content_id"] == _decode(b, num_frames=4)["content_id"]


@pytest.mark.parametrize("maker,kind", [
    (lambda p, src: p.write_bytes(b""), "empty_file"),
    (lambda p, src: p.write_text("this is a text file\n" * 10), "not_a_video"),
    (lambda p, src: p.write_bytes(np.random.default_rng(0).bytes(50_000)), "not_a_video"),
    (lambda p, src: p.write_bytes(src.read_bytes()[: src.stat().st_size // 2]), "truncated_or_corrupt"),
])
def test_bad_media_becomes_a_failed_row(tmp_path, clips_dir, maker, kind):
    path = tmp_path / "bad.mp4"
    maker(path, clips_dir / "kinetics_clean_and_jerk.mp4")
    row = _decode(path)
    assert row["status"] == "failed"
    assert row["reason"].startswith(f"decode: {kind}")
    assert "frames_jpeg" not in row or not row["frames_jpeg"]


def test_limits_skip_with_reason(clips_dir):
    stage = DecodeStage(DecodeConfig(), Limits(max_pixels=100 * 100))
    out = stage({k: [v] for k, v in _row(clips_dir / "kinetics_ta_chi.mp4").items()})
    assert out["status"] == ["skipped"] and "max_pixels" in out["reason"][0]
    stage = DecodeStage(DecodeConfig(), Limits(max_bytes=1000))
    out = stage({k: [v] for k, v in _row(clips_dir / "kinetics_ta_chi.mp4").items()})
    assert out["status"] == ["skipped"] and "max_bytes" in out["reason"][0]


def test_failed_rows_pass_through_untouched():
    stage = DecodeStage(DecodeConfig(), Limits())
    batch = {"video_uri": ["/x.mp4"], "video_id": ["v"], "size_bytes": [None],
             "status": ["failed"], "reason": ["listing: missing"]}
    assert stage(batch)["reason"] == ["listing: missing"]
