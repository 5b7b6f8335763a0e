"""How many frames of a set of clips could carry a description_match question at all: the
funnel from decoded frames to frames with facts in two slots, and the true values there.

    python bench/caption_yield.py [--clips demo-data/clips] [--frames 16]

Per video: decoded frames, frames the pose checks did not flag (`Subject.usable_frames`),
frames with >= min_facts caption facts, frames with facts in two slots (torso / arms / legs;
a 2x2 question needs two), and the bound on rows (at most `samples_per_video` per video).
Then the true slot values of the two-slot frames: a question can be balanced for a text-only
model only if its values are also true, as often, in frames of the same kind elsewhere
(docs/captions.md, "Abstention and yield"). Pose as configs/local.yaml (cached under
.cache/bench/, shared with bench/caption_baselines.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.caption_baselines import clip_rows  # noqa: E402
from proxyqa.core.config import TasksConfig, load_config  # noqa: E402
from proxyqa.core.people import subject_of  # noqa: E402
from proxyqa.stages import tasks_captions as tc  # noqa: E402


def funnel(rows: list[dict]) -> dict:
    cfg = TasksConfig().description_match
    min_score = load_config(REPO / "configs" / "local.yaml").pose.min_keypoint_score
    rules = tc.caption_rules(cfg)
    videos, values = [], Counter()
    for row in rows:
        subject = subject_of(row) if row.get("status") == "ok" else None
        n = len(row.get("timestamps") or ())
        if subject is None:
            videos.append({"video": Path(row["video_uri"]).name, "frames": n, "usable": 0,
                           "facts": 0, "two_slots": 0})
            continue
        facts = {p: f for p, f in tc._frame_facts(row, subject, min_score, rules).items()
                 if len(f) >= cfg.min_facts}
        two = 0
        for f in facts.values():
            v = {u: tc._value(f.states.get, parts) for u, parts in tc.DESC_UNITS.items()}
            v = {u: x for u, x in v.items() if x is not None}
            if len(v) >= 2:
                two += 1
                values.update(json.dumps([u, x]) for u, x in sorted(v.items()))
        videos.append({"video": Path(row["video_uri"]).name, "frames": n,
                       "usable": len(subject.usable_frames()), "facts": len(facts),
                       "two_slots": two})
    bound = sum(min(cfg.samples_per_video, v["two_slots"]) for v in videos)
    return {"videos": videos, "rows_at_most": bound,
            "two_slot_values": dict(values.most_common())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--clips", type=Path, default=REPO / "demo-data" / "clips")
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args(argv)
    res = funnel(clip_rows(args.shared, args.frames, args.clips))
    for v in res["videos"]:
        print(f"{v['video']:34s} frames={v['frames']:3d} usable={v['usable']:3d} "
              f">=min_facts={v['facts']:3d} two_slots={v['two_slots']:3d}")
    total = {k: sum(v[k] for v in res["videos"]) for k in ("frames", "usable", "facts", "two_slots")}
    print("total", total, "| description_match rows at most:", res["rows_at_most"])
    print("true values in two-slot frames:", json.dumps(res["two_slot_values"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
