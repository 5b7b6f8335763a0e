"""How many frames of a set of clips could carry a description_match question at all: the
funnel from decoded frames to lopsided frames whose mirror is definitely false.

    python bench/caption_yield.py [--clips demo-data/clips] [--frames 16]

Per video: decoded frames, frames the pose checks did not flag (`Subject.usable_frames`),
frames with >= min_facts caption facts, and frames whose caption changes under the left/right
mirror with every exchanged claim False with margin (`mirror_ok`: the device description_match
needs, docs/captions.md), and the bound on rows (at most `samples_per_video` per video). Then
the true facts of those frames. Pose as configs/local.yaml (cached under .cache/bench/, shared
with bench/caption_baselines.py).
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
    negative = tc._negative_rules(rules)
    videos, values = [], Counter()
    for row in rows:
        subject = subject_of(row) if row.get("status") == "ok" else None
        n = len(row.get("timestamps") or ())
        if subject is None:
            videos.append({"video": Path(row["video_uri"]).name, "frames": n, "usable": 0,
                           "facts": 0, "mirror_ok": 0})
            continue
        w, h = int(row["width"]), int(row["height"])
        facts = {p: f for p, f in tc._frame_facts(row, subject, min_score, rules).items()
                 if len(f) >= cfg.min_facts}
        ok = 0
        for pos, f in facts.items():
            truth, mirrored = f.as_list(), tc._mirror_facts(f).as_list()
            test = tc._pose_claim_test(subject.keypoints[pos], w, h, min_score, negative)
            if tc._claims_false(mirrored, truth, test):
                ok += 1
                values.update(json.dumps(x, sort_keys=True) for x in truth)
        videos.append({"video": Path(row["video_uri"]).name, "frames": n,
                       "usable": len(subject.usable_frames()), "facts": len(facts),
                       "mirror_ok": ok})
    bound = sum(min(cfg.samples_per_video, v["mirror_ok"]) for v in videos)
    return {"videos": videos, "rows_at_most": bound,
            "mirror_ok_facts": dict(values.most_common())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--clips", type=Path, default=REPO / "demo-data" / "clips")
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args(argv)
    res = funnel(clip_rows(args.shared, args.frames, args.clips))
    for v in res["videos"]:
        print(f"{v['video']:34s} frames={v['frames']:3d} usable={v['usable']:3d} "
              f">=min_facts={v['facts']:3d} mirror_ok={v['mirror_ok']:3d}")
    total = {k: sum(v[k] for v in res["videos"]) for k in ("frames", "usable", "facts", "mirror_ok")}
    print("total", total, "| description_match rows at most:", res["rows_at_most"])
    print("true facts of the mirror_ok frames:", json.dumps(res["mirror_ok_facts"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
