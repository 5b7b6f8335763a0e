"""BlazePose (mediapipe Tasks API) on CPU, fully offline: the model ships in the wheel.

Finds up to `num_poses` people per frame; later passes over the frame with the people found
so far masked out find more (see `MediaPipePose.predict_frame`).
"""
from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from proxyqa.core.config import ConfigError, MediaPipeConfig
from proxyqa.core.people import Person, box_iou

# BlazePose's 33 landmarks -> COCO-17 (proxyqa.core.schema.COCO17); both use the person's left.
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

    Building it costs ~0.5 CPU-s, paid by every pose worker as it starts (issue 17's
    start-up figure), so the bundle is kept on disk per mediapipe version
    (`$PROXYQA_CACHE`, default `~/.cache/proxyqa`); a cache that cannot be read or written
    just means building it again.
    """
    import mediapipe as mp

    cache = task_cache_path(mp.__version__)
    try:
        data = cache.read_bytes()
        if zipfile.ZipFile(io.BytesIO(data)).testzip() is None:
            return data
    except (OSError, zipfile.BadZipFile):
        pass
    data = _build_pose_task()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, cache)   # atomic: a worker never reads a half-written bundle
    except OSError:
        pass
    return data


def task_cache_path(mediapipe_version: str) -> Path:
    root = os.environ.get("PROXYQA_CACHE") or Path.home() / ".cache" / "proxyqa"
    return Path(root) / f"mediapipe-{mediapipe_version}-pose_landmarker.task"


def _build_pose_task() -> bytes:
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
            # A fixed timestamp: the same wheel gives the same bytes, whenever it is built.
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            bundle.writestr(info, bytes(writer.populate()[0]))
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
        # Landmarker calls so far and the time inside them (wall, CPU seconds): a frame costs
        # one call per search pass, more where people were found and the masked frame is
        # searched again, and a masked call that finds nobody costs about half a first one,
        # so bench/stages.py takes the stage's raw model work from these, not from a count
        # of passes times one bare call.
        self.detect_calls, self.detect_wall_s, self.detect_cpu_s = 0, 0.0, 0.0

    def _detect(self, rgb: np.ndarray) -> list[Person]:
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        wall, cpu = time.perf_counter(), time.process_time()
        result = self._landmarker.detect(image)
        self.detect_calls += 1
        self.detect_wall_s += time.perf_counter() - wall
        self.detect_cpu_s += time.process_time() - cpu
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
