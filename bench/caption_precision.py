"""Fact precision of geometry-written captions against hand-labelled keypoints.

    python bench/caption_precision.py [--shared ../shared/data] [--out bench/results]

For every hand-labelled person of ../shared/data/coco_pose and ../shared/data/pose_gt (AIC,
CrowdPose, MPII, PoseTrack18), the pipeline's pose (mediapipe, as configs/local.yaml runs it:
the image downscaled to decode.max_side, num_poses=2) runs on the image as a still; predicted
people are matched one-to-one to labelled people by box IoU >= 0.3 (Hungarian). The caption
writer (proxyqa.stages.captions) states the facts of each matched prediction (with the hand
and foot heights description_match captions state, also counted apart); each stated fact
is then re-evaluated by the same documented rule on the HAND-LABELLED keypoints (labelled
joints score 1, others 0), giving true / false / undecidable (a joint the labels lack, e.g. no
face keypoints in AIC/CrowdPose/MPII, or a value within the rule's margin on the labels).

Reported per set and overall: stated facts, true, false, undecidable,
precision = true / (true + false) (the headline), and strict = true / stated. Also the same
for the hard negatives description_match may use: each state that is definitely false on the
prediction, re-evaluated on the labels (a negative is wrong if the labels make it true).
Then the same for the facts the pipeline itself states (`evaluate_subjects`: the subject of
each image as the pose stage picks it, only when its pose checks pass).
Writes <out>/caption_precision.json with every stated fact and its verdict.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxyqa.core.config import MediaPipeConfig, load_config  # noqa: E402
from proxyqa.core.people import box_iou  # noqa: E402
from proxyqa.core.schema import COCO17  # noqa: E402
from proxyqa.models.mediapipe_pose import MediaPipePose  # noqa: E402
from proxyqa.stages import captions as cap  # noqa: E402
from proxyqa.stages import posecodes as pc  # noqa: E402

MIN_MATCH_IOU = 0.3
J = {n: i for i, n in enumerate(COCO17)}

# Keypoint names of each set -> COCO-17 (joints without a COCO twin are left out).
AIC = ["right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
       "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
       "left_ankle", None, None]
CROWDPOSE = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
             "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
             "right_ankle", None, None]
POSETRACK = ["nose", None, None, "left_ear", "right_ear", *COCO17[5:]]
MPII = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", None,
        None, None, None, "right_wrist", "right_elbow", "right_shoulder", "left_shoulder",
        "left_elbow", "left_wrist"]


def to_coco(flat: list[float], names: list, width: int, height: int) -> np.ndarray:
    """x, y, v triples in the set's order -> normalised COCO-17 (score 1 if labelled)."""
    out = np.zeros((17, 3), np.float32)
    arr = np.asarray(flat, np.float32).reshape(-1, 3)
    for (x, y, v), name in zip(arr, names):
        if name is not None and v > 0:
            out[J[name]] = (x / width, y / height, 1.0)
    return out


def joints_box(kps: np.ndarray, pad: float = 0.1) -> list[float]:
    pts = kps[kps[:, 2] > 0, :2]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    d = (hi - lo) * pad
    return [float(v) for v in (*(lo - d), *(hi + d))]


def load_sets(shared: Path) -> dict[str, list[dict]]:
    """set -> [{"image": path, "width", "height", "people": [(box 0-1, gt kps 17x3)]}]."""
    sets: dict[str, list[dict]] = {}

    def coco_like(name: str, ann_file: Path, img_root: Path, names: list | None) -> None:
        data = json.loads(ann_file.read_text())
        by_img: dict[Any, list] = {}
        for a in data["annotations"]:
            by_img.setdefault(a["image_id"], []).append(a)
        items = []
        for info in data["images"]:
            w, h = info["width"], info["height"]
            people = []
            for a in by_img.get(info["id"], []):
                kps = (to_coco(a["keypoints"], names, w, h) if names else
                       to_coco(a["keypoints"], list(COCO17), w, h))
                if kps[:, 2].sum() < 4 or not a.get("bbox"):
                    continue
                x, y, bw, bh = a["bbox"]
                people.append(([x / w, y / h, (x + bw) / w, (y + bh) / h], kps))
            items.append({"image": img_root / info["file_name"], "width": w, "height": h,
                          "people": people})
        sets[name] = items

    coco_like("coco_pose", shared / "coco_pose" / "test_coco.json", shared / "coco_pose", None)
    gt = shared / "pose_gt"
    coco_like("aic", gt / "aic" / "test_aic.json", gt / "aic", AIC)
    coco_like("crowdpose", gt / "crowdpose" / "test_crowdpose.json", gt / "crowdpose", CROWDPOSE)
    coco_like("posetrack18", gt / "posetrack18" / "annotations" / "test_posetrack18_val.json",
              gt / "posetrack18", POSETRACK)
    by_img: dict[str, list] = {}
    for a in json.loads((gt / "mpii" / "test_mpii.json").read_text()):
        by_img.setdefault(a["image"], []).append(a)
    items = []
    for name, anns in by_img.items():
        img = cv2.imread(str(gt / "mpii" / name))
        h, w = img.shape[:2]
        people = []
        for a in anns:
            flat = [v for (x, y), vis in zip(a["joints"], a["joints_vis"])
                    for v in (x, y, float(vis and x > 0 and y > 0))]
            kps = to_coco(flat, MPII, w, h)
            if kps[:, 2].sum() >= 4:
                people.append((joints_box(kps), kps))
        items.append({"image": gt / "mpii" / name, "width": w, "height": h, "people": people})
    sets["mpii"] = items
    return sets


