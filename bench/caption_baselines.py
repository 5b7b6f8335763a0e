"""Text-only baselines of the caption match tasks, on as many questions as the data allows.

    python bench/caption_baselines.py [--frames 32 64] [--samples 40] [--out bench/results]
    python bench/caption_baselines.py --render 30     # also PNGs for the audit by eye

Inputs (pose cached under .cache/bench/, so re-runs only rebuild the questions):
- every shared clip (../shared/data/clips), decoded and posed as configs/local.yaml does
  (mediapipe, 512 px, num_poses 2, tracking, subject rule), at each `--frames` count;
- every hand-labelled image of ../shared/data/coco_pose and ../shared/data/pose_gt (COCO,
  AIC, CrowdPose, PoseTrack18, MPII) as a one-frame "still clip", posed the same way.
Each input is one video (its own group for leave-one-video-out).

Questions: description_match and change_match built by the task code itself
(stages/tasks_captions.py) with `samples_per_video = --samples` (many more than the demo's 2).
Baselines (bench/audit_captions.py `blind`): typical (fact prior, leave-one-video-out),
medoid, longest, shortest, word-bigram naive Bayes (leave-one-video-out), chance.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.audit_captions import blind, render, render_crop  # noqa: E402
from bench.caption_precision import load_sets  # noqa: E402
from proxyqa.core.config import TasksConfig, load_config  # noqa: E402
from proxyqa.core.people import subject_of  # noqa: E402
from proxyqa.stages import tasks_captions as tc  # noqa: E402
from proxyqa.stages.sampling import RunContext  # noqa: E402

CACHE = REPO / ".cache" / "bench"
MATCH = ("description_match", "change_match")


def _config(frames: int):
    return load_config(REPO / "configs" / "local.yaml", [f"decode.num_frames={frames}"])


def clip_rows(shared: Path, frames: int, clips: Path | None = None) -> list[dict]:
    """Decoded + posed rows of every clip of `clips` (default: the shared clips) at `frames`
    frames (cached)."""
    clips = clips or shared / "clips"
    tag = "" if clips == shared / "clips" else "_" + hashlib.sha256(
        str(clips.resolve()).encode()).hexdigest()[:8]
    path = CACHE / f"caption_clips{tag}_{frames}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    from proxyqa.core.config import Config
    from proxyqa.pipeline.sources import list_videos
    from proxyqa.stages.decode import DecodeStage
    from proxyqa.stages.pose import PoseStage

    cfg = _config(frames)
    videos = list_videos(Config(input=str(clips)))
    decode, pose = DecodeStage(cfg.decode, cfg.limits, cfg.s3), PoseStage(cfg.pose)
    rows = []
    for video in videos:
        row = pose.run_row(decode.run_row(dict(video)))
        rows.append(row)
        print(f"posed {row['video_id']}: {row.get('status')}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(rows))
    return rows


def still_rows(shared: Path) -> list[dict]:
    """Every hand-labelled image as a one-frame clip, posed as the pipeline poses (cached)."""
    path = CACHE / "caption_stills.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    from proxyqa.stages.pose import PoseStage

    cfg = _config(16)
    pose = PoseStage(cfg.pose)
    rows = []
    for set_name, items in load_sets(shared).items():
        for item in items:
            bgr = cv2.imread(str(item["image"]))
            scale = cfg.decode.max_side / max(bgr.shape[:2])
            if scale < 1:   # as decode does: frames at <= decode.max_side
                bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)),
                                 interpolation=cv2.INTER_AREA)
            jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            vid = f"{set_name}/{item['image'].name}"
            row = {"video_id": vid, "video_uri": str(item["image"]),
                   "content_id": hashlib.sha256(jpeg).hexdigest()[:16],
                   "width": item["width"], "height": item["height"], "fps": 1.0, "duration": 1.0,
                   "frame_indices": [0], "timestamps": [0.0], "frames_jpeg": [jpeg],
                   "status": "ok"}
            rows.append(pose.run_row(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(rows))
    print(f"posed {len(rows)} stills")
    return rows


def take(uri: str) -> str:
    """The recording a clip belongs to: synchronized views of one take (pose2sim_single_cam01
    .. cam04 film the same motion at the same time) are one group for leave-one-out, else a
    model fitted on cam03 knows cam04's answers."""
    return re.sub(r"_cam\d+$", "", Path(uri).stem)


def unique(*sets: list[dict]) -> list[dict]:
    """Rows of several sets with each video content once (the demo clips repeat 5 shared
    clips: a copy must not be another video for leave-one-out)."""
    seen: set[tuple] = set()
    out = []
    for rows in sets:
        for r in rows:
            key = (r.get("content_id") or r["video_id"], len(r.get("timestamps") or ()))
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def blind_by_take(rows: list[dict]) -> dict:
    return blind(rows, group=lambda r: take(r["video_uri"]))


