"""Posecodes on hand-made keypoints: both sides of every threshold, margins, scores, sides."""
from __future__ import annotations

import numpy as np
import pytest

from proxyqa.stages import posecodes as pc
from tests.helpers.pose import J, make_kps, make_pose_px, normalise

W = H = 1000
MS = 0.5


def states(kps, w=W, h=H, **kw):
    return pc.part_states(kps, w, h, MS, **kw)


def truths(kps, part, w=W, h=H):
    return pc.state_truths(kps, w, h, MS)[part]


def test_standing_pose_facts():
    kps = make_kps()
    assert pc.body_scale(kps, W, H, MS) == pytest.approx(200.0)
    angles = pc.joint_angles(kps, W, H, MS)
    assert angles["left_elbow"] == pytest.approx(175, abs=0.01)
    assert angles["left_shoulder"] == pytest.approx(10, abs=0.01)
    assert angles["torso_lean"] == pytest.approx(0, abs=0.01)
    assert states(kps) == {"left_arm": "hanging down by the side",
                           "right_arm": "hanging down by the side",
                           "left_leg": "straight", "right_leg": "straight", "torso": "upright"}


@pytest.mark.parametrize("elbow,straight,bent", [
    (175, True, False), (161, True, False),          # straight: > 150 + 10
    (119, False, True), (90, False, True),           # bent: < 130 - 10
    # Neither straight nor clearly bent (the audits' 130-140 degree arms): no fact.
    (139, False, None), (125, False, None),
    (150, None, None), (145, None, None), (158, None, None),   # inside the margin
])
def test_elbow_threshold_and_margin(elbow, straight, bent):
    t = truths(make_kps(arms=((90, elbow), (10, 175))), "left_arm")
    assert t["bent at the elbow"] is bent
    assert t["stretched out away from the body"] is straight


@pytest.mark.parametrize("shoulder,hanging,stretched", [
    (10, True, False), (19, True, False), (25, None, False), (35, None, False),
    (41, False, False), (49, False, False), (55, False, None), (71, False, True),
    (90, False, True), (109, False, True), (115, False, None), (131, False, False),
])
def test_shoulder_bands(shoulder, hanging, stretched):
    t = truths(make_kps(arms=((shoulder, 175), (10, 175))), "left_arm")
    assert t["hanging down by the side"] is hanging
    assert t["stretched out away from the body"] is stretched


def _with_wrist_y(kps, side, y_px, h=H):
    kps = [list(k) for k in kps]
    kps[J[f"{side}_wrist"]][1] = y_px / h
    return kps


@pytest.mark.parametrize("offset,expected", [(-0.15, True), (-0.05, None), (0.0, None),
                                             (0.05, None), (0.15, False)])
def test_raised_above_head_threshold(offset, expected):
    # Top of head = highest face keypoint (eyes, y=220) - 0.25 * S (S = 200) = 170 px.
    kps = _with_wrist_y(make_kps(arms=((170, 175), (10, 175))), "left", 170 + offset * 200)
    assert truths(kps, "left_arm")["raised above the head"] is expected
    assert pc.relations(kps, W, H, MS).get("left_wrist_above_head") is expected


def test_raised_above_head_needs_upright_torso():
    kps = make_kps(arms=((175, 175), (10, 175)), lean=50)
    assert truths(kps, "left_arm")["raised above the head"] is None
    assert truths(make_kps(arms=((175, 175), (10, 175)), lean=-30), "left_arm")[
        "raised above the head"] is True


def test_raised_and_bent_is_ambiguous_so_no_state():
    kps = make_kps(arms=((175, 110), (10, 175)))   # hand overhead with a bent elbow
    t = truths(kps, "left_arm")
    assert t["raised above the head"] is True and t["bent at the elbow"] is True
    assert "left_arm" not in states(kps)


@pytest.mark.parametrize("thigh,knee,expected", [
    (0, 178, "straight"), (0, 100, "bent at the knee"),
    (90, 90, "bent with the thigh raised"), (70, 175, "held out straight with the thigh raised"),
    (45, 178, None),        # thigh inside its margin
    (0, 150, None),         # knee inside its margin
])
def test_leg_states(thigh, knee, expected):
    got = states(make_kps(legs=((thigh, knee), (0, 178))))
    assert got.get("left_leg") == expected
    assert got["right_leg"] == "straight"