def predict(estimator: MediaPipePose, path: Path, max_side: int) -> list:
    bgr = cv2.imread(str(path))
    scale = max_side / max(bgr.shape[:2])
    if scale < 1:   # the pipeline decodes frames at <= decode.max_side
        bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA)
    return estimator.predict([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)])[0]


def match(pred_boxes: list, gt_boxes: list) -> list[tuple[int, int]]:
    if not pred_boxes or not gt_boxes:
        return []
    iou = np.array([[box_iou(p, g) for g in gt_boxes] for p in pred_boxes])
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= MIN_MATCH_IOU]


def fact_truth(fact: dict, gt, w: int, h: int, min_score: float):
    if fact.get("relation") in cap.HEIGHTS:
        return pc.heights(gt, w, h, min_score).get(fact["relation"])
    if "relation" in fact:
        return pc.relations(gt, w, h, min_score).get(fact["relation"])
    return pc.state_truths(gt, w, h, min_score)[fact["part"]][fact["state"]]


def evaluate(shared: Path, min_score: float, max_side: int, num_poses: int,
             rules: pc.Rules) -> dict[str, Any]:
    estimator = MediaPipePose(MediaPipeConfig(num_poses=num_poses))
    per_set: dict[str, Counter] = {}
    neg: dict[str, Counter] = {}
    details = []
    hcounts: Counter = Counter()
    for set_name, items in load_sets(shared).items():
        counts, ncounts = per_set.setdefault(set_name, Counter()), neg.setdefault(set_name, Counter())
        for item in items:
            w, h = item["width"], item["height"]
            people = predict(estimator, item["image"], max_side)
            counts["labelled_people"] += len(item["people"])
            pairs = match([p.box for p in people], [b for b, _ in item["people"]])
            counts["matched_people"] += len(pairs)
            for pi, gi in pairs:
                pred = np.asarray(people[pi].keypoints, np.float32).astype(float).tolist()
                gt = item["people"][gi][1].astype(float).tolist()
                facts = cap.pose_facts(pred, w, h, min_score, rules)
                counts["captions"] += int(len(facts) > 0)
                # heights: stated by description_match captions (counted apart as well)
                heights = [{"relation": r} for r in
                           cap.height_facts(pred, w, h, min_score, facts.states, rules)]
                for fact in facts.as_list() + heights:
                    truth = fact_truth(fact, gt, w, h, min_score)
                    verdict = {True: "true", False: "false", None: "undecidable"}[truth]
                    counts["stated"] += 1
                    counts[verdict] += 1
                    if fact in heights:
                        hcounts["stated"] += 1
                        hcounts[verdict] += 1
                    details.append({"set": set_name, "image": item["image"].name, "person": gi,
                                    "fact": fact, "verdict": verdict})
                # Hard negatives: states definitely false on the prediction, of parts with a state.
                false = cap.definitely_false(pred, w, h, min_score, rules)
                truths = pc.state_truths(gt, w, h, min_score)
                for part in facts.states:
                    for state in false[part]:
                        t = truths[part][state]
                        ncounts["negatives"] += 1
                        ncounts[{True: "wrong", False: "ok", None: "undecidable"}[t]] += 1
    estimator.close()

    def summary(c: Counter) -> dict[str, Any]:
        decided = c["true"] + c["false"]
        return {**dict(c), "precision": round(c["true"] / decided, 4) if decided else None,
                "strict": round(c["true"] / c["stated"], 4) if c["stated"] else None}

    def nsummary(c: Counter) -> dict[str, Any]:
        decided = c["ok"] + c["wrong"]
        return {**dict(c), "precision": round(c["ok"] / decided, 4) if decided else None}

    total, ntotal = sum(per_set.values(), Counter()), sum(neg.values(), Counter())
    return {
        "min_keypoint_score": min_score, "max_side": max_side, "num_poses": num_poses,
        "match": f"box IoU >= {MIN_MATCH_IOU}, one-to-one",
        "per_set": {k: summary(v) for k, v in per_set.items()},
        "overall": summary(total),
        "heights": summary(hcounts),
        "negatives_per_set": {k: nsummary(v) for k, v in neg.items()},
        "negatives_overall": nsummary(ntotal),
        "facts": details,
    }


