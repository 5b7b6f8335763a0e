"""How many frames and frame pairs of a set of clips could carry a description_match question:
the funnel from decoded frames to the pairs the task can ask.

    python bench/caption_yield.py [--clips demo-data/clips] [--frames 32]

Per video: decoded frames, frames the pose checks did not flag (`Subject.usable_frames`),
lopsided frames (their left/right mirror has another caption: the device description_match
needs, docs/captions.md), frame pairs whose 4 images (each frame, mirrored or not) have 4
distinct captions that differ pairwise only in facts False with margin (`pairs`), and the
distinct option sets among those pairs. Pose as configs/local.yaml (cached under .cache/bench/,
shared with bench/caption_baselines.py).
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
    videos, keys = [], Counter()
    for row in rows:
        subject = subject_of(row) if row.get("status") == "ok" else None
        v = {"video": Path(row["video_uri"]).name, "frames": len(row.get("timestamps") or ()),
             "usable": 0, "lopsided": 0, "pairs": 0, "option_sets": 0}
        videos.append(v)
        if subject is None:
            continue
        images = tc.lopsided_images(subject, int(row["width"]), int(row["height"]), min_score, rules)
        frames, sets = sorted(images), set()
        for i, a in enumerate(frames):
            for b in frames[i + 1:]:
                group = images[a] + images[b]
                chosen = tc._group_keys(group, cfg.min_facts)
                if chosen:
                    v["pairs"] += 1
                    keys.update(chosen)
                    sets.add(json.dumps(sorted(json.dumps([g[0][k] for k in chosen]) for g in group)))
        v.update(usable=len(subject.usable_frames()), lopsided=len(images), option_sets=len(sets))
    bound = sum(min(cfg.samples_per_video, v["option_sets"]) for v in videos)
    return {"videos": videos, "rows_at_most": bound, "keys_stated": dict(keys.most_common())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--clips", type=Path, default=REPO / "demo-data" / "clips")
    parser.add_argument("--frames", type=int, default=32)
    args = parser.parse_args(argv)
    res = funnel(clip_rows(args.shared, args.frames, args.clips))
    cols = ("frames", "usable", "lopsided", "pairs", "option_sets")
    for v in res["videos"]:
        print(f"{v['video']:34s} " + " ".join(f"{k}={v[k]:4d}" for k in cols))
    total = {k: sum(v[k] for v in res["videos"]) for k in cols}
    print("total", total, "| description_match rows at most:", res["rows_at_most"])
    print("keys the asked pairs state:", json.dumps(res["keys_stated"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
