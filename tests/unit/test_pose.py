"""Pose stage with real models on real clips: mediapipe (bundled weights) and ultralytics
(a random-init YOLO-pose built from its yaml: no weights can be downloaded here)."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

# Before any test decodes: decord2 preloads libnvblas globally, and a torch imported after
# it segfaults in CPU convolutions (see UltralyticsPose).
import torch  # noqa: F401

from proxyqa.core.config import (
    ConfigError,
    DecodeConfig,
    Limits,
    MediaPipeConfig,
    PoseConfig,
    UltralyticsConfig,
)
from proxyqa.core.people import as_float32
from proxyqa.core.schema import COCO17
from proxyqa.models.mediapipe_pose import (
    BLAZEPOSE_TO_COCO17,
    MediaPipePose,
    blazepose_to_person,
    bundled_pose_task,
)
from proxyqa.models.pose_base import check_pose_config
from proxyqa.models.yolo_pose import UltralyticsPose
from proxyqa.stages.decode import DecodeStage, encode_jpeg
from proxyqa.stages.pose import PoseStage, decode_jpeg_rgb, dense_enough
from proxyqa.stages.sampling import RunContext, make_sample

L_SHOULDER, R_SHOULDER = COCO17.index("left_shoulder"), COCO17.index("right_shoulder")
L_HIP, R_HIP = COCO17.index("left_hip"), COCO17.index("right_hip")


def decoded(path: Path, num_frames: int = 8) -> dict:
    """One decoded video row (the pose stage's input), from the real decode stage."""
    stage = DecodeStage(DecodeConfig(num_frames=num_frames, max_side=512), Limits())
    batch = stage({"video_uri": [str(path)], "video_id": [path.stem]})
    row = {k: v[0] for k, v in batch.items()}
    assert row["status"] == "ok", row.get("reason")
    return row


def as_batch(*rows: dict) -> dict:
    keys = {k for r in rows for k in r}
    return {k: [r.get(k) for r in rows] for k in keys}


def assert_person_contract(person) -> None:
    x1, y1, x2, y2 = person.box
    assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1
    assert np.isfinite(person.score)
    assert person.keypoints.shape == (17, 3)
    assert ((person.keypoints[:, :2] >= 0) & (person.keypoints[:, :2] <= 1)).all()
    assert ((person.keypoints[:, 2] >= 0) & (person.keypoints[:, 2] <= 1)).all()


# ---------------------------------------------------------------- mediapipe

@pytest.fixture(scope="module")
def mediapipe_pose():
    estimator = MediaPipePose(MediaPipeConfig(num_poses=2))
    yield estimator
    estimator.close()


def test_bundled_task_is_assembled_from_the_wheel(tmp_path, monkeypatch):
    import mediapipe as mp

    from proxyqa.models import mediapipe_pose

    monkeypatch.setenv("PROXYQA_CACHE", str(tmp_path))
    built = []
    monkeypatch.setattr(mediapipe_pose, "_build_pose_task",
                        lambda real=mediapipe_pose._build_pose_task: built.append(1) or real())
    first = bundled_pose_task()
    with zipfile.ZipFile(io.BytesIO(first)) as bundle:
        assert sorted(bundle.namelist()) == ["pose_detector.tflite", "pose_landmarks_detector.tflite"]
    cached = mediapipe_pose.task_cache_path(mp.__version__)
    assert cached.read_bytes() == first and cached.parent == tmp_path
    assert bundled_pose_task() == first and built == [1]       # the second worker reads it
    cached.write_bytes(first[:100])                            # a damaged cache is rebuilt
    assert bundled_pose_task() == first and built == [1, 1]


def test_blazepose_landmarks_map_to_coco17():
    # Landmark i sits at x = i / 40; landmark 28 (right ankle) is outside the frame.
    lms = [SimpleNamespace(x=i / 40, y=0.5, visibility=0.9, presence=0.95) for i in range(33)]
    lms[28].y = 1.3
    person = blazepose_to_person(lms)
    assert person.keypoints[:, 0] == pytest.approx([i / 40 for i in BLAZEPOSE_TO_COCO17])
    assert person.keypoints[COCO17.index("left_shoulder"), 0] == pytest.approx(11 / 40)
    assert person.keypoints[COCO17.index("right_hip"), 0] == pytest.approx(24 / 40)
    ankle = person.keypoints[COCO17.index("right_ankle")]
    assert ankle[1] == 1.0 and ankle[2] == 0.0          # clipped onto the edge, no score
    assert person.keypoints[0, 2] == pytest.approx(0.9)  # min(visibility, presence)
    assert_person_contract(person)


@pytest.mark.parametrize("clip", [f"pose2sim_single_cam0{i}.mp4" for i in range(1, 5)])
def test_mediapipe_finds_the_upright_person(mediapipe_pose, clips_dir, clip):
    row = decoded(clips_dir / clip)
    people = mediapipe_pose.predict([decode_jpeg_rgb(j) for j in row["frames_jpeg"]])
    assert len(people) == len(row["frames_jpeg"])
    found = [ps for ps in people if ps]
    assert len(found) >= 0.75 * len(people)
    upright = 0
    for ps in found:
        for person in ps:
            assert_person_contract(person)
        main = max(ps, key=lambda p: p.score)
        kps = main.keypoints
        shoulders_y = (kps[L_SHOULDER, 1] + kps[R_SHOULDER, 1]) / 2
        hips_y = (kps[L_HIP, 1] + kps[R_HIP, 1]) / 2
        upright += shoulders_y < hips_y
        # Joints lie inside (or on the edge of) the person's own box.
        assert (kps[:, 0] >= main.box[0] - 0.02).all() and (kps[:, 0] <= main.box[2] + 0.02).all()
    assert upright >= 0.9 * len(found)


@pytest.mark.parametrize("clip", ["pose2sim_multi_cam01.mp4", "mmaction2_demo_skeleton.mp4"])
def test_mediapipe_two_people_are_two_tracks(mediapipe_pose, clips_dir, clip):
    row = decoded(clips_dir / clip)
    stage = PoseStage(PoseConfig(backend="mediapipe"), estimator=mediapipe_pose)
    out = stage(as_batch(row))
    assert out["status"] == ["ok"]
    persons = json.loads(out["persons_json"][0])
    assert sum(len(ps) == 2 for ps in persons) >= len(persons) / 2
    frames_per_track: dict[int, int] = {}
    for ps in persons:
        ids = [p["track_id"] for p in ps]
        assert len(ids) == len(set(ids))                 # one id per person in a frame
        for tid in ids:
            frames_per_track[tid] = frames_per_track.get(tid, 0) + 1
    long_tracks = [t for t, n in frames_per_track.items() if n >= len(persons) / 2]
    assert len(long_tracks) == 2


def test_mediapipe_black_frame_has_nobody(mediapipe_pose):
    assert mediapipe_pose.predict([np.zeros((288, 512, 3), np.uint8)]) == [[]]


# ---------------------------------------------------------------- the stage

@pytest.fixture(scope="module")
def stage(mediapipe_pose):
    return PoseStage(PoseConfig(backend="mediapipe", crop_margin=0.15), estimator=mediapipe_pose)


def test_stage_adds_subject_crops_and_keypoints(stage, clips_dir):
    row = decoded(clips_dir / "kinetics_ta_chi.mp4", num_frames=6)
    out = stage(as_batch(row))
    assert out["status"] == ["ok"]
    n = len(row["frames_jpeg"])
    persons = json.loads(out["persons_json"][0])
    assert len(persons) == n
    subject = json.loads(out["subject_json"][0])
    assert subject["rule"] == "most_frames"
    assert len(subject["boxes"]) == len(subject["keypoints"]) == n
    assert subject["present"] == pytest.approx(sum(b is not None for b in subject["boxes"]) / n)
    assert subject["present"] >= 0.8
    crops = out["subject_crops_jpeg"][0]
    assert len(crops) == n
    for pos, (box, kps, crop) in enumerate(zip(subject["boxes"], subject["keypoints"], crops)):
        if box is None:
            assert kps is None and crop is None
            continue
        mine = [p for p in persons[pos] if p["track_id"] == subject["track_id"]]
        assert len(mine) == 1 and mine[0]["box"] == box and mine[0]["keypoints"] == kps
        assert np.asarray(kps).shape == (17, 3)
        frame = decode_jpeg_rgb(row["frames_jpeg"][pos])
        h, w = frame.shape[:2]
        # Crop = box grown by 15% of its size on each side, clipped to the frame.
        x1, y1, x2, y2 = box
        mx, my = 0.15 * (x2 - x1), 0.15 * (y2 - y1)
        want_w = (min(1, x2 + mx) - max(0, x1 - mx)) * w
        want_h = (min(1, y2 + my) - max(0, y1 - my)) * h
        got_h, got_w = decode_jpeg_rgb(crop).shape[:2]
        assert abs(got_w - want_w) <= 2 and abs(got_h - want_h) <= 2

    # The task builders read the subject through make_sample.
    sample_row = {k: v[0] for k, v in out.items()}
    present = [p for p, b in enumerate(subject["boxes"]) if b is not None][:2]
    sample = make_sample(sample_row, "temporal_order", RunContext("r", "h"), key="k",
                         positions=present, question="q", answer="a", answer_struct={},
                         answer_source="construction")
    # at the precision the keypoints column stores (float32), as every reader of the codec sees them
    assert sample["keypoints"] == [as_float32(subject["keypoints"][p]) for p in present]
    assert sample["subject_box"] is not None


def test_blazeface_finds_both_faces_of_two_people_standing_apart(mediapipe_pose, clips_dir):
    from proxyqa.models.face_detector import BlazeFaceDetector

    row = decoded(clips_dir / "mmaction2_demo_skeleton.mp4", num_frames=16)
    frame = decode_jpeg_rgb(row["frames_jpeg"][0])
    detector = BlazeFaceDetector()
    faces = detector.detect([frame])[0]
    detector.close()
    people = mediapipe_pose.predict([frame])[0]
    assert len(faces) == 2 and len(people) == 2
    for person in people:   # one face at the head of each person
        nose = person.keypoints[0]
        assert sum(f[0] - 0.02 <= nose[0] <= f[2] + 0.02 and f[1] - 0.02 <= nose[1] <= f[3] + 0.02
                   for f in faces) == 1


def test_stage_asks_nothing_where_one_skeleton_covers_two_people_hugging(mediapipe_pose, clips_dir):
    """The mmaction2 clip ends in a hug: one skeleton, the second person hidden behind or
    merged into it. Those frames must carry a flag (no geometry question); the frames of
    the two standing apart must not."""
    stage = PoseStage(PoseConfig(backend="mediapipe"), estimator=mediapipe_pose)
    row = decoded(clips_dir / "mmaction2_demo_skeleton.mp4", num_frames=16)
    subject = json.loads(stage(as_batch(row))["subject_json"][0])
    flags = subject["flags"]
    assert all(f is not None for f in flags[11:]), flags
    assert all(f is None for f in flags[:4]), flags
    assert max(subject["people"]) == 2


def test_stage_without_people_stays_ok_and_notes_it(stage):
    black = encode_jpeg(np.zeros((288, 512, 3), np.uint8), 90)
    row = {"video_uri": "x.mp4", "video_id": "v", "status": "ok", "frames_jpeg": [black] * 3,
           "timestamps": [0.0, 1.0, 2.0]}
    out = stage(as_batch(row))
    assert out["status"] == ["ok"]
    assert json.loads(out["persons_json"][0]) == [[], [], []]
    assert out["subject_json"][0] is None and out["subject_crops_jpeg"][0] is None
    assert json.loads(out["errors_json"][0])[0]["kind"] == "no_person"


def test_failed_rows_pass_untouched_and_bad_frames_fail_the_row(stage):
    failed = {"video_uri": "bad.mp4", "video_id": "b", "status": "failed",
              "reason": "decode: not_a_video: x", "frames_jpeg": None}
    garbage = {"video_uri": "g.mp4", "video_id": "g", "status": "ok",
               "frames_jpeg": [b"not a jpeg"], "timestamps": [0.0]}
    out = stage(as_batch(failed, garbage))
    assert out["status"] == ["failed", "failed"]
    assert {k: v[0] for k, v in out.items() if k in failed} == failed
    assert all(out.get(k, [None])[0] is None
               for k in ("persons_json", "subject_json", "subject_crops_jpeg"))
    assert out["reason"][1].startswith("pose: error: ValueError: a sampled frame is not a decodable JPEG")


def test_dense_enough_rule():
    assert dense_enough([0.0, 0.1, 0.2], 0.2)
    assert not dense_enough([0.0, 0.1, 0.5], 0.2)
    assert not dense_enough([0.0], 0.2)


# ---------------------------------------------------------------- ultralytics (random init)

@pytest.fixture(scope="module")
def yolo():
    # conf 0: a random-init model scores ~1e-4, and every box must still honour the contract.
    return UltralyticsPose(UltralyticsConfig(model="yolo11n-pose.yaml", batch=2, conf=0.0,
                                             imgsz=160, device="cpu"))


class CallLog:
    """Wraps the real model.predict to record the batch sizes it is called with."""

    def __init__(self, fn):
        self.fn, self.sizes = fn, []

    def __call__(self, source, **kwargs):
        self.sizes.append(len(source))
        return self.fn(source, **kwargs)


def test_ultralytics_batches_and_keeps_the_contract(yolo, monkeypatch):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (288, 512, 3), dtype=np.uint8) for _ in range(4)]
    frames.insert(2, np.zeros((288, 512, 3), np.uint8))    # an empty (black) frame
    log = CallLog(yolo.model.predict)
    monkeypatch.setattr(yolo.model, "predict", log)
    people = yolo.predict(frames)
    assert log.sizes == [2, 2, 1]
    assert len(people) == 5
    for ps in people:
        for person in ps:
            assert_person_contract(person)
            assert person.track_id is None
            assert np.allclose(person.to_json()["keypoints"], person.keypoints, atol=1e-4)
    assert yolo.predict([]) == []