def evaluate_subjects(shared: Path, min_score: float, rules: pc.Rules) -> dict[str, Any]:
    """The facts the pipeline itself would state: each image posed by the pose stage as a
    one-frame clip (bench/caption_baselines.py `still_rows`: subject rule and pose checks), the
    subject captioned only when its frame passed the checks, matched to a labelled person by
    box IoU >= MIN_MATCH_IOU."""
    from bench.caption_baselines import still_rows
    from proxyqa.core.people import subject_of

    labels = {str(item["image"]): item for items in load_sets(shared).values() for item in items}
    counts, details = Counter(), []
    for row in still_rows(shared):
        item, subject = labels[row["video_uri"]], subject_of(row)
        counts["images"] += 1
        if subject is None or 0 not in subject.usable_frames():
            counts["no_subject_or_flagged"] += 1
            continue
        ious = [box_iou(subject.boxes[0], b) for b, _ in item["people"]]
        if not ious or max(ious) < MIN_MATCH_IOU:
            counts["unmatched"] += 1
            continue
        gt = item["people"][int(np.argmax(ious))][1].astype(float).tolist()
        pred, w, h = subject.keypoints[0], item["width"], item["height"]
        facts = cap.pose_facts(pred, w, h, min_score, rules)
        heights = [{"relation": r} for r in cap.height_facts(pred, w, h, min_score, facts.states, rules)]
        for fact in facts.as_list() + heights:
            verdict = {True: "true", False: "false", None: "undecidable"}[
                fact_truth(fact, gt, w, h, min_score)]
            counts["stated"] += 1
            counts[verdict] += 1
            details.append({"image": row["video_id"], "fact": fact, "verdict": verdict})
    decided = counts["true"] + counts["false"]
    return {**dict(counts), "precision": round(counts["true"] / decided, 4) if decided else None,
            "facts": details}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--angle-margin", type=float, default=None,
                        help="caption angle margin (default: configs/local.yaml's)")
    parser.add_argument("--position-margin", type=float, default=None)
    args = parser.parse_args(argv)
    cfg = load_config(REPO / "configs" / "local.yaml")
    tc = cfg.tasks.pose_description
    margins = {"angle_margin": args.angle_margin or tc.angle_margin,
               "position_margin": args.position_margin or tc.position_margin}
    res = evaluate(args.shared, cfg.pose.min_keypoint_score, cfg.decode.max_side,
                   cfg.pose.mediapipe.num_poses, pc.Rules(**margins))
    res["caption_margins"] = margins
    print(f"{'set':<12} {'people':>6} {'matched':>7} {'stated':>6} {'true':>5} {'false':>5} "
          f"{'undec':>5} {'precision':>9} {'strict':>6}")
    for name, s in [*res["per_set"].items(), ("overall", res["overall"])]:
        print(f"{name:<12} {s.get('labelled_people', 0):>6} {s.get('matched_people', 0):>7} "
              f"{s.get('stated', 0):>6} {s.get('true', 0):>5} {s.get('false', 0):>5} "
              f"{s.get('undecidable', 0):>5} {str(s['precision']):>9} {str(s['strict']):>6}")
    hs = res["heights"]
    print(f"of which heights: stated {hs.get('stated', 0)}, true {hs.get('true', 0)}, "
          f"false {hs.get('false', 0)}, undecidable {hs.get('undecidable', 0)}; "
          f"precision {hs['precision']}")
    n = res["negatives_overall"]
    print(f"hard negatives: {n.get('negatives', 0)} (definitely false on the labels {n.get('ok', 0)}, "
          f"true on the labels {n.get('wrong', 0)}, undecidable {n.get('undecidable', 0)}); "
          f"precision {n['precision']}")
    for d in res["facts"]:
        if d["verdict"] == "false":
            print("false fact:", d)
    res["pipeline_subjects"] = sub = evaluate_subjects(
        args.shared, cfg.pose.min_keypoint_score, pc.Rules(**margins))
    print(f"as the pipeline states them (subject, pose checks passed): images {sub['images']}, "
          f"flagged or no subject {sub.get('no_subject_or_flagged', 0)}, unmatched "
          f"{sub.get('unmatched', 0)}; facts {sub.get('stated', 0)}: true {sub.get('true', 0)}, "
          f"false {sub.get('false', 0)}, undecidable {sub.get('undecidable', 0)}; "
          f"precision {sub['precision']}")
    for d in sub["facts"]:
        if d["verdict"] == "false":
            print("false fact (pipeline):", d)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "caption_precision.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out / 'caption_precision.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
