"""A row -> chat messages in the format a model family trains on.

Images go where each format expects them, in shown order (with "Image i:" labels when
there are several, since questions refer to "Image 1..K"):
- qwen2_vl / qwen2_5_vl: user content list with {"type": "image", "image": ...} items,
  as qwen-vl-utils' `process_vision_info` reads them (`image_as`: "data_uri" (default),
  "pil" or "bytes").
- llava: user content is text with one "<image>" placeholder per image; the images are
  the row's `images` in the same order (pass them to the processor separately).
- openai: user content list with {"type": "image_url", "image_url": {"url": "data:..."}}.

Coordinates: rows hold points/boxes normalised [0, 1] of the original frame. They are
converted to the target model's convention:
- qwen2_5_vl: absolute pixels of the image as the model sees it. That size is
  `image_size=(w, h)` if given, else Qwen2.5-VL's `smart_resize` of the JPEG's size
  (`min_pixels`/`max_pixels` as in its processor); the image items then carry
  `resized_width`/`resized_height` so qwen-vl-utils resizes to exactly that size.
- qwen2_vl: integers 0-1000.
- llava, openai: normalised 0-1, three decimals.

Grounding rows (answer_struct has "point" or "box"): the question keeps its first
sentence (up to the first "?": part, subject, joints), with the subject box converted;
what followed (the builder's answer-format instruction) is replaced by the target
format's instruction, and the answer is rebuilt from answer_struct:
qwen2_5_vl `[{"point_2d"|"bbox_2d": [...], "label": "left wrist"}]` (JSON),
qwen2_vl `<|object_ref_start|>left arm<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`
(a point: `(x,y)` after the object ref), llava/openai `[x, y]` / `[x1, y1, x2, y2]`.
In every question, a subject box written as "[x1, y1, x2, y2]" whose numbers match
`subject_box` (in 0-1, 0-1000 or original pixels) is rewritten in the target convention
with a short note after it; the builder's own convention note is dropped (a parenthesised
note right after the box, or later sentences that mention coordinates and a scale such as
"0 to 1000"); other text is kept as is. A question without such a box is left unchanged.
Multiple choice: options are listed lettered under the question; the answer stays the
option's text. Pixel coordinates assume the images are whole frames (resized, same
aspect), which is what the builders emit.
"""
from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Sequence
from typing import Any

STYLES = ("qwen2_vl", "qwen2_5_vl", "llava", "openai")

# Qwen2.5-VL image processor defaults (preprocessor_config.json of the released models).
QWEN_PATCH_FACTOR = 28
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 16384

_NUM = r"(-?\d+(?:\.\d+)?)"
BOX_NUMBERS = re.compile(r"\[\s*" + r"\s*,\s*".join([_NUM] * 4) + r"\s*\]")
# A parenthesised note after a box is replaced only if it is about coordinates.
SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
NOTE_WORDS = ("coordinat", "0-1000", "0 to 1000", "normalis", "normaliz", "pixel", "fraction")


def smart_resize(width: int, height: int, min_pixels: int = QWEN_MIN_PIXELS,
                 max_pixels: int = QWEN_MAX_PIXELS, factor: int = QWEN_PATCH_FACTOR) -> tuple[int, int]:
    """(w, h) Qwen2-VL/2.5-VL's processor resizes an image to (port of its smart_resize)."""
    if max(width, height) / min(width, height) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} is over 200")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


# Start-of-frame markers (baseline, progressive, ...): they carry the image size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(w, h) from the JPEG header, without decoding the pixels (and without Pillow, so the
    trainer-side install stays small)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG image")
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            raise ValueError("corrupt JPEG header")
        marker = data[i + 1]
        if marker == 0xFF:          # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height
        i += 2 + length
    raise ValueError("JPEG header has no frame size")


class Coords:
    """Renders normalised [0, 1] coordinates in one convention."""

    def __init__(self, kind: str, width: int = 0, height: int = 0):
        self.kind, self.width, self.height = kind, width, height

    def values(self, xy: Sequence[float]) -> list:
        out = []
        for i, v in enumerate(xy):
            v = min(max(float(v), 0.0), 1.0)
            if self.kind == "pixels":
                out.append(int(round(v * (self.width if i % 2 == 0 else self.height))))
            elif self.kind == "0-1000":
                out.append(int(round(v * 1000)))
            else:
                out.append(round(v, 3))
        return out

    def text(self, xy: Sequence[float]) -> str:
        return "[" + ", ".join(str(v) for v in self.values(xy)) + "]"

    @property
    def note(self) -> str:
        if self.kind == "pixels":
            return f"(pixel coordinates of the {self.width}x{self.height} image)"
        if self.kind == "0-1000":
            return "(coordinates 0-1000)"
        return "(coordinates normalised to 0-1)"


