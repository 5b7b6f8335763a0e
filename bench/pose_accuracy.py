"""Pose accuracy of the mediapipe backend on hand-labelled COCO people (PCK@0.2, state labels).

    python bench/pose_accuracy.py [--coco ../shared/data/coco_pose] [--out bench/results]

Predicted people are matched one-to-one to labelled people by box IoU (Hungarian, IoU >=
0.3), so the match does not depend on the keypoints being judged. PCK@0.2 is the share of
labelled joints (COCO v > 0) of matched people whose prediction lies within 0.2 x the
normaliser of the label:
- bbox (headline): max(width, height) of the labelled person box;
- torso: distance left shoulder - right hip (only people with both labelled).
pck@0.2_bbox_confident_joints counts only the joints the pipeline uses (predicted score >=
min_keypoint_score); joints_kept_at_min_score is the share of labelled joints that pass it.
body_part_state agreement: the state labels computed (stages/posecodes.py) from the
predicted and from the labelled keypoints of each matched person, where both emit one.

Writes <out>/pose_accuracy.json: the figures and every matched pair (predicted and labelled
keypoints, normalised, 17 x [x, y, score]; labelled score = 1 if labelled else 0).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxyqa.core.config import MediaPipeConfig, PoseConfig  # noqa: E402
from proxyqa.core.people import box_iou  # noqa: E402
from proxyqa.core.schema import COCO17  # noqa: E402
from proxyqa.models.mediapipe_pose import MediaPipePose  # noqa: E402
from proxyqa.stages.pose import decode_jpeg_rgb  # noqa: E402

PCK_ALPHA = 0.2
MIN_MATCH_IOU = 0.3

# (pred_kps, gt_kps, width, height): normalised 17 x [x, y, score] arrays and the image size.
Pair = tuple[np.ndarray, np.ndarray, int, int]


def extra_metrics(pairs: list[Pair], min_keypoint_score: float) -> dict[str, Any]:
    """Hook for metrics over matched people, added to the report under "extra".

    Now: agreement of body_part_state labels computed from the predicted and from the
    labelled keypoints of each pair (bench/state_agreement.py, stages/posecodes.py).
    """
    from bench.state_agreement import state_agreement

    return {"body_part_state_agreement": state_agreement(pairs, min_keypoint_score)}


def load_gt(coco_dir: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    data = json.loads((coco_dir / "test_coco.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return data["images"], by_image


def gt_keypoints(ann: dict, width: int, height: int) -> np.ndarray:
    kps = np.asarray(ann["keypoints"], np.float32).reshape(17, 3)
    out = np.zeros((17, 3), np.float32)
    out[:, 0], out[:, 1] = kps[:, 0] / width, kps[:, 1] / height
    out[:, 2] = (kps[:, 2] > 0).astype(np.float32)
    return out


def match(pred_boxes: list[list[float]], gt_boxes: list[list[float]]) -> list[tuple[int, int, float]]:
    """(pred index, gt index, IoU) pairs, one-to-one, IoU >= MIN_MATCH_IOU."""
    if not pred_boxes or not gt_boxes:
        return []
    iou = np.array([[box_iou(p, g) for g in gt_boxes] for p in pred_boxes])
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols) if iou[r, c] >= MIN_MATCH_IOU]


def joint_hits(pred: np.ndarray, gt: np.ndarray, width: int, height: int,
               norm: float) -> np.ndarray:
    """Per labelled joint: within PCK_ALPHA x norm pixels (nan where not labelled)."""
    scale = np.array([width, height])
    dist = np.linalg.norm((pred[:, :2] - gt[:, :2]) * scale, axis=1)
    hits = (dist <= PCK_ALPHA * norm).astype(float)
    hits[gt[:, 2] == 0] = np.nan
    return hits


def torso_size(gt: np.ndarray, width: int, height: int) -> float | None:
    ls, rh = COCO17.index("left_shoulder"), COCO17.index("right_hip")
    if gt[ls, 2] == 0 or gt[rh, 2] == 0:
        return None
    return float(np.linalg.norm((gt[ls, :2] - gt[rh, :2]) * [width, height]))


def evaluate(coco_dir: Path, cfg: PoseConfig) -> dict[str, Any]:
    images, by_image = load_gt(coco_dir)
    estimator = MediaPipePose(cfg.mediapipe)
    per_image, pairs_out, pairs = [], [], []
    bbox_hits, torso_hits, conf_hits, kept = [], [], [], []
    per_joint: list[list[float]] = [[] for _ in COCO17]
    ms = []
    for info in images:
        width, height = info["width"], info["height"]
        rgb = decode_jpeg_rgb((coco_dir / info["file_name"]).read_bytes())
        start = time.perf_counter()
        people = estimator.predict([rgb])[0]
        ms.append((time.perf_counter() - start) * 1000)
        anns = [a for a in by_image.get(info["id"], []) if a["num_keypoints"] > 0]
        gt_boxes = [[x / width, y / height, (x + w) / width, (y + h) / height]
                    for x, y, w, h in (a["bbox"] for a in anns)]
        matches = match([p.box for p in people], gt_boxes)
        for pi, gi, iou in matches:
            ann, pred = anns[gi], people[pi].keypoints
            gt = gt_keypoints(ann, width, height)
            hits = joint_hits(pred, gt, width, height, max(ann["bbox"][2], ann["bbox"][3]))
            bbox_hits.extend(hits[~np.isnan(hits)])
            for j, h in enumerate(hits):
                if not np.isnan(h):
                    per_joint[j].append(h)
            confident = (pred[:, 2] >= cfg.min_keypoint_score) & (gt[:, 2] > 0)
            conf_hits.extend(hits[confident])
            kept.extend(confident[gt[:, 2] > 0].astype(float))
            torso = torso_size(gt, width, height)
            if torso:
                t_hits = joint_hits(pred, gt, width, height, torso)
                torso_hits.extend(t_hits[~np.isnan(t_hits)])
            pairs.append((pred, gt, width, height))
            pairs_out.append({
                "image": info["file_name"], "annotation_id": ann["id"], "box_iou": round(iou, 4),
                "width": width, "height": height,
                "pred_keypoints": np.round(pred, 4).tolist(), "gt_keypoints": np.round(gt, 4).tolist(),
                "pck_bbox": float(np.nanmean(hits)),
            })
        per_image.append({"image": info["file_name"], "labelled_people": len(anns),
                          "predicted": len(people), "matched": len(matches),
                          "ms": round(ms[-1], 1)})
    estimator.close()
    labelled = sum(r["labelled_people"] for r in per_image)
    found = sum(r["matched"] for r in per_image)
    mean = lambda xs: round(float(np.mean(xs)), 4) if len(xs) else None  # noqa: E731
    return {
        "backend": "mediapipe",
        "config": cfg.mediapipe.model_dump(),
        "min_keypoint_score": cfg.min_keypoint_score,
        "match": f"box IoU >= {MIN_MATCH_IOU}, one-to-one",
        "labelled_people": labelled,
        "predicted_people": sum(r["predicted"] for r in per_image),
        "found_people": found,
        "recall": round(found / labelled, 4) if labelled else None,
        "pck@0.2_bbox": mean(bbox_hits),
        "pck@0.2_torso": mean(torso_hits),
        "pck@0.2_bbox_confident_joints": mean(conf_hits),
        "joints_kept_at_min_score": mean(kept),
        "labelled_joints": len(bbox_hits),
        "per_joint_pck@0.2_bbox": {name: mean(h) for name, h in zip(COCO17, per_joint)},
        "ms_per_image": round(float(np.mean(ms)), 1),
        "per_image": per_image,
        "extra": extra_metrics(pairs, cfg.min_keypoint_score),
        "pairs": pairs_out,
    }


def print_table(res: dict[str, Any]) -> None:
    print(f"{'image':<20} {'labelled':>8} {'predicted':>9} {'matched':>7} {'ms':>7}")
    for r in res["per_image"]:
        print(f"{r['image']:<20} {r['labelled_people']:>8} {r['predicted']:>9} "
              f"{r['matched']:>7} {r['ms']:>7}")
    print()
    for key in ("labelled_people", "found_people", "recall", "pck@0.2_bbox", "pck@0.2_torso",
                "pck@0.2_bbox_confident_joints", "joints_kept_at_min_score", "labelled_joints",
                "ms_per_image"):
        print(f"{key:<32} {res[key]}")
    print("per joint (bbox): " + ", ".join(
        f"{k}={v}" for k, v in res["per_joint_pck@0.2_bbox"].items()))
    agreement = res["extra"].get("body_part_state_agreement")
    if agreement:
        print(f"{'body_part_state agreement':<32} {agreement['agree']}/{agreement['compared']}"
              f" = {agreement['rate']} (labels from one side only: pred {agreement['pred_only']},"
              f" gt {agreement['gt_only']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco", type=Path, default=REPO.parent / "shared" / "data" / "coco_pose")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--num-poses", type=int, default=None, help="pose.mediapipe.num_poses")
    args = parser.parse_args(argv)
    cfg = PoseConfig(backend="mediapipe")
    if args.num_poses:
        cfg.mediapipe = MediaPipeConfig(num_poses=args.num_poses)
    res = evaluate(args.coco, cfg)
    print_table(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pose_accuracy.json").write_text(json.dumps(res, indent=1))
    print(f"\nwrote {args.out / 'pose_accuracy.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
