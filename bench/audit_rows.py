"""Render QA rows for an audit by eye: the shown image(s) with ONLY the answer drawn.

    python bench/audit_rows.py RUN_DIR --n 60 --seed 1 --out bench/results/audit
    python bench/audit_rows.py RUN_DIR --tasks spatial_grounding --n 20 ...

One PNG per row (`<k>_<task>.png`) and `rows.json` (the sampled rows' ids, tasks, questions
and answers) so the judgements can be written next to them. What is drawn:
- spatial_grounding: the answer point (a ring) or box, and the part's name;
- body_part_state: the subject box (when the question names one) and the answer text;
- motion_compare: the two frames side by side; the answer (part and direction / the most
  moved part) as text; the subject box when the question names one;
- temporal_order / temporal_direction: the frames in SHOWN order with their image numbers,
  and the answer as text.
The skeleton is never drawn: the annotator judges the answer against the picture.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TILE_H = 360


def _img(jpeg: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def _fit(img: np.ndarray, h: int = TILE_H) -> np.ndarray:
    import cv2

    scale = h / img.shape[0]
    return cv2.resize(img, (max(1, int(img.shape[1] * scale)), h))


def _text_block(lines: list[str], width: int) -> np.ndarray:
    import cv2

    wrapped: list[str] = []
    per = max(20, width // 8)
    for line in lines:
        while len(line) > per:
            cut = line.rfind(" ", 0, per)
            cut = per if cut <= 0 else cut
            wrapped.append(line[:cut])
            line = line[cut:].lstrip()
        wrapped.append(line)
    block = np.full((18 * len(wrapped) + 8, width, 3), 255, np.uint8)
    for i, line in enumerate(wrapped):
        cv2.putText(block, line, (4, 16 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return block


def _draw_box(img: np.ndarray, box, color, thick: int = 2) -> None:
    import cv2

    h, w = img.shape[:2]
    x1, y1, x2, y2 = box
    cv2.rectangle(img, (int(x1 * w), int(y1 * h)), (int(x2 * w), int(y2 * h)), color, thick)


def _named_box(row: dict) -> bool:
    return "in the box" in row["question"]


def render(row: dict[str, Any]) -> np.ndarray:
    """The row's images with its answer drawn, its question and answer as text below."""
    import cv2

    struct = json.loads(row["answer_struct"])
    frames = [_img(j) for j in row["images"]]
    task = row["task"]
    if task == "spatial_grounding":
        img = frames[0]
        h, w = img.shape[:2]
        if "point" in struct:
            x, y = struct["point"]
            cv2.circle(img, (int(x * w), int(y * h)), 7, (0, 0, 255), 2)
            cv2.circle(img, (int(x * w), int(y * h)), 2, (0, 255, 255), -1)
        else:
            _draw_box(img, struct["box"], (0, 0, 255))
        if _named_box(row) and row.get("subject_box"):
            _draw_box(img, row["subject_box"], (0, 200, 0), 1)
        tiles = [_fit(img, 480)]
    elif task in ("body_part_state", "motion_compare"):
        if _named_box(row) and row.get("subject_box"):
            for img in frames:
                _draw_box(img, row["subject_box"], (0, 200, 0), 2)
        tiles = [_fit(f) for f in frames]
    else:
        tiles = [_fit(f, 240) for f in frames]
    for k, tile in enumerate(tiles):
        if len(tiles) > 1:
            cv2.putText(tile, f"Image {k + 1}", (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                        (0, 255, 255), 2, cv2.LINE_AA)
    strip = np.concatenate([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255)
                            for t in tiles], axis=1)
    span = row["timestamps"][-1] - row["timestamps"][0] if row.get("timestamps") else 0
    lines = [f"[{task}] {row['question']}"]
    if row.get("choices"):
        lines.append("choices: " + " | ".join(row["choices"]))
    lines.append(f"ANSWER: {row['answer']}   ({json.dumps(struct)})")
    if task.startswith("temporal") or task == "motion_compare":
        lines.append(f"timestamps shown: {[round(t, 2) for t in row['timestamps']]} "
                     f"(span {abs(span):.2f} s)")
    text = _text_block(lines, 460)
    height = max(strip.shape[0], text.shape[0])
    strip = np.pad(strip, ((0, height - strip.shape[0]), (0, 0), (0, 0)), constant_values=255)
    text = np.pad(text, ((0, height - text.shape[0]), (0, 0), (0, 0)), constant_values=255)
    return np.concatenate([strip, text], axis=1)


def main(argv: list[str] | None = None) -> int:
    import cv2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "audit")
    args = ap.parse_args(argv)

    from proxyqa.core.storage import read_parquet

    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    rows = []
    for shard in manifest["shards"]:
        rows.extend(read_parquet(str(args.run_dir / shard["path"])).to_pylist())
    if args.tasks:
        rows = [r for r in rows if r["task"] in args.tasks]
    rows.sort(key=lambda r: r["sample_id"])
    pick = np.random.default_rng(args.seed).permutation(len(rows))[: args.n]
    args.out.mkdir(parents=True, exist_ok=True)
    index = []
    for k, i in enumerate(pick):
        row = rows[int(i)]
        name = f"{k:03d}_{row['task']}.png"
        cv2.imwrite(str(args.out / name), render(row))
        index.append({"k": k, "png": name, "sample_id": row["sample_id"], "task": row["task"],
                      "video": Path(row["video_uri"]).name, "answer": row["answer"],
                      "question": row["question"]})
    (args.out / "rows.json").write_text(json.dumps(index, indent=1))
    print(f"{len(index)} of {len(rows)} rows rendered to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
