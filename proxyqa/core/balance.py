"""The blind baseline and the answer balancing that defeats it (docs/dataset.md).

Pure Python on small row dicts (`task`, `video_id`, `question`, `answer`, `choices`), so the
commit step (pipeline), the dataset card (trainer) and bench/blind_baseline.py share one
definition.

Blind baseline: a model that never sees the images answers a multiple-choice row with the
answer most common, among rows of the OTHER videos, for the same masked question text
(numbers and boxes masked); answers tied for most common earn a fraction (1 / number
tied). A text no other video asks falls back to the task's most common answer in the other
videos, or to a blind guess (1 / choices), whichever scores more, so the figure is an upper
bound of both usual fallbacks. It is compared with chance: the mean of 1 / len(choices).

Balancing drops the fewest rows, greedily, until the blind accuracy of every answer kind
(`answer_kind`: a task, and separately its two-choice rows such as up/down) is at most
chance + `max_excess`. Only rows marked droppable are dropped (an incremental run's carried
rows count but stay).
"""
from __future__ import annotations

import hashlib
import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_BOX = re.compile(r"\[[^\[\]]*\]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def mask_question(text: str) -> str:
    """The question with boxes and numbers masked: what a text-only model keys on."""
    return _NUMBER.sub("#", _BOX.sub("[box]", text or ""))


def answer_kind(task: str, choices: Sequence[str] | None) -> str | None:
    """The group a blind-baseline target applies to; None for free-form rows (no choices).
    Two-choice rows (up/down, forward/reverse, ...) form their own kind."""
    if not choices:
        return None
    if len(choices) == 2:
        return f"{task}:{'/'.join(sorted(choices))}"
    return task


@dataclass
class KindStats:
    rows: int
    chance: float
    blind: float

    @property
    def delta(self) -> float:
        return self.blind - self.chance


def _mode_credit(counts: dict[str, int], answer: str) -> float | None:
    """Credit of predicting the most common answer of `counts` (fractional on ties)."""
    if not counts:
        return None
    top = max(counts.values())
    if top <= 0:
        return None
    tied = [a for a, n in counts.items() if n == top]
    return 1.0 / len(tied) if answer in tied else 0.0


class _Kind:
    """The rows of one answer kind, as counts per (masked question, answer, video)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.chance = sum(1.0 / len(r["choices"]) for r in rows) / max(len(rows), 1)
        self.groups: dict[str, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
        self.prior: dict[tuple[str, str], int] = defaultdict(int)     # (answer, video) -> rows
        for r in rows:
            self.groups[r["_key"]][(r["answer"], r["video_id"])] += 1
            self.prior[(r["answer"], r["video_id"])] += 1
        self.inv_choices = {key: defaultdict(list) for key in self.groups}
        for r in rows:
            self.inv_choices[r["_key"]][(r["answer"], r["video_id"])].append(1.0 / len(r["choices"]))

    def _prior_credit(self, answer: str, video: str) -> float:
        totals: Counter = Counter()
        for (a, v), n in self.prior.items():
            if v != video:
                totals[a] += n
        return _mode_credit(totals, answer) or 0.0

    def group_credit(self, key: str, counts: dict[tuple[str, str], int] | None = None,
                     prior_cache: dict | None = None) -> float:
        counts = self.groups[key] if counts is None else counts
        totals: Counter = Counter()
        for (a, _), n in counts.items():
            totals[a] += n
        credit = 0.0
        for (a, v), n in counts.items():
            if n <= 0:
                continue
            others = {b: totals[b] - counts.get((b, v), 0) for b in totals}
            c = _mode_credit({b: m for b, m in others.items() if m > 0}, a)
            if c is None:   # no other video asks this: the better of two fallbacks
                if prior_cache is not None and (a, v) in prior_cache:
                    prior = prior_cache[(a, v)]
                else:
                    prior = self._prior_credit(a, v)
                    if prior_cache is not None:
                        prior_cache[(a, v)] = prior
                guesses = self.inv_choices[key].get((a, v)) or [0.0]
                c = max(prior, sum(guesses) / len(guesses))
            credit += n * c
        return credit

    def credit(self) -> float:
        cache: dict = {}
        return sum(self.group_credit(k, prior_cache=cache) for k in self.groups)


def _with_keys(rows: Iterable[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = defaultdict(list)
    for i, r in enumerate(rows):
        kind = answer_kind(r["task"], r.get("choices"))
        if kind is not None and r.get("answer") is not None:
            kinds[kind].append({**r, "_key": mask_question(r["question"]), "_i": i})
    return kinds


def blind_baseline(rows: Iterable[dict]) -> dict[str, KindStats]:
    """Blind-baseline accuracy and chance per task and per two-choice kind (module doc).
    Keys: the task name (all its multiple-choice rows) and `task:a/b` for two-choice kinds."""
    rows = list(rows)
    out: dict[str, KindStats] = {}
    by_task: dict[str, list[dict]] = defaultdict(list)
    for kind, members in sorted(_with_keys(rows).items()):
        k = _Kind(members)
        out[kind] = KindStats(len(members), k.chance, k.credit() / len(members))
        by_task[members[0]["task"]].extend(members)
    for task, members in by_task.items():
        if task in out and out[task].rows == len(members):
            continue
        # A task with several kinds: its figure is the row-weighted mean of its kinds'.
        parts = [(kind, s) for kind, s in out.items() if kind.split(":")[0] == task]
        n = sum(s.rows for _, s in parts)
        out[task] = KindStats(n, sum(s.chance * s.rows for _, s in parts) / n,
                              sum(s.blind * s.rows for _, s in parts) / n)
    return dict(sorted(out.items()))


def _order(sample_id: str) -> str:
    return hashlib.sha256(sample_id.encode()).hexdigest()


def plan_drops(rows: Sequence[dict], max_excess: float = 0.03,
               droppable: Sequence[bool] | None = None, max_rounds: int = 8) -> set[int]:
    """Indices of `rows` to drop so that every answer kind's blind accuracy is at most its
    chance + max_excess, dropping as few rows as the greedy rule finds.

    Each step drops the one row whose removal lowers the kind's (credit - target * rows) the
    most: a row of an over-represented answer in some masked question; rows of one
    (question, answer, video) are interchangeable, the one with the smallest hash of its
    sample_id goes first, so the same rows give the same drops.
    """
    drops: set[int] = set()
    for members in _with_keys(rows).values():
        pool = defaultdict(list)   # (key, answer, video) -> droppable row indices
        for r in members:
            if droppable is None or droppable[r["_i"]]:
                pool[(r["_key"], r["answer"], r["video_id"])].append(r["_i"])
        for cands in pool.values():
            cands.sort(key=lambda i: _order(str(rows[i].get("sample_id", i))), reverse=True)
        alive = list(members)
        for _ in range(max_rounds):
            kind = _Kind(alive)
            target = kind.chance + max_excess
            excess = kind.credit() - target * len(alive)
            if excess <= 1e-9:
                break
            dropped_now = _greedy(kind, pool, target, excess, drops)
            if not dropped_now:
                break
            alive = [r for r in alive if r["_i"] not in drops]
    return drops


def _greedy(kind: _Kind, pool: dict, target: float, excess: float, drops: set[int]) -> int:
    """Drops rows while the objective (credit - target * rows) stays positive; the prior
    fallback is held at its value at the start (the caller re-checks and runs again)."""
    cache: dict = {}
    credit = {key: kind.group_credit(key, prior_cache=cache) for key in kind.groups}

    def best(key: str) -> tuple[float, tuple | None]:
        counts = kind.groups[key]
        answers = Counter()
        for (a, _), n in counts.items():
            answers[a] += n
        top = max(answers.values()) if answers else 0
        best_gain, best_cell = -1.0, None
        for (a, v), n in sorted(counts.items()):
            if n <= 0 or answers[a] < top - 1 or not pool.get((key, a, v)):
                continue
            trial = dict(counts)
            trial[(a, v)] = n - 1
            gain = credit[key] - kind.group_credit(key, trial, cache) - target
            if gain > best_gain + 1e-12:
                best_gain, best_cell = gain, (a, v)
        return best_gain, best_cell

    heap = []
    for key in kind.groups:
        gain, cell = best(key)
        if cell is not None and gain > 0:
            heapq.heappush(heap, (-gain, key, cell))
    dropped = 0
    while heap and excess > 1e-9:
        neg, key, cell = heapq.heappop(heap)
        gain, now = best(key)                   # recheck: the group may have changed
        if now is None or gain <= 0:
            continue
        if abs(gain + neg) > 1e-9 or now != cell:
            heapq.heappush(heap, (-gain, key, now))
            continue
        a, v = cell
        i = pool[(key, a, v)].pop()
        drops.add(i)
        kind.groups[key][cell] -= 1
        kind.prior[cell] -= 1
        new_credit = kind.group_credit(key, prior_cache=cache)
        excess -= credit[key] - new_credit - target
        credit[key] = new_credit
        dropped += 1
        gain, cell = best(key)
        if cell is not None and gain > 0:
            heapq.heappush(heap, (-gain, key, cell))
    return dropped
