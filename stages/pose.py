"""Pose stage: people, COCO-17 keypoints and tracks on the sampled frames; the subject; crops.

The models live in proxyqa.models and share one interface (`PoseEstimator.predict`):
- `MediaPipePose`: BlazePose on CPU, fully offline (the model ships in the mediapipe wheel).
- `UltralyticsPose`: YOLO-pose, batched, GPU when present; weights must be a local file.

Coordinates are normalised to [0, 1] of the frame. Frames reach this stage resized with
the aspect ratio kept, so they are also fractions of the original frame (docs/schema.md).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from proxyqa.core.config import PoseConfig
from proxyqa.core.people import Person, Subject, encode_people
from proxyqa.models.pose_base import PoseEstimator, build_estimator, check_pose_config  # noqa: F401
from proxyqa.stages import pose_checks as chk
from proxyqa.stages.base import Batch, RowStage, add_error, to_batch, to_rows
from proxyqa.stages.decode import encode_jpeg
from proxyqa.stages.track import associate, choose_subject

log = logging.getLogger(__name__)

CROP_JPEG_QUALITY = 90


# ---------------------------------------------------------------- the stage

def decode_jpeg_rgb(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("a sampled frame is not a decodable JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def crop_box(rgb: np.ndarray, box: Sequence[float], margin: float) -> np.ndarray:
    """The box (normalised) grown by `margin` of its width/height on each side, clipped."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = box
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    left, top = int(max(0.0, x1 - mx) * w), int(max(0.0, y1 - my) * h)
    right, bottom = int(np.ceil(min(1.0, x2 + mx) * w)), int(np.ceil(min(1.0, y2 + my) * h))
    return rgb[top:max(bottom, top + 1), left:max(right, left + 1)]


def dense_enough(timestamps: Sequence[float], max_gap_s: float) -> bool:
    """Whether ultralytics' tracker may link these frames (every gap <= max_gap_s)."""
    gaps = np.diff(np.asarray(timestamps, float))
    return len(gaps) > 0 and bool(np.all(gaps <= max_gap_s))


def mirror_frame(rgb: np.ndarray) -> np.ndarray:
    """The frame mirrored left-right: a view, no copy (the model wrapper copies once)."""
    return rgb[:, ::-1]


