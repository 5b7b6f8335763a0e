"""Pose self-consistency: which joints and frames of the subject are fit to ask about.

A geometry answer is only as right as the keypoints it is read from. These checks find the
skeletons a pose model gets wrong in ways the answer cannot show (docs/label_quality.md):

- `flip_agreement`: the model run on the mirrored frame, mapped back with left/right
  exchanged, must put each joint where the first run did (`FLIP_TOLERANCE` torso lengths);
  a joint that moves is unusable, and a skeleton that agrees better with its own mirror
  image (left and right swapped) has no trustworthy sides at all.
- `side_flips`: along a track, the body cannot turn from facing one way to the other
  between two close frames without passing a side view; the frames on the minority side of
  such an abrupt flip have their left/right swapped.
- `implausible`: an upright torso with the ankles above the hips or the head below the
  shoulders, bones far longer than the torso allows, a torso squashed against the shoulder
  width (the collapsed skeleton of two merged people).
- `overlaps_other` / `joints_on_others`: a subject overlapping another person (skeleton or
  person-detector box) enough to confuse parts; joints lying on another person.
- `foreign_faces`: a face no skeleton explains: a person the pose model missed, or, at head
  height inside the subject's box, a second person the skeleton was merged with.
- `sides_unclear`: a right skeleton whose sides a viewer still cannot tell (bent far over,
  legs crossed).

Every check is a small pure function on COCO-17 keypoints (17 x [x, y, score], fractions of
the frame) so the unit tests can call it directly; the pose stage (stages/pose.py) applies
them. Thresholds were measured on the shared clips and the hand-labelled images
(bench/label_precision.py), see docs/label_quality.md.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from proxyqa.core.people import Person, box_iou
from proxyqa.core.schema import COCO17
from proxyqa.stages.mirror import SWAP, mirror_box, mirror_points

J = {name: i for i, name in enumerate(COCO17)}
# COCO-17 index of each joint's other-side twin (nose and other centre joints map to themselves).
LIMB_JOINTS = list(range(5, 17))      # shoulders .. ankles: what the questions ask about

FLIP_TOLERANCE = 0.15     # torso lengths a joint may move between the run and the mirrored run
SIDE_MARGIN = 0.5         # sides are trusted when same-side error < this x swapped-side error
STRONG_FACING = 0.3       # |orientation| above this: clearly facing toward or away
FLIP_MAX_GAP_S = 1.0      # a facing reversal faster than this without a side view is a swap
# Plausibility (measured on the hand labels: bench/label_precision.py --bones)
# Labelled people (n = 56-75 bones): longest upper arm 0.93 torso lengths, forearm 0.76,
# thigh 1.51, shin 1.57 (a torso foreshortened by bending); legs left/right at most 1.85x;
# torso / shoulder width at least 1.03.
MAX_BONE = {"upper_arm": 1.1, "forearm": 0.95, "thigh": 1.7, "shin": 1.7}   # torso lengths
MAX_LEG_ASYMMETRY = 2.2        # longer / shorter of the same leg bone, left vs right
MIN_TORSO_TO_SHOULDERS = 0.7   # torso length / shoulder width of an upright torso
UPRIGHT_LEAN = 45.0            # degrees: a torso this close to vertical is upright

# Flags that say only that a viewer (or the mirrored run) cannot tell the left limbs from the
# right: the skeleton is still the subject's and in place, so a left/right-blind measure
# (`pose_change`, the temporal tasks' guard) may use the frame. A side-on walker is flagged
# by these in most frames, and is the clearest one-way motion there is.
FLIP_UNCONFIRMED = "flip test: left/right not confirmed by the mirrored frame"
TRACK_SIDE_FLIP = "left/right flip against the rest of the track"
SIDES_UNCLEAR = "sides unclear: "   # the prefix of every `sides_unclear` reason


def sides_only(flag: Optional[str]) -> bool:
    """Whether a frame's pose-check flag concerns only which side is which (or is None)."""
    return flag is None or flag in (FLIP_UNCONFIRMED, TRACK_SIDE_FLIP) or flag.startswith(SIDES_UNCLEAR)


