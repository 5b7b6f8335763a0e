"""Temporal rows for an audit by eye: which temporal_order questions does a set of clips give,
and can a person answer them?

    python bench/temporal_rows.py CLIPS_DIR [CLIPS_DIR ...] --out bench/results/temporal_rows \
        [--set key=value ...]

Every clip, and every window of 2.5 s and 4 s (1 s apart) of each clip long enough, is run
through `proxyqa run` with configs/local.yaml and only temporal_order enabled (4 questions
per video allowed, so every determinable set the rules find shows up). Every row is then
rendered with `bench/audit_rows.py` (frames in shown order, the earliest image named, the
answer as text) to <out>/audit/, for an annotator to judge: determinable (the order follows
from the pictures, given the earliest) or not.

Windows give the rules more chances on the same motion (a one-way stretch inside a longer
clip that returns); they share frames, so their rows are not independent: count clips, not
only rows. Material used for docs/label_quality.md: ../shared/data/clips plus the Sports2D
demo clip (a side-on walker crossing a static shot; `pip download --no-deps sports2d==0.8.34`,
then unzip `Sports2D/Demo/demo.mp4`: decord cannot seek in it, so the windows, re-encoded
with OpenCV, are what gets processed).
"""
from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WINDOWS_S = (2.5, 4.0)
STRIDE_S = 1.0
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm")


def cut_windows(clip: Path, out_dir: Path) -> list[Path]:
    """The clip's 2.5 s and 4 s windows, 1 s apart, re-encoded (mp4v); none when shorter."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    written = []
    for window_s in WINDOWS_S:
        n, step = int(window_s * fps), max(1, int(STRIDE_S * fps))
        for start in range(0, len(frames) - n + 1, step):
            path = out_dir / f"{clip.stem}_w{window_s}_s{start // step}.mp4"
            height, width = frames[0].shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            for frame in frames[start:start + n]:
                writer.write(frame)
            writer.release()
            written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clips", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "temporal_rows")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    inputs = args.out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for folder in args.clips:
        for clip in sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
            link = inputs / clip.name
            if not link.exists():
                link.symlink_to(clip.resolve())
            cut_windows(clip, inputs)
    output = args.out / "run"
    cmd = [sys.executable, "-m", "proxyqa.pipeline.cli", "run", "--config", str(REPO / "configs" / "local.yaml"),
           "--input", str(inputs), "--output", str(output), "--full",
           "--set", "tasks.enabled=[temporal_order]", "--set", "tasks.temporal_order.samples_per_video=4"]
    for s in args.sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    run_dir = Path(sorted(glob.glob(str(output / "runs" / "*" / "manifest.json")))[-1]).parent
    report = json.loads((run_dir / "report.json").read_text())["counts"]
    rows = report["rows_by_task"].get("temporal_order", 0)
    print(f"{report['videos']} videos (clips and windows), {rows} temporal_order rows")
    if rows:
        subprocess.run([sys.executable, str(REPO / "bench" / "audit_rows.py"), str(run_dir), "--n", str(rows),
                        "--tasks", "temporal_order", "--out", str(args.out / "audit")], check=True)


if __name__ == "__main__":
    main()
