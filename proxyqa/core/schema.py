"""The row schema trainers rely on (docs/schema.md), and Arrow types of the columns between stages."""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "2.0"   # 2.0: template_id, difficulty, split, content_group; data/<task>/ layout

# Coordinates in answer_struct, subject_box and keypoints: fractions of the original frame.
COORD_CONVENTION = "normalized_0_1"

COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)

TASK_FAMILY = {
    "pose_description": "spatial",
    "spatial_grounding": "spatial",
    "body_part_state": "spatial",
    "temporal_order": "temporal",
    "temporal_direction": "temporal",
    "motion_compare": "temporal",
    "pose_difference": "temporal",
    "synthesized_qa": "both",
    "description_match": "spatial",
    "change_match": "temporal",
}
# Tasks whose answers the MLLM writes (in this order: each may depend on the one before).
MLLM_TASKS = ("pose_description", "pose_difference", "synthesized_qa")

KEYPOINTS_TYPE = pa.list_(pa.list_(pa.list_(pa.float32())))

# How hard a row is (docs/dataset.md#difficulty); a field is null where the task has no such figure.
DIFFICULTY_TYPE = pa.struct([
    ("time_gap_s", pa.float64()),    # temporal_order: smallest gap between frames adjacent in time;
                                     # temporal_direction: the clip's span; motion_compare: the two frames' gap
    ("frame_diff", pa.float64()),    # grey-level difference (0-255): temporal_order smallest adjacent,
                                     # temporal_direction first vs last frame
    ("margin", pa.float64()),        # geometry: how far the deciding value clears its threshold
    ("motion", pa.float64()),        # subject motion in body-size units
])
DIFFICULTY_FIELDS = tuple(f.name for f in DIFFICULTY_TYPE)
SPLITS = ("train", "validation", "test")

# One QA sample: the Parquet columns of docs/schema.md plus a few that make rows self-describing.
SAMPLE_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("video_id", pa.string()),
    ("video_uri", pa.string()),
    ("task", pa.string()),
    ("family", pa.string()),
    ("question", pa.string()),
    ("choices", pa.list_(pa.string())),
    ("answer", pa.string()),
    ("answer_struct", pa.string()),          # JSON text
    ("images", pa.list_(pa.binary())),       # JPEG bytes, in shown order
    ("frame_indices", pa.list_(pa.int64())),
    ("timestamps", pa.list_(pa.float64())),
    ("frame_size", pa.list_(pa.int32())),    # [width, height] of the original video
    ("coord_convention", pa.string()),
    ("subject_box", pa.list_(pa.float32())),
    ("keypoints", KEYPOINTS_TYPE),           # per shown image: 17 x [x, y, score]
    ("answer_source", pa.string()),          # geometry | construction | mllm
    ("verified", pa.bool_()),
    ("verify_reasons", pa.string()),         # JSON text, null when nothing was checked
    ("generator", pa.string()),              # JSON text: model, prompt version, sampling, tokens
    ("template_id", pa.string()),            # "<task>/<n>": the question template (stages/templates.py)
    ("difficulty", DIFFICULTY_TYPE),
    ("split", pa.string()),                  # train | validation | test, per group of near-duplicate videos
    ("content_group", pa.string()),          # the near-duplicate group of the video
    ("schema_version", pa.string()),
    ("pipeline_version", pa.string()),
    ("config_hash", pa.string()),
    ("run_id", pa.string()),
])

SAMPLE_STRUCT = pa.struct(list(SAMPLE_SCHEMA))

# Columns passed between stages (one row per video). Types are fixed so that blocks
# from different workers concatenate even when a batch has only nulls or empty lists.
VIDEO_COLUMN_TYPES: dict[str, pa.DataType] = {
    "video_uri": pa.string(),
    "video_id": pa.string(),
    "content_id": pa.string(),               # fingerprint of the bytes: seeds sample choices
    "size_bytes": pa.int64(),
    "mtime": pa.string(),
    "status": pa.string(),                   # ok | failed | skipped
    "reason": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
    "fps": pa.float64(),
    "duration_s": pa.float64(),
    "num_frames_total": pa.int64(),
    "frame_indices": pa.list_(pa.int64()),
    "timestamps": pa.list_(pa.float64()),
    "frames_jpeg": pa.list_(pa.binary()),
    "frame_hashes": pa.list_(pa.int64()),    # 64-bit difference hash per sampled frame (near-duplicates)
    "persons_json": pa.string(),             # per sampled frame: detected people (pose stage)
    "subject_json": pa.string(),             # per sampled frame: the subject's box/keypoints
    "subject_crops_jpeg": pa.list_(pa.binary()),
    "samples": pa.list_(SAMPLE_STRUCT),
    "errors_json": pa.string(),              # non-fatal per-sample errors (e.g. MLLM)
    "stage_times_json": pa.string(),
}

VIDEO_RECORD_SCHEMA = pa.schema([
    ("video_uri", pa.string()),
    ("video_id", pa.string()),
    ("content_id", pa.string()),             # fingerprint of the bytes (ledger, dedupe)
    ("status", pa.string()),
    ("reason", pa.string()),
    ("size_bytes", pa.int64()),
    ("counts_json", pa.string()),            # rows per task
    ("errors_json", pa.string()),
    ("shards", pa.list_(pa.string())),
    ("run_id", pa.string()),
    ("config_hash", pa.string()),
    ("frame_hashes", pa.list_(pa.int64())),  # perceptual hashes of the sampled frames (splits)
])


def to_arrow(columns: dict[str, list]) -> pa.Table:
    """A column dict -> Arrow table, with the fixed types of known columns."""
    arrays = {}
    for name, values in columns.items():
        arrays[name] = pa.array(values, type=VIDEO_COLUMN_TYPES.get(name))
    return pa.table(arrays)


def empty_sample() -> dict:
    return {field.name: None for field in SAMPLE_SCHEMA}
