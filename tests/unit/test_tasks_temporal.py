import json
import re

import cv2
import numpy as np

from proxyqa.core.config import TasksConfig, TemporalDirectionConfig, TemporalOrderConfig
from proxyqa.core.schema import SAMPLE_SCHEMA
from proxyqa.stages.sampling import RunContext
from proxyqa.stages.tasks import BuildTasksStage
from proxyqa.stages.tasks_temporal import (
    frame_diff,
    grey_thumbs,
    subject_region,
    temporal_direction,
    temporal_order,
)

CTX = RunContext(run_id="r", config_hash="h", seed=0)


def _jpeg(value: int, shift: int = 0) -> bytes:
    img = np.full((64, 96, 3), value, np.uint8)
    cv2.rectangle(img, (5 + shift, 5), (25 + shift, 40), (255, 255, 255), -1)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _row(frames: list[bytes], content="c1") -> dict:
    n = len(frames)
    return {"video_uri": "/v.mp4", "video_id": "vid", "content_id": content, "status": "ok",
            "width": 96, "height": 64, "frames_jpeg": frames, "frame_indices": list(range(0, 10 * n, 10)),
            "timestamps": [i / 3 for i in range(n)]}


MOVING = [_jpeg(20 + 10 * i, shift=6 * i) for i in range(10)]
STATIC = [_jpeg(100) for _ in range(10)]


def test_temporal_order_answer_is_the_chronological_permutation():
    row = _row(MOVING)
    samples = temporal_order(row, TemporalOrderConfig(frames=4, samples_per_video=3), CTX,
                             grey_thumbs(row["frames_jpeg"]))
    assert len(samples) == 3
    for s in samples:
        order = json.loads(s["answer_struct"])["order"]
        assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]
        ts = [s["timestamps"][i] for i in order]
        assert all(b > a for a, b in zip(ts, ts[1:]))
        assert s["answer"] == ", ".join(str(i + 1) for i in order)
        # The earliest image is named in the question (which end came first is often not
        # in the picture); only that one image number is named.
        named = re.findall(r"Image (\d+)", s["question"].replace("Image 1 to Image 4", ""))
        assert named == [str(order[0] + 1)]
        # The images are the frames at frame_indices, in shown order.
        for img, fidx in zip(s["images"], s["frame_indices"]):
            assert img == row["frames_jpeg"][fidx // 10]
        assert s["answer_source"] == "construction" and s["family"] == "temporal"


def test_static_video_gives_no_order_or_direction_questions():
    row = _row(STATIC)
    thumbs = grey_thumbs(row["frames_jpeg"])
    assert temporal_order(row, TemporalOrderConfig(), CTX, thumbs) == []
    assert temporal_direction(row, TemporalDirectionConfig(), CTX, thumbs) == []


def test_temporal_direction_reversed_shows_frames_backwards():
    row = _row(MOVING)
    samples = temporal_direction(row, TemporalDirectionConfig(frames=3, samples_per_video=4,
                                                              min_span_s=0), CTX,
                                 grey_thumbs(row["frames_jpeg"]))
    assert len(samples) == 4
    flags = [json.loads(s["answer_struct"])["reversed"] for s in samples]
    assert sorted(flags) == [False, False, True, True]          # balanced per video
    for s, rev in zip(samples, flags):
        ts = s["timestamps"]
        assert (ts == sorted(ts, reverse=True)) if rev else (ts == sorted(ts))
        assert s["answer"] == s["choices"][json.loads(s["answer_struct"])["index"]]


def test_deterministic_given_content_and_seed():
    stage = BuildTasksStage(TasksConfig(), CTX)
    batch = {k: [v] for k, v in _row(MOVING).items()}
    ids = lambda out: [s["sample_id"] for s in out["samples"][0]]  # noqa: E731
    first = ids(stage(batch))
    assert first == ids(stage(batch))
    assert first == ids(stage({**batch, "video_uri": ["s3://b/v.mp4"], "video_id": ["other"]}))
    assert first != ids(BuildTasksStage(TasksConfig(seed=1), RunContext("r", "h", 1))(batch))


def test_samples_fit_the_parquet_schema():
    import pyarrow as pa

    stage = BuildTasksStage(TasksConfig(), CTX)
    out = stage({k: [v] for k, v in _row(MOVING).items()})
    table = pa.Table.from_pylist(out["samples"][0], schema=SAMPLE_SCHEMA)
    assert table.num_rows == len(out["samples"][0]) > 0


def test_unknown_task_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="unknown task"):
        BuildTasksStage(TasksConfig(enabled=["temporal_odrer"]), CTX)


