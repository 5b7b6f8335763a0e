"""Nightly incremental regeneration with the ledger, on real clips under a real local Ray."""
from __future__ import annotations

import shutil

import pytest

from proxyqa.core.storage import read_parquet
from tests.helpers import latest_run, read_run, run_cli
from tests.helpers.ops import ID_COLUMNS, QUIET, assert_no_duplicates, copy_clips, frozen_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TAI_CHI, PANCAKE, JERK = "kinetics_ta_chi.mp4", "decord_flipping_a_pancake.mkv", "kinetics_clean_and_jerk.mp4"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return frozen_config(tmp_path_factory.mktemp("config"))


# Faster; the same in every run of a test. Balancing is off here: these tests check which
# videos are carried and which rows they keep; with balancing on, an incremental run drops
# only its new rows (carried rows keep their decision), so its dataset may differ from a full
# run's in which rows balancing dropped (docs/dataset.md). tests/integration/test_dataset.py
# checks balancing.
FEWER_FRAMES = ("--set", "decode.num_frames=8", "--set", "balance.enabled=false")


def _run(config, folder, out, *extra) -> tuple[list[dict], dict, dict]:
    assert run_cli(config, "--input", str(folder), "--output", str(out), *QUIET, *FEWER_FRAMES,
                   *extra) == 0
    return read_run(latest_run(out), ID_COLUMNS)


def _by_name(report: dict) -> dict[str, dict]:
    return {v["uri"].rsplit("/", 1)[-1]: v for v in report["videos"]}


def _ids(rows: list[dict], video_id: str | None = None) -> set[str]:
    return {r["sample_id"] for r in rows if video_id is None or r["video_id"] == video_id}


