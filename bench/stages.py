"""Per-stage isolated throughput on real clips, and raw baselines on the same frames.

    python bench/stages.py [--videos 36] [--quick] [--skip-ultralytics]

Each stage runs alone in this one process on the same videos (the real clips, copied to
`--videos` distinct files), fed the previous stage's real output. Its stage object is
built once (start-up, reported apart) and warmed on one video; the timed pass covers every
video at the stage's configured batch size (configs/local.yaml); decode and raw decord,
whose ratio is a target, keep the faster of 2 passes each. Baselines do the bare
library work on exactly the same frames:
- raw decord: one VideoReader per video, decoder-side resize to the same size, get_batch
  of the same frame indices (the decode stage's output), nothing else;
- raw mediapipe: PoseLandmarker.detect once per frame on the same RGB frames;
- raw ultralytics: model.predict on the same frames, batched like the stage.

Writes bench/results/stages.json.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from typing import Any

import common  # noqa: F401  (first: environment, torch before decord)
import numpy as np
from common import Clock


def _run_batches(stage: Callable, rows: list[dict], batch_size: int) -> list[dict]:
    from proxyqa.stages.base import to_batch, to_rows

    out: list[dict] = []
    for start in range(0, len(rows), batch_size):
        out.extend(to_rows(stage(to_batch([dict(r) for r in rows[start:start + batch_size]]))))
    return out


def timed_quietly(name: str, work: Callable[[], Any], rounds: int = 1) -> tuple[Any, Clock, float]:
    """(result, clock, cores others used) of `work`, run when the machine is quiet; the
    fastest of `rounds` passes."""
    def once():
        with common.MemorySampler() as mon, Clock() as clock:
            value = work()
        return value, clock, mon.foreign_cores()

    passes = [common.quiet_pass(once, lambda r: r[2], name) for _ in range(rounds)]
    return min(passes, key=lambda r: r[1].wall)


# decode vs raw decord is a target ratio of two ~13 s passes: the fastest of 2 each.
RATIO_ROUNDS = 2


def measure(name: str, make: Callable[[], Callable], rows: list[dict], batch_size: int,
            frames_of: Callable[[dict], int], warm: bool = True,
            rounds: int = 1, before_pass: Callable[[Any], None] | None = None) -> tuple[dict, list[dict]]:
    """Builds the stage, warms it on one row, times it over all rows (`before_pass(stage)`
    before each timed pass: a busy machine makes `timed_quietly` repeat it)."""
    with Clock() as startup:
        stage = make()
    if warm and rows:
        _run_batches(stage, rows[:1], 1)

    def timed_pass() -> list[dict]:
        if before_pass is not None:
            before_pass(stage)
        return _run_batches(stage, rows, batch_size)
    out, timed, foreign = timed_quietly(name, timed_pass, rounds)
    frames = sum(frames_of(r) for r in rows)
    bad = [r.get("reason") for r in out if r.get("status") not in (None, "ok")]
    result = {
        "stage": name, "videos": len(rows), "frames": frames, "batch_size": batch_size,
        "startup_s": round(startup.wall, 3), "wall_s": round(timed.wall, 3),
        "videos_per_s": round(len(rows) / timed.wall, 4),
        "frames_per_s": round(frames / timed.wall, 2),
        "ms_per_video": round(1000 * timed.wall / len(rows), 1),
        "cpu_util": round(timed.cpu / timed.wall, 2),   # > 1: the stage uses several cores
        "cpu_ms_per_video": round(1000 * timed.cpu / max(1, len(rows)), 1),
        "not_ok": len(bad), "foreign_cores": foreign,
    }
    if bad:
        result["not_ok_reasons"] = sorted(set(bad))[:5]
    return result, out


def _n_frames(row: dict) -> int:
    return len(row.get("frame_indices") or [])


# ------------------------------------------------------------------ raw baselines

def raw_decord(rows: list[dict], decoded: list[dict], num_threads: int) -> dict:
    """The same frames with decord alone: one reader at the output size, one get_batch."""
    import cv2
    from decord import VideoReader

    by_id = {r["video_id"]: r for r in decoded}
    jobs = []
    for row in rows:
        d = by_id[row["video_id"]]
        if d.get("status") != "ok":
            continue
        jpeg = d["frames_jpeg"][0]
        h, w = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2]
        jobs.append((row["video_uri"], d["frame_indices"], w, h))

    def one(uri: str, idx: list[int], w: int, h: int) -> int:
        try:
            return len(VideoReader(uri, num_threads=num_threads, width=w, height=h)
                       .get_batch(idx).asnumpy())
        except Exception:  # noqa: BLE001 - as the stage does: full size, then cv2 resize
            frames = VideoReader(uri, num_threads=num_threads).get_batch(idx).asnumpy()
            return len([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])

    one(*jobs[0])  # warm
    name = "raw decord get_batch"
    frames, timed, foreign = timed_quietly(name, lambda: sum(one(*job) for job in jobs),
                                           RATIO_ROUNDS)
    return _row(name, len(jobs), frames, 1, _zero(), timed, foreign)


def _rgb_frames(decoded: list[dict]) -> list[list[np.ndarray]]:
    from proxyqa.stages.pose import decode_jpeg_rgb

    return [[decode_jpeg_rgb(j) for j in r["frames_jpeg"]] for r in decoded if r.get("status") == "ok"]


def raw_mediapipe(decoded: list[dict], cfg) -> dict:
    """PoseLandmarker.detect once per frame (no masking passes, tracking or crops)."""
    import mediapipe as mp

    from proxyqa.models.mediapipe_pose import MediaPipePose

    with Clock() as startup:
        est = MediaPipePose(cfg.pose.mediapipe)
    videos = _rgb_frames(decoded)
    detect = est._landmarker.detect  # the bare landmarker the stage wraps
    image = lambda f: mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f))  # noqa: E731
    detect(image(videos[0][0]))
    name = "raw mediapipe detect"
    _, timed, foreign = timed_quietly(name, lambda: [detect(image(f)) for fs in videos for f in fs])
    est.close()
    return _row(name, len(videos), sum(len(v) for v in videos), 1, startup, timed, foreign)


def raw_pose_checks(decoded: list[dict], cfg) -> list[dict]:
    """The check models the pose stage also runs (issue 13's label checks are part of its
    work): OpenCV's HOG `detectMultiScale` and BlazeFace `process`, bare, once per frame,
    on inputs prepared outside the timer exactly as the stage prepares them."""
    import cv2

    from proxyqa.models import person_detector as pd
    from proxyqa.stages.pose import face_detector_name

    videos = _rgb_frames(decoded)
    frames = sum(len(v) for v in videos)
    rows = []
    if cfg.pose.checks.person_detector == "hog":
        with Clock() as startup:
            det = pd.HOGPersonDetector()
        greys = []
        for fs in videos:
            for f in fs:
                h, w = f.shape[:2]
                g = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
                up = max(1.0, pd.MIN_SIDE / min(h, w))
                greys.append(cv2.resize(g, (int(round(w * up)), int(round(h * up)))) if up > 1 else g)
        search = lambda g: det._hog.detectMultiScale(g, winStride=pd.WIN_STRIDE, padding=(8, 8),  # noqa: E731
                                                     scale=pd.SCALE)
        name = "raw HOG detectMultiScale"
        _, timed, foreign = timed_quietly(name, lambda: [search(g) for g in greys])
        rows.append(_row(name, len(videos), frames, 1, startup, timed, foreign))
    if face_detector_name(cfg.pose) == "blazeface":
        from proxyqa.models.face_detector import BlazeFaceDetector

        with Clock() as startup:
            faces = BlazeFaceDetector()
        flat = [np.ascontiguousarray(f) for fs in videos for f in fs]
        faces._detector.process(flat[0])
        name = "raw BlazeFace process"
        _, timed, foreign = timed_quietly(name, lambda: [faces._detector.process(f) for f in flat])
        faces.close()
        rows.append(_row(name, len(videos), frames, 1, startup, timed, foreign))
    return rows


def raw_ultralytics(decoded: list[dict], est) -> dict:
    """model.predict on the same frames with the stage's own model (same random weights),
    in batches of pose.ultralytics.batch."""
    from proxyqa.models.yolo_pose import _bgr

    startup = _zero()
    videos = _rgb_frames(decoded)
    batch = est.cfg.batch
    args = dict(est._args)
    est.model.predict([_bgr(f) for f in videos[0]], batch=batch, **args)

    def work() -> None:
        for frames in videos:
            for s in range(0, len(frames), batch):
                est.model.predict([_bgr(f) for f in frames[s:s + batch]], batch=batch, **args)

    name = "raw ultralytics predict"
    _, timed, foreign = timed_quietly(name, work)
    return _row(name, len(videos), sum(len(v) for v in videos), batch, startup, timed, foreign)


def _row(name: str, videos: int, frames: int, batch: int, startup: Clock, timed: Clock,
         foreign: float) -> dict:
    return {"stage": name, "videos": videos, "frames": frames, "batch_size": batch,
            "startup_s": round(startup.wall, 3), "wall_s": round(timed.wall, 3),
            "videos_per_s": round(videos / timed.wall, 4),
            "frames_per_s": round(frames / timed.wall, 2),
            "ms_per_video": round(1000 * timed.wall / videos, 1),
            "cpu_util": round(timed.cpu / timed.wall, 2),
            "cpu_ms_per_video": round(1000 * timed.cpu / max(1, videos), 1),
            "not_ok": 0, "foreign_cores": foreign}


# ------------------------------------------------------------------ verification

def verify_claims(row: dict, min_score: float) -> list[tuple[str, Any]]:
    """What the MLLM stage checks per video, with claims made from the geometry itself:
    per-part state phrases on every subject frame, and 'moved up/down' between consecutive
    frames (stages/verify.py does the parsing and checking)."""
    from proxyqa.core.people import subject_of
    from proxyqa.stages import posecodes

    subject = subject_of(row)
    if subject is None:
        return []
    w, h = int(row["width"]), int(row["height"])
    kps = [k for k in subject.keypoints if k is not None]
    jobs: list[tuple[str, Any]] = []
    for k in kps:
        states = posecodes.part_states(k, w, h, min_score)
        jobs.append(("states", (states or {"left_arm": "raised above the head"}, k)))
    for a, b in zip(kps, kps[1:]):
        changes = [{"part": p, "change": d} for p in ("left_arm", "right_arm", "left_leg", "head")
                   for d in ("moved up",)]
        jobs.append(("motion", (changes, a, b)))
    return jobs


def measure_verify(tasked: list[dict], min_score: float) -> dict:
    from proxyqa.stages.verify import Verdict, check_motion, check_states

    per_video = [(r, verify_claims(r, min_score)) for r in tasked if r.get("status") == "ok"]
    per_video = [(r, jobs) for r, jobs in per_video if jobs]
    def run(row: dict, jobs) -> int:
        verdict = Verdict()
        w, h = int(row["width"]), int(row["height"])
        for kind, args in jobs:
            if kind == "states":
                check_states(args[0], args[1], w, h, min_score, verdict)
            else:
                check_motion(args[0], args[1], args[2], w, h, min_score, verdict)
        return len(verdict.agree) + len(verdict.contradict)

    if per_video:
        run(*per_video[0])
    name = "verify (stages/verify.py)"
    checks, timed, foreign = timed_quietly(name, lambda: sum(run(r, jobs) for r, jobs in per_video))
    frames = sum(sum(1 for kind, _ in jobs if kind == "states") for _, jobs in per_video)
    out = _row(name, len(per_video), frames, 1, _zero(), timed, foreign)
    out["claims_checked"] = checks
    out["claims_per_s"] = round(checks / timed.wall, 1) if timed.wall else None
    return out


def _zero() -> Clock:
    c = Clock()
    c.wall = c.cpu = 0.0
    return c


# ------------------------------------------------------------------ the machine's limit

def pose_model_passes(pose_cfg) -> int:
    """Model passes per frame the config asks for: 1, plus 1 for a mirrored (flipped)
    second pass when the pose config has one switched on (any truthy field named
    *flip* or *mirror*, at the top of `pose`, in its `checks` (issue 13's flip test) or in
    its backend's section)."""
    passes = 1
    sections = [pose_cfg, getattr(pose_cfg, "checks", None), getattr(pose_cfg, pose_cfg.backend, None)]
    for section in sections:
        if section is None or not hasattr(section, "model_dump"):
            continue
        for key, value in section.model_dump().items():
            # switches only (flip_tolerance and the like are settings of the same pass)
            if ("flip" in key or "mirror" in key) and value is True:
                passes += 1
    return passes


CHECK_MODELS = ("raw HOG detectMultiScale", "raw BlazeFace process")


def pose_raw_parts(results: list[dict], cfg, key: str = "cpu_ms_per_video") -> dict[str, float]:
    """The pose stage's raw model work per video: the landmarker calls it made, timed
    around the bare call where they run (`MediaPipePose.detect_*`: the search passes on
    each frame and its mirror; masked passes that find nobody cost less than a first pass,
    so a pass count times one bare call would overstate them), else one bare call per frame
    times the config's passes; plus each check model measured (raw_pose_checks)."""
    by = {r["stage"]: r for r in results}
    stage = by.get("pose (mediapipe)", {})
    in_stage = {"cpu_ms_per_video": "detect_cpu_ms_per_video", "ms_per_video": "detect_ms_per_video"}[key]
    if stage.get(in_stage) is not None:
        parts = {f"mediapipe detect, {stage['detect_calls_per_frame']:g} calls/frame": stage[in_stage]}
    else:
        passes = pose_model_passes(cfg.pose)
        parts = {f"raw mediapipe detect x {passes}": by["raw mediapipe detect"][key] * passes}
    parts.update({name: by[name][key] for name in CHECK_MODELS if name in by})
    return parts


def machine_limit(results: list[dict], cfg) -> dict[str, Any]:
    """Videos/s the machine allows: cores / the raw library CPU seconds one video needs for
    the work the config does: raw decord get_batch + the pose stage's raw model calls
    (mediapipe x the calls it made per frame, the HOG and BlazeFace checks) + task building + writing (the last
    two have no library below them: the stage is the work). CPU seconds, not wall: a
    library using several threads costs more cores."""
    import os

    by = {r["stage"]: r for r in results}
    pose = pose_raw_parts(results, cfg)
    parts = {"decode (raw decord get_batch)": by["raw decord get_batch"]["cpu_ms_per_video"],
             **{f"pose: {k.removeprefix('raw ')}": v for k, v in pose.items()},
             "task building": by["tasks"]["cpu_ms_per_video"],
             "writing": by["write"]["cpu_ms_per_video"]}
    total_ms = sum(parts.values())
    cores = os.cpu_count() or 1
    return {"cores": cores, "pose_model_passes": pose_model_passes(cfg.pose),
            "detect_calls_per_frame": by.get("pose (mediapipe)", {}).get("detect_calls_per_frame"),
            "cpu_ms_per_video": {k: round(v, 1) for k, v in parts.items()},
            "total_cpu_ms_per_video": round(total_ms, 1),
            "videos_per_s": round(cores * 1000 / total_ms, 3)}


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=None, help="videos (default 36, quick 9)")
    ap.add_argument("--quick", action="store_true", help="one copy of each clip")
    ap.add_argument("--skip-ultralytics", action="store_true")
    args = ap.parse_args(argv)
    n = args.videos or (9 if args.quick else 36)

    from proxyqa.pipeline.fingerprint import config_hash
    from proxyqa.pipeline.graph import HEAVY_COLUMNS, steps
    from proxyqa.pipeline.run import open_run
    from proxyqa.stages.decode import DecodeStage
    from proxyqa.stages.pose import PoseStage
    from proxyqa.stages.tasks import BuildTasksStage
    from proxyqa.stages.write import ShardWriterStage

    folder, rows = common.bench_input(n)
    cfg = common.bench_config()
    load_before = common.machine()["load_avg"]
    with tempfile.TemporaryDirectory(prefix="proxyqa-bench-") as tmp:
        cfg.output = tmp
        run = open_run(cfg, config_hash(cfg))
        plan = {s.stage: s for s in steps(cfg, run)}
        make = lambda cls: (lambda: cls(**plan[cls].kwargs))  # noqa: E731
        bs = lambda cls: plan[cls].resources.batch_size  # noqa: E731
        results = []

        r, decoded = measure("decode", make(DecodeStage), rows, bs(DecodeStage), lambda _: 0,
                             rounds=RATIO_ROUNDS)
        frames = sum(_n_frames(d) for d in decoded)
        r.update(frames=frames, frames_per_s=round(frames / r["wall_s"], 2))
        results.append(r)
        results.append(raw_decord(rows, decoded, cfg.decode.num_threads))

        pose_stages: list = []
        def reset(stage) -> None:
            est = stage.estimator
            est.detect_calls, est.detect_wall_s, est.detect_cpu_s = 0, 0.0, 0.0
        r, posed = measure("pose (mediapipe)", lambda: pose_stages.append(make(PoseStage)()) or pose_stages[0],
                           decoded, bs(PoseStage), _n_frames, before_pass=reset)
        # The landmarker calls of the last timed pass (the search passes on each frame and,
        # with the flip test, on its mirror) and the time inside them.
        est = pose_stages[0].estimator
        r["detect_calls_per_frame"] = round(est.detect_calls / r["frames"], 3)
        r["detect_ms_per_video"] = round(1000 * est.detect_wall_s / r["videos"], 1)
        r["detect_cpu_ms_per_video"] = round(1000 * est.detect_cpu_s / r["videos"], 1)
        results.append(r)
        results.append(raw_mediapipe(decoded, cfg))
        results += raw_pose_checks(decoded, cfg)

        if not args.skip_ultralytics:
            ucfg = copy.deepcopy(cfg.pose)
            ucfg.backend, ucfg.ultralytics.model, ucfg.ultralytics.device = \
                "ultralytics", "yolo11n-pose.yaml", "cpu"
            few = decoded[:min(len(decoded), 9)]   # random weights, CPU torch: one copy per clip
            built: list = []
            r, _ = measure("pose (ultralytics yolo11n random-init, CPU)",
                           lambda: built.append(PoseStage(ucfg)) or built[0], few, bs(PoseStage),
                           _n_frames)
            results.append(r)
            results.append(raw_ultralytics(few, built[0].estimator))

        r, tasked = measure("tasks", make(BuildTasksStage), posed, bs(BuildTasksStage), _n_frames)
        r["samples"] = sum(len(t.get("samples") or []) for t in tasked)
        results.append(r)
        results.append(measure_verify(tasked, cfg.pose.min_keypoint_score))

        light = [{k: v for k, v in t.items() if k not in HEAVY_COLUMNS} for t in tasked]
        r, _ = measure("write", make(ShardWriterStage), light, bs(ShardWriterStage), _n_frames,
                       warm=False)
        r["samples"] = sum(len(t.get("samples") or []) for t in light)
        results.append(r)

    pipeline_stages = [x for x in results if x["stage"] in ("decode", "pose (mediapipe)", "tasks", "write")]
    slowest = min(pipeline_stages, key=lambda x: x["videos_per_s"])
    summary = {
        "videos": n, "input": str(folder), "config": "configs/local.yaml + all geometry tasks",
        "machine": common.machine(), "load_avg_before": load_before,
        "stages": results,
        "slowest_stage": slowest["stage"], "slowest_videos_per_s": slowest["videos_per_s"],
        "sequential_sum_ms_per_video": round(sum(x["ms_per_video"] for x in pipeline_stages), 1),
        "decode_vs_raw_decord": round(results[0]["frames_per_s"] / results[1]["frames_per_s"], 3),
        # The stage against the raw calls of every model pass it makes (mediapipe x passes,
        # HOG, BlazeFace) on the same frames: what is left is the stage's own overhead.
        "pose_raw_ms_per_video": {k: round(v, 1) for k, v in pose_raw_parts(results, cfg, "ms_per_video").items()},
        "pose_vs_raw_models": round(sum(pose_raw_parts(results, cfg, "ms_per_video").values())
                                    / results[2]["ms_per_video"], 3),
        # The same by CPU seconds: what a busy machine distorts least (both single-threaded
        # work of this process; on a quiet machine the two ratios agree).
        "pose_vs_raw_models_cpu": round(sum(pose_raw_parts(results, cfg).values())
                                        / results[2]["cpu_ms_per_video"], 3),
        "machine_limit": machine_limit(results, cfg),
    }
    print(f"\nPer-stage isolated throughput: {n} videos, one process, warm "
          f"(load before {load_before}, after {summary['machine']['load_avg']})")
    print(common.table(results, ["stage", "videos", "frames", "batch_size", "videos_per_s",
                                 "frames_per_s", "ms_per_video", "cpu_ms_per_video", "cpu_util", "startup_s", "not_ok",
                                 "foreign_cores"]))
    print(f"slowest pipeline stage: {slowest['stage']} ({slowest['videos_per_s']:.3f} videos/s); "
          f"decode / raw decord (frames/s): {summary['decode_vs_raw_decord']:.2f}; "
          f"pose / its raw model calls ({' + '.join(summary['pose_raw_ms_per_video'])}): "
          f"{summary['pose_vs_raw_models']:.2f} by wall, {summary['pose_vs_raw_models_cpu']:.2f} by CPU seconds")
    lim = summary["machine_limit"]
    print(f"machine limit: {lim['cores']} cores / {lim['total_cpu_ms_per_video']:.0f} CPU-ms per video "
          f"({', '.join(f'{k} {v:.0f}' for k, v in lim['cpu_ms_per_video'].items())}) "
          f"= {lim['videos_per_s']:.2f} videos/s")
    path = common.write_json("stages", summary)
    print(f"-> {path}")
    return summary


if __name__ == "__main__":
    main()
