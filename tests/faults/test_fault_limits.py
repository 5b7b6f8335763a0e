"""`limits:` in the config: each limit skips a video with a reason that names its key, at the
check that comes before the expensive part (no huge frame is decoded to learn it is huge;
a long video costs only its sampled frames). Real decord/OpenCV, no Ray."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import pytest

from proxyqa.core.config import ConfigError, DecodeConfig, Limits, describe_fields, load_config
from proxyqa.stages.decode import DecodeStage, header_probe
from tests.helpers import REPO
from tests.helpers.zoo import write_video

W, H, FPS, N = 320, 240, 10, 6000      # ten minutes; 1.4 GB as raw RGB frames


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    return {"long": write_video(tmp / "long.mp4", W, H, frames=N, fps=FPS),
            "huge": write_video(tmp / "huge.mp4", 8000, 8000, frames=2),
            "tiny": write_video(tmp / "tiny.mp4", 64, 48, frames=3)}


def _decode(path, limits: Limits, num_frames: int = 8) -> dict:
    row = {"video_uri": str(path), "video_id": "v", "size_bytes": path.stat().st_size,
           "status": None, "reason": None}
    return DecodeStage(DecodeConfig(num_frames=num_frames), limits).run_row(row)


@pytest.mark.parametrize("key,under,shown", [
    ("max_bytes", lambda p: p.stat().st_size, lambda p: f"{p.stat().st_size} bytes"),
    ("max_pixels", lambda p: W * H, lambda p: f"{W}x{H} pixels"),
    ("max_duration_s", lambda p: N / FPS, lambda p: f"{N // FPS} s"),
    ("max_frames", lambda p: N, lambda p: f"{N} frames"),
])
def test_each_limit_skips_with_a_reason_naming_it(media, key, under, shown):
    path = media["long"]
    at_limit = _decode(path, Limits(**{key: under(path)}))
    assert at_limit["status"] == "ok" and len(at_limit["frames_jpeg"]) == 8   # a limit is inclusive
    over = _decode(path, Limits(**{key: under(path) - 1}))
    assert over["status"] == "skipped"
    assert over["reason"] == f"decode: over_limit: {shown(path)} > limits.{key}={under(path) - 1}"
    assert not over.get("frames_jpeg")


def test_limits_are_documented_config_keys():
    docs = {key: desc for key, _, desc in describe_fields()}
    for key in ("max_bytes", "max_pixels", "max_duration_s", "max_frames"):
        assert len(docs[f"limits.{key}"]) > 30, key
    cfg = load_config(None, ["limits.max_frames=100", "limits.max_pixels=2073600"])
    assert cfg.limits.max_frames == 100 and cfg.limits.max_pixels == 1920 * 1080
    for bad in ("limits.max_frames=0", "limits.max_bytes=-1", "limits.max_duration_s=0"):
        with pytest.raises(ConfigError, match=rf"'{bad.split('=')[0]}'"):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="unknown config key 'limits.max_width'"):
        load_config(None, ["limits.max_width=10"])


def test_pixel_limit_is_read_from_the_header(media):
    """From a path and from bytes (how an s3:// video reaches decode): no frame decoded."""
    data = media["huge"].read_bytes()
    assert header_probe(str(media["huge"])) == (8000, 8000, 2)
    assert header_probe(io.BytesIO(data)) == (8000, 8000, 2)
    assert header_probe(io.BytesIO(b"not a video" * 100)) is None


_PEAK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from proxyqa.core.config import DecodeConfig, Limits
    from proxyqa.stages.decode import DecodeStage

    def status_mb(field):
        with open("/proc/self/status") as fh:
            line = next(ln for ln in fh if ln.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    def reset_peak():  # Linux: '5' resets the high-water mark (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    stage = DecodeStage(DecodeConfig(num_frames=16), Limits())
    row = lambda p: {"video_uri": p, "video_id": "v", "size_bytes": os.path.getsize(p),
                     "status": None, "reason": None}
    stage.run_row(row(sys.argv[1]))          # warm: libraries loaded, one small decode
    out = {}
    for path in sys.argv[2:]:
        reset_peak()
        before = status_mb("VmRSS")
        res = stage.run_row(row(path))
        out[os.path.basename(path)] = {"status": res["status"], "reason": res.get("reason"),
                                       "frames": len(res.get("frames_jpeg") or []),
                                       "duration_s": res.get("duration_s"),
                                       "peak_growth_mb": status_mb("VmHWM") - before}
    print(json.dumps(out))
""")


def test_memory_stays_bounded_for_huge_frames_and_long_videos(media):
    """Peak RSS of a fresh process: skipping an 8000x8000 video costs far less than one of
    its frames (192 MB as RGB); decoding 16 frames of ten minutes far less than the video."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(media["tiny"]),
                           str(media["huge"]), str(media["long"])],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    huge, long = result["huge.mp4"], result["long.mp4"]
    assert huge["status"] == "skipped" and "limits.max_pixels" in huge["reason"]
    assert huge["peak_growth_mb"] < 100, huge
    raw_mb = N * W * H * 3 / 2**20
    assert long["status"] == "ok" and long["frames"] == 16 and long["duration_s"] == N / FPS
    assert long["peak_growth_mb"] < min(200, raw_mb / 5), (long, raw_mb)
