"""Balancing, the blind baseline, templates and near-duplicate grouping (pure parts, no Ray)."""
from __future__ import annotations

import random

from proxyqa.core.balance import blind_baseline, mask_question, plan_drops
from proxyqa.core.config import SplitConfig
from proxyqa.pipeline.dataset import near_duplicate_groups, split_for_group
from proxyqa.stages import templates


def test_mask_question_hides_numbers_and_boxes():
    q = "Where is the left wrist of the person in the box [12, 30, 400, 999]? Image 2 of 4."
    assert mask_question(q) == "Where is the left wrist of the person in the box [box]? Image # of #."


def _skewed(n_videos: int = 30, seed: int = 0) -> list[dict]:
    """body_part_state-like rows where 'straight' dominates the right leg (the issue's prior)."""
    rng = random.Random(seed)
    rows = []
    states = ["straight", "bent at the knee", "bent with the thigh raised"]
    for v in range(n_videos):
        for j in range(4):
            part = rng.choice(["left leg", "right leg"])
            answer = "straight" if rng.random() < 0.7 else rng.choice(states[1:])
            choices = states[:]
            rng.shuffle(choices)
            rows.append({"sample_id": f"s{v}-{j}", "task": "body_part_state", "video_id": f"v{v}",
                         "question": f"Which option best describes the {part}?", "answer": answer,
                         "choices": choices})
    return rows


def test_balancing_meets_the_target_when_choice_counts_differ():
    # 3- and 4-choice questions in one kind (body_part_state asks both): dropping rows moves
    # the chance itself, and the target is judged on the rows that stay (a greedy that kept
    # the first chance stopped just over it on real clips).
    for seed in range(12):
        rng = random.Random(seed)
        rows = []
        for r in _skewed(n_videos=12, seed=seed):
            # The over-asked answer mostly on 3-choice rows: dropping them lowers the chance.
            if r["answer"] != "straight" or rng.random() < 0.2:
                r = {**r, "choices": r["choices"] + ["held out straight with the thigh raised"]}
            rows.append(r)
        drops = plan_drops(rows, max_excess=0.03)
        kept = [r for i, r in enumerate(rows) if i not in drops]
        after = blind_baseline(kept)["body_part_state"]
        assert after.blind <= after.chance + 0.03 + 1e-9, (seed, after)


def test_blind_baseline_sees_the_prior_and_balancing_removes_it():
    rows = _skewed()
    before = blind_baseline(rows)["body_part_state"]
    assert before.blind > before.chance + 0.2           # the text alone answers most rows
    drops = plan_drops(rows, max_excess=0.03)
    kept = [r for i, r in enumerate(rows) if i not in drops]
    after = blind_baseline(kept)["body_part_state"]
    assert after.blind <= after.chance + 0.03 + 1e-9
    # Only the over-represented answer is dropped, and far from all rows.
    assert {rows[i]["answer"] for i in drops} == {"straight"}
    assert len(kept) > len(rows) / 2
    assert plan_drops(rows, max_excess=0.03) == drops    # deterministic


def test_balancing_keeps_rows_that_are_not_droppable():
    rows = _skewed()
    fixed = [r["video_id"] in {f"v{i}" for i in range(10)} for r in rows]
    drops = plan_drops(rows, 0.03, droppable=[not f for f in fixed])
    assert drops and not any(fixed[i] for i in drops)


def test_balancing_a_task_alone_drops_what_balancing_all_tasks_together_drops():
    # Commit plans one task at a time (bounded memory): a task's drops must not depend on the
    # other tasks' rows, whose sample_ids sort before or after its own.
    body = _skewed(seed=1)
    other = [{**r, "task": "spatial_grounding", "sample_id": "a" + r["sample_id"][::-1],
              "question": r["question"].replace("Which option", "Which place")}
             for r in _skewed(seed=2)]
    rows = body + other
    together = plan_drops(rows, 0.03)
    alone = plan_drops(body, 0.03) | {len(body) + i for i in plan_drops(other, 0.03)}
    assert together == alone
    assert {rows[i]["task"] for i in together} == {"body_part_state", "spatial_grounding"}


def test_two_choice_kinds_are_held_to_their_own_chance():
    rows = [{"sample_id": f"s{v}-{j}", "task": "motion_compare", "video_id": f"v{v}",
             "question": "did the left hand move up or down?", "answer": "up" if j < 3 else "down",
             "choices": ["up", "down"]} for v in range(20) for j in range(4)]
    stats = blind_baseline(rows)
    assert stats["motion_compare:down/up"].chance == 0.5 and stats["motion_compare:down/up"].blind == 0.75
    kept = [r for i, r in enumerate(rows) if i not in plan_drops(rows, 0.03)]
    assert blind_baseline(kept)["motion_compare:down/up"].blind <= 0.53


