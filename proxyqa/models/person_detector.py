"""A person detector independent of the pose model: it counts people and checks boxes.

The pose model can miss people (BlazePose finds at most `num_poses`, and its detector is
built for the dominant person) and merge two people into one skeleton; a second opinion
from a model that knows nothing of skeletons catches both. On CPU: OpenCV's HOG people
detector (Dalal-Triggs), whose weights ship inside the opencv wheel, so it runs offline.
With the ultralytics backend the pose network's own boxes come from the same network as
its skeletons, so they are no second opinion: the HOG detector is used there too.

HOG finds upright, mostly unoccluded people at least ~100 px tall; it misses many people
(sitting, small, cut off) and sometimes fires on person-like shapes (mannequins, statues).
Both errors are on the safe side here: a missed person changes nothing; a false find makes
a question name its subject by box or skips a frame.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = list[float]

MIN_SIDE = 320          # frames are upscaled to this shorter side: HOG's window is 64x128 px
WIN_STRIDE = (8, 8)
SCALE = 1.08
MIN_WEIGHT = 0.5        # SVM margin of a kept detection (measured: lower fires on furniture)
NMS_IOU = 0.4


class HOGPersonDetector:
    """`detect(frames_rgb) -> one list of [x1, y1, x2, y2] boxes (fractions) per frame`."""

    def __init__(self, min_weight: float = MIN_WEIGHT):
        import cv2

        # One thread: HOG's multi-scale search groups the windows its threads return, and a
        # different thread count (one per reserved CPU under Ray) can group them differently.
        cv2.setNumThreads(1)
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.min_weight = min_weight

    def detect_frame(self, rgb: np.ndarray) -> list[Box]:
        import cv2

        h, w = rgb.shape[:2]
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        up = max(1.0, MIN_SIDE / min(h, w))
        if up > 1.0:
            grey = cv2.resize(grey, (int(round(w * up)), int(round(h * up))))
        rects, weights = self._hog.detectMultiScale(grey, winStride=WIN_STRIDE, padding=(8, 8),
                                                    scale=SCALE)
        weights = np.asarray(weights, float).ravel()
        boxes = [[x / (w * up), y / (h * up), (x + bw) / (w * up), (y + bh) / (h * up)]
                 for (x, y, bw, bh), wt in zip(np.asarray(rects).reshape(-1, 4), weights)
                 if wt >= self.min_weight]
        kept = [wt for wt in weights if wt >= self.min_weight]
        # Strongest first, ties by position: the same frame gives the same boxes whatever
        # order OpenCV's threads returned the windows in.
        order = sorted(range(len(boxes)), key=lambda i: (-kept[i], boxes[i]))
        return _nms([boxes[i] for i in order], NMS_IOU)

    def detect(self, frames_rgb: Sequence[np.ndarray]) -> list[list[Box]]:
        return [self.detect_frame(f) for f in frames_rgb]


def _nms(boxes: list[Box], max_iou: float) -> list[Box]:
    from proxyqa.core.people import box_iou

    kept: list[Box] = []
    for box in boxes:
        if all(box_iou(box, k) <= max_iou for k in kept):
            kept.append([float(np.clip(v, 0.0, 1.0)) for v in box])
    return kept
