"""Label precision: are spatial_grounding / body_part_state answers right about the IMAGE?

    python bench/label_precision.py [--shared ../shared] [--set tasks.x=y ...] [--out bench/results]

Every hand-labelled image of ../shared/data/coco_pose and ../shared/data/pose_gt/* (COCO,
AI Challenger, CrowdPose, MPII, PoseTrack18) becomes a still clip (the image repeated for 2 s),
the pipeline of configs/local.yaml runs over the clips (local executor, writer left out), and
every spatial_grounding and body_part_state row is judged against the hand labels of the
person it is about:

- **Whose row.** The row's skeleton (its `keypoints`) is matched to the labelled person it
  lies on: among labelled people sharing >= 3 joints with it, the one with the smallest
  median joint distance (in that person's torso lengths, the smaller of the same-side and
  the left/right-exchanged assignment, so a mirrored skeleton still finds its person and is
  then judged wrong), if that median is < 0.5. A skeleton that matches nobody but has most
  of its confident joints inside a labelled person's box counts as WRONG (a merged or
  collapsed skeleton); one clear of every labelled person (an unlabelled bystander) is not
  judged.
- **Point** (`spatial_grounding`, point): right when within 0.2 x the labelled person's
  torso length (mean shoulder-hip distance) of the labelled joint; not judged when that
  joint has no label.
- **Box** (`spatial_grounding`, limb box): right when every labelled joint of the limb
  (at least 2) lies inside the answer box grown by 0.2 torso lengths, and the box has IoU
  >= 0.5 with the box the documented rule draws around the labelled joints.
- **State** (`body_part_state`): the documented rule run on the labelled keypoints with 5
  degrees (and 0.05 torso lengths) of slack: the answer is WRONG when the rule says the
  state is false beyond the slack, right when true or inside the slack, not judged when the
  labels lack a joint the state needs. Sets whose labels have a head-top point instead of
  face points (MPII, AIC, CrowdPose) get a stand-in face point 0.25 torso lengths below
  it, so "top of the head" is the labelled head top.

Prints precision (right / judged) and yield (rows, judged rows, right rows) per set and per
task; writes <out>/label_precision.json with every judged row.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxyqa.core.people import box_iou  # noqa: E402
from proxyqa.core.schema import COCO17  # noqa: E402
from proxyqa.stages import posecodes as pc  # noqa: E402
from proxyqa.stages.mirror import SWAP  # noqa: E402

J = {n: i for i, n in enumerate(COCO17)}
POINT_TOL = 0.2          # torso lengths
MATCH_MAX = 0.5          # median joint distance (torso lengths) for a skeleton to be a person's
STATE_SLACK_DEG = 5.0
STATE_SLACK_POS = 0.05
BOX_MIN_IOU = 0.5
STILL_FRAMES = 16
STILL_FPS = 8
JUDGED_TASKS = ("spatial_grounding", "body_part_state")


@dataclass
class Labelled:
    kps: np.ndarray                       # 17 x [x, y, labelled] normalised
    box: list[float]                      # normalised
    head_top: Optional[np.ndarray] = None  # normalised (x, y)


@dataclass
class Image:
    set: str
    path: Path
    width: int
    height: int
    people: list[Labelled] = field(default_factory=list)


# ----------------------------------------------------------------- reading the hand labels

def _coco_like(set_name: str, ann_file: Path, root: Path, names: list[str]) -> list[Image]:
    """COCO-format files whose keypoint order is `names` (mapped to COCO-17 by name)."""
    data = json.loads(ann_file.read_text())
    aliases = {"head": "head_top", "head top": "head_top", "head_top": "head_top"}
    norm = [aliases.get(n.lower(), n.lower().replace(" ", "_")) for n in names]
    images = {}
    for info in data["images"]:
        images[info["id"]] = Image(set_name, root / info["file_name"], int(info["width"]),
                                   int(info["height"]))
    for ann in data["annotations"]:
        img = images.get(ann["image_id"])
        if img is None or not any(ann["keypoints"][2::3]):
            continue
        raw = np.asarray(ann["keypoints"], float).reshape(-1, 3)
        kps = np.zeros((17, 3))
        head_top = None
        for k, name in enumerate(norm):
            x, y, v = raw[k]
            # AIC writes v=3 for "not in the image"; every set writes 0 for "no label".
            labelled = v > 0 and v != 3 and (x > 0 or y > 0)
            if not labelled:
                continue
            xy = np.array([x / img.width, y / img.height])
            if name in J:
                kps[J[name]] = [*xy, 1.0]
            elif name == "head_top":
                head_top = xy
        x, y, w, h = ann.get("bbox") or _extent(raw)
        img.people.append(Labelled(kps, [x / img.width, y / img.height, (x + w) / img.width,
                                         (y + h) / img.height], head_top))
    return list(images.values())


def _extent(raw: np.ndarray) -> list[float]:
    pts = raw[raw[:, 2] > 0, :2]
    (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
    pad = 0.15 * max(x2 - x1, y2 - y1)
    return [x1 - pad, y1 - pad, x2 - x1 + 2 * pad, y2 - y1 + 2 * pad]


MPII_NAMES = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
              "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
              "right_shoulder", "left_shoulder", "left_elbow", "left_wrist")


def _mpii(root: Path) -> list[Image]:
    import cv2

    out: dict[str, Image] = {}
    for ann in json.loads((root / "test_mpii.json").read_text()):
        path = root / ann["image"]
        if ann["image"] not in out:
            h, w = cv2.imread(str(path)).shape[:2]
            out[ann["image"]] = Image("mpii", path, w, h)
        img = out[ann["image"]]
        kps, head_top, pts = np.zeros((17, 3)), None, []
        for name, (x, y), v in zip(MPII_NAMES, ann["joints"], ann["joints_vis"]):
            if not v or (x <= 0 and y <= 0):
                continue
            xy = np.array([x / img.width, y / img.height])
            pts.append([x, y, 1])
            if name in J:
                kps[J[name]] = [*xy, 1.0]
            elif name == "head_top":
                head_top = xy
        x, y, w, h = _extent(np.asarray(pts, float))
        img.people.append(Labelled(kps, [x / img.width, y / img.height, (x + w) / img.width,
                                         (y + h) / img.height], head_top))
    return list(out.values())


def load_sets(shared: Path) -> list[Image]:
    data = shared / "data"
    coco_names = list(COCO17)
    images = _coco_like("coco", data / "coco_pose" / "test_coco.json", data / "coco_pose",
                        coco_names)
    gt = data / "pose_gt"
    for name, ann, root in (("aic", gt / "aic" / "test_aic.json", gt / "aic"),
                            ("crowdpose", gt / "crowdpose" / "test_crowdpose.json",
                             gt / "crowdpose"),
                            ("posetrack18", gt / "posetrack18" / "annotations"
                             / "test_posetrack18_val.json", gt / "posetrack18")):
        if ann.is_file():
            cats = json.loads(ann.read_text())["categories"][0]["keypoints"]
            images += _coco_like(name, ann, root, cats)
    if (gt / "mpii" / "test_mpii.json").is_file():
        images += _mpii(gt / "mpii")
    return [img for img in images if img.people]


# ----------------------------------------------------------------------------- judging

def torso(p: Labelled, width: int, height: int) -> float:
    """Torso length in pixels (mean labelled shoulder-hip); else a third of the box height."""
    px = p.kps[:, :2] * [width, height]
    lengths = [np.linalg.norm(px[J[f"{s}_shoulder"]] - px[J[f"{s}_hip"]]) for s in ("left", "right")
               if p.kps[J[f"{s}_shoulder"], 2] and p.kps[J[f"{s}_hip"], 2]]
    if lengths:
        return float(np.mean(lengths))
    return (p.box[3] - p.box[1]) * height / 3


def _median_dist(pred: np.ndarray, p: Labelled, width: int, height: int,
                 min_score: float) -> Optional[float]:
    common = (pred[:, 2] >= min_score) & (p.kps[:, 2] > 0)
    if common.sum() < 3:
        return None
    s = torso(p, width, height)
    best = None
    for order in (list(range(17)), SWAP):
        q = pred[order]
        both = (q[:, 2] >= min_score) & (p.kps[:, 2] > 0)
        if both.sum() < 3:
            continue
        d = np.linalg.norm((q[both, :2] - p.kps[both, :2]) * [width, height], axis=1) / s
        med = float(np.median(d))
        best = med if best is None else min(best, med)
    return best


def whose(pred: np.ndarray, img: Image, min_score: float) -> tuple[str, Optional[Labelled]]:
    """('matched', person) | ('on_person', None) (judged wrong) | ('clear', None) (not judged)."""
    scored = [(d, p) for p in img.people
              if (d := _median_dist(pred, p, img.width, img.height, min_score)) is not None]
    if scored:
        d, p = min(scored, key=lambda t: t[0])
        if d < MATCH_MAX:
            return "matched", p
    conf = pred[pred[:, 2] >= min_score, :2]
    if len(conf):
        for p in img.people:
            x1, y1, x2, y2 = p.box
            inside = ((conf[:, 0] >= x1) & (conf[:, 0] <= x2) & (conf[:, 1] >= y1)
                      & (conf[:, 1] <= y2))
            if inside.mean() > 0.5:
                return "on_person", None
    return "clear", None


def _judge_point(struct: dict, p: Labelled, w: int, h: int) -> Optional[bool]:
    j = J[struct["part"]]
    if not p.kps[j, 2]:
        return None
    d = np.linalg.norm((np.asarray(struct["point"]) - p.kps[j, :2]) * [w, h])
    return bool(d <= POINT_TOL * torso(p, w, h))


def _judge_box(struct: dict, p: Labelled, w: int, h: int) -> Optional[bool]:
    names = pc.LIMBS[struct["part"]]
    idx = [J[n] for n in names if p.kps[J[n], 2]]
    if len(idx) < 2:
        return None
    s = torso(p, w, h)
    box = np.asarray(struct["box"]) * [w, h, w, h]
    pts = p.kps[idx, :2] * [w, h]
    tol = POINT_TOL * s
    inside = bool(np.all((pts[:, 0] >= box[0] - tol) & (pts[:, 0] <= box[2] + tol)
                         & (pts[:, 1] >= box[1] - tol) & (pts[:, 1] <= box[3] + tol)))
    pad = pc.LIMB_BOX_PAD * s
    lo, hi = pts.min(0) - pad, pts.max(0) + pad
    gt_box = [*np.clip(lo, 0, [w, h]), *np.clip(hi, 0, [w, h])]
    return inside and box_iou(list(box), gt_box) >= BOX_MIN_IOU


def judging_keypoints(p: Labelled, w: int, h: int) -> np.ndarray:
    """Labelled keypoints as rows store them; a stand-in face point under a head-top label."""
    kps = p.kps.copy()
    if p.head_top is not None and not kps[[J[n] for n in pc.HEAD], 2].any():
        s = torso(p, w, h) / h
        kps[J["nose"]] = [p.head_top[0], p.head_top[1] + pc.DEFAULT_RULES.head_top_offset * s, 1]
    return kps


def _judge_state(struct: dict, p: Labelled, w: int, h: int) -> Optional[bool]:
    kps = judging_keypoints(p, w, h)
    slack = pc.Rules(angle_margin=STATE_SLACK_DEG, position_margin=STATE_SLACK_POS)
    truth = pc.state_truths(kps, w, h, 0.5, slack).get(struct["part"], {}).get(struct["state"])
    if truth is not None:
        return truth
    # Unknown with slack: inside the slack (right) if the rule can be measured at all.
    exact = pc.Rules(angle_margin=0.0, position_margin=0.0)
    measurable = pc.state_truths(kps, w, h, 0.5, exact)[struct["part"]][struct["state"]]
    return None if measurable is None else True


def judge(row: dict, img: Image, min_score: float) -> tuple[Optional[bool], str]:
    """(right / wrong / None = not judged, why)."""
    pred = np.asarray(row["keypoints"][0], float)
    kind, person = whose(pred, img, min_score)
    if kind == "on_person":
        return False, "skeleton matches no labelled person but lies on one"
    if kind == "clear":
        return None, "skeleton clear of every labelled person"
    struct = json.loads(row["answer_struct"])
    w, h = img.width, img.height
    if row["task"] == "body_part_state":
        verdict = _judge_state(struct, person, w, h)
    elif "point" in struct:
        verdict = _judge_point(struct, person, w, h)
    else:
        verdict = _judge_box(struct, person, w, h)
    return verdict, "" if verdict is not None else "labels lack a joint the answer needs"


# ------------------------------------------------------------------------- the pipeline

def write_still(img: Image, path: Path) -> None:
    import cv2

    frame = cv2.imread(str(img.path))
    h, w = frame.shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), STILL_FPS, (w, h))
    for _ in range(STILL_FRAMES):
        out.write(frame)
    out.release()


def run_pipeline(images: list[Image], overrides: list[str]) -> tuple[dict[str, list[dict]], Any]:
    """Rows per still clip name (the local executor: the plan of `proxyqa run` minus the writer)."""
    from proxyqa.core.config import load_config
    from proxyqa.pipeline.fingerprint import config_hash
    from proxyqa.pipeline.local import LocalExecutor
    from proxyqa.pipeline.plan import steps
    from proxyqa.pipeline.run import open_run
    from proxyqa.pipeline.sources import list_videos
    from proxyqa.stages.base import to_batch, to_rows

    with tempfile.TemporaryDirectory(prefix="proxyqa-labels-") as tmp:
        clips = Path(tmp) / "clips"
        clips.mkdir()
        for k, img in enumerate(images):
            write_still(img, clips / f"{k:03d}.mp4")
        cfg = load_config(REPO / "configs" / "local.yaml",
                          [f"input={clips}", f"output={Path(tmp) / 'out'}",
                           "ray.progress_bars=false", *overrides])
        run = open_run(cfg, config_hash(cfg), "label-precision")
        executor = LocalExecutor(steps(cfg, run)[:-1])
        rows: dict[str, list[dict]] = {}
        for video in list_videos(cfg):
            for out in to_rows(executor.run_batch(to_batch([dict(video)]))):
                rows[Path(out["video_uri"]).stem] = list(out.get("samples") or [])
    return rows, cfg


def evaluate(shared: Path, overrides: list[str]) -> dict[str, Any]:
    images = load_sets(shared)
    rows_of, cfg = run_pipeline(images, overrides)
    min_score = cfg.pose.min_keypoint_score
    counts: dict[str, Counter] = defaultdict(Counter)
    judged_rows = []
    for k, img in enumerate(images):
        for row in rows_of.get(f"{k:03d}", []):
            if row["task"] not in JUDGED_TASKS:
                continue
            verdict, why = judge(row, img, min_score)
            for key in (img.set, f"{img.set}/{row['task']}", "all", f"all/{row['task']}"):
                c = counts[key]
                c["rows"] += 1
                c["judged"] += verdict is not None
                c["right"] += verdict is True
            judged_rows.append({"set": img.set, "image": str(img.path.relative_to(shared)),
                                "keypoints": row["keypoints"][0], "task": row["task"],
                                "answer_struct": json.loads(row["answer_struct"]),
                                "question": row["question"], "verdict": verdict, "why": why})
    table = {}
    for key, c in sorted(counts.items()):
        table[key] = {**c, "precision": round(c["right"] / c["judged"], 4) if c["judged"] else None}
    return {"images": len(images), "overrides": overrides,
            "images_per_set": dict(Counter(img.set for img in images)),
            "by_set": table, "rows": judged_rows}


def print_table(res: dict[str, Any]) -> None:
    print(f"{'set / task':<40} {'rows':>5} {'judged':>7} {'right':>6} {'precision':>9}")
    for key, c in res["by_set"].items():
        prec = "-" if c["precision"] is None else f"{c['precision']:.3f}"
        print(f"{key:<40} {c['rows']:>5} {c['judged']:>7} {c['right']:>6} {prec:>9}")
    wrong = [r for r in res["rows"] if r["verdict"] is False]
    if wrong:
        print("\nwrong rows:")
        for r in wrong:
            print(f"  {r['set']:<12} {r['image']:<60} {r['task']:<18} {r['answer_struct']} {r['why']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (repeatable), e.g. tasks.spatial_grounding.samples_per_video=8")
    ap.add_argument("--name", default="label_precision", help="result file name (no suffix)")
    args = ap.parse_args(argv)
    res = evaluate(args.shared, args.set)
    print_table(res)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps(res, indent=1, default=float))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