def test_every_geometry_and_construction_task_has_five_templates_chosen_by_sample_id():
    for task, variants in templates.TEMPLATES.items():
        for variant, options in variants.items():
            assert len(options) >= 5, (task, variant)
            assert len(set(options)) == len(options)
    picks = {templates.pick("body_part_state", "state", f"id{i}")[0] for i in range(200)}
    assert len(picks) == 5
    assert templates.pick("temporal_order", "order", "x") == templates.pick("temporal_order", "order", "x")


def test_near_duplicates_share_a_group_and_strangers_do_not():
    rng = random.Random(1)
    base = [rng.getrandbits(64) for _ in range(16)]

    def flip(h: int, bits: int) -> int:
        for b in rng.sample(range(64), bits):
            h ^= 1 << b
        return h
    videos = {
        "orig": {"content_id": "c1", "frame_hashes": base},
        "reencoded": {"content_id": "c2", "frame_hashes": [flip(h, 3) for h in base]},
        "trimmed": {"content_id": "c3", "frame_hashes": [flip(h, 2) for h in base[4:12]]},
        "other": {"content_id": "c4", "frame_hashes": [rng.getrandbits(64) for _ in range(16)]},
        "same_bytes": {"content_id": "c1", "frame_hashes": None},
    }
    groups = near_duplicate_groups(videos, max_hamming=10, min_matched=0.5)
    assert groups["orig"] == groups["reencoded"] == groups["trimmed"] == groups["same_bytes"]
    assert groups["other"] != groups["orig"]
    cfg = SplitConfig()
    splits = [split_for_group(f"g{i}", cfg) for i in range(4000)]
    assert abs(splits.count("train") / 4000 - 0.9) < 0.03
    assert splits.count("validation") > 100 and splits.count("test") > 100


def test_all_pairs_in_numpy_find_the_same_groups_as_comparing_each_pair():
    from proxyqa.pipeline.dataset import _matched_share, _usable

    rng = random.Random(7)
    videos: dict[str, dict] = {}
    for k in range(60):   # 60 source clips, each with up to 3 noisy copies, some trimmed
        base = [rng.getrandbits(64) for _ in range(rng.choice([0, 4, 8, 16]))]
        for c in range(rng.randint(1, 4)):
            frames = [h ^ sum(1 << b for b in rng.sample(range(64), rng.randint(0, 12))) for h in base]
            videos[f"k{k:02d}c{c}"] = {"content_id": None, "frame_hashes": frames[rng.randint(0, 4):]}
    for max_hamming, min_matched in ((10, 0.5), (6, 0.75), (8, 0.7), (0, 0.5)):
        groups = near_duplicate_groups(videos, max_hamming, min_matched)
        usable = {v: _usable(videos[v]["frame_hashes"]) for v in videos}
        ids = sorted(videos)
        for i, a in enumerate(ids):     # the definition, pair by pair
            for b in ids[i + 1:]:
                share = max(_matched_share(usable[a], usable[b], max_hamming),
                            _matched_share(usable[b], usable[a], max_hamming))
                if share >= min_matched:
                    assert groups[a] == groups[b], (a, b, share)
        # ... and nothing more: each group is connected by such pairs.
        parts = {}
        for v in ids:
            parts.setdefault(groups[v], []).append(v)
        for members in parts.values():
            reached, todo = {members[0]}, [members[0]]
            while todo:
                a = todo.pop()
                for b in members:
                    if b not in reached and max(
                            _matched_share(usable[a], usable[b], max_hamming),
                            _matched_share(usable[b], usable[a], max_hamming)) >= min_matched:
                        reached.add(b)
                        todo.append(b)
            assert reached == set(members)
        if max_hamming == 10:
            assert 60 <= len(parts) < len(ids)    # copies joined, sources apart


def test_many_videos_are_searched_by_bands_without_merging_strangers():
    # Above ALL_PAIRS_MAX videos only frames sharing a band of their hash are compared: it
    # must find copies whose frames differ by fewer bits than there are bands, and join
    # nothing the exact rule would not join.
    from proxyqa.pipeline import dataset as ds

    rng = random.Random(3)
    videos = {f"v{i:05d}": {"content_id": None, "frame_hashes": [rng.getrandbits(64) for _ in range(16)]}
              for i in range(ds.ALL_PAIRS_MAX + 200)}
    for c in range(40):    # copies: 0-3 bits flipped per frame, some trimmed to half the frames
        frames = videos[f"v{c:05d}"]["frame_hashes"][: 16 if c % 2 else 8]
        videos[f"copy{c:02d}"] = {"content_id": None, "frame_hashes": [
            h ^ sum(1 << b for b in rng.sample(range(64), rng.randint(0, 3))) for h in frames]}
    groups = ds.near_duplicate_groups(videos, max_hamming=10, min_matched=0.5)
    assert all(groups[f"copy{c:02d}"] == groups[f"v{c:05d}"] for c in range(40))
    assert len(set(groups.values())) == len(videos) - 40          # strangers stay apart
    ids = sorted(videos)
    usable = {v: ds._usable(videos[v]["frame_hashes"]) for v in ids}
    flat, owner = ds._flat(ids, usable)
    banded = ds._banded_pairs(flat, owner, len(ids), 10, 0.5)
    exact = ds._matching_pairs(flat, owner, len(ids), 10, 0.5)
    assert set(zip(*(x.tolist() for x in banded))) <= set(zip(*(x.tolist() for x in exact)))