def test_temporal_direction_needs_the_minimum_span():
    # Frames 1/3 s apart: a 3-frame clip spans 0.67 s, under the default 1.5 s.
    row = _row(MOVING)
    thumbs = grey_thumbs(row["frames_jpeg"])
    assert temporal_direction(row, TemporalDirectionConfig(frames=3), CTX, thumbs) == []
    assert temporal_direction(row, TemporalDirectionConfig(frames=6), CTX, thumbs)


def test_order_candidates_cover_every_frame_set_when_there_are_few():
    from proxyqa.stages.tasks_temporal import MAX_CANDIDATES, _candidates

    rng = np.random.default_rng(0)
    every = list(_candidates(16, 4, rng))
    assert len(every) == 1820 and len({tuple(c) for c in every}) == 1820
    assert all(c == sorted(c) for c in every)
    assert every[:5] != [[0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 2, 5], [0, 1, 2, 6], [0, 1, 2, 7]]
    many = list(_candidates(64, 4, np.random.default_rng(0)))   # 635376 sets: a sample
    assert 0 < len(many) <= MAX_CANDIDATES and len({tuple(c) for c in many}) == len(many)


def test_frame_difference_over_the_subject_region_sees_a_small_walker():
    # A static wide shot with a small figure moving: under the whole-frame threshold,
    # clearly over it where the figure is.
    def frame(x: int) -> bytes:
        img = np.full((256, 256, 3), 120, np.uint8)
        cv2.rectangle(img, (x, 100), (x + 8, 140), (200, 200, 200), -1)
        return cv2.imencode(".jpg", img)[1].tobytes()
    thumbs = grey_thumbs([frame(100), frame(118)])
    boxes = [[100 / 256, 100 / 256, 108 / 256, 140 / 256], [118 / 256, 100 / 256, 126 / 256, 140 / 256]]
    region = subject_region(boxes, 0, 1)
    assert region[0] < boxes[0][0] and region[2] > boxes[1][2]     # union of both, padded
    assert frame_diff(thumbs, 0, 1) < TemporalOrderConfig().min_frame_diff
    assert frame_diff(thumbs, 0, 1, region) > 3 * TemporalOrderConfig().min_frame_diff
    assert subject_region([boxes[0], None], 0, 1) is None          # whole frame then


def test_the_temporal_guard_uses_frames_flagged_only_for_unclear_sides():
    from proxyqa.core.people import Subject
    from proxyqa.stages import pose_checks as chk
    from proxyqa.stages.tasks_motion import row_pose_motion
    from tests.unit.test_pose_checks import standing

    kps = [standing(x0=x).tolist() for x in (0.2, 0.5, 0.8)]
    boxes = [[x - 0.1, 0.1, x + 0.1, 0.9] for x in (0.2, 0.5, 0.8)]

    def motion(flags):
        subject = Subject(track_id=1, rule="r", boxes=boxes, keypoints=kps, present=1.0, flags=flags)
        row = {"subject_json": subject.to_json(), "width": 100, "height": 100}
        guard = row_pose_motion(0.5)
        return guard(row, 0, 1), guard(row, 1, 2)

    side_on = motion([chk.FLIP_UNCONFIRMED, chk.SIDES_UNCLEAR + "legs crossed at the knees", None])
    assert all(m is not None and m > 1.0 for m in side_on)      # a walker: 0.3 / 0.25 torso
    merged = motion([None, "overlaps another person", None])
    assert merged == (None, None)                               # never across a doubtful skeleton
