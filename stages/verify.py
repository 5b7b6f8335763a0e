"""Checks MLLM claims that map to posecodes against the pose geometry.

A claim is a phrase about one body part ("left arm raised above the head", "right hand
moved up"). Phrases map to posecode states by the keyword table below; a text with a
negation is not parsed (too easy to misread). Per row: verified = False if any claim
contradicts the geometry, True if at least one claim was checked and all agree, None if
nothing checkable was said (or the geometry had no fact within its margins).
"""
from __future__ import annotations

import re
from typing import Any, Optional

from proxyqa.stages import posecodes

# (part kind, regex) -> posecode state. Part kinds: arm, torso; legs: LEG_KEYWORDS.
STATE_KEYWORDS: list[tuple[str, str, str]] = [
    ("arm", r"\b(raised|above (the|his|her|their) head|overhead|up in the air)\b", "raised above the head"),
    ("arm", r"\b(hanging|down by|at (the|his|her|their) side|lowered)\b", "hanging down by the side"),
    ("arm", r"\b(stretched out|outstretched|extended (out|sideways|to the side))\b",
     "stretched out away from the body"),
    ("arm", r"\b(bent|flexed)\b", "bent at the elbow"),
    ("torso", r"\b(upright|vertical|erect)\b", "upright"),
    ("torso", r"\b(leaning|leans|tilted|bent forward|bending forward)\b", "leaning"),
    ("torso", r"\b(horizontal|lying)\b", "nearly horizontal"),
]
# A leg state combines two facts (posecodes.LEG_STATES): straight or bent, thigh raised or
# not; a phrase claims the one state its words decide ("raised" alone decides none).
LEG_KEYWORDS = {"straight": r"\bstraight\b", "bent": r"\b(bent|flexed)\b",
                "raised": r"\b(thigh raised|knee raised|lifted|raised)\b"}
LEG_STATE_OF = {("straight", False): "straight", ("bent", False): "bent at the knee",
                ("bent", True): "bent with the thigh raised",
                ("straight", True): "held out straight with the thigh raised"}
MOTION_KEYWORDS = [(r"\b(up|upward|upwards|raised|raises|lifted|lifts)\b", "up"),
                   (r"\b(down|downward|downwards|lowered|lowers|dropped|drops)\b", "down")]
# Which tracked motion part stands for a described body part.
MOTION_PART_OF = {"head": "head", "left_arm": "left_hand", "right_arm": "right_hand",
                  "left_leg": "left_foot", "right_leg": "right_foot"}
NEGATION = re.compile(r"\b(not|no|never|neither|nor)\b|n't", re.I)


def _kind(part: str) -> str:
    return part.split("_")[-1] if "_" in part else part


def state_claims(part: str, text: str) -> list[str]:
    """Posecode states a text asserts about `part` (empty if negated or none found)."""
    if not text or NEGATION.search(text):
        return []
    kind, lowered = _kind(part), text.lower()
    if kind == "leg":
        said = {fact for fact, pattern in LEG_KEYWORDS.items() if re.search(pattern, lowered)}
        shape = [s for s in ("straight", "bent") if s in said]
        state = LEG_STATE_OF.get((shape[0], "raised" in said)) if len(shape) == 1 else None
        return [state] if state else []
    return [state for k, pattern, state in STATE_KEYWORDS if k == kind and re.search(pattern, lowered)]


def motion_claim(text: str) -> Optional[str]:
    if not text or NEGATION.search(text):
        return None
    found = {d for pattern, d in MOTION_KEYWORDS if re.search(pattern, text.lower())}
    return found.pop() if len(found) == 1 else None


class Verdict:
    """Accumulates agreements and contradictions into (verified, reasons)."""

    def __init__(self) -> None:
        self.agree: list[str] = []
        self.contradict: list[str] = []

    def check(self, what: str, truth: Optional[bool]) -> None:
        if truth is True:
            self.agree.append(what)
        elif truth is False:
            self.contradict.append(what)

    def result(self) -> tuple[Optional[bool], dict[str, Any]]:
        reasons = {"agree": self.agree, "contradict": self.contradict}
        if self.contradict:
            return False, reasons
        if self.agree:
            return True, reasons
        return None, {**reasons, "note": "no claim that geometry could check"}


def check_states(parts_text: dict[str, str], keypoints, width: int, height: int,
                 min_score: float, verdict: Verdict | None = None) -> Verdict:
    """Per-part descriptions against the state truths of one frame."""
    verdict = verdict or Verdict()
    truths = posecodes.state_truths(keypoints, width, height, min_score)
    for part, text in parts_text.items():
        for state in state_claims(part, text):
            verdict.check(f"{part}: {state}", truths.get(part, {}).get(state))
    return verdict


def check_motion(changes: list[dict[str, str]], kps_a, kps_b, width: int, height: int,
                 min_score: float, verdict: Verdict | None = None) -> Verdict:
    """'part moved up/down' claims against the measured motion between two frames."""
    verdict = verdict or Verdict()
    motion = posecodes.joint_motion(kps_a, kps_b, width, height, min_score)
    for change in changes:
        part = MOTION_PART_OF.get(change.get("part", ""))
        claimed = motion_claim(change.get("change", ""))
        if part is None or claimed is None or part not in motion:
            continue
        measured = motion[part].vertical
        verdict.check(f"{change['part']}: moved {claimed}",
                      None if measured is None else measured == claimed)
    return verdict
