"""Pose stage: people, COCO-17 keypoints and tracks on the sampled frames; the subject; crops.

Two estimators share one interface (`PoseEstimator.predict`):
- `MediaPipePose`: BlazePose on CPU, fully offline (the model ships in the mediapipe wheel).
- `UltralyticsPose`: YOLO-pose, batched, GPU when present; weights must be a local file.

Coordinates are normalised to [0, 1] of the frame. Frames reach this stage resized with
the aspect ratio kept, so they are also fractions of the original frame (DESIGN.md).
"""
from __future__ import annotations

import io
import json
import logging
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import cv2
import numpy as np

from pipeline.config import ConfigError, MediaPipeConfig, PoseConfig, UltralyticsConfig
from stages.base import Batch, RowStage, add_error, to_batch, to_rows
from stages.decode import encode_jpeg
from stages.track import associate, box_iou, choose_subject

log = logging.getLogger(__name__)

CROP_JPEG_QUALITY = 90
NUM_DECIMALS = 4            # JSON precision of coordinates (1e-4 of the frame)


@dataclass
class Person:
    box: list[float]            # [x1, y1, x2, y2], normalised
    score: float
    keypoints: np.ndarray       # (17, 3) float32: x, y normalised, score
    track_id: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(float(v), NUM_DECIMALS) for v in self.box],
            "score": round(float(self.score), NUM_DECIMALS),
            "keypoints": _round_kps(self.keypoints),
            "track_id": self.track_id,
        }


def _round_kps(kps: np.ndarray) -> list[list[float]]:
    return [[round(float(v), NUM_DECIMALS) for v in joint] for joint in kps]


class PoseEstimator(Protocol):
    def predict(self, frames_rgb: list[np.ndarray]) -> list[list[Person]]:
        """One list of people per frame (RGB uint8 HxWx3)."""
        ...


# ---------------------------------------------------------------- mediapipe (BlazePose)

# BlazePose's 33 landmarks -> COCO-17 (pipeline/schema.py COCO17); both use the person's left.
BLAZEPOSE_TO_COCO17 = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)

# The graphs of the legacy solution feed the detector [-1, 1] and the landmark model [0, 1];
# the Tasks API needs this written as model metadata (mean, std on 0-255 pixels).
_BUNDLED_MODELS = (
    ("pose_detector.tflite", "modules/pose_detection/pose_detection.tflite", 127.5, 127.5),
    ("pose_landmarks_detector.tflite", "modules/pose_landmark/pose_landmark_full.tflite", 0.0, 255.0),
)


def bundled_pose_task() -> bytes:
    """A PoseLandmarker .task bundle (zip) built from the models inside the mediapipe wheel.

    The wheel ships the BlazePose detector and full landmark model for the legacy
    `mp.solutions.pose` API, which finds one person per frame; the Tasks API finds several
    but wants a .task bundle (downloaded normally). Adding the input-normalisation
    metadata and zipping the two models gives the same bundle offline.
    """
    import mediapipe as mp
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer, writer_utils

    root = Path(mp.__file__).parent
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as bundle:
        for name, rel, mean, std in _BUNDLED_MODELS:
            path = root / rel
            if not path.is_file():
                raise ConfigError(f"mediapipe wheel lacks {rel}; install mediapipe(-numpy2)==0.10.21 "
                                  "or set pose.mediapipe.task_file")
            model = bytearray(path.read_bytes())
            writer = metadata_writer.MetadataWriter.create(model).add_general_info(name)
            writer.add_image_input([mean], [std])
            for _ in writer_utils.get_output_tensor_types(model):
                writer.add_feature_output()
            bundle.writestr(name, bytes(writer.populate()[0]))
    return out.getvalue()


def blazepose_to_person(landmarks: Sequence[Any], min_presence: float = 0.5) -> Person:
    """33 Tasks-API landmarks -> a COCO-17 Person.

    Joint score = min(visibility, presence); joints outside the frame are clipped onto its
    edge with score 0. The box spans the landmarks likely in frame (all 33: heels and
    toes help), padded 5% each side and 10% more on top for the head above the eyes.
    """
    raw = np.array([[lm.x, lm.y, min(lm.visibility or 0.0, lm.presence or 0.0), lm.presence or 0.0]
                    for lm in landmarks], dtype=np.float32)
    inside = (raw[:, 0] >= 0) & (raw[:, 0] <= 1) & (raw[:, 1] >= 0) & (raw[:, 1] <= 1)
    kps = raw[list(BLAZEPOSE_TO_COCO17), :3].copy()
    kps[~inside[list(BLAZEPOSE_TO_COCO17)], 2] = 0.0
    kps[:, :2] = np.clip(kps[:, :2], 0.0, 1.0)
    use = raw[:, 3] >= min_presence
    pts = np.clip(raw[use if use.sum() >= 2 else slice(None), :2], 0.0, 1.0)
    x1, y1 = pts.min(0)
    x2, y2 = pts.max(0)
    w, h = x2 - x1, y2 - y1
    box = [max(0.0, x1 - 0.05 * w), max(0.0, y1 - 0.15 * h),
           min(1.0, x2 + 0.05 * w), min(1.0, y2 + 0.05 * h)]
    return Person(box=[float(v) for v in box], score=float(kps[:, 2].mean()), keypoints=kps)