def _struct(row: dict) -> dict:
    raw = row.get("answer_struct")
    if isinstance(raw, dict):
        return raw
    return json.loads(raw) if raw else {}


def is_grounding(row: dict) -> bool:
    struct = _struct(row)
    return "point" in struct or "box" in struct


def _ref_index(row: dict) -> int:
    """The image the coordinates are drawn on (grounding: `image` in answer_struct, else 0)."""
    return min(int(_struct(row).get("image", 0)), max(len(row.get("images") or []) - 1, 0))


def coords_for(row: dict, style: str, image_size: tuple[int, int] | None = None,
               min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS) -> Coords:
    """The target convention of `style` for this row's (grounding) image."""
    if style == "qwen2_vl":
        return Coords("0-1000")
    if style != "qwen2_5_vl":
        return Coords("0-1")
    if image_size is None:
        images = row.get("images") or []
        if not images:
            raise ValueError("qwen2_5_vl coordinates need the image size: row has no images")
        image_size = smart_resize(*jpeg_size(images[_ref_index(row)]), min_pixels, max_pixels)
    return Coords("pixels", *image_size)


def _matches_box(numbers: list[float], box: Sequence[float], frame_size: Sequence[int] | None) -> bool:
    scales = [(1.0, 1.0, 0.01), (1000.0, 1000.0, 10.0)]
    if frame_size:
        scales.append((float(frame_size[0]), float(frame_size[1]), 0.01 * max(frame_size)))
    for sx, sy, tol in scales:
        expected = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
        if all(abs(a - b) <= tol for a, b in zip(numbers, expected)):
            return True
    return False


def _note_end(text: str, pos: int) -> int:
    """End of a coordinate note "( ... )" (nested parentheses allowed) right after pos."""
    start = pos + len(text[pos:]) - len(text[pos:].lstrip(" "))
    if not text.startswith("(", start):
        return pos
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            note = text[start:i + 1].lower()
            return i + 1 if any(w in note for w in NOTE_WORDS) else pos
    return pos


def subject_mention(row: dict) -> tuple[int, int] | None:
    """(start, end) in the question of the subject box (and its note), if it names one."""
    box, question = row.get("subject_box"), row.get("question") or ""
    if box is None:
        return None
    for match in BOX_NUMBERS.finditer(question):
        if _matches_box([float(g) for g in match.groups()], box, row.get("frame_size")):
            return match.start(), _note_end(question, match.end())
    return None


def _states_convention(sentence: str) -> bool:
    text = sentence.lower()
    return "coordinat" in text and any(w in text for w in NOTE_WORDS if w != "coordinat")


def convert_question_box(row: dict, coords: Coords) -> str:
    """The question with its subject-box mention (if any) in `coords`' convention; other
    sentences that state the builder's coordinate convention are dropped (the new note
    follows the box)."""
    question = row.get("question") or ""
    span = subject_mention(row)
    if span is None:
        return question
    new = f"{coords.text(row['subject_box'])} {coords.note}"
    before, after = question[:span[0]], question[span[1]:]
    end = SENTENCE_END.search(after)                 # the rest of the mention's sentence
    head, tail = (after[:end.start()], after[end.end():]) if end else (after, "")
    kept = [s for s in SENTENCE_END.split(tail) if s and not _states_convention(s)]
    return " ".join([before + new + head, *kept])


def _format_instruction(style: str, kind: str, coords: Coords, label: str) -> str:
    if style == "qwen2_5_vl":
        key = "point_2d" if kind == "point" else "bbox_2d"
        shape = "[x, y]" if kind == "point" else "[x1, y1, x2, y2]"
        return (f'Answer in JSON as [{{"{key}": {shape}, "label": "{label}"}}] '
                f"{coords.note}.")
    shape = "(x,y)" if kind == "point" else "(x1,y1),(x2,y2)"
    if style == "qwen2_vl":
        return f"Answer with the {kind} as {shape} {coords.note}."
    shape = "[x, y]" if kind == "point" else "[x1, y1, x2, y2]"
    return f"Answer with the {kind} as {shape} {coords.note}."


