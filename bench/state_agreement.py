"""Agreement of body_part_state labels computed from predicted vs hand-labelled keypoints.

Used by bench/pose_accuracy.py: for each matched person, both keypoint sets go through the
same documented rule (proxyqa.stages.posecodes.part_states); a part counts only where BOTH emit a
label (the task asks nothing where either side gives none).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from proxyqa.stages.posecodes import part_states

Keypoints = Sequence[Sequence[float]]   # 17 x [x, y, score], x/y normalised to the frame


def state_agreement(pairs: Iterable[tuple[Keypoints, Keypoints, int, int]],
                    min_score: float = 0.5) -> dict[str, Any]:
    """pairs of (pred_kps, gt_kps, width, height) -> agreement where both emit a label.

    Ground-truth keypoints need a score too: for COCO annotations use 1.0 for labelled
    joints (v > 0) and 0.0 for unlabelled ones.
    Returns compared/agree counts, the rate (None if nothing compared), how many labels
    only one side emitted, per-part figures, and the disagreements (pred vs gt).
    """
    compared = agree = pred_only = gt_only = 0
    per_part: dict[str, Counter] = {}
    disagreements: list[dict[str, Any]] = []
    for i, (pred, gt, width, height) in enumerate(pairs):
        p = part_states(pred, width, height, min_score)
        g = part_states(gt, width, height, min_score)
        pred_only += len(set(p) - set(g))
        gt_only += len(set(g) - set(p))
        for part in sorted(set(p) & set(g)):
            counts = per_part.setdefault(part, Counter())
            counts["compared"] += 1
            compared += 1
            if p[part] == g[part]:
                counts["agree"] += 1
                agree += 1
            else:
                disagreements.append({"pair": i, "part": part, "pred": p[part], "gt": g[part]})
    return {
        "compared": compared,
        "agree": agree,
        "rate": agree / compared if compared else None,
        "pred_only": pred_only,
        "gt_only": gt_only,
        "per_part": {k: dict(v) for k, v in sorted(per_part.items())},
        "disagreements": disagreements,
    }