@pytest.mark.parametrize("lean,expected", [
    (5, "upright"), (15, None), (25, None), (40, "leaning"), (-40, "leaning"),
    (60, None), (90, "nearly horizontal"),
])
def test_torso_lean(lean, expected):
    assert states(make_kps(lean=lean)).get("torso") == expected


def _clap(gap_px: float) -> list:
    """Both wrists in front of the chest, gap_px apart."""
    kps = make_kps(arms=((20, 90), (20, 90)))
    kps[J["left_wrist"]][:2] = [(500 + gap_px / 2) / W, 420 / H]
    kps[J["right_wrist"]][:2] = [(500 - gap_px / 2) / W, 420 / H]
    return kps


def test_relations_both_sides():
    apart = pc.relations(make_kps(legs=((30, 178), (30, 178))), W, H, MS)
    together = pc.relations(make_kps(legs=((-10, 178), (-10, 178))), W, H, MS)
    assert apart["feet_apart"] is True and together["feet_apart"] is False
    assert "feet_apart" not in pc.relations(make_kps(), W, H, MS)   # 0.8 S: inside the margin
    clap = _clap(gap_px=20)                    # 0.1 S < 0.25 - 0.1
    assert pc.relations(clap, W, H, MS)["hands_together"] is True
    assert "hands_together" not in pc.relations(_clap(gap_px=50), W, H, MS)   # 0.25 S
    assert pc.relations(_clap(gap_px=80), W, H, MS)["hands_together"] is False
    assert pc.relations(make_kps(), W, H, MS)["hands_together"] is False
    crouch = make_kps(legs=((60, 80), (60, 80)))
    assert pc.relations(crouch, W, H, MS)["crouching"] is True
    assert pc.relations(make_kps(legs=((60, 80), (0, 178))), W, H, MS)["crouching"] is False
    assert "crouching" not in pc.relations(make_kps(legs=((60, 110), (60, 110))), W, H, MS)


def test_low_score_joints_give_no_fact():
    kps = make_kps(arms=((90, 175), (90, 175)))
    kps[J["left_elbow"]][2] = 0.3
    angles = pc.joint_angles(kps, W, H, MS)
    assert "left_elbow" not in angles and "left_shoulder" not in angles
    assert "right_elbow" in angles
    got = states(kps)
    assert "left_arm" not in got and got["right_arm"] == "stretched out away from the body"
    assert pc.joint_point(kps, W, H, "left_elbow", MS) is None
    # The same joints pass with a lower min_score.
    assert "left_elbow" in pc.joint_angles(kps, W, H, 0.2)


def test_no_body_size_no_facts():
    kps = make_kps()
    for name in ("left_hip", "right_hip"):
        kps[J[name]][2] = 0.1
    assert pc.body_scale(kps, W, H, MS) is None
    assert states(kps) == {} and pc.relations(kps, W, H, MS) == {}
    assert pc.pose_motion(kps, kps, W, H, MS) is None


def test_aspect_ratio_uses_pixels():
    px = make_pose_px(arms=((45, 95), (10, 175)))   # left elbow 95 degrees in pixels
    wide = normalise(px, 1920, 1080)
    square = normalise(px, 1000, 1000)
    for kps, (w, h) in ((wide, (1920, 1080)), (square, (1000, 1000))):
        assert pc.joint_angles(kps, w, h, MS)["left_elbow"] == pytest.approx(95, abs=0.01)
        assert states(kps, w, h)["left_arm"] == "bent at the elbow"
    # Reading the wide frame's fractions as if square distorts the angle.
    assert abs(pc.joint_angles(wide, 1000, 1000, MS)["left_elbow"] - 95) > 20
    # A portrait frame: clearly bent in pixels, not bent if read as square.
    tall = normalise(make_pose_px(arms=((45, 110), (10, 175))), 1080, 1920)
    assert states(tall, 1080, 1920)["left_arm"] == "bent at the elbow"
    assert pc.joint_angles(tall, 1000, 1000, MS)["left_elbow"] > 120
    assert states(tall, 1000, 1000).get("left_arm") != "bent at the elbow"


