"""MLLM tasks (ActionArt's proxy tasks): what to ask, and what a reply becomes.

Pure functions: the output schemas, request building (frames, prompts, hints), strict reply
parsing and reply -> verified rows. The planner (stages/mllm_plan.py) decides which of them
run for a video; both ways of reaching the model use it.
"""
from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from proxyqa.core.config import MLLMConfig
from proxyqa.core.people import Subject, people_counts
from proxyqa.stages import posecodes, prompts
from proxyqa.stages.sampling import RunContext, make_sample, rng_for
from proxyqa.stages.tasks_captions import frame_caption
from proxyqa.stages.verify import check_motion, check_states
from proxyqa.stages.verify_captions import check_rewrite

Part = Literal["head", "torso", "left_arm", "right_arm", "left_leg", "right_leg"]
PART_TITLES = {"head": "Head", "torso": "Torso", "left_arm": "Left arm", "right_arm": "Right arm",
               "left_leg": "Left leg", "right_leg": "Right leg"}
TEXT = dict(min_length=1, max_length=160)  # bounded strings keep small models' JSON closing


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoseDescription(_Out):
    head: str = Field(**TEXT)
    torso: str = Field(**TEXT)
    left_arm: str = Field(**TEXT)
    right_arm: str = Field(**TEXT)
    left_leg: str = Field(**TEXT)
    right_leg: str = Field(**TEXT)


class PartChange(_Out):
    part: Part
    change: str = Field(**TEXT)


class PoseDifference(_Out):
    changes: list[PartChange] = Field(min_length=1, max_length=4)


class MultipleChoice(_Out):
    question: str = Field(min_length=1, max_length=200)
    choices: list[str] = Field(min_length=4, max_length=4)
    answer_index: int = Field(ge=0, le=3)
    part: Part


class SynthesizedQA(_Out):
    questions: list[MultipleChoice] = Field(min_length=1, max_length=4)


OUTPUT_MODELS: dict[str, type[_Out]] = {
    "pose_description": PoseDescription,
    "pose_difference": PoseDifference,
    "synthesized_qa": SynthesizedQA,
}


def json_schema(task: str) -> dict:
    return OUTPUT_MODELS[task].model_json_schema()


@dataclass
class Request:
    """One model call: the prompt, its images (JPEG) and what the reply will be about."""

    task: str
    prompt: str
    prompt_version: str
    images: list[bytes]
    positions: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def messages(self, image_max_side: int, cache: Optional[dict] = None) -> list[dict]:
        """`cache`: (jpeg, max side) -> data URL, shared by requests that send the same
        frames (a video's description and QA requests), so each is encoded once."""
        content: list[dict] = [{"type": "image_url", "image_url": {"url": _cached_url(img, image_max_side, cache)}}
                               for img in self.images]
        content.append({"type": "text", "text": self.prompt})
        return [{"role": "user", "content": content}]


def _cached_url(jpeg: bytes, max_side: int, cache: Optional[dict]) -> str:
    if cache is None:
        return data_url(jpeg, max_side)
    key = (jpeg, max_side)          # bytes hash once per object; a hit is mostly by identity
    if key not in cache:
        cache[key] = data_url(jpeg, max_side)
    return cache[key]


