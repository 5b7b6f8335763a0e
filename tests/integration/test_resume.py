"""Atomic runs: a run killed at any point is not visible as complete and resumes without
duplicates. Real clips, real Ray; the killed driver is a real `proxyqa run` process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import pytest

import proxyqa.pipeline.run as run_module
from tests.helpers import latest_run, read_run, run_cli
from tests.helpers.ops import (
    ID_COLUMNS,
    PROXYQA,
    QUIET,
    assert_no_duplicates,
    child_env,
    copy_clips,
    frozen_config,
    kill_group,
    wait_for,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLIPS = ["kinetics_ta_chi.mp4", "kinetics_clean_and_jerk.mp4", "decord_flipping_a_pancake.mkv",
         "pose2sim_single_cam01.mp4", "mmaction2_demo_skeleton.mp4"]
# One video per writer call, so records land one by one and a kill falls between them.
PER_VIDEO = ("--set", "write.resources.batch_size=1")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, clips_dir):
    """(config, input folder, output root with one uninterrupted complete run, its rows)."""
    tmp = tmp_path_factory.mktemp("resume")
    config = frozen_config(tmp / "config")
    folder = copy_clips(clips_dir, tmp / "in", CLIPS)
    out = tmp / "baseline"
    assert run_cli(config, "--input", str(folder), "--output", str(out), *QUIET) == 0
    rows, manifest, _ = read_run(latest_run(out), ID_COLUMNS)
    assert rows and manifest["counts"]["videos_by_status"] == {"ok": len(CLIPS)}
    return config, folder, out, rows


def _incomplete_runs(out) -> list:
    return [d for d in (out / "runs").iterdir() if not (d / "manifest.json").exists()]


def test_kill_9_mid_run_then_rerun(baseline, tmp_path):
    config, folder, base_out, base_rows = baseline
    out = tmp_path / "out"
    shutil.copytree(base_out, out)  # a complete earlier run: `latest` must not move
    latest_before = (out / "latest").read_text()

    args = ["run", "--config", str(config), "--input", str(folder), "--output", str(out),
            *QUIET, *PER_VIDEO]
    proc = subprocess.Popen([PROXYQA, *args], env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        records = lambda: [p for d in _incomplete_runs(out) for p in (d / "_videos").glob("*.parquet")]  # noqa: E731
        assert wait_for(lambda: records() or proc.poll() is not None, timeout=240)
        os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-run
        proc.wait(timeout=30)
    finally:
        kill_group(proc.pid)  # Ray's own processes of that driver (its node died with it)
    assert proc.returncode == -signal.SIGKILL

    [killed] = _incomplete_runs(out)
    done_before = len(list((killed / "_videos").glob("*.parquet")))
    print(f"killed after {done_before} of {len(CLIPS)} video records")
    assert 1 <= done_before < len(CLIPS), "the kill must land mid-run"
    assert not (killed / "manifest.json").exists()
    assert (out / "latest").read_text() == latest_before

    # Rerun (same command): resumes the killed run, processes only the rest.
    assert run_cli(config, "--input", str(folder), "--output", str(out), *QUIET, *PER_VIDEO) == 0
    assert latest_run(out) == killed
    rows, manifest, report = read_run(killed, ID_COLUMNS)
    assert manifest["resumed"] is True
    assert report["counts"]["videos_by_status"] == {"ok": len(CLIPS)}
    assert {r["sample_id"] for r in rows} == {r["sample_id"] for r in base_rows}
    assert_no_duplicates(rows)
    assert manifest["counts"]["rows"] == len(rows) == len(base_rows)


def test_crash_during_commit_is_invisible_and_recovers(baseline, tmp_path, monkeypatch, capsys):
    config, folder, base_out, base_rows = baseline
    out = tmp_path / "out"
    shutil.copytree(base_out, out)
    latest_before = (out / "latest").read_text()

    # A FAKE on purpose: no real crash can be placed exactly between the ledger and the
    # manifest, so the manifest write raises instead (the kill -9 tests above are real).
    real_write = run_module.write_bytes_atomic

    def dies_at_manifest(fs, path, data):
        if path.endswith("manifest.json"):
            raise RuntimeError("simulated crash before the manifest")
        real_write(fs, path, data)

    monkeypatch.setattr(run_module, "write_bytes_atomic", dies_at_manifest)
    # The CLI turns it into one line (stderr) and exit code 3: the run is resumable.
    assert run_cli(config, "--input", str(folder), "--output", str(out), *QUIET) == 3
    assert "simulated crash" in capsys.readouterr().err.strip().splitlines()[-1]
    monkeypatch.undo()

    [crashed] = _incomplete_runs(out)
    assert (crashed / "report.json").exists() and not (crashed / "manifest.json").exists()
    assert (out / "latest").read_text() == latest_before
    # The crashed run's ledger snapshot does not count: an incremental run builds on `latest`.
    assert (out / "ledger" / f"{crashed.name}.parquet").exists()

    assert run_cli(config, "--input", str(folder), "--output", str(out), *QUIET) == 0
    assert latest_run(out) == crashed
    rows, manifest, _ = read_run(crashed, ID_COLUMNS)
    assert manifest["resumed"] and manifest["counts"]["videos_processed"] == len(CLIPS)
    assert {r["sample_id"] for r in rows} == {r["sample_id"] for r in base_rows}
    assert_no_duplicates(rows)
    assert json.loads((crashed / "report.json").read_text())["counts"] == manifest["counts"]