MASK_PAD = 0.05            # masked box = person box grown by this share of its size
MASK_FILL = 0              # black: grey found one more COCO person but made up people on clips
MAX_MASKED_SHARE = 0.25    # later-pass finds with more joints than this under a mask are dropped
MIN_TORSO_RATIO = 0.6      # later-pass finds need a torso at least this x shoulder width


class MediaPipePose:
    """BlazePose (MediaPipe Tasks PoseLandmarker, IMAGE mode) on CPU.

    BlazePose's detector is trained to find the dominant person, so asking the landmarker
    for `num_poses` rarely returns more than one. Extra people are found by masking the
    people already found (their padded boxes, black) and searching the frame again, at most
    `num_poses` passes. A find overlapping a known person (IoU > 0.5 or its box centre
    inside the other's box) is a duplicate and is dropped. On masked passes the model may
    complete a half-hidden body from black pixels: a find with over a quarter of its joints
    under the mask, or with a torso shorter than 0.6 x its shoulder width, is dropped too.
    """

    def __init__(self, cfg: MediaPipeConfig):
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        self.cfg = cfg
        if cfg.task_file:
            if not Path(cfg.task_file).is_file():
                raise ConfigError(f"pose.mediapipe.task_file not found: {cfg.task_file}")
            base = mp_tasks.BaseOptions(model_asset_path=cfg.task_file)
        else:
            base = mp_tasks.BaseOptions(model_asset_buffer=bundled_pose_task())
        options = vision.PoseLandmarkerOptions(
            base_options=base, running_mode=vision.RunningMode.IMAGE,
            num_poses=cfg.num_poses,
            min_pose_detection_confidence=cfg.min_detection_confidence,
            min_pose_presence_confidence=cfg.min_detection_confidence,
        )
        self._landmarker = vision.PoseLandmarker.create_from_options(options)

    def _detect(self, rgb: np.ndarray) -> list[Person]:
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        result = self._landmarker.detect(image)
        return [blazepose_to_person(lms) for lms in result.pose_landmarks]

    def predict_frame(self, rgb: np.ndarray) -> list[Person]:
        people: list[Person] = []
        work, masked = rgb, []
        for _ in range(self.cfg.num_poses):
            added = 0
            for person in self._detect(work):
                if _duplicate(person, people):
                    continue
                # On a masked frame the model may complete a body from black pixels or
                # mask edges: joints under the mask, or a torso squashed to a line.
                if masked and (_share_in_boxes(person, masked) > MAX_MASKED_SHARE
                               or not _has_torso(person, rgb.shape[1] / rgb.shape[0])):
                    continue
                people.append(person)
                added += 1
            if not added or len(people) >= self.cfg.num_poses:
                break
            masked = [_padded(p.box, MASK_PAD) for p in people]
            work = _mask_boxes(rgb, masked)
        return people[: self.cfg.num_poses]

    def predict(self, frames_rgb: list[np.ndarray]) -> list[list[Person]]:
        return [self.predict_frame(f) for f in frames_rgb]

    def close(self) -> None:
        self._landmarker.close()


def _duplicate(person: Person, known: list[Person]) -> bool:
    cx, cy = (person.box[0] + person.box[2]) / 2, (person.box[1] + person.box[3]) / 2
    for other in known:
        x1, y1, x2, y2 = other.box
        if box_iou(person.box, other.box) > 0.5 or (x1 <= cx <= x2 and y1 <= cy <= y2):
            return True
    return False


def _padded(box: Sequence[float], pad: float) -> list[float]:
    bw, bh = box[2] - box[0], box[3] - box[1]
    return [box[0] - pad * bw, box[1] - pad * bh, box[2] + pad * bw, box[3] + pad * bh]


def _share_in_boxes(person: Person, boxes: list[list[float]]) -> float:
    """Fraction of the person's joints lying inside any of `boxes`."""
    if not boxes:
        return 0.0
    xy = person.keypoints[:, :2]
    inside = np.zeros(len(xy), bool)
    for x1, y1, x2, y2 in boxes:
        inside |= (xy[:, 0] >= x1) & (xy[:, 0] <= x2) & (xy[:, 1] >= y1) & (xy[:, 1] <= y2)
    return float(inside.mean())


