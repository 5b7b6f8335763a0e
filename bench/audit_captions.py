"""Audit of caption rows by eye, and the blind (text-only) baselines of the match tasks.

    python bench/audit_captions.py RUN_DIR [--out bench/results/audit] [--n 30]

1. Renders up to N pose_description and N description_match rows of a finished run to PNG:
   the shown image(s) with the subject box, and only the answer printed under it (the
   caption; for description_match the correct option). Judge each by eye: true & natural /
   wrong / unnatural.
2. Blind baselines of description_match and change_match (the options' text only, no image),
   each scored against chance (1 / options):
   - typical: the option whose facts are most frequent in the OTHER videos' true captions
     (leave-one-video-out); atypical: the least frequent; middle: one of those strictly
     between the most and the least typical;
   - medoid: the option sharing the most facts with the other options of its question;
   - length: the longest / the shortest option;
   - ngram: a word-bigram naive Bayes trained on the other videos' questions (true vs wrong
     options), leave-one-video-out.
Writes <out>/blind_baseline.json, <out>/<task>_<k>.png and <out>/<task>_<k>_crop.png (the
subject of the first shown image at full stored resolution, for small limbs).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import read_run  # noqa: E402

MATCH = ("description_match", "change_match")


def render(row: dict, path: Path | None = None) -> np.ndarray:
    """The shown image(s) with the subject box and the answer under it, wrapped to the canvas
    (at least 900 px wide): for a multiple-choice row every option, the answer marked [x]."""
    imgs = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in row["images"]]
    imgs = [cv2.resize(i, (int(i.shape[1] * 420 / i.shape[0]), 420)) for i in imgs]
    for img in imgs:
        if row["subject_box"]:
            x1, y1, x2, y2 = row["subject_box"]
            w, h = img.shape[1], img.shape[0]
            cv2.rectangle(img, (int(x1 * w), int(y1 * h)), (int(x2 * w), int(y2 * h)), (0, 255, 0), 2)
    strip = np.concatenate(imgs, axis=1)
    width = max(900, strip.shape[1])
    strip = np.pad(strip, ((0, 0), (0, width - strip.shape[1]), (0, 0)), constant_values=255)
    paras = ([("[x] " if c == row["answer"] else "[ ] ") + c for c in row["choices"]]
             if row.get("choices") else row["answer"].split("\n"))
    lines = []
    for para in paras:
        lines += textwrap.wrap(para, width=width // 10, subsequent_indent="    ")
    pad = np.full((24 + 24 * len(lines), width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(pad, line, (6, 20 + 24 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
    out = np.concatenate([strip, pad], axis=0)
    if path is not None:
        cv2.imwrite(str(path), out)
    return out


def render_crop(row: dict, path: Path, height: int = 640) -> np.ndarray:
    """The subject of the first shown image at full stored resolution, cropped to its box
    (padded by a fifth on every side) and scaled to `height` px: limbs small in `render` are
    judged here."""
    img = cv2.imdecode(np.frombuffer(row["images"][0], np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    x1, y1, x2, y2 = row["subject_box"] or (0.0, 0.0, 1.0, 1.0)
    px, py = (x2 - x1) / 5, (y2 - y1) / 5
    crop = img[max(0, int((y1 - py) * h)):min(h, int((y2 + py) * h)),
               max(0, int((x1 - px) * w)):min(w, int((x2 + px) * w))]
    crop = cv2.resize(crop, (max(1, int(crop.shape[1] * height / crop.shape[0])), height),
                      interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), crop)
    return crop


def _key(fact: dict) -> str:
    return json.dumps(fact, sort_keys=True)


def _bigrams(text: str) -> list[str]:
    words = re.findall(r"[a-z]+", text.lower())
    return words + [f"{a}_{b}" for a, b in zip(words, words[1:])]


def blind(rows: list[dict], group=None) -> dict:
    """The baselines, each question scored by models fitted on the questions of the OTHER
    groups; `group(row)` names a row's group (default: its video; views of one take are one
    group, see bench/caption_baselines.py)."""
    group = group or (lambda r: r["video_id"])
    out = {}
    for task in MATCH:
        qs = [r for r in rows if r["task"] == task]
        if not qs:
            continue
        hits: Counter = Counter()
        for q in qs:
            s = json.loads(q["answer_struct"])
            n = len(q["choices"])
            others = [r for r in qs if group(r) != group(q)]
            freq = Counter(_key(f) for r in others for f in json.loads(r["answer_struct"])["facts"])
            opts = s["choice_facts"]
            keys = [{_key(f) for f in o} for o in opts]

            def best(scores: list[float], index: int = s["index"]) -> float:
                """Expected hit rate of picking the top score, ties split evenly."""
                top = max(scores)
                tied = [i for i, v in enumerate(scores) if v == top]
                return (index in tied) / len(tied)

            typical = [sum(math.log(1 + freq[k]) for k in ks) for ks in keys]
            hits["typical"] += best(typical)
            # a typical score far below chance is a signal too: the least typical option
            hits["atypical"] += best([-t for t in typical])
            # the 2x2 grid's own weak spot: when the two slots' true values lean opposite ways
            # (one typical, one not), the truth is neither the most nor the least typical
            lo, hi = min(typical), max(typical)
            hits["middle"] += best([1.0 if lo < t < hi else 0.0 for t in typical])
            hits["medoid"] += best([sum(len(ks & kt) for kt in keys) for ks in keys])
            hits["longest"] += best([len(c) for c in q["choices"]])
            hits["shortest"] += best([-len(c) for c in q["choices"]])
            pos, neg = Counter(), Counter()
            for r in others:
                i = json.loads(r["answer_struct"])["index"]
                for j, c in enumerate(r["choices"]):
                    (pos if j == i else neg).update(_bigrams(c))
            vocab = len(set(pos) | set(neg)) + 1
            tp, tn = sum(pos.values()) + vocab, sum(neg.values()) + vocab
            hits["ngram"] += best([sum(math.log((pos[w] + 1) / tp) - math.log((neg[w] + 1) / tn)
                                       for w in _bigrams(c)) for c in q["choices"]])
            hits["chance"] += 1 / n
        total = len(qs)
        out[task] = {"questions": total, "videos": len({q["video_id"] for q in qs}),
                     "groups": len({group(q) for q in qs}),
                     "distinct": len({(q["video_id"], tuple(q["frame_indices"]), frozenset(q["choices"]))
                                      for q in qs}),
                     **{k: round(v / total, 4) for k, v in hits.items()},
                     "edits": dict(Counter(json.loads(q["answer_struct"])["edit"] for q in qs))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "audit")
    parser.add_argument("--n", type=int, default=30)
    args = parser.parse_args(argv)
    rows, _, _ = read_run(args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    for task in ("pose_description", "description_match", "pose_difference", "change_match"):
        picked = [r for r in rows if r["task"] == task][: args.n]
        for k, row in enumerate(picked):
            render(row, args.out / f"{task}_{k:02d}.png")
            render_crop(row, args.out / f"{task}_{k:02d}_crop.png")
        print(f"{task}: {len([r for r in rows if r['task'] == task])} rows, rendered {len(picked)}")
    res = blind(rows)
    print(json.dumps(res, indent=1))
    (args.out / "blind_baseline.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
