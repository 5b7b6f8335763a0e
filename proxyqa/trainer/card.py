"""`proxyqa card RUN`: a Markdown dataset card with PNG charts and example thumbnails.

Figures are built with matplotlib's object API (no pyplot), so this works headless
(Agg) and does not touch a notebook's backend; `draw_sample` is shared with the notebook.
"""
from __future__ import annotations

import argparse
import io
import json
import posixpath
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from proxyqa.core.balance import blind_baseline
from proxyqa.core.config import S3Config
from proxyqa.core.layout import MANIFEST, REPORT
from proxyqa.core.schema import COCO17, DIFFICULTY_FIELDS, SPLITS, TASK_FAMILY
from proxyqa.core.storage import ensure_dir, get_fs, join, write_bytes_atomic
from proxyqa.trainer.reader import RunError, iter_rows, load_json, read_report, resolve_run

# COCO-17 skeleton, as index pairs into COCO17.
SKELETON = [(5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (5, 11), (6, 12), (11, 12),
            (11, 13), (13, 15), (12, 14), (14, 16), (0, 1), (0, 2), (1, 3), (2, 4)]
FAMILY_COLOURS = {"spatial": "tab:blue", "temporal": "tab:orange", "both": "tab:green"}
# Measured, not implied by `verified` (docs/label_quality.md; re-measure with
# bench/label_precision.py and bench/audit_rows.py after changing pose or task rules).
LABEL_QUALITY = (
    "**Measured label quality** (docs/label_quality.md): against hand-labelled keypoints "
    "(17 images of COCO, AI Challenger, CrowdPose, MPII, PoseTrack18 as still clips; "
    "`bench/label_precision.py`), spatial_grounding and body_part_state rows are right in "
    "76 of 76 judged rows at the default config (1.00; 214 of 218 = 0.98 with 12 questions "
    "per image). An audit by eye of 60 random rows from the shared clips found 47 correct, "
    "1 wrong, 11 ambiguous, 1 undeterminable (78% correct and unambiguous)."
)

STAT_COLUMNS = ["task", "family", "verified", "answer_source", "video_id"]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def draw_sample(row: dict, max_images: int = 8, panel_inches: float = 2.4,
                min_score: float = 0.3, title: bool = True):
    """The row's images in shown order, with the subject box and keypoints drawn."""
    import numpy as np
    from PIL import Image

    images = list(row.get("images") or [])[:max_images]
    decoded = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in images]
    # Panels `panel_inches` high, as wide as the frames' aspect (portrait clips stay readable).
    aspect = decoded[0].shape[1] / decoded[0].shape[0] if decoded else 1.0
    width = max(panel_inches * aspect * max(len(images), 1), 2.6)
    fig = _figure(width, panel_inches + (0.5 if title else 0.25))
    axes = fig.subplots(1, max(len(images), 1), squeeze=False)[0]
    keypoints = row.get("keypoints") or []
    box = row.get("subject_box")
    struct = json.loads(row["answer_struct"]) if row.get("answer_struct") else {}
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(images):
            continue
        img = decoded[i]
        h, w = img.shape[:2]
        ax.imshow(img)
        ax.set_title(f"Image {i + 1}", fontsize=8)
        if box is not None:
            x1, y1, x2, y2 = box
            ax.add_patch(_rect((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, "lime"))
        if i < len(keypoints) and keypoints[i] is not None:
            _draw_keypoints(ax, keypoints[i], w, h, min_score)
        if i == int(struct.get("image", 0)):
            _draw_answer(ax, struct, w, h)
    if title:
        fig.suptitle(f"{row.get('task')} {str(row.get('sample_id'))[:8]}", fontsize=8)
    return fig


def _rect(xy, width, height, colour):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, width, height, fill=False, edgecolor=colour, linewidth=1.5)


def _draw_keypoints(ax, points: Sequence[Sequence[float]], w: int, h: int, min_score: float) -> None:
    ok = [p is not None and len(p) >= 3 and p[2] >= min_score for p in points]
    for a, b in SKELETON:
        if a < len(points) and b < len(points) and ok[a] and ok[b]:
            ax.plot([points[a][0] * w, points[b][0] * w], [points[a][1] * h, points[b][1] * h],
                    color="cyan", linewidth=1)
    for j, p in enumerate(points):
        if ok[j]:
            # Person's left in red, right in yellow: left/right mistakes show at a glance.
            colour = "red" if COCO17[j].startswith("left") else "yellow"
            ax.plot(p[0] * w, p[1] * h, "o", color=colour, markersize=2.5)


