"""The layer contract (pyproject.toml [tool.importlinter]) on the package as it installs.

The source tree maps pipeline/ and stages/ into the proxyqa namespace (setup.cfg
package_dir), which import-linter cannot see in place. This lays the package out as an
install would (a copy per setup.cfg's mapping) and runs `lint-imports` on that copy.

    python scripts/check_layers.py [--src DIR]      exit 0: contracts kept; 1: broken
"""
from __future__ import annotations

import argparse
import configparser
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def package_dirs(src: Path) -> dict[str, Path]:
    """Package name -> source folder, from setup.cfg's [options] package_dir."""
    cfg = configparser.ConfigParser()
    cfg.read(src / "setup.cfg")
    mapping = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, _, folder = (part.strip() for part in line.partition("="))
        mapping[name] = src / folder
    return mapping


def lay_out(src: Path, dest: Path) -> None:
    # Parents first, so a mapped subpackage replaces whatever the parent copy holds there.
    for name, folder in sorted(package_dirs(src).items(), key=lambda kv: kv[0].count(".")):
        target = dest.joinpath(*name.split("."))
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("__pycache__"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args(argv)
    src = args.src.resolve()
    lint = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="proxyqa-layers-") as tmp:
        lay_out(src, Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        return subprocess.call([str(lint), str(src / "pyproject.toml")], cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main())