def test_ultralytics_tracker_gives_ids_on_dense_frames(yolo, tmp_path):
    # Thresholds at 0 so the tracker accepts a random-init model's detections.
    tracker = tmp_path / "bytetrack_any.yaml"
    tracker.write_text("tracker_type: bytetrack\ntrack_high_thresh: 0.0\ntrack_low_thresh: 0.0\n"
                       "new_track_thresh: 0.0\ntrack_buffer: 30\nmatch_thresh: 0.8\n"
                       "fuse_score: True\n")
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (288, 512, 3), dtype=np.uint8)
    frames = [np.roll(base, 4 * t, axis=1) for t in range(3)]
    yolo.cfg = yolo.cfg.model_copy(update={"tracker": str(tracker)})
    cfg = PoseConfig(backend="ultralytics", ultralytics=yolo.cfg)
    stage = PoseStage(cfg, estimator=yolo)
    row = {"video_uri": "x.mp4", "video_id": "v", "status": "ok",
           "frames_jpeg": [encode_jpeg(f, 90) for f in frames], "timestamps": [0.0, 0.05, 0.1]}
    out = stage(as_batch(row))
    assert out["status"] == ["ok"], out.get("reason")
    persons = json.loads(out["persons_json"][0])
    ids = [p["track_id"] for ps in persons for p in ps]
    assert ids and all(isinstance(i, int) for i in ids)
    # A second video starts from a reset tracker: its ids start again from the first ones.
    again = json.loads(stage(as_batch(dict(row)))["persons_json"][0])
    assert min(p["track_id"] for ps in again for p in ps) == min(ids)