def _mixed(seed: int) -> list[dict]:
    """Rows of several kinds: skewed multiple choice, two-choice up/down (both orders of the
    choices), free-form rows (no choices), rows without an answer, numbered questions, a
    video whose smallest sample_id is a free-form row, sample_ids out of row order."""
    rng = random.Random(seed)
    rows = [{**r, "sample_id": f"{rng.getrandbits(32):08x}"} for r in _skewed(40, seed)]
    for v in range(30):
        for _ in range(rng.randint(1, 5)):
            choices = ["up", "down"] if rng.random() < 0.5 else ["down", "up"]
            rows.append({"sample_id": f"{rng.getrandbits(32):08x}", "task": "motion_compare",
                         "video_id": f"v{v % 25}", "answer": "up" if rng.random() < 0.7 else "down",
                         "question": f"Between frame {rng.randint(1, 9)} and {rng.randint(1, 9)}, did the "
                                     f"{rng.choice(['left', 'right'])} hand move up or down?",
                         "choices": choices})
        for _ in range(rng.randint(0, 3)):   # a text only this video asks: the fallbacks
            rows.append({"sample_id": f"{rng.getrandbits(32):08x}", "task": "body_part_state",
                         "video_id": f"v{v}", "question": f"Which option fits the arm of {'xyzw'[v % 4] * (v + 1)}?",
                         "answer": rng.choice(["a", "a", "b"]), "choices": ["a", "b", "c"]})
        rows.append({"sample_id": f"0{v:03d}", "task": "motion_compare", "video_id": f"v{v % 25}",
                     "question": "Which part moved most?", "answer": "left hand",
                     "choices": None})
        rows.append({"sample_id": f"{rng.getrandbits(32):08x}", "task": "body_part_state",
                     "video_id": f"v{v}", "question": "Which option best describes the left arm?",
                     "answer": None, "choices": ["a", "b", "c"]})
    rng.shuffle(rows)
    return rows


def test_balancing_in_columns_drops_what_balancing_row_dicts_drops():
    # Commit balances a task's rows as Arrow columns (plan_drops_table: counts per question,
    # answer and video, no dict per row): the same drops as plan_drops, carried rows kept.
    import pyarrow as pa

    from proxyqa.core.balance import plan_drops_table

    for seed in range(6):
        rows = _mixed(seed)
        rng = random.Random(seed)
        droppable = [rng.random() < 0.6 for _ in rows]
        table = pa.Table.from_pylist(rows, schema=pa.schema([
            ("sample_id", pa.string()), ("task", pa.string()), ("video_id", pa.string()),
            ("question", pa.string()), ("answer", pa.string()), ("choices", pa.list_(pa.string()))]))
        for max_excess, mask in ((0.03, None), (0.03, droppable), (0.0, droppable), (0.1, None)):
            expected = plan_drops(rows, max_excess, mask)
            assert plan_drops_table(table, max_excess, mask) == expected
            if mask is None and max_excess == 0.03:
                assert expected    # the rows are skewed enough to drop some