def test_left_right_follow_the_person_not_the_image():
    kps = make_kps(arms=((175, 175), (10, 175)))   # person's LEFT arm raised (image right)
    assert kps[J["left_wrist"]][0] > 0.5
    assert states(kps)["left_arm"] == "raised above the head"
    assert states(kps)["right_arm"] == "hanging down by the side"
    # Seen from behind (mirrored image), the person's left arm is still the raised one.
    back = [[1 - x, y, s] for x, y, s in kps]
    assert states(back)["left_arm"] == "raised above the head"
    # Swapping the left/right labels swaps the answer.
    swapped = list(kps)
    for name in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle", "eye", "ear"):
        li, ri = J[f"left_{name}"], J[f"right_{name}"]
        swapped[li], swapped[ri] = kps[ri], kps[li]
    assert states(swapped)["right_arm"] == "raised above the head"


def test_raising_a_margin_only_removes_facts():
    kps = make_kps(arms=((90, 163), (10, 175)))   # straight by 13 degrees
    assert states(kps)["left_arm"] == "stretched out away from the body"
    assert "left_arm" not in states(kps, rules=pc.Rules(angle_margin=15))


def _moved(kps, dxdy_px: dict, w=W, h=H):
    out = [list(k) for k in kps]
    for name, (dx, dy) in dxdy_px.items():
        out[J[name]][0] += dx / w
        out[J[name]][1] += dy / h
    return out


def test_joint_motion_up_down_in_image_terms():
    a = make_kps()
    b = _moved(a, {"left_wrist": (0, -100), "right_wrist": (0, 60)})   # 0.5 S up, 0.3 S down
    m = pc.joint_motion(a, b, W, H, MS)
    assert m["left_hand"].dy == pytest.approx(-0.5) and m["left_hand"].vertical == "up"
    assert m["right_hand"].vertical == "down" and m["right_hand"].direction == "down"
    assert m["head"].vertical is None and m["head"].amount == pytest.approx(0)
    small = pc.joint_motion(a, _moved(a, {"left_wrist": (0, -20)}), W, H, MS)   # 0.1 S
    assert small["left_hand"].vertical is None
    right = pc.joint_motion(a, _moved(a, {"left_wrist": (80, 0)}), W, H, MS)
    assert right["left_hand"].horizontal == "right" and right["left_hand"].vertical is None


def test_motion_is_relative_to_the_hips():
    a = make_kps()
    every = {n: (0, -100) for n in J}
    shifted = _moved(a, every)                    # whole body moves up: nothing moves relative
    m = pc.joint_motion(a, shifted, W, H, MS)
    assert all(p.vertical is None and p.amount == pytest.approx(0, abs=1e-9) for p in m.values())
    assert pc.pose_motion(a, shifted, W, H, MS) == pytest.approx(0.5)
    # Hand up relative to the hips but down in the image (body sinks more): no direction.
    sink = {n: (0, 100) for n in J}
    sink["left_wrist"] = (0, 40)
    assert pc.joint_motion(a, _moved(a, sink), W, H, MS)["left_hand"].vertical is None


def test_a_person_coming_nearer_moves_no_part():
    # The whole body 12% larger about the hips (walking towards the camera): the feet go
    # down in pixels, but nothing moves relative to the body (audit round 5).
    a = make_kps()
    hip = (np.array(a[J["left_hip"]][:2]) + np.array(a[J["right_hip"]][:2])) / 2
    nearer = [[*(hip + 1.12 * (np.array(k[:2]) - hip)), k[2]] for k in a]
    m = pc.joint_motion(a, nearer, W, H, MS)
    assert nearer[J["left_ankle"]][1] > a[J["left_ankle"]][1]          # lower in the image
    assert all(p.vertical is None and p.horizontal is None for p in m.values())
    assert all(p.amount == pytest.approx(0, abs=1e-6) for p in m.values())


def test_most_moved_needs_a_margin():
    a = make_kps()
    clear = _moved(a, {"left_wrist": (0, -160), "right_ankle": (40, 0)})
    assert pc.most_moved(pc.joint_motion(a, clear, W, H, MS)) == "left_hand"
    close = _moved(a, {"left_wrist": (0, -160), "right_wrist": (0, -140)})
    assert pc.most_moved(pc.joint_motion(a, close, W, H, MS)) is None
    tiny = _moved(a, {"left_wrist": (0, -40)})   # 0.2 S < 0.3 minimum
    assert pc.most_moved(pc.joint_motion(a, tiny, W, H, MS)) is None
    # Past the margin but not twice as far: both hands moved, a viewer cannot pick one.
    both = _moved(a, {"left_wrist": (0, -160), "right_wrist": (0, -100)})
    assert pc.most_moved(pc.joint_motion(a, both, W, H, MS)) is None
    clearly = _moved(a, {"left_wrist": (0, -160), "right_wrist": (0, -70)})
    assert pc.most_moved(pc.joint_motion(a, clearly, W, H, MS)) == "left_hand"


