"""A face detector independent of the pose model: faces show people the skeletons missed.

Two people hugging or standing one in front of the other give one skeleton, and the person
detectors (BlazePose's own, HOG) find one body: the second person's face is often still in
plain view (measured on the shared mmaction2 hug clip: the second face is found in 5 of the
6 sampled hug frames, at 512 px, where no pose or HOG pass found a second person).
BlazeFace full-range ships inside the mediapipe wheel (`mp.solutions.face_detection`,
model_selection=1, made for faces up to ~5 m away), so it runs offline on CPU in ~5 ms a
frame. It only sees faces turned towards the camera: a missed face changes nothing.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = list[float]

# Measured on the shared clips at 512 px (29 finds at 0.3): real faces scored 0.60-0.81;
# five finds on bare skin (arms, a hand) scored 0.63-0.66. Those fall where a face cannot be
# another person's (stages/pose_checks.py `foreign_faces`), so the bar stays low.
MIN_CONFIDENCE = 0.6


class BlazeFaceDetector:
    """`detect(frames_rgb) -> one list of [x1, y1, x2, y2] face boxes (fractions) per frame`."""

    def __init__(self, min_confidence: float = MIN_CONFIDENCE):
        try:
            import mediapipe as mp
        except ImportError as exc:   # the gpu image has no mediapipe (docs/label_quality.md)
            raise ImportError("pose.checks.face_detector=blazeface needs mediapipe "
                              "(pip install 'proxyqa[pose]'), or set it to none") from exc
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence)

    def detect_frame(self, rgb: np.ndarray) -> list[Box]:
        result = self._detector.process(np.ascontiguousarray(rgb))
        boxes = []
        for det in result.detections or []:
            b = det.location_data.relative_bounding_box
            boxes.append([float(np.clip(v, 0.0, 1.0))
                          for v in (b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height)])
        return sorted(boxes)

    def detect(self, frames_rgb: Sequence[np.ndarray]) -> list[list[Box]]:
        return [self.detect_frame(f) for f in frames_rgb]

    def close(self) -> None:
        self._detector.close()
