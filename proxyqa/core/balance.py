"""The blind baseline and the answer balancing that defeats it (docs/dataset.md).

Pure Python on small row dicts (`task`, `video_id`, `question`, `answer`, `choices`), so the
commit step (pipeline), the dataset card (trainer) and bench/blind_baseline.py share one
definition; `plan_drops_table` is plan_drops over Arrow columns (commit: an incremental
run's carried rows without a dict per row), tested against it.

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
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
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
        self.groups: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        self.tot: Counter = Counter()                                  # answer -> rows
        self.per_video: dict[str, Counter] = defaultdict(Counter)     # video -> answer -> rows
        guesses: dict[tuple, list[float]] = defaultdict(list)
        for r in rows:
            cell = (r["answer"], r["video_id"])
            counts = self.groups[r["_key"]]
            counts[cell] = counts.get(cell, 0) + 1
            self.tot[r["answer"]] += 1
            self.per_video[r["video_id"]][r["answer"]] += 1
            guesses[(r["_key"], *cell)].append(1.0 / len(r["choices"]))
        self.guess_sum = {k: sum(v) for k, v in guesses.items()}
        self.guess_n = Counter({k: len(v) for k, v in guesses.items()})
        self.guess = {k: self.guess_sum[k] / n for k, n in self.guess_n.items()}
        self.chance_sum = sum(self.guess_sum.values())
        self.n = len(rows)

    @property
    def chance(self) -> float:
        return self.chance_sum / max(self.n, 1)

    def remove(self, key: str, answer: str, video: str, inv: float) -> None:
        """One row fewer (1 / its choices = `inv`): every count, mean and sum the credits and
        the chance read, as _Kind over the remaining rows has them. The chance moves too:
        dropping 4-choice rows from a kind mixing 3 and 4 choices raises it, and a greedy
        aiming at the first chance stopped 0.001 over the real target."""
        self.groups[key][(answer, video)] -= 1
        self.tot[answer] -= 1
        self.per_video[video][answer] -= 1
        g = (key, answer, video)
        self.guess_sum[g] -= inv
        self.guess_n[g] -= 1
        self.guess[g] = self.guess_sum[g] / self.guess_n[g] if self.guess_n[g] else 0.0
        self.chance_sum -= inv
        self.n -= 1

    def prior_credit(self, answer: str, video: str, minus: tuple[str, str] | None = None) -> float:
        """Credit of the task-level fallback: the most common answer in the other videos."""
        own = self.per_video.get(video, {})
        totals = {}
        for a, n in self.tot.items():
            m = n - own.get(a, 0)
            if minus is not None and minus[0] == a and minus[1] != video:
                m -= 1
            if m > 0:
                totals[a] = m
        return _mode_credit(totals, answer) or 0.0

    def group_credit(self, key: str, counts: dict[tuple[str, str], int] | None = None,
                     minus: tuple[str, str] | None = None) -> float:
        counts = self.groups[key] if counts is None else counts
        totals: Counter = Counter()
        for (a, _), n in counts.items():
            totals[a] += n
        credit = 0.0
        for (a, v), n in counts.items():
            if n <= 0:
                continue
            others = {b: m - counts.get((b, v), 0) for b, m in totals.items()}
            c = _mode_credit({b: m for b, m in others.items() if m > 0}, a)
            if c is None:   # no other video asks this: the better of two fallbacks
                c = max(self.prior_credit(a, v, minus), self.guess.get((key, a, v), 0.0))
            credit += n * c
        return credit

    def single_video(self, key: str) -> bool:
        return len({v for (_, v), n in self.groups[key].items() if n > 0}) <= 1

    def credit(self) -> float:
        return sum(self.group_credit(k) for k in self.groups)


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
               droppable: Sequence[bool] | None = None) -> set[int]:
    """Indices of `rows` to drop so that every answer kind's blind accuracy is at most its
    chance + max_excess, dropping as few rows as the greedy rule finds.

    Each step drops the one row whose removal lowers the kind's (credit - target * rows) the
    most, exactly (its masked question's credit and the fallback credits of texts only one
    video asks); rows of one (question, answer, video) are interchangeable, the one with the
    smallest hash of its sample_id goes first, so the same rows give the same drops.
    """
    drops: set[int] = set()
    # Videos go by a content-derived name (their smallest sample_id of the task) instead of
    # video_id, which hashes the URI: the same clips at other paths (local vs S3) get the same
    # drops. Per task, so that a task's drops depend on its rows alone: commit plans one task
    # at a time (pipeline/dataset.py) and gets what one call over all rows gets.
    name: dict[tuple[str, str], str] = {}
    for r in rows:
        sid, key = str(r.get("sample_id", "")), (r["task"], r["video_id"])
        name[key] = min(name.get(key, sid), sid)
    # ... and in sample_id order: the greedy's ties go to the first candidate met, so the
    # order rows arrive in (writer batches, compaction groups) must not matter.
    order = sorted(range(len(rows)), key=lambda i: str(rows[i].get("sample_id", i)))
    if droppable is not None:
        droppable = [droppable[i] for i in order]
    rows = [{**rows[i], "video_id": name[(rows[i]["task"], rows[i]["video_id"])]} for i in order]
    for members in _with_keys(rows).values():
        pool = defaultdict(list)   # (key, answer, video) -> droppable row indices
        for r in members:
            if droppable is None or droppable[r["_i"]]:
                pool[(r["_key"], r["answer"], r["video_id"])].append(r["_i"])
        for cands in pool.values():
            cands.sort(key=lambda i: _order(str(rows[i].get("sample_id", i))), reverse=True)
        inv = {r["_i"]: 1.0 / len(r["choices"]) for r in members}
        _greedy(_Kind(members), pool, max_excess, inv.__getitem__, drops)
    return {order[i] for i in drops}


def _greedy(kind: _Kind, pool: dict, max_excess: float, inv: Callable[[int], float],
            drops: set[int]) -> None:
    """Drops rows (from `pool`, the last candidate of a cell first) while the kind's blind
    credit exceeds its chance + max_excess, both summed over the rows left. `inv(i)`:
    1 / the number of choices of row i."""
    credit = {key: kind.group_credit(key) for key in kind.groups}
    fallback = {key for key in kind.groups if kind.single_video(key)}

    def excess() -> float:
        return sum(credit.values()) - kind.chance_sum - max_excess * kind.n
    while excess() > 1e-9:
        best_gain, best = 0.0, None
        for key, counts in kind.groups.items():
            for (a, v), n in sorted(counts.items()):
                if n <= 0 or not pool.get((key, a, v)):
                    continue
                trial = dict(counts)
                trial[(a, v)] = n - 1
                delta = credit[key] - kind.group_credit(key, trial, minus=(a, v))
                for other in sorted(fallback - {key}):
                    delta += credit[other] - kind.group_credit(other, minus=(a, v))
                # excess falls by the credit lost less the row's chance and its share
                gain = delta - inv(pool[(key, a, v)][-1]) - max_excess
                if gain > best_gain + 1e-12:
                    best_gain, best = gain, (key, a, v)
        if best is None:
            return            # only non-droppable rows left to drop: the target is not met
        key, a, v = best
        row = pool[best].pop()
        drops.add(row)
        kind.remove(key, a, v, inv(row))
        if kind.single_video(key):
            fallback.add(key)
        for k in {key} | fallback:
            credit[k] = kind.group_credit(k)


def _ranks(dictionary):
    """Each value's rank in string order (Arrow sorts UTF-8 bytes: Python's str order)."""
    import numpy as np
    import pyarrow.compute as pc

    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def plan_drops_table(table, max_excess: float = 0.03, droppable=None) -> set[int]:
    """plan_drops over an Arrow table (columns sample_id, video_id, task, question, answer,
    choices), the same drops: the rows are read as columns and integer codes, and the
    greedy runs over numpy arrays (balance_greedy.KindGreedy: counts per (question, answer,
    video) cell, cached gains), so the rows an incremental run carries (never droppable)
    cost a few dozen bytes each. `droppable`: a bool per row (None: all). Every sample_id
    must be set."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from proxyqa.core.balance_greedy import KindGreedy

    n = table.num_rows
    drops: set[int] = set()
    if not n:
        return drops
    if table["sample_id"].null_count:
        raise ValueError("plan_drops_table: rows without a sample_id")
    droppable = np.ones(n, bool) if droppable is None else np.asarray(droppable, bool)
    sid = table["sample_id"]
    # Videos by their smallest sample_id of the task (plan_drops' names).
    tv = pc.binary_join_element_wise(table["task"], table["video_id"], "\x00")
    named = pa.table({"tv": tv, "sid": sid}).group_by("tv", use_threads=False).aggregate([("sid", "min")])
    name = named["sid_min"].take(pc.index_in(tv, value_set=named["tv"]))
    del tv, named
    # Answer kinds (answer_kind over the distinct (task, two choices) there are).
    length = pc.fill_null(pc.list_value_length(table["choices"]), 0).to_numpy(zero_copy_only=False)
    two = length == 2
    first = pc.list_element(pc.list_slice(table["choices"], 0, 1), 0)
    second = pc.list_element(pc.list_slice(table["choices"], 1, 2), 0)
    label = pc.coalesce(pc.if_else(pa.array(two), pc.binary_join_element_wise(
        table["task"], first, second, "\x00"), table["task"]), table["task"])
    coded = pc.dictionary_encode(label).combine_chunks()
    kinds: list[str | None] = []        # per label: its kind (several labels, one kind)
    for text in coded.dictionary.to_pylist():
        task, *choices = text.split("\x00")
        kinds.append(answer_kind(task, choices if choices else ["", "", ""]))
    kind_code = coded.indices.to_numpy(zero_copy_only=False)
    useful = (length > 0) & pc.is_valid(table["answer"]).to_numpy(zero_copy_only=False)
    del first, second, label, coded, two
    # Masked questions, answers and names as codes. Each distinct masked text once (many
    # raw texts differ only in numbers and boxes), the raw texts a slice at a time.
    question = pc.dictionary_encode(table["question"]).combine_chunks()
    masked_code: dict[str, int] = {}
    raw_to_masked = np.empty(len(question.dictionary) + 1, np.int64)
    for lo in range(0, len(question.dictionary), 65536):
        for i, q in enumerate(question.dictionary.slice(lo, 65536).to_pylist(), lo):
            raw_to_masked[i] = masked_code.setdefault(mask_question(q), len(masked_code))
    raw_to_masked[-1] = masked_code.setdefault(mask_question(None), len(masked_code))
    del masked_code
    q_code = raw_to_masked.astype(np.int32)[pc.fill_null(question.indices, len(raw_to_masked) - 1).to_numpy()]
    del question, raw_to_masked
    answer = pc.dictionary_encode(table["answer"]).combine_chunks()
    a_rank = _ranks(answer.dictionary).astype(np.int32)[pc.fill_null(answer.indices, 0).to_numpy()]  # (null: not useful)
    names = pc.dictionary_encode(name).combine_chunks()
    v_rank = _ranks(names.dictionary).astype(np.int32)[names.indices.to_numpy(zero_copy_only=False)]
    inv = 1.0 / np.maximum(length, 1)
    del answer, names, name, length
    # In sample_id order (a stable sort, as plan_drops' sorted()).
    order = pc.sort_indices(sid).to_numpy()
    for kind in sorted({kinds[c] for c in set(kind_code[useful].tolist())} - {None}):
        of_kind = np.array([kinds[c] == kind for c in range(len(kinds))])
        members = order[of_kind[kind_code[order]] & useful[order]]
        # Groups numbered by first appearance (the reference's dict order).
        _, first_at, q_local = np.unique(q_code[members], return_index=True, return_inverse=True)
        renumber = np.empty(len(first_at), np.int64)
        renumber[np.argsort(first_at)] = np.arange(len(first_at))
        q_local = renumber[q_local]
        del first_at, renumber
        mine = droppable[members]
        # Rows of a cell go in the order of the hash of their sample_id (smallest first).
        hashes = np.empty(int(mine.sum()), "S32")
        at = 0
        mine_rows = members[mine]
        for lo in range(0, len(mine_rows), 65536):
            part = sid.take(pa.array(mine_rows[lo:lo + 65536])).to_pylist()
            hashes[at:at + len(part)] = [hashlib.sha256(str(x).encode()).digest() for x in part]
            at += len(part)
        greedy = KindGreedy(q_local, a_rank[members], v_rank[members], inv[members], mine, hashes,
                            max_excess)
        del q_local, hashes, mine_rows
        drops.update(members[greedy.run()].tolist())
    return drops