def check_subject(mine: Sequence[Person | None], people: Sequence[Sequence[Person]],
                  mirrored: Sequence[Sequence[Person]] | None,
                  detections: Sequence[Sequence[list[float]]] | None,
                  timestamps: Sequence[float], aspect: float, cfg: PoseConfig,
                  faces: Sequence[Sequence[list[float]]] | None = None,
                  ) -> tuple[list[str | None], list[int]]:
    """The pose checks (stages/pose_checks.py) on the subject's skeleton in each frame.

    Returns per frame the flag (why the frame is unfit for geometry questions, or None) and
    the number of people visible (skeletons + detector boxes and faces no skeleton
    explains). Joints the flip test or the other-person test reject get score 0 on `mine`,
    in place.
    """
    checks, min_score = cfg.checks, cfg.min_keypoint_score
    flags: list[str | None] = [None] * len(mine)
    counts: list[int] = []
    for pos, person in enumerate(mine):
        others = [p.box for p in people[pos] if p is not person]
        dets = list(detections[pos]) if detections is not None else []
        skeleton_boxes = [p.box for p in people[pos]]
        # The mirrored run may find someone the first run missed: a box, and limbs.
        mirror_people = list(mirrored[pos]) if mirrored is not None else []
        dets += [chk.mirror_box(m.box) for m in mirror_people]
        missed = [d for d in dets if chk.explained(d, skeleton_boxes) is None]
        mirrored_only = [m for m in mirror_people
                         if chk.explained(chk.mirror_box(m.box), skeleton_boxes) is None]
        lone_faces, face_on_subject = chk.foreign_faces(faces[pos] if faces is not None else [],
                                                        people[pos], person)
        lone_faces = [f for f in lone_faces if not any(chk.inside(f, d) for d in missed)]
        counts.append(len(people[pos]) + len(missed) + len(lone_faces) + int(face_on_subject))
        if person is None:
            continue
        if face_on_subject:
            flags[pos] = "another person's face at head height inside the subject's box"
            continue
        if chk.hidden_neighbour(pos, people, mine, timestamps, checks.hidden_within_s):
            flags[pos] = "a person next to the subject is missing: hidden behind or merged into it"
            continue
        kps = person.keypoints
        if mirrored is not None:
            ok, sides_ok = chk.flip_agreement(kps, chk.match_mirrored(person, mirrored[pos]),
                                              aspect, min_score, checks.flip_tolerance,
                                              checks.confirm_score)
            kps[~ok, 2] = 0.0
            if not sides_ok:
                flags[pos] = chk.FLIP_UNCONFIRMED
                continue
        if checks.plausibility:
            why = chk.implausible(kps, aspect, min_score)
            if why is None and dets and chk.partial_body(person.box, dets):
                why = "skeleton covers under half the height of the detected person"
            if why is not None:
                flags[pos] = why
                continue
        if checks.sides:
            why = chk.sides_unclear(kps, aspect, min_score, checks.max_side_lean)
            if why is not None:
                flags[pos] = why
                continue
        others += missed
        if chk.overlaps_other(person.box, others, checks.max_overlap):
            flags[pos] = "overlaps another person"
            continue
        kps[chk.joints_on_others(kps, person.box, others), 2] = 0.0
        other_kps = [p.keypoints for p in people[pos] if p is not person]
        other_kps += [chk.mirror_back(m) for m in mirrored_only]
        kps[chk.joints_near_other_limbs(kps, other_kps, aspect, min_score), 2] = 0.0
        if faces is not None and not chk.nose_on_a_face(kps, faces[pos]):
            kps[chk.J["nose"], 2] = 0.0   # no face seen there: no nose question
    if checks.side_continuity:
        orients = [None if p is None or flags[i] is not None
                   else chk.orientation(p.keypoints, aspect, min_score)
                   for i, p in enumerate(mine)]
        for pos, flipped in enumerate(chk.side_flips(orients, timestamps)):
            if flipped:
                flags[pos] = chk.TRACK_SIDE_FLIP
    return flags, counts


def face_detector_name(cfg: PoseConfig) -> str:
    """`auto`: BlazeFace where mediapipe is the backend (so it is installed), none with
    ultralytics (the gpu image has no mediapipe; YOLO finds overlapping people itself)."""
    name = cfg.checks.face_detector
    if name == "auto":
        return "blazeface" if cfg.backend == "mediapipe" else "none"
    return name