def _draw_answer(ax, struct: dict, w: int, h: int) -> None:
    if "point" in struct:
        x, y = struct["point"]
        ax.plot(x * w, y * h, "x", color="magenta", markersize=8, markeredgewidth=2)
    if "box" in struct:
        x1, y1, x2, y2 = struct["box"]
        ax.add_patch(_rect((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, "magenta"))


def run_stats(run_uri: str, s3: S3Config | None = None) -> dict[str, Any]:
    """Rows per task and family, verification per task, read from the shards themselves."""
    per_task: Counter = Counter()
    per_family: Counter = Counter()
    verified: dict[str, Counter] = defaultdict(Counter)
    sources: dict[str, Counter] = defaultdict(Counter)
    videos: dict[str, set] = defaultdict(set)
    for row in iter_rows(run_uri, columns=STAT_COLUMNS, s3=s3):
        task = row["task"]
        per_task[task] += 1
        per_family[row["family"] or TASK_FAMILY.get(task, "?")] += 1
        verified[task][{True: "true", False: "false"}.get(row["verified"], "null")] += 1
        sources[task][row["answer_source"] or "?"] += 1
        videos[task].add(row["video_id"])
    return {"rows_by_task": dict(sorted(per_task.items())),
            "rows_by_family": dict(sorted(per_family.items())),
            "verified_by_task": {t: dict(verified[t]) for t in sorted(verified)},
            "sources_by_task": {t: dict(sources[t]) for t in sorted(sources)},
            "videos_by_task": {t: len(v) for t, v in sorted(videos.items())}}


DATASET_COLUMNS = ["task", "video_id", "question", "answer", "choices", "template_id", "split",
                   "difficulty"]


def dataset_stats(run_uri: str, s3: S3Config | None = None) -> dict[str, Any]:
    """Per task: answer distribution, blind baseline vs chance, templates, split sizes,
    difficulty values (docs/dataset.md)."""
    rows = list(iter_rows(run_uri, columns=DATASET_COLUMNS, s3=s3))
    blind = blind_baseline(rows)
    out: dict[str, Any] = {}
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        diff: dict[str, list[float]] = defaultdict(list)
        for r in mine:
            for k, v in (r.get("difficulty") or {}).items():
                if v is not None:
                    diff[k].append(v)
        out[task] = {
            "rows": len(mine),
            "answers": Counter(r["answer"] for r in mine) if mine[0].get("choices") else None,
            "blind": {k: vars(b) for k, b in blind.items() if k.split(":")[0] == task},
            "templates": Counter(r.get("template_id") or "-" for r in mine),
            "splits": Counter(r.get("split") or "-" for r in mine),
            "difficulty": {k: diff[k] for k in DIFFICULTY_FIELDS if diff.get(k)},
        }
    return out


def _histogram(values: list[float], bins: int = 6) -> str:
    """A one-line text histogram: '[lo, hi) count' per equal-width bin."""
    lo, hi = min(values), max(values)
    if hi <= lo:
        return f"all {len(values)} = {lo:g}"
    width = (hi - lo) / bins
    counts = Counter(min(int((v - lo) / width), bins - 1) for v in values)
    return "; ".join(f"{lo + i * width:.3g}-{lo + (i + 1) * width:.3g}: {counts.get(i, 0)}"
                     for i in range(bins))


def dataset_section(stats: dict[str, Any]) -> list[str]:
    md = ["## Training readiness", "",
          "Blind baseline: a text-only model answers each multiple-choice question with the "
          "answer most common for the same question text (numbers and boxes masked) in the "
          "other videos; it should be near chance (docs/dataset.md).", "",
          _table(["task / kind", "rows", "chance", "blind baseline", "delta"],
                 [[k, b["rows"], f"{b['chance']:.3f}", f"{b['blind']:.3f}",
                   f"{b['blind'] - b['chance']:+.3f}"]
                  for t in stats.values() for k, b in t["blind"].items()]), "",
          _table(["task", "rows"] + list(SPLITS) + ["templates"],
                 [[task, t["rows"]] + [t["splits"].get(s, 0) for s in SPLITS]
                  + [len(t["templates"])] for task, t in stats.items()]), ""]
    for task, t in stats.items():
        md += [f"### {task}", ""]
        if t["answers"]:
            md += ["Answers: " + ", ".join(f"`{a}` {n}" for a, n in t["answers"].most_common()), ""]
        md += ["Templates: " + ", ".join(f"`{k}` {n}" for k, n in sorted(t["templates"].items())), ""]
        for field, values in t["difficulty"].items():
            md += [f"Difficulty `{field}` ({len(values)} rows): {_histogram(values)}  "]
        md += [""]
    return md


def pick_examples(run_uri: str, per_task: int, s3: S3Config | None = None,
                  tasks: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """Up to `per_task` rows of each task (of `tasks`, default all), from different videos
    where possible."""
    manifest = load_json(run_uri, MANIFEST, s3)
    out: dict[str, list[dict]] = {}
    for task in sorted({s["task"] for s in manifest["shards"]}):
        if tasks is not None and task not in tasks:
            continue
        chosen, spare = [], []
        for row in iter_rows(run_uri, tasks=[task], s3=s3):
            if row["video_id"] in {r["video_id"] for r in chosen}:
                spare.append(row)
            else:
                chosen.append(row)
            if len(chosen) >= per_task:
                break
        out[task] = (chosen + spare)[:per_task]
    return out


# Tasks whose answer is a caption (or a choice of captions): the card quotes a few as text.
CAPTION_TASKS = ("pose_description", "pose_difference", "description_match", "change_match")


def caption_examples(rows_by_task: dict[str, list[dict]]) -> list[str]:
    """Markdown: a few captions, and match questions with every option (the answer marked),
    as text, so a reader sees the phrasing without opening images."""
    md: list[str] = []
    for task in CAPTION_TASKS:
        rows = rows_by_task.get(task) or []
        if not rows:
            continue
        md += [f"**{task}** ({rows[0].get('answer_source')}):", ""]
        for row in rows:
            video = posixpath.basename(row["video_uri"])
            if row.get("choices"):
                md += [f"- `{video}` frames {list(row['frame_indices'])}:"]
                md += [f"  - {'**[x]**' if c == row['answer'] else '[ ]'} {c}" for c in row["choices"]]
            else:
                md += [f"- `{video}` frames {list(row['frame_indices'])}: {row['answer']}"]
        md += [""]
    return md


def _bar_chart(labels: list[str], stacks: dict[str, list[int]], colours: dict[str, str] | list[str],
               title: str, xlabel: str) -> bytes:
    fig = _figure(7, 0.45 * max(len(labels), 2) + 1.2)
    ax = fig.subplots()
    left = [0] * len(labels)
    for name, values in stacks.items():
        colour = colours[name] if isinstance(colours, dict) else colours
        ax.barh(labels, values, left=left, color=colour, label=name)
        left = [a + b for a, b in zip(left, values)]
    for y, total in enumerate(left):
        ax.text(total, y, f" {total}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left + [1]) * 1.12)  # room for the totals
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    if len(stacks) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return png_bytes(fig)


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in str(text).splitlines())


def write_card(run: str, out: str | None = None, s3: S3Config | None = None,
               examples_per_task: int = 2) -> str:
    """Writes README.md (+ charts/, examples/) to `out` (default RUN/card); returns its URI."""
    run_uri = resolve_run(run, s3)
    out = (out or join(run_uri, "card")).rstrip("/")
    manifest = load_json(run_uri, MANIFEST, s3)
    report = load_json(run_uri, REPORT, s3)
    stats = run_stats(run_uri, s3)
    fs, out_path = get_fs(out, s3)
    ensure_dir(fs, out_path)      # never creates a bucket

    def put(rel: str, data: bytes) -> str:
        write_bytes_atomic(fs, posixpath.join(out_path, rel), data)
        return rel

    tasks = list(stats["rows_by_task"])
    total = sum(stats["rows_by_task"].values())
    counts = report.get("counts", {})
    versions = manifest.get("versions", {})
    md = [f"# Dataset card: proxyqa run `{manifest['run_id']}`", "",
          f"Proxy QA for fine-grained human action and pose, made by the proxyqa pipeline "
          f"{versions.get('pipeline', '?')} (schema {versions.get('schema', '?')}, "
          f"config `{manifest['config_hash']}`), completed {manifest.get('completed_at', '?')}.", "",
          f"- run: `{run_uri}`", f"- input: `{manifest.get('input', '')}`",
          f"- videos: {counts.get('videos', '?')} ("
          + ", ".join(f"{k} {v}" for k, v in counts.get("videos_by_status", {}).items()) + ")",
          f"- rows: {total} in {len(manifest['shards'])} shards", ""]
    if manifest.get("mode") == "incremental":
        md.insert(-1, f"- incremental run on `{manifest.get('base_run_id')}`: "
                      f"{counts.get('videos_carried', 0)} videos carried over, "
                      f"{counts.get('videos_processed', '?')} processed")
    if total != manifest["counts"]["rows"]:
        md += [f"**Warning:** the shards hold {total} rows, the manifest says "
               f"{manifest['counts']['rows']}.", ""]

    md += ["## Rows per task", "", _table(
        ["task", "family", "rows", "share", "videos", "answer source"],
        [[t, TASK_FAMILY.get(t, "?"), n, _pct(n, total), stats["videos_by_task"][t],
          ", ".join(f"{k} {v}" for k, v in stats["sources_by_task"][t].items())]
         for t, n in stats["rows_by_task"].items()]), ""]
    md += ["### Rows per family", "", _table(["family", "rows", "share"], [
        [f, n, _pct(n, total)] for f, n in stats["rows_by_family"].items()]), ""]
    if tasks:
        rel = put("charts/rows_per_task.png", _bar_chart(
            tasks, {"rows": list(stats["rows_by_task"].values())},
            [FAMILY_COLOURS.get(TASK_FAMILY.get(t, ""), "grey") for t in tasks],
            "Rows per task (family: spatial blue, temporal orange, both green)", "rows"))
        md += [f"![rows per task]({rel})", ""]

    md += ["## Verification", "",
           "`verified` is true when the answer was checked against pose geometry (or is right "
           "by construction), false when a check failed, null when nothing could be checked. "
           "It means *consistent with the detected keypoints*, not *correct about the video*: "
           "a wrong skeleton gives a consistent, wrong answer.", "",
           LABEL_QUALITY, "",
           _table(["task", "true", "false", "null", "verified rate"], [
               [t, v.get("true", 0), v.get("false", 0), v.get("null", 0),
                _pct(v.get("true", 0), sum(v.values()))]
               for t, v in stats["verified_by_task"].items()]), ""]
    if tasks:
        ver = stats["verified_by_task"]
        rel = put("charts/verification.png", _bar_chart(
            tasks, {k: [ver[t].get(k, 0) for t in tasks] for k in ("true", "false", "null")},
            {"true": "tab:green", "false": "tab:red", "null": "lightgrey"},
            "Verification per task", "rows"))
        md += [f"![verification per task]({rel})", ""]

    failures = counts.get("failures_by_reason", {})
    # Videos carried over from an earlier run (incremental) are in the dataset, not failures.
    not_ok = read_report(run_uri, s3, not_ok_only=True, limit=51)   # not a million rows
    md += ["## Videos not used (failures by reason)", ""]
    if failures:
        md += [_table(["reason", "videos"], list(failures.items())), ""]
        rel = put("charts/failures.png", _bar_chart(
            list(failures), {"videos": list(failures.values())}, "tab:red",
            "Videos not used, by reason", "videos"))
        md += [f"![failures by reason]({rel})", "",
               _table(["video", "status", "reason"],
                      [[posixpath.basename(v["uri"]), v["status"], v["reason"] or ""]
                       for v in not_ok[:50]]), ""]
        if len(not_ok) > 50:
            more = sum(failures.values()) - 50
            md += [f"... and {more} more (see report.parquet).", ""]
    else:
        md += ["Every listed video was processed.", ""]
    errors = Counter(counts.get("task_errors_by_kind", {}))
    if errors:
        md += ["Non-fatal per-sample errors (the video's other rows were kept):", "",
               _table(["where: kind", "count"], errors.most_common(20)), ""]

    md += dataset_section(dataset_stats(run_uri, s3))
    captions = caption_examples(pick_examples(run_uri, 3, s3, tasks=CAPTION_TASKS))
    if captions:
        md += ["## Caption examples (text)", "",
               "Captions written from the pose geometry and the multiple-choice caption "
               "questions (docs/captions.md); the true option is marked.", "", *captions]
    md += ["## Examples", ""]
    for task, rows in pick_examples(run_uri, examples_per_task, s3).items():
        md += [f"### {task}", ""]
        for i, row in enumerate(rows):
            rel = put(f"examples/{task}-{i}.png", png_bytes(draw_sample(row, panel_inches=2.6)))
            md += [f"![{task} example {i + 1}]({rel})", "", _quote(row["question"]), ""]
            if row.get("choices"):
                md += ["Choices: " + "; ".join(f"`{c}`" for c in row["choices"]), ""]
            md += [f"Answer: **{row['answer']}**  ", f"answer_struct: `{row['answer_struct']}`  ",
                   f"source: {row['answer_source']}, verified: {row['verified']}, "
                   f"video: `{posixpath.basename(row['video_uri'])}` frames {row['frame_indices']}", ""]

    md += ["## Loading", "", "```python",
           "from proxyqa.trainer.reader import RunDataset, shard_uris",
           f'ds = RunDataset("{run_uri}", shuffle=True, seed=0)  # torch IterableDataset',
           f'files = shard_uris("{run_uri}")  # for pandas / DuckDB / datasets / Ray Data',
           "```", "",
           "Coordinates in `answer_struct`, `subject_box` and `keypoints` are normalised [0, 1] "
           "of the original frame (`coord_convention`); `proxyqa.trainer.messages.to_messages` converts "
           "them per model family.", ""]
    put("README.md", "\n".join(md).encode())
    return join(out, "README.md")


def cmd_card(args: argparse.Namespace) -> int:
    """`proxyqa card RUN [--out DIR]` (S3 endpoint: AWS_ENDPOINT_URL / the AWS chain)."""
    try:
        uri = write_card(args.run, args.out, examples_per_task=args.examples)
    except (RunError, FileNotFoundError) as exc:
        print(f"proxyqa: error: {exc}", file=sys.stderr)
        return 2
    print(f"proxyqa: card written: {uri}")
    return 0