def mirror_back(person: Person) -> np.ndarray:
    """Keypoints found on the mirrored frame, in the frame's coordinates and the person's sides."""
    return mirror_points(person.keypoints)


def _px(kps: np.ndarray, aspect: float) -> np.ndarray:
    """x, y in one unit (frame heights): x scaled by the aspect (width / height)."""
    return np.asarray(kps, float)[:, :2] * [aspect, 1.0]


def torso_length(kps: np.ndarray, aspect: float, min_score: float) -> Optional[float]:
    """Mean shoulder-hip distance over confident sides, in frame heights (None: no side)."""
    px = _px(kps, aspect)
    sides = [np.linalg.norm(px[J[f"{s}_shoulder"]] - px[J[f"{s}_hip"]]) for s in ("left", "right")
             if kps[J[f"{s}_shoulder"], 2] >= min_score and kps[J[f"{s}_hip"], 2] >= min_score]
    length = float(np.mean(sides)) if sides else 0.0
    return length if length > 1e-6 else None


def flip_agreement(kps: np.ndarray, mirrored: Optional[np.ndarray], aspect: float,
                   min_score: float, tolerance: float = FLIP_TOLERANCE,
                   confirm_score: float = 0.7) -> tuple[np.ndarray, bool]:
    """(joint_ok[17], sides_ok) of one skeleton against the mirrored run's skeleton.

    `mirrored` is the mirrored run's skeleton of the same person already mapped back
    (`mirror_back`), or None when that run did not find the person: then nothing is
    confirmed. A joint is ok when both runs give it a score >= `confirm_score` (a
    joint the model half-sees moves between runs too often; measured on the hand labels)
    and put it within `tolerance` torso lengths; sides are ok when the limb joints agree with the same-side assignment clearly
    better (`SIDE_MARGIN`) than with left and right exchanged.
    """
    ok = np.zeros(len(COCO17), bool)
    scale = torso_length(kps, aspect, min_score)
    if mirrored is None or scale is None:
        return ok, False
    a, b = _px(kps, aspect), _px(mirrored, aspect)
    confirm = max(min_score, confirm_score)
    conf = (kps[:, 2] >= confirm) & (mirrored[:, 2] >= confirm)
    dist = np.linalg.norm(a - b, axis=1) / scale
    ok = conf & (dist <= tolerance)
    limbs = np.zeros(len(COCO17), bool)
    limbs[LIMB_JOINTS] = True
    both = conf & conf[SWAP] & limbs
    if both.sum() < 4:
        return ok, False
    same = float(np.median(dist[both]))
    swapped = float(np.median(np.linalg.norm(a[SWAP] - b, axis=1)[both] / scale))
    return ok, same < SIDE_MARGIN * swapped


def match_mirrored(person: Person, mirrored: Sequence[Person], min_iou: float = 0.5
                   ) -> Optional[np.ndarray]:
    """The mirrored run's skeleton of the same person (best box IoU), mapped back; or None."""
    best, best_iou = None, min_iou
    for other in mirrored:
        iou = box_iou(person.box, mirror_box(other.box))
        if iou >= best_iou:
            best, best_iou = other, iou
    return None if best is None else mirror_back(best)