def test_commit_task_drops_in_columns_match_row_dicts():
    # pipeline/dataset.py _task_drops: same-video duplicates (carried rows first, they stay)
    # and balancing with carried rows as columns; the reference is the row-dict code.
    import pyarrow as pa

    from proxyqa.core.config import BalanceConfig
    from proxyqa.pipeline import dataset as ds

    def reference(own: list[dict], carried: list[dict]) -> tuple[set, int, int]:
        # Duplicates as commit finds them; balancing with row dicts (plan_drops), the
        # reference the Arrow-column balancing is held to.
        rows, droppable = own + carried, [True] * len(own) + [False] * len(carried)
        drop = ds.same_video_duplicates(rows, droppable)
        duplicates = len(drop)
        keep = [i for i, r in enumerate(rows) if r["sample_id"] not in drop]
        sub = [rows[i] for i in keep]
        drop |= {sub[j]["sample_id"] for j in plan_drops(sub, 0.03, [droppable[i] for i in keep])}
        return drop, duplicates, len(drop) - duplicates

    schema = pa.schema([("sample_id", pa.string()), ("video_id", pa.string()), ("task", pa.string()),
                        ("question", pa.string()), ("answer", pa.string()), ("choices", pa.list_(pa.string())),
                        ("frame_indices", pa.list_(pa.int64()))])

    class Cfg:
        balance = BalanceConfig()

    for seed in range(4):
        rng = random.Random(seed)
        rows = [{**r, "frame_indices": [rng.randint(0, 3)]} for r in _mixed(seed)]
        carried_videos = {f"v{v}" for v in range(0, 40, 3)}
        own = [r for r in rows if r["video_id"] not in carried_videos]
        carried = [r for r in rows if r["video_id"] in carried_videos]
        # Duplicates: of carried rows among this run's (same video, frames, question) and
        # among this run's own rows.
        own += [{**r, "sample_id": f"d{i:03d}"} for i, r in enumerate(rng.sample(carried, 8) + rng.sample(own, 8))]
        got = ds._task_drops(pa.Table.from_pylist(own, schema), pa.Table.from_pylist(carried, schema), Cfg())
        expected = reference(own, carried)
        assert got == expected
        assert expected[1] >= 8 and expected[2] > 0
    # No rows of this run, or none carried (empty tables as commit reads them).
    empty = pa.table({c: [] for c in ds.ROW_COLUMNS})
    assert ds._task_drops(empty, pa.Table.from_pylist(carried, schema), Cfg())[0] == set()
    got = ds._task_drops(pa.Table.from_pylist(own, schema), empty, Cfg())
    assert got == reference(own, [])


def test_arrays_greedy_drops_what_the_reference_drops_on_small_odd_kinds():
    # The arrays greedy (balance_greedy.KindGreedy) has paths the _mixed rows rarely reach:
    # texts one or two videos ask (the prior, and a drop that leaves one video), ties of
    # several answers, cells of several rows, 2- to 4-choice rows in one kind. Its drops
    # must be the reference's (_Kind/_greedy over row dicts), in every case.
    import pyarrow as pa

    from proxyqa.core.balance import plan_drops_table

    schema = pa.schema([("sample_id", pa.string()), ("task", pa.string()), ("video_id", pa.string()),
                        ("question", pa.string()), ("answer", pa.string()), ("choices", pa.list_(pa.string()))])
    dropped = 0
    for seed in range(80):
        rng = random.Random(seed)
        n_videos, n_questions = rng.randint(1, 10), rng.randint(1, 5)
        answers = [f"ans{i}" for i in range(rng.randint(2, 5))]
        skew = rng.choice([0.3, 0.6, 0.9])
        rows = []
        for _ in range(rng.randint(3, 60)):
            answer = answers[0] if rng.random() < skew else rng.choice(answers)
            choices = answers[:rng.choice([3, 3, 4])] if len(answers) > 2 else answers[:]
            if answer not in choices:
                choices = choices + [answer]
            rows.append({"sample_id": f"{rng.getrandbits(24):06x}", "task": "t",
                         "video_id": f"v{rng.randrange(n_videos)}", "answer": answer, "choices": choices,
                         "question": f"Q{rng.randrange(n_questions)} at frame {rng.randint(1, 9)}?"})
        table = pa.Table.from_pylist(rows, schema=schema)
        mask = [rng.random() < 0.5 for _ in rows]
        for max_excess, droppable in ((0.0, None), (0.03, None), (0.0, mask)):
            expected = plan_drops(rows, max_excess, droppable)
            assert plan_drops_table(table, max_excess, droppable) == expected, (seed, max_excess)
            dropped += len(expected)
    assert dropped > 200
    # Two to four videos, one to four texts: a drop often leaves a text to one video, whose
    # rows then fall back to the prior or their guess (these seeds fail if that is ignored).
    for seed in [*range(120), 403, 737, 1707]:
        rng = random.Random(seed)
        n_videos, n_questions = rng.randint(2, 4), rng.randint(1, 4)
        rows = [{"sample_id": f"{rng.getrandbits(24):06x}", "task": "t", "video_id": f"v{rng.randrange(n_videos)}",
                 "answer": "a" if rng.random() < 0.7 else rng.choice("abc"), "choices": ["a", "b", "c"],
                 "question": f"Q{rng.randrange(n_questions)}"} for _ in range(rng.randint(4, 30))]
        table = pa.Table.from_pylist(rows, schema=schema)
        for max_excess in (0.0, 0.03):
            assert plan_drops_table(table, max_excess) == plan_drops(rows, max_excess), (seed, max_excess)
