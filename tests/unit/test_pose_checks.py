"""The pose self-consistency checks (stages/pose_checks.py) on hand-made skeletons."""
from __future__ import annotations

import numpy as np

from proxyqa.core.people import Person
from proxyqa.stages import pose_checks as chk
from proxyqa.stages.tasks_temporal import one_way


def standing(facing_camera: bool = True, x0: float = 0.5) -> np.ndarray:
    """An upright skeleton (fractions of a square frame); facing the camera puts the
    person's left on the image right."""
    s = 1.0 if facing_camera else -1.0
    pts = {
        "nose": (0, 0.15), "left_eye": (0.01 * s, 0.14), "right_eye": (-0.01 * s, 0.14),
        "left_ear": (0.02 * s, 0.15), "right_ear": (-0.02 * s, 0.15),
        "left_shoulder": (0.06 * s, 0.25), "right_shoulder": (-0.06 * s, 0.25),
        "left_elbow": (0.08 * s, 0.37), "right_elbow": (-0.08 * s, 0.37),
        "left_wrist": (0.09 * s, 0.48), "right_wrist": (-0.09 * s, 0.48),
        "left_hip": (0.04 * s, 0.5), "right_hip": (-0.04 * s, 0.5),
        "left_knee": (0.05 * s, 0.68), "right_knee": (-0.05 * s, 0.68),
        "left_ankle": (0.05 * s, 0.86), "right_ankle": (-0.05 * s, 0.86),
    }
    from proxyqa.core.schema import COCO17
    return np.array([[x0 + pts[n][0], pts[n][1], 0.9] for n in COCO17], np.float32)


def test_mirror_back_of_a_mirrored_skeleton_is_the_skeleton():
    kps = standing()
    mirrored = kps[chk.SWAP].copy()
    mirrored[:, 0] = 1 - mirrored[:, 0]
    back = chk.mirror_back(Person(box=[0, 0, 1, 1], score=1.0, keypoints=mirrored))
    np.testing.assert_allclose(back, kps, atol=1e-6)


def test_flip_agreement_keeps_agreeing_joints_and_rejects_swapped_sides():
    kps = standing()
    ok, sides = chk.flip_agreement(kps, kps.copy(), 1.0, 0.5)
    assert ok[5:].all() and sides
    moved = kps.copy()
    moved[9, :2] += [0.1, 0.0]                      # the left wrist lands elsewhere
    ok, sides = chk.flip_agreement(kps, moved, 1.0, 0.5)
    assert not ok[9] and ok[10] and sides
    swapped = kps[chk.SWAP].copy()                  # the mirrored run reads the sides the other way
    assert chk.flip_agreement(kps, swapped, 1.0, 0.5)[1] is False
    assert chk.flip_agreement(kps, None, 1.0, 0.5)[1] is False
    weak = kps.copy()
    weak[9, 2] = 0.6                                # below the confirm score: not confirmed
    assert not chk.flip_agreement(kps, weak, 1.0, 0.5, confirm_score=0.7)[0][9]


def test_orientation_tells_facing_from_behind():
    assert chk.orientation(standing(True), 1.0, 0.5) > chk.STRONG_FACING
    assert chk.orientation(standing(False), 1.0, 0.5) < -chk.STRONG_FACING


def test_side_flips_flags_the_minority_of_an_abrupt_reversal():
    o = [0.6, 0.6, -0.6, -0.6, 0.6, 0.6, 0.6]
    ts = [0.1 * i for i in range(len(o))]
    assert chk.side_flips(o, ts) == [False, False, True, True, False, False, False]


def test_side_flips_leaves_a_real_turn_through_a_side_view():
    o = [0.6, 0.6, 0.1, -0.6, -0.6]
    assert chk.side_flips(o, [0.1 * i for i in range(5)]) == [False] * 5


def test_implausible_skeletons():
    assert chk.implausible(standing(), 1.0, 0.5) is None
    upside_down = standing()
    upside_down[:, 1] = 1.0 - upside_down[:, 1]      # head at the bottom: torso inverted
    assert "inverted" in chk.implausible(upside_down, 1.0, 0.5)
    long_arm = standing()
    long_arm[9, :2] = [0.9, 0.37]                    # a forearm longer than the torso
    assert "forearm" in chk.implausible(long_arm, 1.0, 0.5)
    squashed = standing()
    squashed[5, 0], squashed[6, 0] = 0.7, 0.3       # shoulders wider than the torso is long
    assert "squashed" in chk.implausible(squashed, 1.0, 0.5)