def test_nightly_sequence(config, tmp_path, clips_dir):
    folder = copy_clips(clips_dir, tmp_path / "in", [TAI_CHI, PANCAKE])
    out = tmp_path / "out"
    rows1, man1, rep1 = _run(config, folder, out)
    assert man1["mode"] == "full" and rep1["counts"]["videos_processed"] == 2
    assert len(rows1) > 0

    # 1. Nothing new: 0 videos processed, every video reported as skipped, same dataset.
    rows2, man2, rep2 = _run(config, folder, out, "--incremental")
    assert man2["run_id"] != man1["run_id"] and man2["base_run_id"] == man1["run_id"]
    assert rep2["counts"]["videos_processed"] == 0 and rep2["counts"]["rows_written"] == 0
    assert rep2["counts"]["videos_carried"] == 2
    for video in rep2["videos"]:
        assert video["status"] == "skipped", video
        assert video["reason"] == f"incremental: unchanged: rows from run {man1['run_id']}"
    assert _ids(rows2) == _ids(rows1) and man2["counts"]["rows"] == len(rows1)
    assert all(s["path"].startswith(f"../{man1['run_id']}/") for s in man2["shards"])
    assert man2["depends_on_runs"] == [man1["run_id"]]

    # 2. One new video: only it is processed; the dataset is the old rows plus its rows.
    shutil.copy(clips_dir / JERK, folder / JERK)
    rows3, man3, rep3 = _run(config, folder, out, "--incremental")
    by3 = _by_name(rep3)
    assert rep3["counts"]["videos_processed"] == 1
    assert by3[JERK]["status"] == "ok" and by3[JERK]["reason"] is None
    assert by3[TAI_CHI]["status"] == by3[PANCAKE]["status"] == "skipped"
    new_ids = _ids(rows3, by3[JERK]["video_id"])
    assert new_ids and _ids(rows3) == _ids(rows1) | new_ids
    assert {r["run_id"] for r in rows3 if r["video_id"] == by3[JERK]["video_id"]} == {man3["run_id"]}
    assert_no_duplicates(rows3)

    # 3. A changed file (new size -> new video_id): reprocessed, and its stale rows leave the
    # dataset. Its old rows shared shard files with the pancake's, so those are copied filtered.
    old_tai_chi = by3[TAI_CHI]["video_id"]
    with open(folder / TAI_CHI, "ab") as fh:
        fh.write(b"\0" * 16)
    rows4, man4, rep4 = _run(config, folder, out, "--incremental")
    by4 = _by_name(rep4)
    assert rep4["counts"]["videos_processed"] == 1 and by4[TAI_CHI]["status"] == "ok"
    assert by4[TAI_CHI]["video_id"] != old_tai_chi
    assert old_tai_chi not in {r["video_id"] for r in rows4}
    assert _ids(rows4, by4[PANCAKE]["video_id"]) == _ids(rows1, by4[PANCAKE]["video_id"])
    assert _ids(rows4, by4[JERK]["video_id"]) == new_ids
    assert _ids(rows4, by4[TAI_CHI]["video_id"]), "the changed clip gives rows again"
    copies = [s for s in man4["shards"] if "/carried-" in s["path"]]
    assert copies and all(not s["path"].startswith("..") for s in copies)
    assert {r["video_id"] for r in rows4} == {v["video_id"] for v in rep4["videos"]}
    assert_no_duplicates(rows4)

    # The incremental dataset equals what a full run over the same input produces.
    rows_full, man_full, _ = _run(config, folder, tmp_path / "full_out")
    assert _ids(rows_full) == _ids(rows4) and man_full["counts"]["rows"] == man4["counts"]["rows"]

    # 4. A task version bump changes the config_hash: every video is processed again.
    rows5, man5, rep5 = _run(config, folder, out, "--incremental", "--set", "tasks.version=2")
    assert man5["config_hash"] != man4["config_hash"]
    assert rep5["counts"]["videos_processed"] == 3 and rep5["counts"]["videos_carried"] == 0
    assert all(v["status"] == "ok" for v in rep5["videos"])
    assert rows5 and not (_ids(rows5) & _ids(rows4))
    assert {r["config_hash"] for r in rows5} == {man5["config_hash"]}
    assert man5["depends_on_runs"] == []

    # `--full` processes everything even when nothing changed.
    _, man6, rep6 = _run(config, folder, out, "--full", "--set", "tasks.version=2")
    assert man6["mode"] == "full" and rep6["counts"]["videos_processed"] == 3

    # The ledger snapshot of each run lists every listed video and where its rows are.
    ledger = read_parquet(str(out / man4["ledger"])).to_pylist()
    assert {e["video_id"] for e in ledger} == {v["video_id"] for v in rep4["videos"]}
    for entry in ledger:
        assert entry["config_hash"] == man4["config_hash"] and entry["snapshot_run_id"] == man4["run_id"]
        for key in entry["shards"]:
            assert (out / key).is_file()


def test_identical_clips_keep_their_rows_when_one_copy_goes(config, tmp_path, clips_dir):
    """Two URIs, same bytes -> same sample_ids; rows are listed once and survive removals."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(clips_dir / TAI_CHI, folder / "a.mp4")
    shutil.copy(clips_dir / TAI_CHI, folder / "b.mp4")
    out = tmp_path / "out"
    rows1, _, rep1 = _run(config, folder, out)
    assert_no_duplicates(rows1)
    assert rows1 and all(v["status"] == "ok" for v in rep1["videos"])

    (folder / "a.mp4").unlink()
    rows2, _, rep2 = _run(config, folder, out, "--incremental")
    assert_no_duplicates(rows2)
    assert _ids(rows2) == _ids(rows1), "the content is still listed (as b.mp4)"
    assert {r["video_id"] for r in rows2} == {_by_name(rep2)["b.mp4"]["video_id"]}

    shutil.copy(clips_dir / TAI_CHI, folder / "c.mp4")
    rows3, _, rep3 = _run(config, folder, out, "--incremental")
    assert_no_duplicates(rows3)
    assert _ids(rows3) == _ids(rows1)
    assert {v["status"] for v in rep3["videos"]} <= {"ok", "skipped"}
