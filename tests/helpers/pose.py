"""Hand-made COCO-17 poses for the posecode and pose-task tests.

A person faces the camera, so the person's LEFT side is on the IMAGE RIGHT (+x). Built in
pixels (torso length 200 px: shoulders y=300, hips y=500), then normalised by the frame size.
"""
from __future__ import annotations

import json

import cv2
import numpy as np

from proxyqa.core.schema import COCO17

J = {n: i for i, n in enumerate(COCO17)}
UPPER_ARM, FOREARM, THIGH, SHIN = 110.0, 100.0, 190.0, 180.0


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
    t = np.radians(deg)
    return np.array([v[0] * np.cos(t) - v[1] * np.sin(t), v[0] * np.sin(t) + v[1] * np.cos(t)])


def make_pose_px(arms=((10, 175), (10, 175)), legs=((0, 178), (0, 178)), lean: float = 0.0,
                 center=(500.0, 0.0)) -> np.ndarray:
    """17 x [X, Y] pixels. arms/legs = ((left), (right)) of (angle from down, joint angle).

    Arm: shoulder angle a (0 = down, 90 = out to the side, 180 = up), elbow angle e.
    Leg: thigh angle t from image-down (lifted sideways), knee angle k.
    `lean` rotates the upper body about the hip midpoint (degrees, + = toward image right).
    """
    cx, dy = center
    p = {}
    p["left_shoulder"] = np.array([cx + 80, 300 + dy])
    p["right_shoulder"] = np.array([cx - 80, 300 + dy])
    p["left_hip"], p["right_hip"] = np.array([cx + 80, 500 + dy]), np.array([cx - 80, 500 + dy])
    p["nose"] = np.array([cx, 230 + dy])
    p["left_eye"], p["right_eye"] = np.array([cx + 12, 220 + dy]), np.array([cx - 12, 220 + dy])
    p["left_ear"], p["right_ear"] = np.array([cx + 28, 226 + dy]), np.array([cx - 28, 226 + dy])
    for side, s, (a, e) in (("left", 1, arms[0]), ("right", -1, arms[1])):
        u = np.array([s * np.sin(np.radians(a)), np.cos(np.radians(a))])
        p[f"{side}_elbow"] = p[f"{side}_shoulder"] + UPPER_ARM * u
        p[f"{side}_wrist"] = p[f"{side}_elbow"] + FOREARM * _rot(u, -s * (180 - e))
    for side, s, (t, k) in (("left", 1, legs[0]), ("right", -1, legs[1])):
        u = np.array([s * np.sin(np.radians(t)), np.cos(np.radians(t))])
        p[f"{side}_knee"] = p[f"{side}_hip"] + THIGH * u
        p[f"{side}_ankle"] = p[f"{side}_knee"] + SHIN * _rot(u, s * (180 - k))
    if lean:
        mid = (p["left_hip"] + p["right_hip"]) / 2
        for name in list(p):
            if not any(name.endswith(x) for x in ("hip", "knee", "ankle")):
                p[name] = mid + _rot(p[name] - mid, lean)
    return np.stack([p[n] for n in COCO17])


def normalise(px: np.ndarray, width: int, height: int, score: float = 0.9) -> list[list[float]]:
    out = np.zeros((17, 3))
    out[:, 0], out[:, 1], out[:, 2] = px[:, 0] / width, px[:, 1] / height, score
    return out.tolist()


def make_kps(width: int = 1000, height: int = 1000, score: float = 0.9, **kw) -> list[list[float]]:
    return normalise(make_pose_px(**kw), width, height, score)


def box_of(kps: list[list[float]], pad: float = 0.05) -> list[float]:
    a = np.asarray(kps)[:, :2]
    lo, hi = a.min(axis=0) - pad, a.max(axis=0) + pad
    return [float(max(0, lo[0])), float(max(0, lo[1])), float(min(1, hi[0])), float(min(1, hi[1]))]


def jpeg(i: int, side: int = 64) -> bytes:
    img = np.full((side, side, 3), (i * 37) % 255, np.uint8)
    cv2.circle(img, (side // 2, (i * 9) % side), 6, (255, 255, 255), -1)
    return cv2.imencode(".jpg", img)[1].tobytes()


def make_row(frames_kps: list, width: int = 1000, height: int = 1000, others: list | None = None,
             video_id: str = "vid-a") -> dict:
    """A decoded+posed video row with the given subject keypoints per frame.

    `others`: per frame, extra people's keypoints (for persons_json), or None.
    """
    n = len(frames_kps)
    boxes = [box_of(k) if k is not None else None for k in frames_kps]
    persons = []
    for i in range(n):
        people = [] if frames_kps[i] is None else [{"box": boxes[i], "keypoints": frames_kps[i]}]
        for k in (others[i] if others else None) or []:
            people.append({"box": box_of(k), "keypoints": k})
        persons.append(people)
    return {
        "video_id": video_id, "video_uri": f"file:///{video_id}.mp4", "content_id": video_id,
        "status": "ok", "width": width, "height": height,
        "frame_indices": [i * 10 for i in range(n)],
        "timestamps": [i * 0.5 for i in range(n)],
        "frames_jpeg": [jpeg(i) for i in range(n)],
        "subject_json": json.dumps({"track_id": 1, "boxes": boxes, "keypoints": frames_kps}),
        "persons_json": json.dumps(persons),
    }