class PoseStage(RowStage):
    """Adds `persons_json`, `subject_json` and `subject_crops_jpeg` to each decoded row.

    Tracking: with the ultralytics backend, its tracker (pose.ultralytics.tracker) runs
    when every gap between sampled frames is <= pose.ultralytics.track_max_gap_s and it
    gives every person an id; otherwise (and always for mediapipe) people are linked by
    stages/track.py, whose motion model tolerates sparse frames. The subject is
    chosen by pose.subject_rule. A video with nobody in it stays ok (temporal tasks need
    no pose): subject_json stays null and errors_json notes `pose: no_person`.
    """

    name = "pose"

    def __init__(self, cfg: PoseConfig, estimator: PoseEstimator | None = None,
                 detector: Any = None, face_detector: Any = None):
        self.cfg = cfg
        self.estimator = estimator if estimator is not None else build_estimator(cfg)
        if detector is None and cfg.checks.person_detector == "hog":
            from proxyqa.models.person_detector import HOGPersonDetector

            detector = HOGPersonDetector()
        self.detector = detector
        if face_detector is None and face_detector_name(cfg) == "blazeface":
            from proxyqa.models.face_detector import BlazeFaceDetector

            face_detector = BlazeFaceDetector()
        self.face_detector = face_detector
        self._predicted: dict[int, tuple[list[np.ndarray], list[list[Person]],
                                         list[list[Person]] | None]] = {}

    def __call__(self, batch: Batch) -> Batch:
        rows = to_rows(batch)
        if getattr(self.estimator, "frames_across_videos", False) and len(rows) > 1:
            self._predicted = self._predict_across_videos(rows)
        try:
            return to_batch([self.run_row(row) for row in rows])
        finally:
            self._predicted = {}

    def _tracks(self, timestamps: Sequence[float]) -> bool:
        ucfg = self.cfg.ultralytics
        return (getattr(self.estimator, "track", None) is not None and bool(ucfg.tracker)
                and dense_enough(timestamps, ucfg.track_max_gap_s))

    def _predict_across_videos(self, rows: list[dict]) -> dict[int, tuple[list, list]]:
        """One `predict` over the frames of every video of the batch, split back per video.

        Videos that go to the tracker (state per video) or whose frames do not decode are
        left to `process`, where a failure stays that video's own.
        """
        frames_of: dict[int, list[np.ndarray]] = {}
        for i, row in enumerate(rows):
            if row.get("status") not in (None, "ok") or not row.get("frames_jpeg"):
                continue
            if self._tracks(row.get("timestamps") or []):
                continue
            try:
                frames_of[i] = [decode_jpeg_rgb(j) for j in row["frames_jpeg"]]
            except Exception:  # noqa: BLE001 - reported by process() for this video alone
                continue
        if len(frames_of) < 2:
            return {}
        flat = [f for frames in frames_of.values() for f in frames]
        n = len(flat)
        if self.cfg.checks.flip_test:   # the mirrored frames ride in the same call
            flat = flat + [mirror_frame(f) for f in flat]
        try:
            people = self.estimator.predict(flat)
        except Exception as exc:  # noqa: BLE001 - fall back to one call per video
            log.warning("pose: predict across %d videos failed (%s); one video at a time",
                        len(frames_of), exc)
            return {}
        out, start = {}, 0
        for i, frames in frames_of.items():
            k = len(frames)
            mirrored = people[n + start:n + start + k] if self.cfg.checks.flip_test else None
            out[id(rows[i])] = (frames, people[start:start + k], mirrored)
            start += k
        return out

    def _people(self, frames: list[np.ndarray], timestamps: Sequence[float],
                predicted: list[list[Person]] | None = None) -> list[list[Person]]:
        people = predicted
        if people is None and self._tracks(timestamps):
            people = self.estimator.track(frames)  # type: ignore[attr-defined]
            # A tracker that leaves people without ids (scores under its thresholds) gives
            # no usable tracks: link them ourselves instead.
            if all(p.track_id is not None for ps in people for p in ps):
                return people
        if people is None:
            people = self.estimator.predict(frames)
        h, w = frames[0].shape[:2]
        associate(people, aspect=w / h)
        return people

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        frames, predicted, mirrored = self._predicted.get(id(row), (None, None, None))
        if frames is None:
            frames = [decode_jpeg_rgb(j) for j in row.get("frames_jpeg") or []]
        if not frames:
            row.update(persons_json=encode_people([]), subject_json=None, subject_crops_jpeg=None)
            return row
        timestamps = row.get("timestamps") or []
        people = self._people(frames, timestamps, predicted)
        subject_id = choose_subject(people, self.cfg.subject_rule)
        if subject_id is None:
            row.update(persons_json=encode_people(people), subject_json=None,
                       subject_crops_jpeg=None)
            add_error(row, "pose", "no_person", f"no person found in {len(frames)} sampled frames")
            return row
        mine = [next((p for p in ps if p.track_id == subject_id), None) for ps in people]
        if self.cfg.checks.flip_test and mirrored is None:
            mirrored = self.estimator.predict([mirror_frame(f) for f in frames])
        detections = self.detector.detect(frames) if self.detector is not None else None
        faces = self.face_detector.detect(frames) if self.face_detector is not None else None
        flags, counts = check_subject(mine, people, mirrored, detections, timestamps,
                                      frames[0].shape[1] / frames[0].shape[0], self.cfg, faces)
        # After the checks: a joint they rejected is stored with score 0 in both columns.
        row["persons_json"] = encode_people(people)
        row["subject_json"] = Subject.from_people(subject_id, self.cfg.subject_rule, mine,
                                                  flags, counts).to_json()
        row["subject_crops_jpeg"] = [
            None if p is None else encode_jpeg(crop_box(f, p.box, self.cfg.crop_margin),
                                               CROP_JPEG_QUALITY)
            for f, p in zip(frames, mine)
        ]
        return row
