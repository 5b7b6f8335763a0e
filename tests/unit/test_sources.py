import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from proxyqa.core.config import load_config
from proxyqa.pipeline.sources import SourceError, list_videos


def _cfg():
    return load_config(None)


def test_folder_listing_recursive_with_odd_names(tmp_path, clips_dir):
    (tmp_path / "sub dir").mkdir()
    shutil.copy(clips_dir / "kinetics_ta_chi.mp4", tmp_path / "sub dir" / "tai chi é.mp4")
    shutil.copy(clips_dir / "decord_flipping_a_pancake.mkv", tmp_path / "pancake.MKV")
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "dir.mp4").mkdir()
    os.symlink(tmp_path / "nowhere.mp4", tmp_path / "dangling.mp4")
    recs = {os.path.basename(r["video_uri"]): r for r in list_videos(_cfg(), str(tmp_path))}
    assert set(recs) == {"tai chi é.mp4", "pancake.MKV", "dir.mp4", "dangling.mp4"}
    assert recs["tai chi é.mp4"]["status"] is None and recs["tai chi é.mp4"]["size_bytes"] > 0
    assert recs["dir.mp4"]["status"] == "failed" and "directory" in recs["dir.mp4"]["reason"]
    assert recs["dangling.mp4"]["status"] == "failed" and "symlink" in recs["dangling.mp4"]["reason"]


def test_video_id_is_stable_and_changes_with_the_file(tmp_path, clips_dir):
    path = tmp_path / "a.mp4"
    shutil.copy(clips_dir / "kinetics_ta_chi.mp4", path)
    first = list_videos(_cfg(), str(tmp_path))[0]["video_id"]
    assert list_videos(_cfg(), str(tmp_path))[0]["video_id"] == first
    with open(path, "ab") as fh:
        fh.write(b"\0")
    assert list_videos(_cfg(), str(tmp_path))[0]["video_id"] != first


@pytest.mark.parametrize("kind", ["txt", "csv", "jsonl", "parquet"])
def test_manifest_formats(tmp_path, clips_dir, kind):
    uris = [str(clips_dir / "kinetics_ta_chi.mp4"), str(clips_dir / "pose2sim_single_cam01.mp4")]
    path = tmp_path / f"m.{kind}"
    if kind == "txt":
        path.write_text("# comment\n" + "\n".join(uris) + "\n")
    elif kind == "csv":
        path.write_text("uri,label\n" + "\n".join(f"{u},x" for u in uris) + "\n")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps({"uri": u}) for u in uris) + "\n")
    else:
        pq.write_table(pa.table({"uri": uris}), path)
    recs = list_videos(_cfg(), str(path))
    assert [r["video_uri"] for r in recs] == uris
    assert all(r["status"] is None for r in recs)


def test_manifest_with_missing_file_records_it(tmp_path, clips_dir):
    path = tmp_path / "m.txt"
    path.write_text(f"{clips_dir / 'kinetics_ta_chi.mp4'}\n{tmp_path / 'gone.mp4'}\n")
    recs = list_videos(_cfg(), str(path))
    assert recs[1]["status"] == "failed" and "not found" in recs[1]["reason"]


def test_bad_manifest_and_missing_input_are_errors(tmp_path):
    with pytest.raises(SourceError, match="input not found"):
        list_videos(_cfg(), str(tmp_path / "nope"))
    bad = tmp_path / "m.csv"
    bad.write_text("path\n/x.mp4\n")
    with pytest.raises(SourceError, match="no 'uri' column"):
        list_videos(_cfg(), str(bad))
    bad = tmp_path / "m.jsonl"
    bad.write_text("{oops\n")
    with pytest.raises(SourceError, match="line 1"):
        list_videos(_cfg(), str(bad))


@pytest.mark.parametrize("name, content, match", [
    ("m.jsonl", b'{"uri": null}\n', "entry 1: 'uri' must be a non-empty string"),
    ("m.jsonl", b'{"uri": 5}\n', "entry 1: 'uri' must be a non-empty string"),
    ("m.csv", b"id,uri\n1\n", "entry 1: 'uri' must be a non-empty string"),
    ("m.txt", b"\xff\xfe/x.mp4\n", "cannot be read: UnicodeDecodeError"),
    ("m.parquet", b"not parquet at all", "cannot be read: ArrowInvalid"),
])
def test_malformed_manifests_are_one_line_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError, match=match):
        list_videos(_cfg(), str(path))


def test_unsupported_schemes_are_reported_not_fetched(tmp_path, clips_dir):
    good = str(clips_dir / "kinetics_ta_chi.mp4")
    path = tmp_path / "m.txt"
    path.write_text(f"{good}\nhttps://example.invalid/a.mp4\nfoo://bar/x.mp4\n")
    recs = list_videos(_cfg(), str(path))
    assert [r["video_uri"] for r in recs] == [good, "https://example.invalid/a.mp4", "foo://bar/x.mp4"]
    assert recs[0]["status"] is None
    assert [r["reason"] for r in recs[1:]] == [
        "listing: unsupported_scheme: https:// (local paths and s3:// only)",
        "listing: unsupported_scheme: foo:// (local paths and s3:// only)"]
    with pytest.raises(SourceError, match="only local paths and s3://"):
        list_videos(_cfg(), "https://example.invalid/videos/")