def _has_torso(person: Person, aspect: float) -> bool:
    """Shoulder-mid to hip-mid distance >= MIN_TORSO_RATIO x shoulder width (in pixels)."""
    kps = person.keypoints[:, :2] * np.array([aspect, 1.0])
    shoulders, hips = kps[[5, 6]], kps[[11, 12]]
    torso = np.linalg.norm(shoulders.mean(0) - hips.mean(0))
    return bool(torso >= MIN_TORSO_RATIO * np.linalg.norm(shoulders[0] - shoulders[1]))


def _mask_boxes(rgb: np.ndarray, boxes: list[list[float]]) -> np.ndarray:
    out = rgb.copy()
    h, w = rgb.shape[:2]
    for x1, y1, x2, y2 in boxes:
        out[max(0, int(y1 * h)):max(0, int(np.ceil(y2 * h))),
            max(0, int(x1 * w)):max(0, int(np.ceil(x2 * w)))] = MASK_FILL
    return out


# ---------------------------------------------------------------- ultralytics (YOLO-pose)

def _ultralytics_offline_env() -> None:
    """No network from ultralytics: no downloads, no pip auto-install, a writable settings dir.

    Must run before ultralytics is first imported (it reads these at import time).
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "proxyqa-ultralytics"))


def resolve_ultralytics_weights(model: str) -> str:
    """The local weights file (or a .yaml for a random-init model); a clear error if absent."""
    if model.endswith((".yaml", ".yml")):
        return model  # built from ultralytics' bundled model configs; random weights (tests)
    path = Path(model).expanduser()
    if path.is_file():
        return str(path)
    raise ConfigError(
        f"ultralytics pose weights not found: '{model}' (resolved to {path.resolve()}). "
        "The pipeline never downloads at run time: fetch the file once where there is network "
        "(e.g. https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n-pose.pt), "
        "copy it to every worker (or bake it into the image) and set "
        "pose.ultralytics.model to its path."
    )


class UltralyticsPose:
    """YOLO-pose through ultralytics: batched predict, or its tracker on dense frames."""

    # PoseStage gives `predict` the frames of all videos of a batch at once: one video's
    # frames (decode.num_frames) would leave a larger `batch` of a GPU half empty.
    frames_across_videos = True

    def __init__(self, cfg: UltralyticsConfig):
        _ultralytics_offline_env()
        weights = resolve_ultralytics_weights(cfg.model)
        if "torch" not in sys.modules and _nvblas_loaded():
            # decord2 dlopens every nvidia/*/lib/*.so RTLD_GLOBAL, libnvblas included; a
            # torch loaded afterwards sends some CPU convolutions to nvblas and segfaults.
            raise RuntimeError("libnvblas was loaded before torch in this process (decord does "
                               "that); import torch first to use the ultralytics backend")
        import torch
        from ultralytics import YOLO
        from ultralytics.cfg import DEFAULT_CFG_DICT

        self.cfg = cfg
        self.device = cfg.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        half = cfg.half and self.device.startswith("cuda")
        # ultralytics 8.4 replaced `half` by `quantize`; older releases only know `half`.
        precision = ({"quantize": 16 if half else None} if "quantize" in DEFAULT_CFG_DICT
                     else {"half": half})
        if weights.endswith((".yaml", ".yml")):
            log.warning("pose.ultralytics.model=%s builds a random-init model: tests only", weights)
        self.model = YOLO(weights, task="pose")
        self.person_class = _person_class(self.model.names)
        self._args = dict(imgsz=cfg.imgsz, conf=cfg.conf, device=self.device, verbose=False,
                          classes=[self.person_class], **precision)

    def predict(self, frames_rgb: list[np.ndarray]) -> list[list[Person]]:
        out: list[list[Person]] = []
        for start in range(0, len(frames_rgb), self.cfg.batch):
            chunk = [_bgr(f) for f in frames_rgb[start:start + self.cfg.batch]]
            results = self.model.predict(chunk, batch=self.cfg.batch, **self._args)
            out.extend(_results_to_people(r) for r in results)
        return out

    def track(self, frames_rgb: list[np.ndarray]) -> list[list[Person]]:
        """People with ultralytics tracker ids; the tracker is reset for every call (video).

        Detections the tracker does not confirm are left out, as ultralytics does.
        """
        predictor = getattr(self.model, "predictor", None)
        for tracker in getattr(predictor, "trackers", None) or []:
            tracker.reset()
        # persist=True: frames of one list share one tracker (ids carry across frames).
        results = self.model.track([_bgr(f) for f in frames_rgb], persist=True,
                                   tracker=self.cfg.tracker, batch=self.cfg.batch, **self._args)
        return [_results_to_people(r) for r in results]


def _nvblas_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return "libnvblas" in maps.read()
    except OSError:
        return False


def _person_class(names: dict[int, str]) -> int:
    for idx, name in names.items():
        if name == "person":
            return int(idx)
    return 0


def _bgr(rgb: np.ndarray) -> np.ndarray:
    # ultralytics takes numpy images as BGR (OpenCV order).
    return np.ascontiguousarray(rgb[..., ::-1])


def _results_to_people(result: Any) -> list[Person]:
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return []
    xyxyn = boxes.xyxyn.cpu().numpy().clip(0, 1)
    scores = boxes.conf.cpu().numpy()
    ids = boxes.id.cpu().numpy().astype(int) if boxes.id is not None else [None] * len(xyxyn)
    kps = np.zeros((len(xyxyn), 17, 3), np.float32)
    if result.keypoints is not None:
        kps[:, :, :2] = result.keypoints.xyn.cpu().numpy().clip(0, 1)
        conf = result.keypoints.conf
        kps[:, :, 2] = conf.cpu().numpy() if conf is not None else 1.0
    return [Person(box=[float(v) for v in b], score=float(s), keypoints=k,
                   track_id=None if t is None else int(t))
            for b, s, k, t in zip(xyxyn, scores, kps, ids)]


# ---------------------------------------------------------------- the stage

def check_pose_config(cfg: PoseConfig) -> None:
    """Cheap checks on the driver before any worker starts (ConfigError names the key)."""
    if cfg.backend == "ultralytics":
        resolve_ultralytics_weights(cfg.ultralytics.model)
    elif cfg.backend == "mediapipe" and cfg.mediapipe.task_file:
        if not Path(cfg.mediapipe.task_file).is_file():
            raise ConfigError(f"pose.mediapipe.task_file not found: {cfg.mediapipe.task_file}")


def build_estimator(cfg: PoseConfig) -> PoseEstimator:
    if cfg.backend == "mediapipe":
        return MediaPipePose(cfg.mediapipe)
    if cfg.backend == "ultralytics":
        return UltralyticsPose(cfg.ultralytics)
    raise ConfigError(f"pose.backend '{cfg.backend}' has no estimator")


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

    def __init__(self, cfg: PoseConfig, estimator: PoseEstimator | None = None):
        self.cfg = cfg
        self.estimator = estimator if estimator is not None else build_estimator(cfg)
        self._predicted: dict[int, tuple[list[np.ndarray], list[list[Person]]]] = {}

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
        try:
            people = self.estimator.predict(flat)
        except Exception as exc:  # noqa: BLE001 - fall back to one call per video
            log.warning("pose: predict across %d videos failed (%s); one video at a time",
                        len(frames_of), exc)
            return {}
        out, start = {}, 0
        for i, frames in frames_of.items():
            out[id(rows[i])] = (frames, people[start:start + len(frames)])
            start += len(frames)
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
        frames, predicted = self._predicted.get(id(row), (None, None))
        if frames is None:
            frames = [decode_jpeg_rgb(j) for j in row.get("frames_jpeg") or []]
        if not frames:
            row.update(persons_json=json.dumps([]), subject_json=None, subject_crops_jpeg=None)
            return row
        people = self._people(frames, row.get("timestamps") or [], predicted)
        row["persons_json"] = json.dumps([[p.to_json() for p in ps] for ps in people])
        subject_id = choose_subject(people, self.cfg.subject_rule)
        if subject_id is None:
            row.update(subject_json=None, subject_crops_jpeg=None)
            add_error(row, "pose", "no_person", f"no person found in {len(frames)} sampled frames")
            return row
        mine = [next((p for p in ps if p.track_id == subject_id), None) for ps in people]
        row["subject_json"] = json.dumps({
            "track_id": int(subject_id),
            "rule": self.cfg.subject_rule,
            "boxes": [None if p is None else [round(float(v), NUM_DECIMALS) for v in p.box]
                      for p in mine],
            "keypoints": [None if p is None else _round_kps(p.keypoints) for p in mine],
            "present": round(sum(p is not None for p in mine) / len(mine), NUM_DECIMALS),
        })
        row["subject_crops_jpeg"] = [
            None if p is None else encode_jpeg(crop_box(f, p.box, self.cfg.crop_margin),
                                               CROP_JPEG_QUALITY)
            for f, p in zip(frames, mine)
        ]
        return row
