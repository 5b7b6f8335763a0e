"""One MLLM stage and planner for both modes: the same real rows and the same replies give
the same rows, drops and report errors in endpoint mode and in engine mode (the same stage
calling the job's own replicas), whichever replies fail or skip; only the provenance says
which mode and model.

The model is scripted here (the same text for the same request in both modes): the point is
the two code paths around it. Real-server runs are in tests/integration/test_mllm.py.
"""
from __future__ import annotations

import copy
import hashlib
import json

import pytest

from proxyqa.core.config import load_config
from proxyqa.models.openai_chat import MLLMCallError
from proxyqa.stages.base import to_batch, to_rows
from proxyqa.stages.decode import DecodeStage
from proxyqa.stages.mllm import MLLMStage
from proxyqa.stages.pose import PoseStage
from proxyqa.stages.sampling import RunContext
from tests.helpers import CLIPS, LOCAL_CONFIG

CTX = RunContext("run", "hash", seed=7)
USAGE = {"prompt_tokens": 300, "completion_tokens": 40, "latency_s": 0.5}


@pytest.fixture(scope="module")
def real_rows() -> list[dict]:
    """Decoded and posed rows of real clips (mediapipe), plus the shapes a run also has:
    a video with no person (the pose stage's own output for one) and a failed video."""
    cfg = load_config(LOCAL_CONFIG, ["decode.num_frames=6"])
    videos = [{"video_id": name, "video_uri": str(CLIPS / name), "content_id": name,
               "size_bytes": (CLIPS / name).stat().st_size}
              for name in ("pose2sim_single_cam01.mp4", "kinetics_clean_and_jerk.mp4",
                           "kinetics_ta_chi.mp4")]
    batch = DecodeStage(cfg.decode, cfg.limits, cfg.s3)(to_batch(videos))
    rows = to_rows(PoseStage(cfg.pose)(batch))
    assert all(r["status"] == "ok" for r in rows) and any(r["subject_json"] for r in rows)
    nobody = {**copy.deepcopy(rows[0]), "video_id": "nobody", "content_id": "nobody",
              "subject_json": None, "persons_json": "[]", "subject_crops_jpeg": None}
    failed = {**copy.deepcopy(rows[1]), "video_id": "broken", "status": "failed",
              "reason": "decode: not_a_video: x"}
    return rows + [nobody, failed]


def _reply_text(task: str, messages: list[dict], bad: set[str]) -> str:
    """A deterministic reply per request: some claims true, some false (verification has
    work to do), invalid JSON for requests whose digest falls in `bad`."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    if task in bad and int(digest, 16) % 2 == 0:
        return "{not json"
    if task == "pose_description":
        return json.dumps({"head": "facing forward", "torso": "upright",
                           "left_arm": "raised above the head", "right_arm": "hanging down by the side",
                           "left_leg": "straight", "right_leg": "bent at the knee"})
    if task == "pose_difference":
        return json.dumps({"changes": [{"part": "left_arm", "change": "moved up"},
                                       {"part": "right_leg", "change": "moved down"}]})
    return json.dumps({"questions": [
        {"question": "What is the left arm doing?", "part": "left_arm", "answer_index": 0,
         "choices": ["raised above the head", "hanging down by the side", "bent at the elbow",
                     "stretched out away from the body"]},
        {"question": "What is the right leg doing?", "part": "right_leg", "answer_index": 1,
         "choices": ["straight", "bent at the knee", "bent with the thigh raised",
                     "held out straight with the thigh raised"]}]})


class ScriptedClient:
    """Stands in for EndpointClient (same call signature); no retries (max_retries=0), so an
    invalid reply is one attempt. Records the model each request names."""

    def __init__(self, bad: set[str]):
        self.bad = bad

    def call(self, messages, *, name, schema, parse, sampling):
        text = _reply_text(name, messages, self.bad)
        try:
            return parse(text), {**USAGE, "attempts": 1, "finish_reason": None}
        except ValueError as exc:
            raise MLLMCallError("mllm_invalid_output", str(exc).splitlines()[0][:200], 1) from None


def _comparable(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        samples = []
        for s in row.get("samples") or []:
            gen = json.loads(s["generator"])
            assert (gen.pop("mode"), gen.pop("model")) in (("endpoint", "m"), ("engine", "/w/m"))
            samples.append({**{k: v for k, v in s.items() if k != "generator"}, "generator": gen})
        out.append({"video_id": row["video_id"], "status": row["status"], "samples": samples,
                    "errors": json.loads(row.get("errors_json") or "[]")})
    return out


@pytest.mark.parametrize("sets, bad", [
    (["tasks.enabled=[pose_description,pose_difference,synthesized_qa]", "mllm.on_verify_fail=drop"], set()),
    (["tasks.enabled=[pose_description,pose_difference,synthesized_qa]", "mllm.on_verify_fail=keep"],
     {"pose_description"}),
    # synthesized_qa alone: a description is asked for but its rows are not kept; no motion
    # is large enough for pose_difference.
    (["tasks.enabled=[pose_difference,synthesized_qa]", "mllm.min_pose_motion=50"], {"synthesized_qa"}),
], ids=["all-drop", "all-keep-bad-descriptions", "qa-only-no-motion"])
def test_endpoint_and_engine_modes_give_identical_rows_and_errors(real_rows, sets, bad):
    common = ["mllm.enabled=true", "mllm.endpoint.model=m", "mllm.engine.model_source=/w/m",
              "mllm.endpoint.max_retries=0", *sets]
    endpoint_cfg = load_config(LOCAL_CONFIG, common + ["mllm.mode=endpoint"])
    engine_cfg = load_config(LOCAL_CONFIG, common + ["mllm.mode=engine"])
    kwargs = dict(enabled_tasks=endpoint_cfg.tasks.enabled, ctx=CTX, min_keypoint_score=0.5)

    stage = MLLMStage(endpoint_cfg.mllm, client=ScriptedClient(bad), **kwargs)
    by_endpoint = to_rows(stage(to_batch(copy.deepcopy(real_rows))))
    engine_stage = MLLMStage(engine_cfg.mllm, client=ScriptedClient(bad), **kwargs)
    by_engine = to_rows(engine_stage(to_batch(copy.deepcopy(real_rows))))

    assert _comparable(by_endpoint) == _comparable(by_engine)
    # ... and the comparison had something to compare: rows, skips and failures.
    result = _comparable(by_endpoint)
    kinds = {e["kind"] for r in result for e in r["errors"]}
    assert sum(len(r["samples"]) for r in result) > 0
    assert "no_subject" in kinds
    assert result[-1]["status"] == "failed" and not result[-1]["samples"]
    if "pose_description" in bad:
        assert "mllm_invalid_output" in kinds
    if "synthesized_qa" in bad or "mllm.min_pose_motion=50" in sets:
        assert "no_motion" in kinds
    if "mllm.on_verify_fail=drop" in sets:
        assert "verify_failed_dropped" in kinds
    if "pose_description" not in endpoint_cfg.tasks.enabled:   # asked for, but not kept
        assert "pose_description" not in {s["task"] for r in result for s in r["samples"]}