def test_grounding_geometry_guards():
    kps = make_kps(arms=((90, 175), (10, 175)))
    assert pc.joint_point(kps, W, H, "left_wrist", MS) == pytest.approx(kps[J["left_wrist"]][:2])
    box = pc.limb_box(kps, W, H, "left_arm", MS)
    pts = np.array([kps[J[n]][:2] for n in ("left_shoulder", "left_elbow", "left_wrist")])
    assert box == pytest.approx([*(pts.min(0) - 0.02), *(pts.max(0) + 0.02)])   # pad 0.1 S = 20 px
    near = _clap(gap_px=20)                       # wrists together: side ambiguous
    assert pc.joint_point(near, W, H, "left_wrist", MS) is None
    assert pc.joint_point(near, W, H, "nose", MS) is not None
    edge = make_kps(center=(40.0, 0.0))           # right side leaves the frame
    assert pc.joint_point(edge, W, H, "right_wrist", MS) is None


def test_state_agreement_counts_only_where_both_label():
    import importlib.util

    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("state_agreement",
                                                  REPO / "bench" / "state_agreement.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    gt = make_kps(arms=((175, 175), (10, 175)))
    same = [list(k) for k in gt]
    other = make_kps(arms=((10, 175), (10, 175)))      # left arm hanging instead of raised
    blind = make_kps(arms=((175, 175), (10, 175)))
    for name in ("left_wrist", "left_elbow"):
        blind[J[name]][2] = 0.1                        # pred emits no left-arm label
    res = mod.state_agreement([(same, gt, W, H), (other, gt, W, H), (blind, gt, W, H)], MS)
    # 5 parts labelled on both sides in each of the three pairs, except blind's left arm.
    assert res["compared"] == 14 and res["agree"] == 13
    assert res["rate"] == pytest.approx(13 / 14) and res["gt_only"] == 1
    assert res["disagreements"] == [{"pair": 1, "part": "left_arm",
                                     "pred": "hanging down by the side",
                                     "gt": "raised above the head"}]
    assert mod.state_agreement([], MS)["rate"] is None


def test_one_parsed_pose_gives_what_the_raw_keypoints_give():
    # A frame parsed once (pc.Pose) answers every question exactly as its raw keypoints do.
    import random

    from proxyqa.stages import posecodes as pc

    rng = random.Random(3)
    for _ in range(20):
        arms = ((rng.uniform(0, 180), rng.uniform(60, 180)), (rng.uniform(0, 180), rng.uniform(60, 180)))
        kps = normalise(make_pose_px(arms=arms), 1000, 1100)
        pose = pc.Pose(kps, 1000, 1100, 0.5)
        assert pc.facts(pose, 1000, 1100, 0.5) == pc.facts(kps, 1000, 1100, 0.5)
        assert pc.state_truths(pose, 1000, 1100, 0.5) == pc.state_truths(kps, 1000, 1100, 0.5)
        for joint in pc.GROUND_JOINTS:
            assert pc.joint_point(pose, 1000, 1100, joint, 0.5) == pc.joint_point(kps, 1000, 1100, joint, 0.5)
        for limb in pc.LIMBS:
            assert pc.limb_box(pose, 1000, 1100, limb, 0.5) == pc.limb_box(kps, 1000, 1100, limb, 0.5)
        other = normalise(make_pose_px(arms=((10, 175), (10, 175))), 1000, 1100)
        assert pc.joint_motion(pose, other, 1000, 1100, 0.5) == pc.joint_motion(kps, other, 1000, 1100, 0.5)
        assert pc.pose_of(pose, 1, 1, 0.9) is pose
        assert pose.angles is pose.angles   # computed once


def test_no_shoulder_point_when_that_arm_is_raised():
    a = make_kps()
    assert pc.joint_point(a, W, H, "left_shoulder", MS) is not None
    raised = _moved(a, {"left_elbow": (0, -200), "left_wrist": (0, -300)})   # elbow above the shoulder
    assert pc.joint_point(raised, W, H, "left_shoulder", MS) is None
    assert pc.joint_point(raised, W, H, "right_shoulder", MS) is not None
