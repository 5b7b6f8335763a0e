"""Association across sampled frames and the subject rule, on hand-made people."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest

from proxyqa.stages.track import associate, box_iou, choose_subject, keypoint_similarity


@dataclass
class P:
    box: list[float]
    keypoints: np.ndarray
    track_id: Optional[int] = None
    name: str = ""


def person(cx: float, cy: float, w: float = 0.1, h: float = 0.3, name: str = "") -> P:
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    # A stick figure filling the box: joints spread over it, all confident.
    ys = np.linspace(box[1], box[3], 17)
    xs = np.full(17, cx) + np.tile([-w / 4, w / 4], 9)[:17]
    return P(box=box, keypoints=np.stack([xs, ys, np.ones(17)], 1).astype(np.float32), name=name)


def test_box_iou():
    assert box_iou([0, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 2, 1], [1, 0, 3, 1]) == pytest.approx(1 / 3)


def test_keypoint_similarity_needs_three_confident_joints():
    a = person(0.5, 0.5).keypoints
    assert keypoint_similarity(a, a, 0.3) == pytest.approx(1.0)
    far = a.copy()
    far[:, 0] += 0.15               # half a body height away
    assert keypoint_similarity(a, far, 0.3) < 0.01
    b = a.copy()
    b[2:, 2] = 0.0                  # two joints left: too few to compare
    assert keypoint_similarity(a, b, 0.3) is None


def test_two_people_crossing_keep_their_ids():
    # A walks right, B walks left; between frames 2 and 3 they swap places, so the nearest
    # last-seen box is the wrong person: only the motion model keeps the ids.
    frames = []
    for t in range(6):
        a = person(0.25 + 0.1 * t, 0.5, name="A")
        b = person(0.75 - 0.1 * t, 0.5, name="B")
        frames.append([b, a] if t % 2 else [a, b])  # detector order carries no identity
    associate(frames)
    ids = {name: {p.track_id for ps in frames for p in ps if p.name == name} for name in "AB"}
    assert len(ids["A"]) == 1 and len(ids["B"]) == 1
    assert ids["A"] != ids["B"]


def test_missing_frame_keeps_the_id_and_long_absence_starts_a_new_track():
    frames = [[person(0.3 + 0.02 * t, 0.5)] for t in range(4)]
    frames[2] = []                          # missed in one sampled frame
    associate(frames, max_missed=1)
    assert [ps[0].track_id for ps in frames if ps] == [0, 0, 0]

    gone = [[person(0.3, 0.5)], [], [], [], [person(0.3, 0.5)]]
    associate(gone, max_missed=1)
    assert gone[0][0].track_id != gone[4][0].track_id


def test_newcomer_gets_a_new_id():
    frames = [[person(0.2, 0.5)], [person(0.21, 0.5), person(0.8, 0.5)]]
    associate(frames)
    assert frames[1][0].track_id == frames[0][0].track_id
    assert frames[1][1].track_id not in (None, frames[0][0].track_id)


def _scene() -> list[list[P]]:
    """A: every frame, small, off-centre. B: half the frames, large, centred.
    C: one frame, huge (a passer-by close to the camera)."""
    frames = []
    for t in range(8):
        people = [person(0.1, 0.2, 0.05, 0.1)]
        people[0].track_id = 0
        if t % 2 == 0:
            people.append(person(0.5, 0.5, 0.2, 0.5))
            people[-1].track_id = 1
        if t == 3:
            people.append(person(0.7, 0.5, 0.6, 1.0))
            people[-1].track_id = 2
        frames.append(people)
    return frames


@pytest.mark.parametrize("rule, expected", [("most_frames", 0), ("largest_area", 1), ("center", 1)])
def test_subject_rules(rule, expected):
    assert choose_subject(_scene(), rule) == expected


def test_subject_ties_go_to_the_larger_box():
    frames = [[P([0.1, 0.1, 0.2, 0.2], np.zeros((17, 3)), 0),
               P([0.5, 0.5, 0.8, 0.9], np.zeros((17, 3)), 1)] for _ in range(3)]
    assert choose_subject(frames, "most_frames") == 1


def test_subject_none_and_unknown_rule():
    assert choose_subject([[], []], "most_frames") is None
    with pytest.raises(ValueError, match="unknown subject rule"):
        choose_subject(_scene(), "tallest")