def orientation(kps: np.ndarray, aspect: float, min_score: float) -> Optional[float]:
    """Which way the body faces, from its own left/right, in shoulder+hip widths per torso.

    The cross product of the torso's up vector (hip midpoint -> shoulder midpoint) with the
    right-to-left shoulder and hip vectors, over the squared torso length: > 0 when the
    person's left is on the image right of an upright body (facing the camera), < 0 when
    seen from behind, near 0 in a side view. None without both shoulders and hips.
    """
    need = [J[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]
    if np.any(kps[need, 2] < min_score):
        return None
    px = _px(kps, aspect)
    ls, rs, lh, rh = (px[i] for i in need)
    up = (ls + rs) / 2 - (lh + rh) / 2
    norm2 = float(up @ up)
    if norm2 < 1e-12:
        return None
    across = (ls - rs) + (lh - rh)
    return float((up[0] * across[1] - up[1] * across[0]) / 2 / norm2)


def side_flips(orients: Sequence[Optional[float]], timestamps: Sequence[float],
               strong: float = STRONG_FACING, max_gap_s: float = FLIP_MAX_GAP_S) -> list[bool]:
    """Per frame of one track: True where its left/right are swapped against the track.

    Frames facing clearly one way (|orientation| >= strong) are split into runs of one
    sign; two runs meet *abruptly* when consecutive strong frames of opposite sign are at
    most `max_gap_s` apart with no side-view frame (|o| < strong) between them: a real turn
    passes through a side view. Runs linked by abrupt meetings form a group; in each group
    the frames of the sign with fewer frames are flagged (ties: both signs, nothing is
    trusted).
    """
    flags = [False] * len(orients)
    strong_idx = [i for i, o in enumerate(orients) if o is not None and abs(o) >= strong]
    if len(strong_idx) < 2:
        return flags
    groups: list[list[int]] = [[strong_idx[0]]]
    for prev, cur in zip(strong_idx, strong_idx[1:]):
        between = [orients[k] for k in range(prev + 1, cur)]
        side_view = any(o is not None and abs(o) < strong for o in between)
        flipped = np.sign(orients[prev]) != np.sign(orients[cur])
        abrupt = flipped and not side_view and timestamps[cur] - timestamps[prev] <= max_gap_s
        if abrupt or (not flipped and not side_view):
            groups[-1].append(cur)
        else:
            groups.append([cur])
    for group in groups:
        pos = [i for i in group if orients[i] > 0]
        neg = [i for i in group if orients[i] < 0]
        if not pos or not neg:
            continue
        losers = pos + neg if len(pos) == len(neg) else (pos if len(pos) < len(neg) else neg)
        for i in losers:
            flags[i] = True
    return flags


def _angle_from_up(vec: np.ndarray) -> float:
    norm = float(np.linalg.norm(vec))
    if norm < 1e-12:
        return 0.0
    return float(np.degrees(np.arccos(np.clip(-vec[1] / norm, -1.0, 1.0))))


BONES = {"upper_arm": (("shoulder", "elbow"),), "forearm": (("elbow", "wrist"),),
         "thigh": (("hip", "knee"),), "shin": (("knee", "ankle"),)}


def _parsed(kps: np.ndarray, aspect: float, min_score: float
            ) -> Optional[tuple[float, np.ndarray, Callable[..., bool]]]:
    """(torso length, points in frame heights, `ok(*joint names)`: all confident), or None
    without a torso to measure by."""
    scale = torso_length(kps, aspect, min_score)
    if scale is None:
        return None
    conf = kps[:, 2] >= min_score

    def ok(*names: str) -> bool:
        return all(conf[J[n]] for n in names)
    return scale, _px(kps, aspect), ok


def implausible(kps: np.ndarray, aspect: float, min_score: float) -> Optional[str]:
    """Why a skeleton cannot be a real body, or None when nothing is wrong.

    - an inverted torso (shoulders under the hips, within UPRIGHT_LEAN of upside down): a
      handstand is rare, an upside-down skeleton on an upright person is not;
    - upside down: an upright torso (within UPRIGHT_LEAN of vertical) with a confident
      ankle above the hip midpoint AND the face below the shoulder midpoint, or with both
      ankles above the shoulders;
    - a bone (upper arm, forearm, thigh, shin) longer than MAX_BONE torso lengths: in 2D a
      bone can look shorter than it is (foreshortened), never longer;
    - one thigh or shin over MAX_LEG_ASYMMETRY x as long as the other (legs foreshorten
      alike far more often than arms do);
    - an upright torso shorter than MIN_TORSO_TO_SHOULDERS x its shoulder width: a body
      squashed flat (seen in skeletons merged from two people or collapsed into a box).
    """
    parsed = _parsed(kps, aspect, min_score)
    if parsed is None:
        return None
    scale, px, ok = parsed

    for bone, ((a, b),) in BONES.items():
        for s in ("left", "right"):
            ja, jb = f"{s}_{a}", f"{s}_{b}"
            if ok(ja, jb) and np.linalg.norm(px[J[ja]] - px[J[jb]]) > MAX_BONE[bone] * scale:
                return f"{s} {bone.replace('_', ' ')} longer than {MAX_BONE[bone]} torso lengths"
        if bone in ("thigh", "shin") and ok(f"left_{a}", f"left_{b}", f"right_{a}", f"right_{b}"):
            lengths = sorted(float(np.linalg.norm(px[J[f"{s}_{a}"]] - px[J[f"{s}_{b}"]]))
                             for s in ("left", "right"))
            if lengths[1] > 0.5 * scale and lengths[1] > MAX_LEG_ASYMMETRY * lengths[0]:
                return f"{bone}s differ over {MAX_LEG_ASYMMETRY}x left to right"
    if not ok("left_shoulder", "right_shoulder", "left_hip", "right_hip"):
        return None
    mid_sh = (px[J["left_shoulder"]] + px[J["right_shoulder"]]) / 2
    mid_hip = (px[J["left_hip"]] + px[J["right_hip"]]) / 2
    lean = _angle_from_up(mid_sh - mid_hip)
    if lean > 180.0 - UPRIGHT_LEAN:
        return "inverted torso: shoulders below the hips"
    if lean > UPRIGHT_LEAN:
        return None
    ankles = [px[J[a]][1] for a in ("left_ankle", "right_ankle") if ok(a)]
    face = [px[J[f]][1] for f in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
            if ok(f)]
    if ankles and face and min(ankles) < mid_hip[1] and min(face) > mid_sh[1]:
        return "upside down: ankle above the hips and face below the shoulders of an upright torso"
    if len(ankles) == 2 and max(ankles) < mid_sh[1]:
        return "upside down: both ankles above the shoulders of an upright torso"
    width = float(np.linalg.norm(px[J["left_shoulder"]] - px[J["right_shoulder"]]))
    if np.linalg.norm(mid_sh - mid_hip) < MIN_TORSO_TO_SHOULDERS * width:
        return f"torso squashed: shorter than {MIN_TORSO_TO_SHOULDERS} x the shoulder width"
    return None


def overlaps_other(box: Sequence[float], others: Sequence[Sequence[float]],
                   max_iou: float) -> bool:
    """Whether the subject box overlaps another person's box by more than `max_iou` IoU,
    or holds its centre: parts of the two are then easily confused."""
    for other in others:
        cx, cy = (other[0] + other[2]) / 2, (other[1] + other[3]) / 2
        inside = box[0] <= cx <= box[2] and box[1] <= cy <= box[3]
        if box_iou(box, other) > max_iou or inside:
            return True
    return False


def joints_on_others(kps: np.ndarray, own_box: Sequence[float],
                     others: Sequence[Sequence[float]]) -> np.ndarray:
    """Per joint: True where it lies inside another person's box and outside the subject's
    own torso region (the box of its shoulders and hips grown by half its size)."""
    xy = np.asarray(kps, float)[:, :2]
    on = np.zeros(len(xy), bool)
    for x1, y1, x2, y2 in others:
        on |= (xy[:, 0] >= x1) & (xy[:, 0] <= x2) & (xy[:, 1] >= y1) & (xy[:, 1] <= y2)
    core = xy[[J["left_shoulder"], J["right_shoulder"], J["left_hip"], J["right_hip"]]]
    lo, hi = core.min(0), core.max(0)
    pad = (hi - lo) / 2
    near = np.all((xy >= lo - pad) & (xy <= hi + pad), axis=1)
    return on & ~near


MAX_SIDE_LEAN = 45.0     # degrees from vertical: beyond it a viewer cannot tell the sides
CROSS_MARGIN = 0.1       # torso lengths by which crossed ankles/knees must be reversed
HEAD_JOINTS = [J[n] for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")]
FACE_HEAD_BAND = 0.3     # a face belongs to the subject's box only in its top 30%


def sides_unclear(kps: np.ndarray, aspect: float, min_score: float,
                  max_lean: float = MAX_SIDE_LEAN) -> Optional[str]:
    """Why a viewer could not tell this body's left limbs from its right, or None.

    The audit found these rows ambiguous although the skeleton was right: a body bent far
    over or lying (torso more than `max_lean` degrees from vertical: arms and legs hang in
    any order) and crossed legs (ankles or knees in the opposite left-right order to the
    hips by CROSS_MARGIN torso lengths). A model that reads sides from such frames is
    guessing, and so would be the question."""
    parsed = _parsed(kps, aspect, min_score)
    if parsed is None:
        return None
    scale, px, ok = parsed

    if ok("left_shoulder", "right_shoulder", "left_hip", "right_hip"):
        mid_sh = (px[J["left_shoulder"]] + px[J["right_shoulder"]]) / 2
        mid_hip = (px[J["left_hip"]] + px[J["right_hip"]]) / 2
        lean = _angle_from_up(mid_sh - mid_hip)
        if max_lean < lean <= 180.0 - UPRIGHT_LEAN:   # inverted torsos are `implausible`'s
            return f"{SIDES_UNCLEAR}torso leans {lean:.0f} degrees: left and right limbs not told apart"
    if not ok("left_hip", "right_hip"):
        return None
    hips = px[J["left_hip"], 0] - px[J["right_hip"], 0]
    for joint in ("ankle", "knee"):
        if ok(f"left_{joint}", f"right_{joint}"):
            apart = px[J[f"left_{joint}"], 0] - px[J[f"right_{joint}"], 0]
            if abs(hips) >= CROSS_MARGIN * scale and apart * np.sign(hips) < -CROSS_MARGIN * scale:
                return f"{SIDES_UNCLEAR}legs crossed at the {joint}s"
    return None


def foreign_faces(faces: Sequence[Sequence[float]], people: Sequence[Person],
                  subject: Optional[Person], head_score: float = 0.3
                  ) -> tuple[list[list[float]], bool]:
    """Faces no skeleton's head explains: (faces outside every skeleton box, whether one
    sits at head height inside the subject's box).

    A face is explained by a skeleton with a head joint (score >= `head_score`) inside the
    face box grown by one face width. An unexplained face in the top FACE_HEAD_BAND of the
    subject's box is a second person's head there (two people hugging: one skeleton, two
    faces); lower down it is more likely skin (a hand, an arm) than a face, and is ignored.
    Unexplained faces outside every skeleton box are people the pose model missed."""
    missed: list[list[float]] = []
    in_subject = False
    for face in faces:
        fw, fh = face[2] - face[0], face[3] - face[1]
        x1, y1, x2, y2 = face[0] - fw, face[1] - fh, face[2] + fw, face[3] + fh
        if any(any(p.keypoints[j, 2] >= head_score and x1 <= p.keypoints[j, 0] <= x2
                   and y1 <= p.keypoints[j, 1] <= y2 for j in HEAD_JOINTS) for p in people):
            continue
        cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
        if subject is not None:
            b = subject.box
            if b[0] <= cx <= b[2] and b[1] <= cy <= b[1] + FACE_HEAD_BAND * (b[3] - b[1]):
                in_subject = True
                continue
        if not any(p.box[0] <= cx <= p.box[2] and p.box[1] <= cy <= p.box[3] for p in people):
            missed.append(list(face))
    return missed, in_subject


NEAR_OTHER_LIMB = 0.25   # torso lengths: a joint this close to another person's arm or leg
HAND_REACH = 0.4         # ... and a wrist this close to another's arm or hand


LIMB_SEGMENTS = [(J[f"{s}_{a}"], J[f"{s}_{b}"]) for s in ("left", "right")
                 for a, b in (("shoulder", "elbow"), ("elbow", "wrist"), ("hip", "knee"), ("knee", "ankle"))]


def joints_near_other_limbs(kps: np.ndarray, others: Sequence[np.ndarray], aspect: float,
                            min_score: float, near: float = NEAR_OTHER_LIMB) -> np.ndarray:
    """Per limb joint: True where it lies within `near` torso lengths of another skeleton's
    arm or leg. Hands that touch (feeding, holding, dancing) cannot be told apart by a
    viewer, and a pose model puts one person's wrist on the other's hand (CrowdPose 106848:
    the subject's right wrist on the hand feeding him, inside his own torso region, where
    `joints_on_others` does not look; the feeding man's own wrist was found half a hand short
    of his hand, hence the forearm's extension and the wider reach for wrists)."""
    scale = torso_length(kps, aspect, min_score)
    out = np.zeros(len(kps), bool)
    if scale is None:
        return out
    px = _px(kps, aspect)
    # Hands: the other's forearm runs on past the wrist by half its length (the hand a model
    # often stops short of), and the subject's own wrists count as near from farther away.
    reach = np.full(len(kps), near * scale)
    reach[[J["left_wrist"], J["right_wrist"]]] = HAND_REACH * scale
    for other in others:
        opx, conf = _px(other, aspect), np.asarray(other)[:, 2] >= min_score
        for a, b in LIMB_SEGMENTS:
            if not (conf[a] and conf[b]):
                continue
            seg = opx[b] - opx[a]
            end = 1.5 if b in (J["left_wrist"], J["right_wrist"]) else 1.0
            t = np.clip(((px - opx[a]) @ seg) / max(float(seg @ seg), 1e-12), 0.0, end)
            dist = np.linalg.norm(px - (opx[a] + t[:, None] * seg), axis=1)
            out |= dist < reach
    out[: LIMB_JOINTS[0]] = False   # the face: a head next to someone's arm is still that head
    return out


PARTIAL_HEIGHT = 0.5   # a skeleton box shorter than this x the detector box around it is partial


def explained(det: Sequence[float], skeleton_boxes: Sequence[Sequence[float]]) -> Optional[int]:
    """Index of the skeleton box a detector box belongs to (IoU > 0.3 or either's centre
    inside the other), or None: a person the pose model missed."""
    dcx, dcy = (det[0] + det[2]) / 2, (det[1] + det[3]) / 2
    for i, box in enumerate(skeleton_boxes):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        if (box_iou(det, box) > 0.3 or (box[0] <= dcx <= box[2] and box[1] <= dcy <= box[3])
                or (det[0] <= cx <= det[2] and det[1] <= cy <= det[3])):
            return i
    return None


HIDDEN_WITHIN_S = 1.0    # a person next to the subject does not vanish faster than this


def hidden_neighbour(pos: int, people: Sequence[Sequence[Person]], mine: Sequence[Optional[Person]],
                     timestamps: Sequence[float], within_s: float = HIDDEN_WITHIN_S) -> bool:
    """Whether someone who touched the subject's box within `within_s` seconds of frame
    `pos` (before or after) is missing from it: that person is most likely hidden behind,
    or merged into, the subject's skeleton (two people hugging give one skeleton whose
    head can sit on either face; measured on the shared mmaction2 clip)."""
    here = {p.track_id for p in people[pos] if p.track_id is not None}
    for other in range(len(people)):
        if other == pos or abs(timestamps[other] - timestamps[pos]) > within_s or mine[other] is None:
            continue
        sbox = mine[other].box
        for p in people[other]:
            if p is mine[other] or p.track_id is None or p.track_id in here:
                continue
            if _touching(p.box, sbox):
                return True
    return False


def _touching(a: Sequence[float], b: Sequence[float]) -> bool:
    """Boxes overlapping, or apart by under 10% of the taller one's height."""
    gap = 0.1 * max(a[3] - a[1], b[3] - b[1])
    return a[0] - gap <= b[2] and b[0] - gap <= a[2] and a[1] - gap <= b[3] and b[1] - gap <= a[3]


def nose_on_a_face(kps: np.ndarray, faces: Sequence[Sequence[float]], grow: float = 0.25) -> bool:
    """Whether a detected face (grown by `grow` of its size) holds the nose point. A pose
    model places a nose on a face in profile (on the cheek) or on a head bent out of
    sight; the audit found both wrong. A face the detector sees is one a viewer sees."""
    x, y = float(kps[J["nose"], 0]), float(kps[J["nose"], 1])
    for f in faces:
        gw, gh = grow * (f[2] - f[0]), grow * (f[3] - f[1])
        if f[0] - gw <= x <= f[2] + gw and f[1] - gh <= y <= f[3] + gh:
            return True
    return False


def inside(inner: Sequence[float], outer: Sequence[float]) -> bool:
    """Whether the centre of box `inner` lies in box `outer`."""
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def partial_body(box: Sequence[float], detections: Sequence[Sequence[float]]) -> bool:
    """Whether a detector box around the skeleton's centre is over twice as tall as it: the
    skeleton covers only part of the person (a collapsed or half-found body)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    height = box[3] - box[1]
    for det in detections:
        if det[0] <= cx <= det[2] and det[1] <= cy <= det[3] and box_iou(box, det) > 0.0:
            if height < PARTIAL_HEIGHT * (det[3] - det[1]):
                return True
    return False


# Shoulder-to-ankle over torso length for an upright body is ~2.6 (torso, thigh, shin); 2.0
# makes the stand-in torso longer than the real one, so motion measured with it is smaller.
SHOULDER_ANKLE_PER_TORSO = 2.0


def body_scale(kps: np.ndarray, aspect: float, min_score: float) -> Optional[float]:
    """A torso length for motion: the shoulder-hip length, or, where the flip test dropped
    both hips (side-on walkers: the hips are the joints the mirrored run places differently),
    shoulder-to-ankle / SHOULDER_ANKLE_PER_TORSO. None without either."""
    torso = torso_length(kps, aspect, min_score)
    if torso is not None:
        return torso
    px = _px(kps, aspect)
    sh = [J[f"{s}_shoulder"] for s in ("left", "right") if kps[J[f"{s}_shoulder"], 2] >= min_score]
    an = [J[f"{s}_ankle"] for s in ("left", "right") if kps[J[f"{s}_ankle"], 2] >= min_score]
    if not sh or not an:
        return None
    length = float(np.linalg.norm(px[sh].mean(axis=0) - px[an].mean(axis=0))) / SHOULDER_ANKLE_PER_TORSO
    return length if length > 1e-6 else None


def pose_change(kps_a: np.ndarray, kps_b: np.ndarray, aspect: float, min_score: float,
                min_joints: int = 5) -> Optional[float]:
    """Mean joint displacement between two skeletons in torso lengths (`body_scale`), the
    smaller of the same-side and the left/right-exchanged reading (a mirrored frame is not
    motion). None when either has no body scale or fewer than `min_joints` joints are
    confident in both."""
    sa, sb = body_scale(kps_a, aspect, min_score), body_scale(kps_b, aspect, min_score)
    if sa is None or sb is None:
        return None
    a, b = _px(kps_a, aspect), _px(kps_b, aspect)
    best = None
    for order in (list(range(len(COCO17))), SWAP):
        both = (kps_a[order, 2] >= min_score) & (kps_b[:, 2] >= min_score)
        if both.sum() < min_joints:
            continue
        d = float(np.linalg.norm(a[order][both] - b[both], axis=1).mean() / ((sa + sb) / 2))
        best = d if best is None else min(best, d)
    return best