def data_url(jpeg: bytes, max_side: int) -> str:
    """base64 JPEG data URL, downscaled so the longer side <= max_side."""
    size = _jpeg_size(jpeg)
    if size is not None and max(size) <= max_side:   # sent as it is: no need to decode it
        return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is not None and max(img.shape[:2]) > max_side:
        scale = max_side / max(img.shape[:2])
        img = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA)
        jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def _jpeg_size(jpeg: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from the JPEG header (Pillow reads only the header), or None."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(jpeg)) as im:
            return im.size if im.format == "JPEG" else None
    except Exception:  # noqa: BLE001 - no Pillow, or not a readable image: data_url decodes as before
        return None


# ---- choosing frames and writing prompts -------------------------------------------------

def _subject(row: dict) -> Optional[Subject]:
    return Subject.from_json(row["subject_json"]) if row.get("subject_json") else None


def _hints(facts: dict) -> str:
    lines = [f"- {part.replace('_', ' ')}: {state}" for part, state in sorted(facts["states"].items())]
    lines += [f"- {name.replace('_', ' ')}" for name, value in sorted(facts["relations"].items()) if value]
    return "\n".join(lines) or "- (no confident measurements)"


def _subject_note(row: dict, subject: Subject, positions: list[int]) -> str:
    """Names the subject by its box (in the first image) when any shown frame has others."""
    counts = people_counts(row) or []
    crowded = any(p < len(counts) and counts[p] > 1 for p in positions)
    pos = positions[0]
    if not crowded or not subject.boxes[pos]:
        return ""
    box = ", ".join(str(int(round(v * 1000))) for v in subject.boxes[pos])
    where = "of the image" if len(positions) == 1 else "of Image 1"
    return f" (the person in the box [{box}], coordinates 0-1000 {where})"


def description_request(row: dict, ctx: RunContext, min_score: float,
                        draft: bool = False) -> Optional[Request]:
    subject = _subject(row)
    present = [i for i, k in enumerate(subject.keypoints) if k is not None] if subject else []
    if not present:
        return None
    pos = int(rng_for(row, "pose_description", ctx.seed).choice(present))
    facts = posecodes.facts(subject.keypoints[pos], row["width"], row["height"], min_score)
    crops = row.get("subject_crops_jpeg") or []
    use_crop = pos < len(crops) and crops[pos] is not None
    image = crops[pos] if use_crop else row["frames_jpeg"][pos]
    note = "" if use_crop else _subject_note(row, subject, [pos])
    meta: dict[str, Any] = {"image": "subject_crop" if use_crop else "frame"}
    caption = frame_caption(subject.keypoints[pos], row["width"], row["height"], min_score,
                            f"{row.get('content_id') or row['video_id']}|{pos}") if draft else None
    if caption is not None:   # mllm.rule_draft: rewrite the rule caption (docs/captions.md)
        prompt, version = prompts.render("pose_description_rewrite", draft=caption[0],
                                         subject_note=note)
        meta.update(draft=caption[0], draft_facts=caption[1])
    else:
        prompt, version = prompts.render("pose_description", hints=_hints(facts), subject_note=note)
    return Request("pose_description", prompt, version, [image], [pos], meta)


def difference_request(row: dict, ctx: RunContext, min_score: float, min_motion: float) -> Optional[Request]:
    subject = _subject(row)
    if not subject:
        return None
    kps, w, h = subject.keypoints, row["width"], row["height"]
    present = [i for i, k in enumerate(kps) if k is not None]
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]
    poses = {i: posecodes.Pose(kps[i], w, h, min_score) for i in present}   # each frame parsed once
    moving = [(a, b) for a, b in pairs
              if (posecodes.pose_motion(poses[a], poses[b], w, h, min_score) or 0.0) >= min_motion]
    if not moving:
        return None
    a, b = moving[int(rng_for(row, "pose_difference", ctx.seed).integers(len(moving)))]
    motion = posecodes.joint_motion(kps[a], kps[b], w, h, min_score)
    hints = [f"- {part.replace('_', ' ')} moved {m.vertical}" for part, m in sorted(motion.items())
             if m.vertical]
    seconds = f"{row['timestamps'][b] - row['timestamps'][a]:.2f}"
    prompt, version = prompts.render(
        "pose_difference", seconds=seconds, subject_note=_subject_note(row, subject, [a, b]),
        hints="\n".join(hints) or "- (no confident measurements)")
    return Request("pose_difference", prompt, version, [row["frames_jpeg"][a], row["frames_jpeg"][b]],
                   [a, b])


def qa_request(row: dict, description: dict, desc_request: Request, count: int) -> Request:
    text = "\n".join(f"- {PART_TITLES[p]}: {description[p]}" for p in PART_TITLES)
    prompt, version = prompts.render("synthesized_qa", descriptions=text, count=str(count))
    return Request("synthesized_qa", prompt, version, desc_request.images, desc_request.positions,
                   {"image": desc_request.meta.get("image")})


