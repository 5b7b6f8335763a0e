"""Training-grade dataset over real clips: near-duplicate copies share a split, templates
vary, rows carry difficulty, balancing holds the blind baseline down, the reader filters
by split and difficulty (docs/dataset.md)."""
from __future__ import annotations

import shutil
from collections import Counter, defaultdict

import cv2
import pytest

from proxyqa.core.balance import blind_baseline
from proxyqa.trainer.reader import RunDataset, difficulty_at_least, iter_rows
from tests.helpers import LOCAL_CONFIG, PLUMBING_TEMPORAL, latest_run, read_run, run_cli

ORIGINAL = "kinetics_clean_and_jerk.mp4"


def _copy(src, dst, *, scale: float = 1.0, start: float = 0.0, stop: float = 1.0) -> None:
    """A real re-encode (OpenCV mp4v, not the source codec/bitrate), optionally resized/trimmed."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    cap.release()
    frames = frames[int(start * len(frames)):int(stop * len(frames))]
    h, w = frames[0].shape[:2]
    size = (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2)
    out = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for f in frames:
        out.write(cv2.resize(f, size, interpolation=cv2.INTER_AREA) if scale != 1.0 else f)
    out.release()


@pytest.fixture(scope="module")
def copies_run(tmp_path_factory, clips_dir):
    folder = tmp_path_factory.mktemp("copies")
    for name in (ORIGINAL, "kinetics_ta_chi.mp4", "pose2sim_single_cam01.mp4",
                 "decord_flipping_a_pancake.mkv", "mmaction2_demo_skeleton.mp4"):
        shutil.copy(clips_dir / name, folder / name)
    src = clips_dir / ORIGINAL
    _copy(src, folder / "reencoded.mp4")
    _copy(src, folder / "resized.mp4", scale=0.5)
    _copy(src, folder / "trimmed.mp4", start=0.15, stop=0.9)
    out = tmp_path_factory.mktemp("out")
    # Splits 1/3 each, so that a copy landing apart from its original would show.
    assert run_cli(LOCAL_CONFIG, "--input", str(folder), "--output", str(out),
                   "--set", "ray.progress_bars=false", "--set", "split.train=0.34",
                   "--set", "split.validation=0.33", "--set", "split.test=0.33", *PLUMBING_TEMPORAL) == 0
    return latest_run(out)


def test_near_duplicate_copies_share_the_split_of_the_original(copies_run):
    rows, manifest, report = read_run(copies_run)
    by_name = defaultdict(set)
    groups = defaultdict(set)
    for r in rows:
        name = r["video_uri"].rsplit("/", 1)[-1]
        by_name[name].add(r["split"])
        groups[name].add(r["content_group"])
    for copy in ("reencoded.mp4", "resized.mp4", "trimmed.mp4"):
        assert by_name[copy], f"{copy} gave no rows"
        assert by_name[copy] == by_name[ORIGINAL] and len(by_name[copy]) == 1, by_name
        assert groups[copy] == groups[ORIGINAL]
    # Different clips are not merged into one group.
    assert groups["kinetics_ta_chi.mp4"] != groups[ORIGINAL]
    assert {r["split"] for r in rows} <= {"train", "validation", "test"}
    assert sum(manifest["counts"]["rows_by_split"].values()) == len(rows)
    for shard in manifest["shards"]:     # one split per file, named for it
        assert shard["path"].split("/")[-1].startswith(shard["split"] + "-")


def test_templates_difficulty_and_no_same_video_duplicates(copies_run):
    rows, manifest, _ = read_run(copies_run)
    by_task = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    for task, mine in by_task.items():
        assert all(r["template_id"] and r["template_id"].startswith(task + "/") for r in mine)
        seen = Counter((r["video_id"], tuple(r["frame_indices"]), r["question"]) for r in mine)
        assert max(seen.values()) == 1, task
    assert len({r["template_id"] for r in by_task["spatial_grounding"]}) >= 5
    order = by_task["temporal_order"]
    assert order and all(r["difficulty"]["time_gap_s"] > 0 and r["difficulty"]["frame_diff"] >= 3
                         for r in order)
    for r in order:    # the recorded gap is the smallest between frames adjacent in time
        ts = sorted(r["timestamps"])
        assert abs(r["difficulty"]["time_gap_s"] - min(b - a for a, b in zip(ts, ts[1:]))) < 1e-3
    assert all(r["difficulty"]["margin"] is not None for r in by_task["body_part_state"])
    assert all(r["difficulty"]["motion"] >= 0.1 for r in by_task["motion_compare"])


def test_balancing_holds_the_blind_baseline_near_chance(copies_run):
    rows, manifest, report = read_run(copies_run)
    for kind, s in blind_baseline(rows).items():
        assert s.blind <= s.chance + 0.03 + 1e-9, (kind, s)
    assert report["counts"]["balanced_away"] == manifest["counts"]["balanced_away"]
    assert isinstance(report["counts"]["balanced_away"], dict)


def test_reader_filters_by_split_and_difficulty(copies_run):
    rows, manifest, _ = read_run(copies_run)
    for split in ("train", "validation", "test"):
        want = sorted(r["sample_id"] for r in rows if r["split"] == split)
        got = sorted(r["sample_id"] for r in RunDataset(str(copies_run), split=split,
                                                         columns=["sample_id"]))
        assert got == want
    hard = difficulty_at_least("time_gap_s", 1.0, at_most=True)
    got = {r["sample_id"] for r in iter_rows(str(copies_run), tasks=["temporal_order"], where=hard)}
    want = {r["sample_id"] for r in rows if r["task"] == "temporal_order"
            and r["difficulty"]["time_gap_s"] <= 1.0}
    assert got == want
    with pytest.raises(ValueError, match="unknown split"):
        RunDataset(str(copies_run), split="dev")


def test_a_copy_arriving_in_a_later_nightly_joins_its_originals_group_and_split(tmp_path, clips_dir):
    # Night 1 processes the original; night 2 (incremental) carries it and processes a
    # re-encoded copy (other bytes: another content_id). The copy's frames must still be
    # matched against the carried original's, which night 1's ledger keeps: the _videos/
    # records that held the hashes are gone once night 1 committed.
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    shutil.copy(clips_dir / ORIGINAL, folder / ORIGINAL)
    thirds = ("--set", "split.train=0.34", "--set", "split.validation=0.33", "--set", "split.test=0.33")
    common = ("--output", str(out), "--set", "ray.progress_bars=false", *thirds, *PLUMBING_TEMPORAL)
    assert run_cli(LOCAL_CONFIG, "--input", str(folder), *common) == 0
    _copy(clips_dir / ORIGINAL, folder / "reencoded.mp4")
    assert run_cli(LOCAL_CONFIG, "--input", str(folder), "--incremental", *common) == 0
    rows, manifest, _ = read_run(latest_run(out))
    assert manifest["counts"]["videos_carried"] == 1
    split, group = defaultdict(set), defaultdict(set)
    for r in rows:
        name = r["video_uri"].rsplit("/", 1)[-1]
        split[name].add(r["split"])
        group[name].add(r["content_group"])
    assert split["reencoded.mp4"], "the copy gave no rows"
    assert group["reencoded.mp4"] == group[ORIGINAL] and len(group[ORIGINAL]) == 1
    assert split["reencoded.mp4"] == split[ORIGINAL]