def test_overlap_and_joints_on_others():
    me = [0.4, 0.1, 0.6, 0.9]
    assert chk.overlaps_other(me, [[0.45, 0.1, 0.65, 0.9]], 0.3)
    assert not chk.overlaps_other(me, [[0.7, 0.1, 0.9, 0.9]], 0.3)
    kps = standing()
    kps[10, :2] = [0.8, 0.48]                         # the right wrist reaches another person
    on = chk.joints_on_others(kps, me, [[0.75, 0.1, 0.95, 0.9]])
    assert on[10] and on.sum() == 1


def test_person_missed_by_the_skeleton_model_is_counted():
    skeletons = [[0.4, 0.1, 0.6, 0.9]]
    assert chk.explained([0.38, 0.05, 0.62, 0.95], skeletons) == 0
    assert chk.explained([0.7, 0.1, 0.9, 0.9], skeletons) is None
    assert chk.partial_body([0.4, 0.5, 0.6, 0.8], [[0.38, 0.05, 0.62, 0.95]])
    assert not chk.partial_body([0.4, 0.1, 0.6, 0.9], [[0.38, 0.05, 0.62, 0.95]])


def test_pose_change_ignores_a_left_right_swap():
    kps = standing()
    assert chk.pose_change(kps, kps[chk.SWAP].copy(), 1.0, 0.5) == 0.0
    raised = kps.copy()
    raised[[7, 9], 1] -= 0.3
    assert chk.pose_change(kps, raised, 1.0, 0.5) > 0.1


def test_pose_change_of_a_walker_whose_hips_the_flip_test_dropped_uses_shoulder_to_ankle():
    kps, moved = standing(x0=0.3), standing(x0=0.6)
    for k in (kps, moved):
        k[[chk.J["left_hip"], chk.J["right_hip"]], 2] = 0.0   # zeroed by the flip test
    assert chk.torso_length(kps, 1.0, 0.5) is None
    change = chk.pose_change(kps, moved, 1.0, 0.5)
    # shoulder-to-ankle 0.61 / 2.0 = 0.305 stands in for the torso (0.25): 0.3 / 0.305
    assert change is not None and 0.9 < change < 1.0
    assert change < 0.3 / chk.torso_length(standing(), 1.0, 0.5)   # never more than with a torso
    no_ankles = kps.copy()
    no_ankles[[chk.J["left_ankle"], chk.J["right_ankle"]], 2] = 0.0
    assert chk.pose_change(no_ankles, moved, 1.0, 0.5) is None   # no scale: no motion claimed


def test_only_side_doubts_leave_a_frame_to_the_motion_measure():
    assert chk.sides_only(None)
    assert chk.sides_only(chk.FLIP_UNCONFIRMED) and chk.sides_only(chk.TRACK_SIDE_FLIP)
    crossed = standing()
    crossed[[15, 16], 0] = crossed[[16, 15], 0]
    assert chk.sides_only(chk.sides_unclear(crossed, 1.0, 0.5))
    for flag in ("overlaps another person", "inverted torso: shoulders below the hips",
                 "a person next to the subject is missing: hidden behind or merged into it"):
        assert not chk.sides_only(flag)


def test_one_way_rejects_a_pose_that_returns():
    # pose_motion stand-in: poses on a line; position p of frame k is path[k].
    def motion(path):
        return lambda row, a, b: abs(path[b] - path[a])
    assert one_way({}, [0, 1, 2, 3], motion([0.0, 0.4, 0.8, 1.2]), 0.3)
    assert not one_way({}, [0, 1, 2, 3], motion([0.0, 0.4, 0.8, 0.4]), 0.3)   # comes back
    assert not one_way({}, [0, 1, 2, 3], motion([0.0, 0.1, 0.8, 1.2]), 0.3)   # a step too small


def _bent(kps: np.ndarray, degrees: float) -> np.ndarray:
    """The skeleton with its whole body rotated about the hip midpoint (x and y in one unit:
    the test frames are square)."""
    out = kps.copy()
    hip = (kps[11, :2] + kps[12, :2]) / 2
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    out[:, :2] = (kps[:, :2] - hip) @ rot.T + hip
    return out


def test_sides_unclear_on_a_body_bent_far_over_or_with_crossed_legs():
    upright = standing()
    assert chk.sides_unclear(upright, 1.0, 0.5) is None
    assert chk.sides_unclear(_bent(upright, 30), 1.0, 0.5) is None
    assert "leans" in chk.sides_unclear(_bent(upright, 70), 1.0, 0.5)
    assert "leans" in chk.sides_unclear(_bent(upright, -60), 1.0, 0.5, max_lean=45)
    assert chk.sides_unclear(_bent(upright, 60), 1.0, 0.5, max_lean=65) is None
    crossed = upright.copy()
    crossed[[15, 16], 0] = crossed[[16, 15], 0]          # ankles swap sides: legs crossed
    assert chk.sides_unclear(crossed, 1.0, 0.5) == chk.SIDES_UNCLEAR + "legs crossed at the ankles"
    barely = upright.copy()
    barely[15, 0], barely[16, 0] = 0.5, 0.5               # ankles together: not crossed
    assert chk.sides_unclear(barely, 1.0, 0.5) is None
    unsure = crossed.copy()
    unsure[15, 2] = 0.1                                   # an ankle too unsure to judge
    assert chk.sides_unclear(unsure, 1.0, 0.5) is None


