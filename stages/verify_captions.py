"""Checks an MLLM rewrite of a rule-written caption: it must keep every fact of the draft and
state none that the geometry contradicts (docs/captions.md).

The text is cut into clauses (sentences, then "while"/"whereas"/"but"/";"/", and"); each
clause names body parts ("the left arm", "both legs", "the right one" = the side's part of
the clause before, "the upper body" = torso) and states, found by the keyword table below.
A clause with a negation claims nothing (too easy to misread). Then:
- kept: every draft fact is claimed by some clause about its part (relations: by their words);
- contradicted: a claimed (part, state) that posecodes' state_truths says is False.
verified = False if a fact is missing or a claim is contradicted, else True.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from proxyqa.stages import posecodes as pc

NEGATION = re.compile(r"\b(not|no|never|neither|nor|without)\b|n't", re.I)
SPLIT = re.compile(r"[.;!?]|\bwhile\b|\bwhereas\b|\bbut\b|, and\b|\band the\b", re.I)
# Words that name a part, by kind (hands/elbows -> arm, knees/feet/thighs -> leg).
KIND_WORDS = {
    "arm": r"arms?|hands?|elbows?|wrists?",
    "leg": r"legs?|knees?|feet|foot|thighs?|ankles?",
    "torso": r"torso|upper body|trunk|back|person leans|person is leaning|body",
}
STATE_WORDS: dict[str, list[tuple[str, str]]] = {
    "arm": [
        (r"\b(raised|lifted|held up|up) (above|over) (the|his|her|their) heads?\b|\boverhead\b",
         "raised above the head"),
        (r"\b(stretched|extended|held straight) out\b|\boutstretched\b|\bout (away )?from the body\b",
         "stretched out away from the body"),
        (r"\b(hang|hangs|hanging|rest|rests|resting)\b.*\b(down|side|sides)\b|\bby (the|his|her|their) sides?\b",
         "hanging down by the side"),
        (r"\b(bent|flexed|bend|bends|bending)\b", "bent at the elbow"),
    ],
    "torso": [
        (r"\b(upright|erect|vertical)\b", "upright"),
        (r"\b(lean|leans|leaning|tilted|tilts|inclined)\b", "leaning"),
        (r"\b(horizontal|lying flat)\b", "nearly horizontal"),
    ],
}
LEG_WORDS = {"straight": r"\b(straight|extended|straightened)\b",
             "bent": r"\b(bent|flexed|bend|bends|bending)\b",   # "both legs bend at the knees"
             # "bent at the hip and knee": the thigh flexed against the torso (captions.py)
             "raised": r"\b(thighs? raised|raised|lifted|knees? up|at the hips? and (the )?knees?)\b"}
LEG_STATE = {("straight", False): "straight", ("bent", False): "bent at the knee",
             ("bent", True): "bent with the thigh raised",
             ("straight", True): "held out straight with the thigh raised"}
RELATION_WORDS = {"hands_together": r"\bhands\b.*\b(together|near each other|close)\b",
                  "feet_apart": r"\b(feet|legs|stance)\b.*\b(apart|wide|spread)\b"}


def _parts_named(clause: str, last: list[str]) -> list[str]:
    found: list[str] = []
    for kind, words in KIND_WORDS.items():
        if kind == "torso":
            if re.search(rf"\b({words})\b", clause):
                found.append("torso")
            continue
        both = re.search(rf"\b(both|the two|two)\b[^,]*\b({words})\b", clause)
        sides = re.findall(rf"\b(left|right)\s+(?:{words})\b", clause)
        if both:
            found += [f"left_{kind}", f"right_{kind}"]
        found += [f"{s}_{kind}" for s in sides]
    one = re.search(r"\b(the )?(left|right) one\b", clause)
    if one and last:   # "..., while the right one ..." = the same kind as the clause before
        kind = last[0].split("_")[-1]
        if kind in ("arm", "leg"):
            found.append(f"{one.group(2)}_{kind}")
    return list(dict.fromkeys(found))


def _states(part: str, clause: str) -> list[str]:
    kind = part.split("_")[-1]
    if kind == "leg":
        said = {k for k, p in LEG_WORDS.items() if re.search(p, clause)}
        shape = [s for s in ("straight", "bent") if s in said]
        state = LEG_STATE.get((shape[0], "raised" in said)) if len(shape) == 1 else None
        return [state] if state else []
    return [state for pattern, state in STATE_WORDS[kind] if re.search(pattern, clause)]


def claims(text: str) -> tuple[set[tuple[str, str]], set[str]]:
    """(part, state) pairs and relations a text asserts (left/right = the person's own)."""
    states: set[tuple[str, str]] = set()
    relations: set[str] = set()
    last: list[str] = []
    for sentence in re.split(r"[.;!?]", text.lower()):
        for name, pattern in RELATION_WORDS.items():
            if re.search(pattern, sentence) and not NEGATION.search(sentence):
                relations.add(name)
        for clause in SPLIT.split(sentence):
            if not clause.strip() or NEGATION.search(clause):
                continue
            parts = _parts_named(clause, last)
            if not parts:
                continue
            last = parts
            if any(re.search(RELATION_WORDS[r], clause) for r in RELATION_WORDS):
                continue   # "the hands are together" states no arm state
            for part in parts:
                states.update((part, s) for s in _states(part, clause))
    return states, relations


def check_rewrite(text: str, draft_facts: list[dict], keypoints, width: int, height: int,
                  min_score: float, rules: pc.Rules = pc.DEFAULT_RULES
                  ) -> tuple[Optional[bool], dict[str, Any]]:
    """(verified, reasons): every draft fact kept, no claim contradicted by the geometry."""
    said, rels = claims(text)
    missing = [f for f in draft_facts
               if ("relation" in f and f["relation"] not in rels)
               or ("part" in f and (f["part"], f["state"]) not in said)]
    truths = pc.state_truths(keypoints, width, height, min_score, rules)
    contradict = sorted(f"{p}: {s}" for p, s in said if truths.get(p, {}).get(s) is False)
    agree = sorted(f"{p}: {s}" for p, s in said if truths.get(p, {}).get(s) is True)
    reasons = {"agree": agree, "contradict": contradict,
               "missing": [f.get("relation") or f"{f['part']}: {f['state']}" for f in missing]}
    return (not missing and not contradict), reasons
