"""The bad-media zoo beside good clips, through the whole pipeline on a real local Ray: the
run completes, every entry is in the report with its specific reason, and the good clips
give exactly the rows they give without the zoo beside them."""
from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest

from proxyqa.pipeline.sources import portable_uri
from tests.helpers import latest_run, read_run, run_cli
from tests.helpers.faults import FAST, GOOD_CLIPS, baseline, comparable
from tests.helpers.zoo import make_zoo

pytestmark = pytest.mark.ray

# Good clips under awkward names: spaces, non-ASCII (UTF-8), and a Latin-1 byte that is not
# valid UTF-8 at all (common on old file servers).
GOOD_NAMES = {
    "tai chi – ü 日本 (1).mp4": GOOD_CLIPS[0],
    "pancake with  spaces.mkv": GOOD_CLIPS[1],
    os.fsdecode(b"clean and jerk caf\xe9.mp4"): GOOD_CLIPS[2],
}


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory, clips_dir):
    config, base_rows = baseline(tmp_path_factory, clips_dir)
    tmp = tmp_path_factory.mktemp("zoo")
    folder = tmp / "in"
    folder.mkdir()
    for name, clip in GOOD_NAMES.items():
        shutil.copy(clips_dir / clip, folder / name)
    expect = make_zoo(folder, clips_dir)
    for name in GOOD_NAMES:
        expect[name] = {"status": "ok", "reason": None, "rows": True}
    out = tmp / "out"
    assert run_cli(config, "--input", str(folder), "--output", str(out), *FAST) == 0
    rows, manifest, report = read_run(latest_run(out))
    by_uri = {v["uri"]: v for v in report["videos"]}
    videos = {name: by_uri.get(portable_uri(str(folder / name))) for name in expect}
    return expect, videos, rows, manifest, report, base_rows


def test_every_entry_is_reported_with_its_reason(zoo_run):
    expect, videos, rows, manifest, report, _ = zoo_run
    assert len(report["videos"]) == len(expect) == manifest["counts"]["videos"]
    rows_of = Counter(r["video_id"] for r in rows)
    for name, want in expect.items():
        got = videos[name]
        assert got is not None, f"{name!r} missing from the report"
        assert got["status"] == want["status"], (name, got)
        if want["reason"] is None:
            assert got["reason"] is None, (name, got)
        else:
            assert got["reason"].startswith(want["reason"]), (name, got["reason"])
        assert bool(rows_of[got["video_id"]]) is want["rows"], (name, rows_of[got["video_id"]])
    # Every video that is not ok is counted under its reason.
    not_ok = sum(1 for w in expect.values() if w["status"] != "ok")
    assert sum(manifest["counts"]["failures_by_reason"].values()) == not_ok


def test_good_clips_beside_the_zoo_are_unaffected(zoo_run):
    expect, videos, rows, _, _, base_rows = zoo_run
    good_ids = {videos[name]["video_id"] for name in GOOD_NAMES}
    assert {comparable(r) for r in rows if r["video_id"] in good_ids} == {comparable(r) for r in base_rows}
    assert len({r["sample_id"] for r in rows}) == len(rows)
    # Output rows name the input as the report does (the Latin-1 name as a file:// URI).
    uris = {r["video_uri"] for r in rows if r["video_id"] in good_ids}
    assert uris == {videos[name]["uri"] for name in GOOD_NAMES}


def test_one_frame_and_ten_minute_videos(zoo_run):
    _, videos, rows, _, _, _ = zoo_run
    single = videos["one_frame.mp4"]
    assert [e["kind"] for e in single["errors"] if e.get("task") == "temporal"] == ["single_frame"]
    long_video = videos["long_10min.mp4"]
    assert long_video["status"] == "ok"
    # Eight frames spread over the whole ten minutes, decoded without reading the rest: what
    # the decode stage hands on for this video (its temporal rows abstain: no person in it).
    from proxyqa.core.config import load_config
    from proxyqa.stages.base import to_batch, to_rows
    from proxyqa.stages.decode import DecodeStage

    cfg = load_config(None, ["decode.num_frames=8"])
    (decoded,) = to_rows(DecodeStage(cfg.decode, cfg.limits, cfg.s3)(to_batch([{
        "video_id": long_video["video_id"], "video_uri": long_video["uri"]}])))
    assert decoded["status"] == "ok", decoded.get("reason")
    shown = decoded["timestamps"]
    assert len(shown) <= 8 and shown[-1] - shown[0] > 400
    assert len(decoded["frames_jpeg"]) == len(shown) == len(decoded["frame_indices"])