def test_missing_ultralytics_weights_is_a_clear_config_error(tmp_path):
    missing = tmp_path / "weights" / "yolo11n-pose.pt"
    cfg = PoseConfig(backend="ultralytics", ultralytics=UltralyticsConfig(model=str(missing)))
    with pytest.raises(ConfigError, match="weights not found.*yolo11n-pose.pt.*pose.ultralytics.model"):
        check_pose_config(cfg)
    with pytest.raises(ConfigError, match=str(missing)):
        PoseStage(cfg)


def test_local_config_runs_mediapipe():
    from proxyqa.core.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "local.yaml")
    assert cfg.pose.backend == "mediapipe"
    check_pose_config(cfg.pose)


def test_missing_mediapipe_task_file_is_a_config_error(tmp_path):
    cfg = PoseConfig(backend="mediapipe",
                     mediapipe=MediaPipeConfig(task_file=str(tmp_path / "pose.task")))
    with pytest.raises(ConfigError, match="pose.mediapipe.task_file not found"):
        check_pose_config(cfg)


def test_ultralytics_refuses_a_torch_loaded_after_decord(tmp_path):
    # In a fresh process: decord first (it preloads libnvblas), then the backend. Without
    # the guard this process would segfault in the model's first convolution.
    import os
    import subprocess
    import sys

    code = ("import decord\n"
            "from proxyqa.core.config import UltralyticsConfig\n"
            "from proxyqa.models.yolo_pose import UltralyticsPose\n"
            "try:\n"
            "    UltralyticsPose(UltralyticsConfig(model='yolo11n-pose.yaml', device='cpu'))\n"
            "except RuntimeError as exc:\n"
            "    print('refused:', exc)\n")
    env = dict(os.environ, YOLO_CONFIG_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    probe = subprocess.run([sys.executable, "-c", "import decord; print(open('/proc/self/maps').read())"],
                           capture_output=True, text=True, timeout=60)
    if "libnvblas" in probe.stdout:
        assert "refused: libnvblas was loaded before torch" in done.stdout
    else:  # a decord build without the CUDA preload: nothing to refuse
        assert "refused" not in done.stdout


def test_ultralytics_predicts_across_the_videos_of_a_batch(yolo, clips_dir, monkeypatch):
    # Two real videos (sparse frames: no tracker) go to the model in one predict call, so a
    # GPU batch larger than one video's frames is filled; each video gets back its own people.
    cfg = PoseConfig(backend="ultralytics",
                     ultralytics=yolo.cfg.model_copy(update={"tracker": None}))
    stage = PoseStage(cfg, estimator=yolo)
    videos = [decoded(clips_dir / "kinetics_ta_chi.mp4", 8),
              decoded(clips_dir / "pose2sim_single_cam01.mp4", 8)]
    alone = [stage(as_batch(dict(v))) for v in videos]
    failed = {"video_uri": "bad.mp4", "video_id": "b", "status": "failed",
              "reason": "decode: not_a_video: x", "frames_jpeg": None}
    garbage = {"video_uri": "g.mp4", "video_id": "g", "status": "ok",
               "frames_jpeg": [b"not a jpeg"], "timestamps": [0.0]}
    calls: list[int] = []
    real_predict = yolo.predict
    monkeypatch.setattr(yolo, "predict", lambda frames: calls.append(len(frames)) or real_predict(frames))
    out = stage(as_batch(dict(videos[0]), failed, dict(videos[1]), garbage))

    # One call: both videos' frames and, for the flip test, their mirrored copies.
    assert calls == [2 * (len(videos[0]["frames_jpeg"]) + len(videos[1]["frames_jpeg"]))]
    assert out["status"] == ["ok", "failed", "ok", "failed"]
    assert out["reason"][1] == failed["reason"]
    assert out["reason"][3].startswith("pose: error: ValueError: a sampled frame is not a decodable JPEG")
    for pos, single in zip((0, 2), alone):
        assert out["persons_json"][pos] == single["persons_json"][0]
        assert out["subject_json"][pos] == single["subject_json"][0]
    assert out["persons_json"][0] != out["persons_json"][2]