def _person(kps: np.ndarray, track: int | None = None) -> Person:
    xy = kps[:, :2]
    box = [float(xy[:, 0].min()), float(xy[:, 1].min() - 0.05), float(xy[:, 0].max()), float(xy[:, 1].max())]
    return Person(box=box, score=0.9, keypoints=kps, track_id=track)


def test_foreign_faces_inside_the_subject_box_and_outside_every_skeleton():
    subject = _person(standing(x0=0.5), track=1)
    own_face = [0.48, 0.12, 0.52, 0.18]                   # around the subject's nose
    assert chk.foreign_faces([own_face], [subject], subject) == ([], False)
    second_head = [0.56, 0.11, 0.585, 0.15]               # no head joint of the subject near it
    assert chk.foreign_faces([second_head], [subject], subject) == ([], True)
    on_the_hand = [0.56, 0.45, 0.6, 0.5]                  # low in the box: skin, not a head
    assert chk.foreign_faces([on_the_hand], [subject], subject) == ([], False)
    bystander = [0.85, 0.1, 0.89, 0.15]                   # outside every skeleton: a missed person
    assert chk.foreign_faces([bystander], [subject], subject) == ([bystander], False)


def test_a_neighbour_that_vanishes_next_to_the_subject_is_taken_as_hidden():
    subj = [_person(standing(x0=0.5), track=1) for _ in range(4)]
    near = _person(standing(x0=0.62), track=2)            # touching the subject's box
    far = _person(standing(x0=0.95), track=3)
    people = [[subj[0], near, far], [subj[1], near, far], [subj[2]], [subj[3]]]
    ts = [0.0, 0.5, 1.0, 2.0]
    assert not chk.hidden_neighbour(0, people, subj, ts)
    assert chk.hidden_neighbour(2, people, subj, ts)      # seen 0.5 s earlier, beside it
    assert not chk.hidden_neighbour(3, people, subj, ts)  # 1.5 s later: it may have left
    assert not chk.hidden_neighbour(2, people, subj, ts, within_s=0)
    people_far = [[subj[0], far], [subj[1], far], [subj[2]], [subj[3]]]
    assert not chk.hidden_neighbour(2, people_far, subj, ts)   # it was never near


def test_a_joint_on_another_persons_arm_is_unusable():
    me = standing(x0=0.4)
    other = standing(x0=0.7)
    assert not chk.joints_near_other_limbs(me, [other], 1.0, 0.5).any()
    reaching = other.copy()                               # the other's left arm comes down
    reaching[7, :2] = me[10, :2] + [0.0, -0.18]           # from above onto my right wrist
    reaching[9, :2] = me[10, :2] + [0.0, -0.03]           # (the model stops short of the hand)
    near = chk.joints_near_other_limbs(me, [reaching], 1.0, 0.5)
    assert near[10] and not near[13:].any() and not near[:5].any()   # knees, feet, face stay
    unsure = reaching.copy()
    unsure[9, 2] = 0.1                                    # a forearm the model is unsure of: no segment
    assert not chk.joints_near_other_limbs(me, [unsure], 1.0, 0.5)[10]


def test_a_nose_is_asked_only_where_a_face_is_seen():
    kps = standing(x0=0.5)                                # nose at (0.5, 0.15)
    assert chk.nose_on_a_face(kps, [[0.47, 0.11, 0.53, 0.19]])
    assert not chk.nose_on_a_face(kps, [])                # profile or hidden: no face found
    assert not chk.nose_on_a_face(kps, [[0.7, 0.11, 0.76, 0.19]])   # someone else's face


def test_motion_questions_need_both_frames_clearly_facing_one_way():
    from proxyqa.stages.tasks_motion import same_facing

    front, back = standing(True), standing(False)
    side = front.copy()
    side[:, 0] = 0.5 + (side[:, 0] - 0.5) * 0.1          # shoulders and hips on one line: a side view
    assert same_facing(front, front, 1.0, 0.5) and same_facing(back, back, 1.0, 0.5)
    assert not same_facing(front, back, 1.0, 0.5)        # one of them mirrored
    assert not same_facing(front, side, 1.0, 0.5) and not same_facing(side, side, 1.0, 0.5)