def grounding_qa(row: dict, style: str, coords: Coords) -> tuple[str, str]:
    """(question, answer) of a grounding row rebuilt in the target convention."""
    struct = _struct(row)
    kind = "point" if "point" in struct else "box"
    label = str(struct.get("part", "body part")).replace("_", " ")
    # Keep the builder's question sentence (part, subject, joints) with its box converted;
    # replace everything after it, since that states the builder's answer format.
    head = convert_question_box(row, coords).split("?", 1)
    if len(head) == 2 and head[0].strip():
        question = head[0].strip() + "?"
    else:
        question = f"Where is the {label} of the person?"
    if label.startswith(("left ", "right ")):
        question += " Left and right mean the person's own left and right, not the viewer's."
    question += " " + _format_instruction(style, kind, coords, label)
    values = coords.values(struct[kind])
    if style == "qwen2_5_vl":
        answer = json.dumps([{"point_2d" if kind == "point" else "bbox_2d": values, "label": label}])
    elif style == "qwen2_vl":
        ref = f"<|object_ref_start|>{label}<|object_ref_end|>"
        if kind == "point":
            answer = f"{ref}({values[0]},{values[1]})"
        else:
            answer = f"{ref}<|box_start|>({values[0]},{values[1]}),({values[2]},{values[3]})<|box_end|>"
    else:
        answer = coords.text(struct[kind])
    return question, answer


def _choice_block(row: dict) -> tuple[str, str]:
    """(lettered options, answer text) for multiple-choice rows; the answer stays the
    option's text (docs/schema.md), so the builder's "Answer with the option's text" holds."""
    choices = list(row["choices"])
    index = _struct(row).get("index")
    if not isinstance(index, int) or not 0 <= index < len(choices):
        if row["answer"] not in choices:
            raise ValueError(f"answer {row['answer']!r} is not one of the choices {choices}")
        index = choices.index(row["answer"])
    options = "\n".join(f"{chr(ord('A') + i)}. {text}" for i, text in enumerate(choices))
    text = f"Options:\n{options}"
    if "answer with" not in (row.get("question") or "").lower():
        text += "\nAnswer with the option's text."
    return text, choices[index]


def question_answer(row: dict, style: str, coords: Coords) -> tuple[str, str]:
    """The user text and the assistant text of a row, in `style`'s conventions."""
    if is_grounding(row):
        return grounding_qa(row, style, coords)
    question, answer = convert_question_box(row, coords), str(row.get("answer") or "")
    if row.get("choices"):
        options, answer = _choice_block(row)
        question = f"{question}\n{options}"
    return question, answer


def _data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def _qwen_image(data: bytes, image_as: str) -> Any:
    if image_as == "data_uri":
        return _data_uri(data)
    if image_as == "pil":
        from PIL import Image

        return Image.open(io.BytesIO(data)).convert("RGB")
    if image_as == "bytes":
        return data
    raise ValueError(f"image_as must be 'data_uri', 'pil' or 'bytes', not {image_as!r}")


def to_messages(row: dict, style: str, *, image_size: tuple[int, int] | None = None,
                image_as: str = "data_uri", min_pixels: int = QWEN_MIN_PIXELS,
                max_pixels: int = QWEN_MAX_PIXELS) -> list[dict[str, Any]]:
    """[user, assistant] messages of one row for `style` (see the module doc)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    images = list(row.get("images") or [])
    has_coords = is_grounding(row) or subject_mention(row) is not None
    needs_size = style == "qwen2_5_vl" and has_coords
    # A qwen2_5_vl row without coordinates needs no image size (nothing to convert).
    coords = (coords_for(row, style, image_size, min_pixels, max_pixels) if has_coords
              else Coords("0-1"))
    question, answer = question_answer(row, style, coords)
    labels = ([f"Image {i + 1}:" for i in range(len(images))] if len(images) > 1
              else [None] * len(images))

    if style == "llava":
        prefix = "".join(f"{label} <image>\n" if label else "<image>\n" for label in labels)
        return [{"role": "user", "content": prefix + question},
                {"role": "assistant", "content": answer}]

    # Qwen2.5-VL: pin the size of the images the pixel coordinates refer to (same JPEG size).
    ref_size = jpeg_size(images[_ref_index(row)]) if needs_size and images else None
    content: list[dict[str, Any]] = []
    for label, data in zip(labels, images):
        if label:
            content.append({"type": "text", "text": label})
        if style == "openai":
            content.append({"type": "image_url", "image_url": {"url": _data_uri(data)}})
            continue
        item = {"type": "image", "image": _qwen_image(data, image_as)}
        if ref_size is not None and jpeg_size(data) == ref_size:
            item.update(resized_width=coords.width, resized_height=coords.height)
        content.append(item)
    content.append({"type": "text", "text": question})
    if style == "openai":
        return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    return [{"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
