"""Captions written from geometry (PoseScript / PoseFix style): pose descriptions and pose
differences in natural English, built only from posecode facts that are true with margin.

A caption is a list of *facts* rendered as sentences. Facts come from the public posecode
functions (`part_states`, `state_truths`, `relations`, `joint_motion`, `most_moved`), so every
reliability rule of posecodes (score gate, margins, foreshortening guards, any abstention
added later) applies to captions too: a part posecodes will not label is never described.

Facts (JSON-able dicts, stored in a row's `answer_struct["facts"]`):
- `{"part": "left_arm", "state": "bent at the elbow"}`   a body-part state (posecodes.PART_STATES)
- `{"relation": "hands_together"}` / `{"relation": "feet_apart"}`   a true relation
- `{"relation": "left_hand_higher"}` (hand/foot, left/right)  a true height (description_match)
- `{"motion": "left_hand", "direction": "up"}`           image direction, relative and absolute
- `{"most_moved": "left_hand"}`                          relative to the hips, by the margin
- `{"part": "left_arm", "from": "...", "to": "..."}`     a state change between two frames

Left/right are the person's own; up/down are image directions. Rendering is deterministic in
a seed: every fact and connective has several phrasings, and `Voice` picks one per (seed,
clause), so the same row always reads the same while the dataset varies.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from proxyqa.stages import posecodes as pc

Fact = dict

SIDES = ("left", "right")
# Body parts in caption order; arms and legs are paired so "both ..." can aggregate them.
PAIRS = {"arm": ("left_arm", "right_arm"), "leg": ("left_leg", "right_leg")}
RELATIONS = ("hands_together", "feet_apart")
MOTION_PAIRS = {"hand": ("left_hand", "right_hand"), "foot": ("left_foot", "right_foot")}
CAPTION_MOTION_PARTS = ("head", "left_hand", "right_hand", "left_foot", "right_foot")

# Phrasings of one part's state after its subject ("The left arm ..."), singular and plural.
SINGULAR: dict[str, tuple[str, ...]] = {
    "raised above the head": ("is raised above the head", "is lifted above the head",
                              "is held up above the head"),
    "stretched out away from the body": ("is stretched out away from the body",
                                         "is extended out away from the body",
                                         "is held straight out from the body"),
    "hanging down by the side": ("hangs down by the side", "hangs straight down at the side",
                                 "rests straight down by the side"),
    "bent at the elbow": ("is bent at the elbow", "is flexed at the elbow",
                          "is bent at the elbow joint"),
    "straight": ("is straight", "is held straight", "is extended straight"),
    "bent at the knee": ("is bent at the knee", "is flexed at the knee", "bends at the knee"),
    # No "is lifted / raised with the knee bent": the audit by eye read it as a leg lifted off
    # the ground, which is false for a seated person (the state is a thigh flexed against the
    # torso: a knee lift, a seated or crouching person alike).
    "bent with the thigh raised": ("is bent with the thigh raised", "is bent at the hip and knee",
                                   "is flexed at the hip and knee"),
    "held out straight with the thigh raised": ("is held out straight with the thigh raised",
                                                "is straight with the thigh raised",
                                                "is extended with the thigh raised"),
}
PLURAL: dict[str, tuple[str, ...]] = {
    "raised above the head": ("are raised above the head", "are lifted above the head",
                              "are held up above the head"),
    "stretched out away from the body": ("are stretched out away from the body",
                                         "are extended out away from the body",
                                         "are held straight out from the body"),
    "hanging down by the side": ("hang down by the sides", "hang straight down at the sides",
                                 "rest straight down by the sides"),
    "bent at the elbow": ("are bent at the elbows", "are flexed at the elbows",
                          "are bent at the elbow joints"),
    "straight": ("are straight", "are held straight", "are extended straight"),
    "bent at the knee": ("are bent at the knees", "are flexed at the knees", "bend at the knees"),
    "bent with the thigh raised": ("are bent with the thighs raised",
                                   "are bent at the hips and knees",
                                   "are flexed at the hips and knees"),
    "held out straight with the thigh raised": ("are held out straight with the thighs raised",
                                                "are straight with the thighs raised",
                                                "are extended with the thighs raised"),
}
TORSO: dict[str, tuple[str, ...]] = {
    "upright": ("The torso is upright", "The upper body is held upright",
                "The person keeps the torso upright"),
    "leaning": ("The torso is leaning", "The upper body is tilted", "The torso is tilted over"),
    "nearly horizontal": ("The torso is nearly horizontal", "The upper body is almost horizontal",
                          "The torso is close to horizontal"),
}
RELATION_TEXT: dict[str, tuple[str, ...]] = {
    "hands_together": ("The hands are close together", "The hands are held together",
                       "The two hands are near each other"),
    "feet_apart": ("The feet are wide apart", "The feet are set far apart",
                   "The feet are spread wide apart"),
}
# Which hand (foot) is the higher one in the image (posecodes.heights): description_match only.
HEIGHTS = ("left_hand_higher", "right_hand_higher", "left_foot_higher", "right_foot_higher")
for _side, _other in (("left", "right"), ("right", "left")):
    for _kind in ("hand", "foot"):
        RELATION_TEXT[f"{_side}_{_kind}_higher"] = (
            f"The {_side} {_kind} is higher than the {_other} {_kind}",
            f"The {_side} {_kind} is held higher than the {_other} one",
            f"The {_other} {_kind} is lower than the {_side} {_kind}")
# Arm states whose hand heights are known in order (a bent arm's hand can be anywhere): one
# arm ranked above the other already says which hand is higher, so that height is not stated.
ARM_HEIGHT_RANK = {"raised above the head": 2, "stretched out away from the body": 1,
                   "hanging down by the side": 0}
# Second clause of a mixed pair: "The left arm X, while the right arm Y."
CONNECTIVES = (", while the right {noun} ", ", and the right {noun} ", ", whereas the right {noun} ",
               ", while the right one ")
MOVES = {"up": ("moves up", "rises", "goes up"), "down": ("moves down", "drops", "goes down")}
MOVES_PLURAL = {"up": ("move up", "rise", "go up"), "down": ("move down", "drop", "go down")}
MOST_MOVED = ("Relative to the hips, the {part} moves the most",
              "The {part} moves more than any other body part, relative to the hips",
              "The largest movement relative to the hips is made by the {part}")
CHANGE = ("The {part} goes from {a} to {b}", "The {part} changes from {a} to {b}",
          "The {part} shifts from {a} to {b}")
# How a state reads after "from"/"to" (the state names of posecodes read well already).
STATE_NOUN = {s: s for s in SINGULAR}
STATE_NOUN.update({s: s for s in TORSO})
MOTION_WORDS = {p: p.replace("_", " ") for p in pc.MOTION_PARTS}
MOTION_NOUN = {"hand": "hands", "foot": "feet"}


class Voice:
    """Deterministic phrasing: one choice per (seed, clause key)."""

    def __init__(self, seed: str):
        self.seed = seed

    def pick(self, key: str, options: Sequence[str]) -> str:
        digest = hashlib.sha256(f"{self.seed}|{key}".encode()).digest()
        return options[int.from_bytes(digest[:4], "little") % len(options)]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


# ---- facts -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoseFacts:
    """The facts of one frame: part -> state (true with margin, the only true state of that part)
    and the relations that are true with margin."""

    states: dict[str, str]
    relations: tuple[str, ...]

    def as_list(self) -> list[Fact]:
        facts: list[Fact] = [{"part": p, "state": self.states[p]} for p in _part_order()
                             if p in self.states]
        return facts + [{"relation": r} for r in self.relations]

    def __len__(self) -> int:
        return len(self.states) + len(self.relations)


def _part_order() -> list[str]:
    return ["torso", *PAIRS["arm"], *PAIRS["leg"]]


def pose_facts(keypoints, width: int, height: int, min_score: float,
               rules: pc.Rules = pc.DEFAULT_RULES) -> PoseFacts:
    """The facts a caption may state about one frame (only definite ones)."""
    states = pc.part_states(keypoints, width, height, min_score, rules)
    rel = pc.relations(keypoints, width, height, min_score, rules)
    return PoseFacts(states, tuple(r for r in RELATIONS if rel.get(r) is True))


def definitely_false(keypoints, width: int, height: int, min_score: float,
                     rules: pc.Rules = pc.DEFAULT_RULES) -> dict[str, list[str]]:
    """part -> the states that are False with margin (usable as hard negatives)."""
    truths = pc.state_truths(keypoints, width, height, min_score, rules)
    return {part: [s for s, v in states.items() if v is False] for part, states in truths.items()}


# ---- pose descriptions -------------------------------------------------------------------------

def _pair_clause(kind: str, left: Optional[str], right: Optional[str], voice: Voice,
                 key: str) -> Optional[str]:
    noun = kind
    if left is None and right is None:
        return None
    if left is not None and left == right:
        return f"both {noun}s " + voice.pick(f"{key}:both:{left}", PLURAL[left])
    if left is None or right is None:
        side, state = ("left", left) if left is not None else ("right", right)
        return f"the {side} {noun} " + voice.pick(f"{key}:{side}:{state}", SINGULAR[state])
    first = f"the left {noun} " + voice.pick(f"{key}:left:{left}", SINGULAR[left])
    conn = voice.pick(f"{key}:conn", CONNECTIVES).format(noun=noun)
    return first + conn + voice.pick(f"{key}:right:{right}", SINGULAR[right])


def describe_pose(states: dict[str, str], relations: Sequence[str], voice: Voice) -> str:
    """Sentences in body order: torso, arms (+ hands together), legs (+ feet apart)."""
    sentences = []
    if "torso" in states:
        sentences.append(voice.pick(f"torso:{states['torso']}", TORSO[states["torso"]]) + ".")
    for kind, (lp, rp) in PAIRS.items():
        clause = _pair_clause(kind, states.get(lp), states.get(rp), voice, kind)
        if clause:
            sentences.append(_sentence(clause))
        rel = "hands_together" if kind == "arm" else "feet_apart"
        if rel in relations:
            sentences.append(voice.pick(rel, RELATION_TEXT[rel]) + ".")
        limb = "hand" if kind == "arm" else "foot"
        sentences += [voice.pick(r, RELATION_TEXT[r]) + "." for r in relations
                      if r in HEIGHTS and f"_{limb}_" in r]
    return " ".join(sentences)


def height_facts(keypoints, width: int, height: int, min_score: float, states: dict[str, str],
                 rules: pc.Rules = pc.DEFAULT_RULES) -> tuple[str, ...]:
    """The true `posecodes.heights` facts that the arm states do not already say."""
    ranks = [ARM_HEIGHT_RANK.get(states.get(p)) for p in PAIRS["arm"]]
    implied = None not in ranks and ranks[0] != ranks[1]
    return tuple(r for r, v in pc.heights(keypoints, width, height, min_score, rules).items()
                 if v and not (implied and "_hand_" in r))


def facts_of(states: dict[str, str], relations: Sequence[str]) -> list[Fact]:
    return PoseFacts(dict(states), tuple(relations)).as_list()


# ---- pose differences --------------------------------------------------------------------------

@dataclass(frozen=True)
class ChangeFacts:
    directions: dict[str, str]           # motion part -> "up" | "down"
    most_moved: Optional[str]
    changes: dict[str, tuple[str, str]]  # part -> (state in Image 1, state in Image 2)

    def as_list(self) -> list[Fact]:
        facts: list[Fact] = []
        if self.most_moved:
            facts.append({"most_moved": self.most_moved})
        facts += [{"motion": p, "direction": self.directions[p]} for p in CAPTION_MOTION_PARTS
                  if p in self.directions]
        facts += [{"part": p, "from": a, "to": b} for p, (a, b) in self.changes.items()]
        return facts

    def __len__(self) -> int:
        return len(self.directions) + len(self.changes) + (1 if self.most_moved else 0)


def change_facts(kps_a, kps_b, width: int, height: int, min_score: float,
                 rules: pc.Rules = pc.DEFAULT_RULES) -> ChangeFacts:
    motion = pc.joint_motion(kps_a, kps_b, width, height, min_score, rules)
    directions = {p: motion[p].vertical for p in CAPTION_MOTION_PARTS
                  if p in motion and motion[p].vertical}
    top = pc.most_moved(motion, rules)
    sa = pc.part_states(kps_a, width, height, min_score, rules)
    sb = pc.part_states(kps_b, width, height, min_score, rules)
    changes = {p: (sa[p], sb[p]) for p in _part_order() if p in sa and p in sb and sa[p] != sb[p]}
    return ChangeFacts(directions, top, changes)


def _motion_pair_clause(kind: str, left: Optional[str], right: Optional[str], voice: Voice,
                        key: str) -> Optional[str]:
    if left is None and right is None:
        return None
    if left is not None and left == right:
        return f"both {MOTION_NOUN[kind]} " + voice.pick(f"{key}:both:{left}", MOVES_PLURAL[left])
    if left is None or right is None:
        side, d = ("left", left) if left is not None else ("right", right)
        return f"the {side} {kind} " + voice.pick(f"{key}:{side}:{d}", MOVES[d])
    conn = voice.pick(f"{key}:conn", CONNECTIVES).format(noun=kind)
    return (f"the left {kind} " + voice.pick(f"{key}:left:{left}", MOVES[left]) + conn
            + voice.pick(f"{key}:right:{right}", MOVES[right]))


def describe_change(facts: ChangeFacts, voice: Voice) -> str:
    """Most moved part, then up/down of head, hands, feet, then state changes (body order)."""
    sentences = []
    if facts.most_moved:
        sentences.append(voice.pick("most", MOST_MOVED).format(
            part=MOTION_WORDS[facts.most_moved]) + ".")
    if "head" in facts.directions:
        sentences.append("The head " + voice.pick(f"head:{facts.directions['head']}",
                                                  MOVES[facts.directions["head"]]) + ".")
    for kind, (lp, rp) in MOTION_PAIRS.items():
        clause = _motion_pair_clause(kind, facts.directions.get(lp), facts.directions.get(rp),
                                     voice, f"m{kind}")
        if clause:
            sentences.append(_sentence(clause))
    for part, (a, b) in facts.changes.items():
        sentences.append(voice.pick(f"chg:{part}", CHANGE).format(
            part=part.replace("_", " "), a=STATE_NOUN[a], b=STATE_NOUN[b]) + ".")
    return " ".join(sentences)


# ---- length-matched phrasing (the match tasks' options) ---------------------------------------
#
# A multiple-choice question must not be answerable by the options' lengths ("pick the
# shortest"). Each option is rendered with its own phrasing choices so that all options come as
# close as possible to one common length, chosen from the SET of options (never from which one
# is true): the phrasings still vary, and lengths carry (almost) no signal.

class _Recorder(Voice):
    """Picks the first phrasing and records every (key, options) asked, in order."""

    def __init__(self) -> None:
        super().__init__("")
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    def pick(self, key: str, options: Sequence[str]) -> str:
        self.asked.append((key, tuple(options)))
        return options[0]


class _Fixed(Voice):
    """Picks the given phrasing per key (the seeded pick for keys not given)."""

    def __init__(self, seed: str, chosen: dict[str, int]):
        super().__init__(seed)
        self.chosen = chosen

    def pick(self, key: str, options: Sequence[str]) -> str:
        if key in self.chosen:
            return options[self.chosen[key]]
        return super().pick(key, options)


def _sums(deltas: list[list[int]]) -> list[set[int]]:
    """suffix[k]: every total of one delta per clause k.. (suffix[len] = {0})."""
    suffix = [{0}]
    for ds in reversed(deltas):
        suffix.append({d + s for d in ds for s in suffix[-1]})
    return suffix[::-1]


def matched_texts(renders: Sequence, voice: Voice) -> list[str]:
    """Render each option (`render(voice) -> text`) with phrasings chosen so that the options'
    lengths are as close as possible to one common target; among the phrasings that reach it,
    the voice's seeded preference wins (the text still varies with the seed)."""
    plans = []
    for render in renders:
        rec = _Recorder()
        base = len(render(rec))
        deltas = [[len(o) - len(opts[0]) for o in opts] for _, opts in rec.asked]
        plans.append((rec.asked, base, deltas, _sums(deltas)))
    reach = [{base + s for s in suffix[0]} for _, base, _, suffix in plans]
    # The target depends only on the set of options: the length all can come closest to.
    target = min(sorted(set().union(*reach)),
                 key=lambda t: max(min(abs(a - t) for a in r) for r in reach))
    texts = []
    for render, (asked, base, deltas, suffix), r in zip(renders, plans, reach):
        goal = min(sorted(r), key=lambda a: abs(a - target)) - base
        chosen: dict[str, int] = {}
        for k, (key, opts) in enumerate(asked):
            start = opts.index(voice.pick(key, opts))
            for i in [(start + j) % len(opts) for j in range(len(opts))]:
                if goal - deltas[k][i] in suffix[k + 1]:
                    chosen[key] = i
                    goal -= deltas[k][i]
                    break
        texts.append(render(_Fixed(voice.seed, chosen)))
    return texts
