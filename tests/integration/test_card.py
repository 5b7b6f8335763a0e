"""`proxyqa card`: counts, verification, failures and examples of real runs, with PNG charts."""
from __future__ import annotations

import io
import json
import re
import shutil
from collections import Counter

import pytest
from PIL import Image

from proxyqa.pipeline.cli import main
from proxyqa.trainer.card import draw_sample, png_bytes
from tests.helpers import REPO, latest_run, read_run, run_cli


def linked_pngs(card_dir, text: str) -> list:
    paths = [card_dir / rel for rel in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        Image.open(path).verify()
    return paths


def test_card_of_small_run(small_run, tmp_path):
    rows, manifest, report = read_run(small_run)
    out = tmp_path / "card"
    assert main(["card", str(small_run), "--out", str(out), "--examples", "1"]) == 0
    text = (out / "README.md").read_text()
    by_task = Counter(r["task"] for r in rows)
    for task, n in by_task.items():
        assert re.search(rf"\| {task} \| \w+ \| {n} \|", text)           # rows per task
        ver = Counter(r["verified"] for r in rows if r["task"] == task)
        assert f"| {task} | {ver[True]} | {ver[False]} | {ver[None]} |" in text
        assert f"### {task}" in text
        assert any(f"> {r['question'].splitlines()[0]}" in text and f"Answer: **{r['answer']}**" in text
                   for r in rows if r["task"] == task)                  # an example row
    for family, n in Counter(r["family"] for r in rows).items():
        assert re.search(rf"\| {family} \| {n} \|", text)
    assert f"rows: {len(rows)} in {len(manifest['shards'])} shards" in text
    for kind, n in report["counts"]["task_errors_by_kind"].items():  # e.g. "pose: no_person"
        assert f"| {kind} | {n} |" in text
    captions = [r for r in rows if r["task"] in ("pose_description", "description_match")]
    if captions:   # the local config writes rule captions: a few are quoted as text
        assert "## Caption examples (text)" in text
        assert any(r["answer"] in text.split("## Examples")[0] for r in captions)
    pngs = linked_pngs(out, text)
    names = {p.name for p in pngs}
    assert {"rows_per_task.png", "verification.png"} <= names
    assert sum(p.parent.name == "examples" for p in pngs) == len(by_task)


def test_card_default_folder_and_latest(small_run, tmp_path):
    out_root = tmp_path / "out"
    shutil.copytree(small_run.parent.parent, out_root)
    assert main(["card", str(out_root)]) == 0                          # output root -> latest
    run = latest_run(out_root)
    assert (run / "card" / "README.md").exists()
    (run / "manifest.json").unlink()
    assert main(["card", str(run)]) == 2                               # incomplete: refused


@pytest.mark.slow
@pytest.mark.ray
def test_card_shows_failures_of_a_real_run(tmp_path, clips_dir):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clips_dir / "kinetics_ta_chi.mp4", videos)
    (videos / "broken.mp4").write_bytes(b"this is not a video" * 100)
    out = tmp_path / "out"
    assert run_cli(REPO / "configs" / "local.yaml", "--input", str(videos), "--output", str(out),
                   "--set", "ray.progress_bars=false") == 0
    run = latest_run(out)
    report = json.loads((run / "report.json").read_text())
    failures = report["counts"]["failures_by_reason"]
    assert failures                                                    # the broken file
    assert main(["card", str(run)]) == 0
    text = (run / "card" / "README.md").read_text()
    for reason, n in failures.items():
        assert f"| {reason} | {n} |" in text
    assert "| broken.mp4 | failed |" in text
    assert "failures.png" in {p.name for p in linked_pngs(run / "card", text)}


def test_draw_sample_marks_box_keypoints_and_answer(tmp_path):
    from tests.helpers import COCO

    data = json.loads((COCO / "test_coco.json").read_text())
    im = data["images"][0]
    ann = next(a for a in data["annotations"] if a["image_id"] == im["id"])
    w, h = im["width"], im["height"]
    raw = ann["keypoints"]
    kps = [[raw[i] / w, raw[i + 1] / h, 1.0 if raw[i + 2] else 0.0] for i in range(0, 51, 3)]
    x, y, bw, bh = ann["bbox"]
    row = {"task": "spatial_grounding", "sample_id": "x",
           "images": [(COCO / im["file_name"]).read_bytes()],
           "subject_box": [x / w, y / h, (x + bw) / w, (y + bh) / h], "keypoints": [kps],
           "answer_struct": json.dumps({"part": "left_wrist", "point": kps[9][:2]})}
    plain = {**row, "subject_box": None, "keypoints": None, "answer_struct": "{}"}
    drawn_img = Image.open(io.BytesIO(png_bytes(draw_sample(row, title=False)))).convert("RGB")
    plain_img = Image.open(io.BytesIO(png_bytes(draw_sample(plain, title=False)))).convert("RGB")
    assert drawn_img.size == plain_img.size
    diff = [abs(a - b) for pa, pb in zip(drawn_img.getdata(), plain_img.getdata())
            for a, b in zip(pa, pb)]
    assert sum(d > 60 for d in diff) > 300                              # overlays were drawn


@pytest.mark.s3
def test_card_of_a_run_on_s3(small_run, monkeypatch):
    """The documented S3 route: endpoint and keys from the AWS environment variables."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()   # instances made before the env was set
    try:
        fs = s3fs.S3FileSystem()
        fs.mkdir("cards", region_name="eu-west-1")
        fs.put(str(small_run.parent.parent) + "/", "cards/out/", recursive=True)
        assert main(["card", "s3://cards/out", "--examples", "1"]) == 0
        card = f"cards/out/runs/{small_run.name}/card"
        text = fs.cat_file(f"{card}/README.md").decode()
        rows, _, _ = read_run(small_run)
        assert f"rows: {len(rows)} in" in text
        for rel in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text):
            assert fs.cat_file(f"{card}/{rel}")[:4] == b"\x89PNG"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
