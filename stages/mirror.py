"""The left-right mirror of a shown frame: image, keypoints and box (docs/captions.md).

The match tasks show a frame mirrored on a coin flip: in the mirrored image the person's own
left is what was their right, so a caption and its left/right exchange are each the true one
exactly half the time, whatever poses the data holds. Keypoints are the mirrored image's
(x -> 1 - x, left and right joints exchanged), so every stored fact re-derives from the row.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from proxyqa.core.schema import COCO17

# COCO17 index of each joint's mirror twin (left_x <-> right_x; the nose is its own).
SWAP = [COCO17.index(n.replace("left_", "#").replace("right_", "left_").replace("#", "right_"))
        for n in COCO17]
# Stored frames are already lossy; one more encode at a high quality keeps the mirror as sharp.
MIRROR_JPEG_QUALITY = 95


def mirror_points(keypoints, dtype=np.float32) -> np.ndarray:
    """17 x [x, y, score] (normalised) of the mirrored image: x -> 1 - x, twins exchanged.
    Its own inverse: a skeleton found on a mirrored frame, mirrored, is in the frame's terms."""
    k = np.asarray(keypoints, dtype=dtype).reshape(len(COCO17), 3)[SWAP].copy()
    k[:, 0] = 1.0 - k[:, 0]
    return k


def mirror_keypoints(keypoints) -> Optional[list[list[float]]]:
    """`mirror_points` as the row stores keypoints (nested lists); None stays None."""
    if keypoints is None:
        return None
    return np.round(mirror_points(keypoints, np.float64), 6).tolist()


def mirror_box(box) -> Optional[list[float]]:
    """[x1, y1, x2, y2] (normalised) of the mirrored image; None stays None."""
    if box is None:
        return None
    return [1.0 - float(box[2]), float(box[1]), 1.0 - float(box[0]), float(box[3])]


def mirror_jpeg(data: bytes) -> bytes:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("mirror_jpeg: not a decodable JPEG")
    ok, out = cv2.imencode(".jpg", cv2.flip(img, 1), [cv2.IMWRITE_JPEG_QUALITY, MIRROR_JPEG_QUALITY])
    if not ok:
        raise ValueError("mirror_jpeg: encoding failed")
    return out.tobytes()


def swap_sides(name: str) -> str:
    """'left_arm' <-> 'right_arm'; names without a side are their own mirror."""
    if name.startswith("left_"):
        return "right_" + name[5:]
    if name.startswith("right_"):
        return "left_" + name[6:]
    return name
