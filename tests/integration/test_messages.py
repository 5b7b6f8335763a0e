"""to_messages: image placement per chat format and coordinate conversion per model family.

Grounding rows are hand-made from real COCO images and their hand-labelled keypoints, so
the expected coordinates come from the labels, not from the code under test.
"""
from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from proxyqa.core.schema import COCO17
from proxyqa.trainer.messages import STYLES, smart_resize, to_messages
from tests.helpers import COCO, read_run

LEFT_SHOULDER, LEFT_ELBOW, LEFT_WRIST = (COCO17.index(n) for n in
                                         ("left_shoulder", "left_elbow", "left_wrist"))


def coco_people() -> list[dict]:
    """(image bytes, size, labelled keypoints in pixels, person box) per annotated person."""
    data = json.loads((COCO / "test_coco.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    people = []
    for ann in data["annotations"]:
        kps = [ann["keypoints"][i:i + 3] for i in range(0, 51, 3)]
        if not all(kps[j][2] == 2 for j in (LEFT_SHOULDER, LEFT_ELBOW, LEFT_WRIST)):
            continue
        im = images[ann["image_id"]]
        people.append({"jpeg": (COCO / im["file_name"]).read_bytes(),
                       "size": (im["width"], im["height"]), "kps": kps, "bbox": ann["bbox"],
                       "people_in_image": sum(a["image_id"] == im["id"] for a in data["annotations"])})
    return people


PEOPLE = coco_people()


# The two ways builders state the box convention: a note after the box, or a sentence.
NOTE_AFTER_BOX = ("(box coordinates are integers from 0 to 1000 relative to the image (x from "
                  "the left edge, y from the top edge))")
NOTE_SENTENCE = ("Box coordinates are integers from 0 to 1000 across the image's width and "
                 "height, from its top-left corner.")


def grounding_row(person: dict, kind: str, named_by_box: bool, note: str = "paren") -> dict:
    """A spatial_grounding row the way the builder writes it (question in 0-1000)."""
    w, h = person["size"]
    x, y, bw, bh = person["bbox"]
    subject_box = [x / w, y / h, (x + bw) / w, (y + bh) / h]
    if kind == "point":
        px, py, _ = person["kps"][LEFT_WRIST]
        struct = {"part": "left_wrist", "point": [px / w, py / h]}
    else:
        pts = [person["kps"][j] for j in (LEFT_SHOULDER, LEFT_ELBOW, LEFT_WRIST)]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        struct = {"part": "left_arm", "box": [min(xs) / w, min(ys) / h, max(xs) / w, max(ys) / h]}
    who, after = "the person", ""
    if named_by_box:
        box = ", ".join(str(round(v * 1000)) for v in subject_box)
        who = f"the person in the box [{box}]" + (f" {NOTE_AFTER_BOX}" if note == "paren" else "")
        after = f" {NOTE_SENTENCE}" if note == "sentence" else ""
    part = struct["part"].replace("_", " ")
    question = (f"Where is the {part} of {who}?{after} Answer with its {kind}, in integers from 0 "
                f"to 1000 relative to the image. Left and right mean the person's own left.")
    return {"task": "spatial_grounding", "family": "spatial", "question": question,
            "choices": None, "answer": "[see answer_struct]", "answer_struct": json.dumps(struct),
            "images": [person["jpeg"]], "subject_box": subject_box, "frame_size": [w, h],
            "keypoints": None, "coord_convention": "normalized_0_1"}


def user_text(messages: list[dict]) -> str:
    content = messages[0]["content"]
    if isinstance(content, str):                     # llava: placeholders, then the text
        return content.split("<image>\n")[-1]
    return content[-1]["text"]


def answer_text(messages: list[dict]) -> str:
    content = messages[1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


def numbers(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", text)]


def test_smart_resize_matches_hand_computed_qwen_sizes():
    assert smart_resize(1920, 1080) == (1932, 1092)
    assert smart_resize(1920, 1080, max_pixels=1280 * 28 * 28) == (1316, 728)
    assert smart_resize(40, 30) == (84, 56)                   # scaled up to min_pixels
    for w, h in [(340, 256), (426, 240), (1088, 1920), (5000, 3000)]:
        rw, rh = smart_resize(w, h, max_pixels=1280 * 28 * 28)
        assert rw % 28 == 0 and rh % 28 == 0
        assert 56 * 56 <= rw * rh <= 1280 * 28 * 28
        assert abs(rw / rh - w / h) / (w / h) < 0.1


@pytest.mark.parametrize("person", PEOPLE[:6], ids=lambda p: f"{p['size'][0]}x{p['size'][1]}")
def test_grounding_point_converted_per_model(person):
    row = grounding_row(person, "point", named_by_box=False)
    w, h = person["size"]
    lx, ly, _ = person["kps"][LEFT_WRIST]

    qwen25 = to_messages(row, "qwen2_5_vl")
    image_item = qwen25[0]["content"][0]
    rw, rh = image_item["resized_width"], image_item["resized_height"]
    assert (rw, rh) == smart_resize(w, h)
    [answer] = json.loads(answer_text(qwen25))
    px, py = answer["point_2d"]
    assert answer["label"] == "left wrist"
    assert 0 <= px <= rw and 0 <= py <= rh
    assert abs(px * w / rw - lx) <= w / rw and abs(py * h / rh - ly) <= h / rh   # the labelled pixel
    assert f"{rw}x{rh}" in user_text(qwen25) and "point_2d" in user_text(qwen25)

    sized = json.loads(answer_text(to_messages(row, "qwen2_5_vl", image_size=(1000, 500))))
    assert sized[0]["point_2d"] == [round(lx / w * 1000), round(ly / h * 500)]

    qwen2 = answer_text(to_messages(row, "qwen2_vl"))
    assert qwen2.startswith("<|object_ref_start|>left wrist<|object_ref_end|>")
    assert [int(v) for v in re.findall(r"\((\d+),(\d+)\)", qwen2)[0]] == \
        [round(lx / w * 1000), round(ly / h * 1000)]
    assert "0-1000" in user_text(to_messages(row, "qwen2_vl"))

    for style in ("llava", "openai"):
        msgs = to_messages(row, style)
        x, y = json.loads(answer_text(msgs))
        assert abs(x - lx / w) < 6e-4 and abs(y - ly / h) < 6e-4
        assert "0-1000" not in user_text(msgs) and "normalised to 0-1" in user_text(msgs)
        assert "person's own left" in user_text(msgs)


@pytest.mark.parametrize("note", ["paren", "sentence"])
def test_grounding_box_and_subject_box_in_question_converted(note):
    person = next(p for p in PEOPLE if p["people_in_image"] > 1)
    row = grounding_row(person, "box", named_by_box=True, note=note)
    w, h = person["size"]
    box = json.loads(row["answer_struct"])["box"]
    subject = row["subject_box"]
    for style in STYLES:
        msgs = to_messages(row, style)
        question, answer = user_text(msgs), answer_text(msgs)
        assert "oordinates are" not in question and "0 to 1000" not in question  # builder's notes
        assert question.startswith("Where is the left arm of the person in the box [")
        mentioned = numbers(question[question.index("[") + 1:question.index("]")])
        if style == "qwen2_5_vl":
            rw, rh = smart_resize(w, h)
            [struct] = json.loads(answer)
            expected = [box[0] * rw, box[1] * rh, box[2] * rw, box[3] * rh]
            assert all(abs(a - e) <= 0.5 for a, e in zip(struct["bbox_2d"], expected))
            assert all(abs(a - e) <= 0.5 for a, e in zip(
                mentioned, [subject[0] * rw, subject[1] * rh, subject[2] * rw, subject[3] * rh]))
        elif style == "qwen2_vl":
            assert "<|box_start|>" in answer and answer.endswith("<|box_end|>")
            got = numbers(answer[answer.index("<|box_start|>"):])
            assert got == [round(v * 1000) for v in box]
            assert mentioned == [round(v * 1000) for v in subject]
        else:
            got = json.loads(answer)
            assert all(abs(a - e) < 6e-4 for a, e in zip(got, box))
            assert all(0 <= v <= 1 for v in got + mentioned)
            assert all(abs(a - e) < 6e-4 for a, e in zip(mentioned, subject))


@pytest.mark.parametrize("note", ["paren", "sentence"])
def test_multiple_choice_box_mention_and_letters(note):
    person = next(p for p in PEOPLE if p["people_in_image"] > 1)
    w, h = person["size"]
    x, y, bw, bh = person["bbox"]
    subject = [x / w, y / h, (x + bw) / w, (y + bh) / h]
    mention = "[" + ", ".join(str(round(v * 1000)) for v in subject) + "]"
    row = {"task": "body_part_state", "images": [person["jpeg"]], "subject_box": subject,
           "frame_size": [w, h], "choices": ["bent", "straight", "raised above the head"],
           "answer": "straight", "answer_struct": json.dumps({"part": "left_arm", "state": "straight",
                                                              "index": 1}),
           "question": ("Which option best describes the left arm of the person in the box "
                        + (f"{mention} {NOTE_AFTER_BOX}?" if note == "paren"
                           else f"{mention}? {NOTE_SENTENCE}")
                        + " Frame [1, 2, 3, 4] is unrelated. Answer with the option's text.")}
    for style in STYLES:
        msgs = to_messages(row, style)
        question = user_text(msgs)
        assert answer_text(msgs) == "straight"
        assert "A. bent\nB. straight\nC. raised above the head" in question
        assert "[1, 2, 3, 4]" in question                        # other numbers untouched
        assert "oordinates are" not in question                   # builder's note dropped
        assert question.count("Answer with") == 1
        assert "is unrelated." in question
    assert mention in user_text(to_messages(row, "qwen2_vl"))
    rw, rh = smart_resize(w, h)
    qwen25 = to_messages(row, "qwen2_5_vl")
    assert f"(pixel coordinates of the {rw}x{rh} image)" in user_text(qwen25)
    assert qwen25[0]["content"][0]["resized_width"] == rw


def check_structure(row: dict, style: str, msgs: list[dict]) -> None:
    images = row["images"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert answer_text(msgs).strip()
    if style == "llava":
        assert msgs[0]["content"].count("<image>") == len(images)
        return
    content = msgs[0]["content"]
    if style == "openai":
        urls = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
        assert [base64.b64decode(u.split(",", 1)[1]) for u in urls] == images
        assert all(u.startswith("data:image/jpeg;base64,") for u in urls)
    else:
        items = [c["image"] for c in content if c["type"] == "image"]
        assert [base64.b64decode(u.split(",", 1)[1]) for u in items] == images
        assert msgs[1]["content"][0]["type"] == "text"
    assert content[-1]["type"] == "text"
    if len(images) > 1:
        labels = [c["text"] for c in content if c["type"] == "text"][:-1]
        assert labels == [f"Image {i + 1}:" for i in range(len(images))]


def test_real_rows_every_style(small_run):
    rows, _, _ = read_run(small_run)
    assert {r["task"] for r in rows} >= {"temporal_order", "spatial_grounding", "motion_compare"}
    grounded = 0
    for row in rows:
        for style in STYLES:
            msgs = to_messages(row, style)
            check_structure(row, style, msgs)
            if row["choices"]:
                assert answer_text(msgs) in row["choices"]
                assert answer_text(msgs) == row["answer"]
            elif row["task"] == "temporal_order":
                assert answer_text(msgs) == row["answer"]          # no coordinates: kept
            struct = json.loads(row["answer_struct"])
            kind = "point" if "point" in struct else "box" if "box" in struct else None
            if kind:                                   # spatial_grounding rows
                check_grounding(row, style, msgs, struct[kind])
                grounded += 1
    assert grounded > 0, "the run wrote no grounding rows: nothing checked the coordinates"


def check_grounding(row: dict, style: str, msgs: list[dict], normalised: list[float]) -> None:
    answer = answer_text(msgs)
    if style == "qwen2_vl":
        got = numbers(answer.split("<|object_ref_end|>")[1])
        assert got == [round(v * 1000) for v in normalised]
    elif style == "qwen2_5_vl":
        rw, rh = smart_resize(*Image.open(io.BytesIO(row["images"][0])).size)
        [item] = json.loads(answer)
        got = item.get("point_2d") or item["bbox_2d"]
        scale = [rw, rh] * 2
        assert all(abs(g - v * s) <= 0.5 for g, v, s in zip(got, normalised, scale))
    else:
        assert all(abs(g - v) < 6e-4 for g, v in zip(json.loads(answer), normalised))


def test_image_as_pil_and_bytes(small_run):
    rows, _, _ = read_run(small_run)
    row = next(r for r in rows if len(r["images"]) > 1)
    pil = [c["image"] for c in to_messages(row, "qwen2_vl", image_as="pil")[0]["content"]
           if c["type"] == "image"]
    raw = [c["image"] for c in to_messages(row, "qwen2_vl", image_as="bytes")[0]["content"]
           if c["type"] == "image"]
    assert raw == row["images"]
    assert [p.size for p in pil] == [Image.open(io.BytesIO(b)).size for b in row["images"]]


def test_bad_input_is_a_clear_error():
    row = {"question": "Which?", "choices": ["a", "b"], "answer": "c", "answer_struct": "{}",
           "images": []}
    with pytest.raises(ValueError, match="not one of the choices"):
        to_messages(row, "llava")
    with pytest.raises(ValueError, match="style must be one of"):
        to_messages(row, "gemini")
