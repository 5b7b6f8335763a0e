"""Run configuration: one YAML file, validated by pydantic, overridable with --set.

Every key is documented by its Field description; `proxyqa config-doc` prints them.
Unknown keys are errors that name the key's dotted path.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class Resources(Strict):
    """Ray resources of one stage; the Ray wiring in pipeline/graph.py reads only these."""

    num_cpus: float = Field(1.0, description="CPUs reserved per worker of this stage.")
    num_gpus: float = Field(0.0, description="GPUs per worker (fractions share a GPU).")
    batch_size: int = Field(1, ge=1, description="Rows (videos) per call of the stage.")
    concurrency: Optional[int] = Field(
        None, ge=1, description="Worker (actor) count; null lets Ray size it to the cluster."
    )
    memory_gb: Optional[float] = Field(None, description="Heap memory reserved per worker, GiB.")
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per worker, e.g. {decode_node: 0.01} or "
        "{'accelerator_type:H100': 0.001}: the stage's workers run only on nodes that declare "
        "them (`ray start --resources`, clusters/). Empty = any node with the CPUs/GPUs.",
    )


class S3Config(Strict):
    endpoint_url: Optional[str] = Field(
        None, description="S3-compatible endpoint (MinIO, moto, ...); null = AWS."
    )
    region: Optional[str] = Field(None, description="AWS region; null = the AWS chain's default.")
    anon: bool = Field(False, description="Anonymous access (public buckets).")
    # Credentials come from the standard AWS chain (env, profile, instance role);
    # these are for stores that need explicit keys. They never reach logs or manifests.
    key: Optional[SecretStr] = Field(None, description="Access key id (prefer the AWS chain).")
    secret: Optional[SecretStr] = Field(None, description="Secret key (prefer the AWS chain).")


class Limits(Strict):
    """Guards against inputs that would exhaust a worker. A video over a limit is `skipped`
    with reason `decode: over_limit: <value> > limits.<key>=<limit>` (a limit is inclusive).
    Checked before the costly part: bytes from the listing, before reading; pixels from the
    container header, before any frame is decoded (from the first frame only where OpenCV
    cannot read the header); frames and duration from the index, before any frame is decoded."""

    max_bytes: int = Field(
        8 << 30, ge=1,
        description="Videos larger than this are skipped (bytes). An s3:// video is read into "
        "worker memory whole, so keep it below a worker's memory.",
    )
    max_pixels: int = Field(
        4096 * 4096, ge=1,
        description="Videos whose width*height exceeds this are skipped (read from the "
        "container header, so a huge frame is never decoded).",
    )
    max_duration_s: float = Field(
        4 * 3600, gt=0, description="Videos longer than this (frames / fps, seconds) are skipped."
    )
    max_frames: int = Field(
        1_000_000, ge=1,
        description="Videos with more frames than this in total are skipped (guards the frame "
        "index against bogus frame rates); not to be confused with decode.max_frames, the cap "
        "on frames sampled per video.",
    )


class DecodeConfig(Strict):
    num_frames: int = Field(16, ge=2, description="Frames sampled uniformly per video.")
    target_fps: Optional[float] = Field(
        None, gt=0, description="If set, sample at this rate instead (capped by max_frames)."
    )
    max_frames: int = Field(64, ge=2, description="Upper bound on sampled frames per video.")
    max_side: int = Field(512, ge=32, description="Frames are resized so the longer side <= this.")
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality of stored frames.")
    num_threads: int = Field(1, ge=0, description="decord decoder threads (0 = auto).")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1, batch_size=1))


class UltralyticsConfig(Strict):
    model: str = Field(
        "yolo11n-pose.pt",
        description="Weights path or ultralytics name; a .yaml builds a random-init model.",
    )
    device: Optional[str] = Field(None, description="'cuda:0', 'cpu'; null = GPU when present.")
    half: bool = Field(True, description="fp16 inference (GPU only).")
    imgsz: int = Field(640, description="Inference image size.")
    conf: float = Field(0.25, description="Person detection confidence threshold.")
    batch: int = Field(16, ge=1, description=(
        "Frames per predict call. The frames of all videos of a pose batch go to the model "
        "together (pose.resources.batch_size x decode.num_frames), except videos tracked "
        "with the tracker (one video at a time)."))
    tracker: Optional[str] = Field(
        "bytetrack.yaml",
        description="ultralytics tracker config used when sampled frames are dense enough; "
        "null = always the pipeline's own association (stages/track.py).",
    )
    track_max_gap_s: float = Field(
        0.2, ge=0,
        description="The ultralytics tracker runs only when every gap between sampled frames "
        "is at most this (s); sparser frames use the pipeline's own association.",
    )


class MediaPipeConfig(Strict):
    task_file: Optional[str] = Field(
        None,
        description="A PoseLandmarker .task bundle (e.g. pose_landmarker_heavy.task); null = "
        "the BlazePose full model that ships in the mediapipe wheel (offline).",
    )
    min_detection_confidence: float = Field(
        0.5, ge=0, le=1, description="Person detector and pose presence threshold."
    )
    num_poses: int = Field(
        2, ge=1,
        description="People per frame at most; each extra person costs one more pass "
        "(found people are masked out and the frame is searched again).",
    )


class PoseChecksConfig(Strict):
    """Self-consistency checks on the subject's skeleton before any question is asked
    (stages/pose_checks.py, docs/label_quality.md). A failing joint gets score 0; a failing
    frame gets a flag and no geometry question."""

    flip_test: bool = Field(
        True,
        description="Run the pose model on the mirrored frames too (one more call per frame) "
        "and keep only joints and sides both runs agree on.",
    )
    flip_tolerance: float = Field(
        0.15, gt=0, description="Torso lengths a joint may move between the two runs."
    )
    confirm_score: float = Field(
        0.7, ge=0, le=1,
        description="Flip test: a joint is kept only if both runs score it at least this "
        "(and pose.min_keypoint_score); others get score 0.",
    )
    side_continuity: bool = Field(
        True, description="Flag frames whose left/right flip abruptly against the track's."
    )
    plausibility: bool = Field(
        True, description="Flag upside-down, over-long-boned and squashed skeletons."
    )
    person_detector: Literal["hog", "none"] = Field(
        "hog",
        description="Person detector independent of the pose model (OpenCV HOG, CPU, offline): "
        "counts people the pose model missed and checks overlaps.",
    )
    face_detector: Literal["auto", "blazeface", "none"] = Field(
        "auto",
        description="Face detector independent of the pose model (BlazeFace full-range from the "
        "mediapipe wheel): a face no skeleton explains is a missed person, or, inside the "
        "subject's box, a second person merged into it. auto = blazeface with the mediapipe "
        "backend, none with ultralytics (the gpu image has no mediapipe).",
    )
    sides: bool = Field(
        True,
        description="No geometry question on frames whose sides a viewer cannot tell: torso "
        "leaning past max_side_lean, legs crossed.",
    )
    max_side_lean: float = Field(
        45.0, gt=0, le=90, description="Degrees from vertical beyond which sides are unclear."
    )
    hidden_within_s: float = Field(
        1.0, ge=0,
        description="A person who touched the subject's box this close in time and is missing "
        "from a frame is taken as hidden behind or merged into the subject: no geometry question "
        "there (0 turns it off).",
    )
    max_overlap: float = Field(
        0.3, ge=0, le=1,
        description="Subject frames whose box overlaps another person's by more IoU than this "
        "(or holds its centre) get no geometry question.",
    )


class PoseConfig(Strict):
    backend: Literal["mediapipe", "ultralytics", "none"] = Field(
        "mediapipe", description="Pose backend: mediapipe (CPU, offline) or ultralytics (GPU)."
    )
    min_keypoint_score: float = Field(0.5, description="Joints below this score give no facts.")
    subject_rule: Literal["largest_area", "most_frames", "center"] = Field(
        "most_frames",
        description="Main subject track: most_frames = seen in most sampled frames; "
        "largest_area = largest mean box; center = box centre nearest the frame centre (these "
        "two among tracks seen in >= half as many frames as the most-seen). Ties: larger mean "
        "box area.",
    )
    crop_margin: float = Field(0.15, description="Margin around the subject box in crops.")
    checks: PoseChecksConfig = Field(default_factory=PoseChecksConfig)
    ultralytics: UltralyticsConfig = Field(default_factory=UltralyticsConfig)
    mediapipe: MediaPipeConfig = Field(default_factory=MediaPipeConfig)
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1, batch_size=1))


class TemporalOrderConfig(Strict):
    frames: int = Field(4, ge=2, le=8, description="Frames shown (shuffled) per question.")
    samples_per_video: int = Field(2, ge=0, description="Questions per video at most.")
    min_frame_diff: float = Field(
        3.0,
        description="Mean absolute grey-level difference (0-255) required between frames "
        "adjacent in time; closer frames cannot be told apart. With pose output it is measured "
        "over the subject's boxes (a walker in a wide static shot changes a few percent of the frame).",
    )
    min_pose_motion: float = Field(
        0.5,
        description="When pose is on: subject pose change (torso lengths, mirror-invariant) "
        "required between frames adjacent in time, and by which each frame must be farther "
        "from the first frame than the one before it (a one-way change). 0.5: at 0.3 the audit "
        "found two tai chi lunges a viewer could not order.",
    )
    min_gap_s: float = Field(0.4, ge=0, description="Seconds between frames adjacent in time.")
    min_span_s: float = Field(1.5, ge=0, description="Seconds from the first to the last frame.")
    require_subject: bool = Field(
        True, description="When pose ran: no question without a subject in every shown frame."
    )


class TemporalDirectionConfig(Strict):
    frames: int = Field(4, ge=2, le=16, description="Frames in the short clip.")
    samples_per_video: int = Field(2, ge=0, description="Clips per video at most.")
    min_frame_diff: float = Field(
        3.0, description="Grey-level difference required between the clip's first and last frame."
    )
    min_span_s: float = Field(1.5, ge=0, description="Seconds from the first to the last frame.")
    min_net_motion: float = Field(
        0.6,
        description="When pose is on: subject pose change (torso lengths) from the first to the "
        "last frame.",
    )
    min_straightness: float = Field(
        0.7, ge=0, le=1,
        description="When pose is on: first-to-last pose change / the summed frame-to-frame "
        "changes; near-periodic or returning motion scores low and gets no clip.",
    )
    require_subject: bool = Field(
        True, description="When pose ran: no clip without a subject in every frame."
    )


class SpatialGroundingConfig(Strict):
    samples_per_video: int = Field(4, ge=0, description="Questions per video at most.")
    coord_format: Literal["0_1000", "0_1"] = Field(
        "0_1000",
        description="Convention of the question/answer text: 0-1000 integers (Qwen2.5-VL "
        "grounding) or 0-1 fractions; answer_struct is always 0-1 fractions.",
    )
    kinds: list[Literal["point", "box"]] = Field(
        default_factory=lambda: ["point", "box"],
        description="point = one joint's point; box = a limb's box (shoulder-elbow-wrist, "
        "hip-knee-ankle).",
    )
    edge_margin: float = Field(
        0.01, ge=0.01,
        description="Joints closer than this (0-1) to the frame edge get no question; may be "
        "raised, not lowered below the documented rule (docs/posecodes.md).",
    )
    min_side_separation: float = Field(
        0.25, ge=0.15,
        description="A left/right joint is asked only if its other-side twin is confident and "
        "at least this far (body-size units) away, so the side is unambiguous; may be raised "
        "(not below the documented 0.15). 0.25: a batter's shoulders 0.15 apart in a side view "
        "were read the wrong way round (bench/label_precision.py, COCO 196141).",
    )


class BodyPartStateConfig(Strict):
    samples_per_video: int = Field(4, ge=0, description="Questions per video at most.")
    max_choices: int = Field(4, ge=2, le=4, description="Options per question at most.")
    min_choices: int = Field(
        3, ge=2, le=4, description="Fewer definitely-wrong states than this: no question."
    )
    angle_margin: float = Field(
        10.0, ge=10.0,
        description="Degrees a joint angle must clear its threshold by (docs/posecodes.md); "
        "may be raised, not lowered below the documented rule.",
    )
    position_margin: float = Field(
        0.1, ge=0.1,
        description="Body-size units a position must clear its threshold by; may be raised.",
    )


class MotionCompareConfig(Strict):
    samples_per_video: int = Field(4, ge=0, description="Questions per video at most.")
    kinds: list[Literal["most_moved", "up_down", "left_right"]] = Field(
        default_factory=lambda: ["most_moved", "up_down"],
        description="Question kinds; left_right asks about IMAGE left/right and says so.",
    )
    min_pose_motion: float = Field(
        0.1, ge=0.0,
        description="Mean subject keypoint motion (body-size units) the two frames must differ by.",
    )
    max_choices: int = Field(4, ge=2, le=9, description="Options of a most-moved question.")
    direction_margin: float = Field(
        0.15, ge=0.15,
        description="Body-size units a part must move along the asked axis (relative to the "
        "hips and in the image); may be raised.",
    )
    most_moved_margin: float = Field(
        0.2, ge=0.2,
        description="Body-size units by which the most moved part must beat every other part; "
        "may be raised.",
    )
    most_moved_ratio: float = Field(
        2.0, ge=2.0,
        description="Times as far as any other part the most moved part must have moved (the "
        "runner-up moved under half as much); may be raised.",
    )


class CaptionTaskConfig(Strict):
    """pose_description / pose_difference: who writes them (docs/captions.md)."""

    generator: Literal["auto", "rules", "mllm"] = Field(
        "auto",
        description="rules = captions written from the pose geometry (no MLLM; answer_source "
        "geometry, the facts used in answer_struct); mllm = written by the MLLM (needs "
        "mllm.enabled); auto = mllm when mllm.enabled, else rules.",
    )
    samples_per_video: int = Field(1, ge=0, description="Rule-written rows per video at most.")
    min_facts: int = Field(
        2, ge=1, description="Rule captions need at least this many facts true with margin."
    )
    min_pose_motion: float = Field(
        0.15, ge=0.0,
        description="pose_difference (rules): mean subject keypoint motion (body-size units) "
        "the two frames must differ by.",
    )
    angle_margin: float = Field(
        15.0, ge=10.0,
        description="Degrees a joint angle must clear its threshold by for a caption fact (and "
        "for a wrong option to count as definitely false); stricter than the documented 10 on "
        "purpose (docs/captions.md); may be raised.",
    )
    position_margin: float = Field(
        0.15, ge=0.1,
        description="Body-size units a position must clear its threshold by, for captions; "
        "may be raised.",
    )


class MatchTaskConfig(Strict):
    """description_match / change_match: pick the caption that fits, among 4 (docs/captions.md)."""

    samples_per_video: int = Field(2, ge=0, description="Questions per video at most.")
    min_facts: int = Field(
        2, ge=1, description="The true caption states at least this many facts "
        "(description_match: every one of the 4 options)."
    )
    min_pose_motion: float = Field(
        0.1, ge=0.0,
        description="change_match: mean subject keypoint motion (body-size units) the two "
        "frames must differ by.",
    )
    angle_margin: float = Field(
        15.0, ge=10.0,
        description="Degrees a joint angle must clear its threshold by for a caption fact (and "
        "for a wrong option to count as definitely false); stricter than the documented 10 on "
        "purpose (docs/captions.md); may be raised.",
    )
    position_margin: float = Field(
        0.15, ge=0.1,
        description="Body-size units a position must clear its threshold by, for captions; "
        "may be raised.",
    )


class TasksConfig(Strict):
    enabled: list[str] = Field(
        default_factory=lambda: ["temporal_order"],
        description="Task names to build (see the task catalogue). temporal_direction is not on "
        "by default: a person cannot tell most human motion played backwards from forwards.",
    )
    seed: int = Field(0, description="Seed; with video_id it fixes every random choice.")
    temporal_order: TemporalOrderConfig = Field(default_factory=TemporalOrderConfig)
    temporal_direction: TemporalDirectionConfig = Field(default_factory=TemporalDirectionConfig)
    spatial_grounding: SpatialGroundingConfig = Field(default_factory=SpatialGroundingConfig)
    body_part_state: BodyPartStateConfig = Field(default_factory=BodyPartStateConfig)
    motion_compare: MotionCompareConfig = Field(default_factory=MotionCompareConfig)
    pose_description: CaptionTaskConfig = Field(default_factory=CaptionTaskConfig)
    pose_difference: CaptionTaskConfig = Field(default_factory=CaptionTaskConfig)
    description_match: MatchTaskConfig = Field(default_factory=MatchTaskConfig)
    change_match: MatchTaskConfig = Field(default_factory=MatchTaskConfig)
    version: str = Field("1", description="Bump to regenerate rows after task-logic changes.")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1, batch_size=4))


class EndpointConfig(Strict):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible vLLM URL.")
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="Served model name.")
    api_key: Optional[SecretStr] = Field(
        None, description="API key; null = env OPENAI_API_KEY or 'EMPTY'. Never logged."
    )
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(3, ge=0, description="Retries after a timeout, 5xx or invalid JSON.")
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles each retry.")
    concurrency: int = Field(8, ge=1, description="Requests in flight per worker.")
    circuit_breaker: int = Field(
        5, ge=1, description="Consecutive connection failures after which a worker stops calling."
    )
    structured_output: Literal["response_format", "extra_body", "none"] = Field(
        "response_format",
        description="How the JSON schema is sent: OpenAI response_format json_schema, vLLM's "
        "extra_body structured_outputs, or none (servers without guided decoding; the "
        "reply is still parsed strictly).",
    )


class EngineConfig(Strict):
    """Engine mode: the job serves the model itself, once per replica, for every MLLM pass."""

    model_source: str = Field(
        "Qwen/Qwen2.5-VL-7B-Instruct",
        description="Local path (weights pre-staged on the node) or HF id; also the served name.",
    )
    concurrency: int = Field(
        1, ge=1, description="vLLM server replicas, shared by every MLLM task and worker."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica.")
    num_gpus: Optional[float] = Field(
        None, ge=0, description="GPUs Ray reserves per replica; null = tensor_parallel_size "
        "(0 only for a CPU build of vLLM, as the tests use).",
    )
    max_model_len: int = Field(8192, description="Context length.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vLLM server arguments: {max_num_seqs: 64} -> --max-num-seqs 64 "
        "(true: a bare flag; dicts/lists as JSON).",
    )
    python: Optional[str] = Field(
        None, description="Python with vLLM installed; null = the Ray worker's own interpreter."
    )
    host: str = Field(
        "auto", description="Address the replicas listen on and are called at; auto = the IP "
        "of the Ray node each replica lands on.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment of the server processes (e.g. VLLM_CPU_KVCACHE_SPACE). "
        "Not for secrets: the manifest records it; a token comes from the node's env.",
    )
    startup_timeout_s: float = Field(
        1800.0, gt=0, description="Longest wait for a replica to load the model and answer."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica (e.g. {gpu_node: 0.01}); each replica also "
        "takes num_gpus GPUs (no CPU reservation).",
    )


class SamplingConfig(Strict):
    temperature: float = Field(0.2, ge=0, description="Sampling temperature.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling.")
    max_tokens: int = Field(512, ge=16, description="Completion token cap per request.")
    seed: int = Field(0, description="Sampling seed (reproducible where the server honours it).")


class MLLMConfig(Strict):
    enabled: bool = Field(False, description="Run the MLLM tasks (needs an endpoint or GPUs).")
    mode: Literal["endpoint", "engine"] = Field(
        "endpoint", description="endpoint = an existing `vllm serve` URL; engine = the job starts "
        "its own vLLM server replicas (mllm.engine) and every MLLM pass shares them."
    )
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    image_max_side: int = Field(448, ge=64, description="Images are downscaled to this for the model.")
    questions_per_video: int = Field(2, ge=1, le=4, description="synthesized_qa questions per video.")
    min_pose_motion: float = Field(
        0.15, description="pose_difference frames must differ by this much subject motion."
    )
    rule_draft: bool = Field(
        False,
        description="pose_description (generator mllm): give the model the rule-written caption "
        "as a draft to rewrite; the rewrite must keep every fact and contradict none "
        "(docs/captions.md).",
    )
    on_verify_fail: Literal["keep", "drop"] = Field(
        "keep", description="keep = write rows with verified=false; drop = leave them out (counted)."
    )
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.5, batch_size=2))


class WriteConfig(Strict):
    rows_per_file: int = Field(
        2000, ge=1,
        description="Target rows per Parquet shard. Writers stage one small file per task per "
        "batch; the commit compacts them (in parallel) into files of at least this many rows "
        "(all but the last of each task and split; a last one under half the target joins the "
        "file before it), never splitting one video's rows of a task.",
    )
    compression: str = Field("zstd", description="Parquet compression codec.")
    commit_parallelism: int = Field(
        16, ge=1,
        description="Storage requests in flight at commit (staged-file compaction, record "
        "reads, deletes): threads on the driver, or Ray tasks on a multi-node cluster.",
    )
    commit_on_workers_min_files: int = Field(
        64, ge=1,
        description="On a multi-node cluster, a commit that writes at least this many shard "
        "files compacts them in Ray tasks on the workers (the driver moves no rows); fewer "
        "are written by the driver's threads (starting task workers costs more).",
    )
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1, batch_size=16))


class BalanceConfig(Strict):
    enabled: bool = Field(
        True,
        description="Drop the fewest rows so that a blind, text-only baseline scores at most "
        "chance + max_excess on every multiple-choice task (docs/dataset.md#balancing). Runs at "
        "commit over all rows (carried ones count); dropped rows are counted in report.json.",
    )
    max_excess: float = Field(
        0.03, ge=0.0, le=1.0,
        description="Blind-baseline accuracy allowed above chance, per task and per two-choice "
        "kind (e.g. up/down).",
    )


class SplitConfig(Strict):
    train: float = Field(0.9, ge=0.0, le=1.0, description="Share of near-duplicate groups in train.")
    validation: float = Field(0.05, ge=0.0, le=1.0, description="Share in validation.")
    test: float = Field(0.05, ge=0.0, le=1.0, description="Share in test.")
    seed: int = Field(0, description="Seed of the group -> split assignment.")
    max_hamming: int = Field(
        10, ge=0, le=32,
        description="Two sampled frames match when their 64-bit difference hashes differ in at "
        "most this many bits.",
    )
    min_matched: float = Field(
        0.5, gt=0.0, le=1.0,
        description="Two videos are near-duplicates (same group, same split) when this share of "
        "one's sampled frames match frames of the other (re-encoded, resized or trimmed copies).",
    )

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1 (train + validation + test = {total})")
        return self


class RayConfig(Strict):
    address: Optional[str] = Field(
        None, description="Ray address; null = RAY_ADDRESS if set, else a local ray.init()."
    )
    num_cpus: Optional[int] = Field(None, description="CPUs of a local Ray instance.")
    progress_bars: bool = Field(True, description="Ray Data progress bars.")
    max_task_retries: int = Field(
        3, ge=0,
        description="Retries of a stage call whose worker died (killed, OOM, crashed in native "
        "code, node lost); Ray restarts the worker each time. After the last, that call's "
        "videos are reported failed ('pipeline: lost: ...') and the run goes on.",
    )
    videos_per_block: int = Field(
        256, ge=1,
        description="Most videos per Ray Data input block. Listing is cut into blocks of this "
        "many videos (fewer when needed to give every CPU several blocks), so the driver holds "
        "a few thousand block references for a million videos, not one object per video.",
    )
    lost_video_passes: int = Field(
        1, ge=0,
        description="After the dataset is consumed, videos without a record (their blocks were "
        "lost with a node, or their worker died on every retry) are run again this many times "
        "before they are reported 'pipeline: lost'.",
    )
    unschedulable_timeout_s: float = Field(
        900.0, gt=0,
        description="A stage whose workers fit on no live node (CPUs, GPUs, custom resources) "
        "for this long ends the run with exit 3 and one line (resumable), instead of a hang. "
        "Keep it above the time your autoscaler takes to add a node of that kind.",
    )
    stall_timeout_s: float = Field(
        600.0, gt=0,
        description="A pass that lost a node and then produced no output for this long ends "
        "the run with exit 3 and one line (resumable), instead of waiting for blocks Ray "
        "cannot rebuild. Keep it above the longest a single batch takes.",
    )
    fuse_stages: bool = Field(
        False,
        description="Run the CPU stages of a video in one worker (one per CPU) instead of one "
        "worker pool per stage: no frames pass between processes and 2 actors start instead "
        "of 5, for single-machine CPU runs (configs/local.yaml; docs/performance.md). The MLLM "
        "stage keeps its own pool (it waits on a server). Ignored, with a warning, when a "
        "stage asks for GPUs or custom resources (placement wins).",
    )
    shared_paths: bool = Field(
        False,
        description="Local input/output paths are on storage every Ray node sees (NFS, a "
        "shared volume). Without it, a local path on a cluster of more than one node is "
        "refused: each worker would read and write its own disk.",
    )


class LockConfig(Strict):
    """One run at a time per output: OUT/_lock.json, created atomically (O_EXCL locally, a
    conditional PUT with If-None-Match on S3)."""

    enabled: bool = Field(True, description="Take the output lock (--incremental and --full).")
    heartbeat_s: float = Field(30.0, gt=0, description="The holder refreshes the lock this often.")
    expiry_s: float = Field(
        600.0, gt=0,
        description="A lock whose heartbeat is older than this is taken over (logged): its "
        "holder died without releasing it.",
    )


class Config(Strict):
    input: Optional[str] = Field(
        None, description="Folder, s3:// prefix or manifest (.txt/.csv/.jsonl/.parquet)."
    )
    output: str = Field("out", description="Output root (local path or s3:// prefix).")
    run_id: Optional[str] = Field(None, description="Run id; null = time-based.")
    video_extensions: list[str] = Field(
        default_factory=lambda: [".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v"],
        description="Extensions listed from folders and prefixes.",
    )
    s3: S3Config = Field(default_factory=S3Config)
    limits: Limits = Field(default_factory=Limits)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    pose: PoseConfig = Field(default_factory=PoseConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    mllm: MLLMConfig = Field(default_factory=MLLMConfig)
    write: WriteConfig = Field(default_factory=WriteConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    lock: LockConfig = Field(default_factory=LockConfig)

    @model_validator(mode="after")
    def _resolve_caption_generators(self) -> Config:
        # `auto` follows the MLLM switch, so `--set mllm.enabled=true` on a config that writes
        # rule captions gets MLLM-written ones, and the rest of the code sees rules or mllm.
        for task in (self.tasks.pose_description, self.tasks.pose_difference):
            if task.generator == "auto":
                task.generator = "mllm" if self.mllm.enabled else "rules"
        return self


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{path}'"
    return f"invalid config key '{path}': {first['msg']}"


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load YAML (safely), apply `key.path=value` overrides (values parsed as YAML)."""
    tree: dict = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key.strip()}: value is not valid YAML: "
                              f"{str(exc).splitlines()[0]}") from None
        _set_dotted(tree, key.strip(), value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


MASK = "**********"
_SECRET_KEY = re.compile(r"token|secret|passw|credential|api_?key|(^|_)key$", re.IGNORECASE)
_URL_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)


def public_dump(cfg: Config) -> dict:
    """Config as JSON for manifests: secrets masked. SecretStr fields dump as MASK; so do
    free-form values under secret-looking keys (e.g. mllm.engine.engine_kwargs.hf_token)
    and the user:password part of URLs (endpoint_url, base_url)."""
    return _scrub(cfg.model_dump(mode="json"))


def _scrub(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, key) for v in value]
    if isinstance(value, str):
        if value and _SECRET_KEY.search(key):
            return MASK
        return _URL_USERINFO.sub(rf"\1{MASK}@", value)
    return value


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every key: the config reference."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if sub is not None:
            rows.extend(describe_fields(sub, key + "."))
            continue
        default = field.get_default(call_default_factory=True)
        rows.append((key, json.dumps(default, default=str), field.description or ""))
    return rows