# ---- replies -> rows -----------------------------------------------------------------------

def parse_reply(task: str, text: str) -> dict:
    """Strict: the whole reply must be one JSON value valid under the task's schema."""
    return OUTPUT_MODELS[task].model_validate_json(text).model_dump()


DESCRIBE_Q = ("Describe this person's pose body part by body part (head, torso, left arm, right arm, "
              "left leg, right leg). Left and right mean the person's own left and right.")
DIFFERENCE_Q = ("What changed in the person's pose between Image 1 and Image 2? Left and right mean "
                "the person's own left and right.")


def rows_from_reply(row: dict, req: Request, parsed: dict, generator: dict, ctx: RunContext,
                    min_score: float) -> list[dict]:
    subject = _subject(row)
    kps = subject.keypoints if subject else []
    w, h = row["width"], row["height"]
    common = dict(positions=req.positions, answer_source="mllm", images=req.images)
    if req.task == "pose_description":
        verdict = check_states({p: parsed[p] for p in PART_TITLES}, kps[req.positions[0]], w, h, min_score)
        answer = "\n".join(f"{PART_TITLES[p]}: {parsed[p]}" for p in PART_TITLES)
        struct = parsed
        if "draft_facts" in req.meta:   # a rewrite must keep every draft fact
            struct = {**parsed, "draft": req.meta["draft"], "facts": req.meta["draft_facts"]}
            text = " ".join(f"{PART_TITLES[p]}: {parsed[p].rstrip('.')}." for p in PART_TITLES)
            kept, why = check_rewrite(text, req.meta["draft_facts"], kps[req.positions[0]], w, h,
                                      min_score)
            verdict.check("rewrite keeps the draft: " + "; ".join(why["missing"] or ["all facts"]),
                          kept)
        samples = [make_sample(row, req.task, ctx, key=f"{req.positions[0]}", question=DESCRIBE_Q,
                               answer=answer, answer_struct=struct, **common)]
        verdicts = [verdict]
    elif req.task == "pose_difference":
        a, b = req.positions
        verdict = check_motion(parsed["changes"], kps[a], kps[b], w, h, min_score)
        answer = "; ".join(f"{PART_TITLES[c['part']]}: {c['change']}" for c in parsed["changes"])
        samples = [make_sample(row, req.task, ctx, key=f"{a},{b}", question=DIFFERENCE_Q,
                               answer=answer, answer_struct=parsed, **common)]
        verdicts = [verdict]
    else:
        samples, verdicts = [], []
        for i, q in enumerate(parsed["questions"]):
            correct = q["choices"][q["answer_index"]]
            verdicts.append(check_states({q["part"]: correct}, kps[req.positions[0]], w, h, min_score))
            samples.append(make_sample(
                row, req.task, ctx, key=f"{req.positions[0]}:{i}", question=q["question"],
                choices=q["choices"], answer=correct,
                answer_struct={"index": q["answer_index"], "part": q["part"]}, **common))
    for sample, verdict in zip(samples, verdicts):
        sample["verified"], reasons = verdict.result()
        sample["verify_reasons"] = json.dumps(reasons)
        sample["generator"] = json.dumps(generator, sort_keys=True)
    return samples


def sampling_params(cfg: MLLMConfig) -> dict[str, Any]:
    s = cfg.sampling
    return {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": s.seed}


def generator_info(cfg: MLLMConfig, mode: str, req: Request, usage: dict) -> dict[str, Any]:
    """The row's `generator` provenance, the same in endpoint and engine mode."""
    model = cfg.endpoint.model if mode == "endpoint" else cfg.engine.model_source
    return {"model": model, "mode": mode, "task": req.task, "prompt_version": req.prompt_version,
            "sampling": sampling_params(cfg), "image": req.meta.get("image", "frame"), **usage}