def questions(rows: list[dict], samples: int, tasks=MATCH, seeds: int = 1) -> list[dict]:
    """The match rows the task code builds for `rows` (samples_per_video = samples), for
    tasks.seed = 0 .. seeds-1 pooled (each seed draws other wrong values: more questions)."""
    cfg = TasksConfig.model_validate({
        "enabled": list(tasks), "description_match": {"samples_per_video": samples},
        "change_match": {"samples_per_video": samples},
        "pose_description": {"generator": "rules", "samples_per_video": samples}})
    min_score = load_config(REPO / "configs" / "local.yaml").pose.min_keypoint_score
    out = []
    for seed, row in ((s, r) for s in range(seeds) for r in rows):
        ctx = RunContext("bench", "bench", seed)
        if row.get("status") != "ok" or subject_of(row) is None:
            continue
        if "description_match" in tasks:
            out += tc.description_match(row, cfg.description_match, ctx, min_score)
        if "change_match" in tasks and len(row["timestamps"]) > 1:
            out += tc.change_match(row, cfg.change_match, ctx, min_score)
        if "pose_description" in tasks:
            out += tc.pose_description(row, cfg.pose_description, ctx, min_score)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=10,
                        help="tasks.seed values pooled (the demo rows: seed 0 only)")
    parser.add_argument("--no-stills", action="store_true")
    parser.add_argument("--demo", type=Path, default=REPO / "demo-data" / "clips",
                        help="the demo clips (`make demo`'s input), if present: their rows at "
                             "seed 0 (what the demo writes) and pooled with the rest")
    parser.add_argument("--render", type=int, default=0,
                        help="render this many pose_description and description_match rows")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    clips = {n: clip_rows(args.shared, n) for n in args.frames}
    demo = ({n: clip_rows(args.shared, n, args.demo) for n in args.frames}
            if args.demo and args.demo.is_dir() else {})
    stills = [] if args.no_stills else still_rows(args.shared)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for n, rows in clips.items():
        results[f"clips@{n}, demo (2/video)"] = blind_by_take(questions(rows, 2))
        results[f"clips@{n} x{args.seeds} seeds"] = blind_by_take(questions(rows, args.samples,
                                                                   seeds=args.seeds))
    for n, rows in demo.items():
        results[f"demo@{n}, seed 0 (2/video)"] = blind_by_take(questions(rows, 2))
        results[f"demo@{n} x{args.seeds} seeds"] = blind_by_take(questions(rows, args.samples,
                                                                  seeds=args.seeds))
    if demo:   # the largest pool: every clip at every frame count, the demo's, the stills
        every = unique(*clips.values(), *demo.values(), stills)
        pool = questions(every, args.samples, seeds=args.seeds)
        name = f"all: clips+demo@{'+'.join(map(str, args.frames))}+stills x{args.seeds}"
        results[name] = blind_by_take(pool)
        # stricter: each question scored by models fitted on every OTHER question, the same
        # video's and take's included (what a model trained on the whole dataset could learn)
        results[name + " LOQO"] = blind(pool, group=lambda r: r["sample_id"])
    if stills:
        results[f"stills x{args.seeds}"] = blind_by_take(questions(stills, args.samples, seeds=args.seeds))
        pooled = questions(clips[max(args.frames)] + stills, args.samples, seeds=args.seeds)
        results[f"clips@{max(args.frames)} + stills x{args.seeds}"] = blind_by_take(pooled)
    for name, res in results.items():
        for task, s in res.items():
            print(f"{name:40s} {task:18s} q={s['questions']:4d} distinct={s['distinct']:4d} "
                  f"v={s['videos']:3d} takes={s['groups']:3d} "
                  + " ".join(f"{k}={s[k]:.2f}" for k in
                             ("chance", "typical", "atypical", "middle", "medoid", "longest", "shortest", "ngram")))
    (args.out / "caption_baselines.json").write_text(json.dumps(results, indent=1))
    if args.render:
        audit = args.out / "audit"
        audit.mkdir(parents=True, exist_ok=True)
        rows = unique(clips[max(args.frames)], demo.get(max(args.frames), []), stills)
        qs = questions(rows, 4, tasks=("pose_description",)) + questions(
            rows, 4, tasks=("description_match",), seeds=args.seeds)
        for task in ("pose_description", "description_match"):
            picked = [q for q in qs if q["task"] == task]
            # spread over videos: the k-th row of each video before the (k+1)-th of any
            seen: Counter = Counter()
            rank = []
            for q in picked:
                rank.append(seen[q["video_id"]])
                seen[q["video_id"]] += 1
            picked = [q for _, q in sorted(zip(rank, picked), key=lambda x: (x[0], x[1]["video_id"]))]
            for k, q in enumerate(picked[: args.render]):
                render(q, audit / f"{task}_{k:02d}.png")
                render_crop(q, audit / f"{task}_{k:02d}_crop.png")
                (audit / f"{task}_{k:02d}.json").write_text(json.dumps(
                    {"video_id": q["video_id"], "answer": q["answer"], "choices": q["choices"],
                     "answer_struct": json.loads(q["answer_struct"])}, indent=1))
            print(f"rendered {min(len(picked), args.render)} {task} rows to {audit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
