"""The one codec of the pose stage's people and subject columns."""
from __future__ import annotations

import json

import numpy as np

from proxyqa.core.people import Person, Subject, as_float32, decode_people, encode_people, people_counts, subject_of


def _person(x: float, track_id: int | None = 3) -> Person:
    kps = np.zeros((17, 3), np.float32)
    kps[:, 0], kps[:, 1], kps[:, 2] = x + np.arange(17) * 0.01234567, 0.5, 0.9
    return Person(box=[x, 0.1, x + 0.2, 0.9], score=0.87654321, keypoints=kps, track_id=track_id)


def test_people_round_trip_at_four_decimals():
    people = [[_person(0.1), _person(0.5, None)], [], [_person(0.2)]]
    text = encode_people(people)
    back = decode_people(text)
    assert [len(frame) for frame in back] == [2, 0, 1]
    assert back[0][0].box == [0.1, 0.1, 0.3, 0.9] and back[0][1].track_id is None
    assert back[0][0].score == 0.8765
    assert back[0][0].keypoints.dtype == np.float32
    assert np.allclose(back[0][0].keypoints, people[0][0].keypoints, atol=5e-5)
    assert people_counts({"persons_json": text}) == [2, 0, 1]
    assert people_counts({"persons_json": None}) is None and decode_people(None) == []


def test_subject_reads_keypoints_at_the_row_columns_precision():
    mine = [_person(0.1), None, _person(0.2)]
    subject = Subject.from_people(3, "most_frames", mine)
    assert subject.present == round(2 / 3, 4) and subject.frames() == [0, 2]
    row = {"subject_json": subject.to_json()}
    read = subject_of(row)
    # Every reader sees float32 values (what the Parquet keypoints column holds), not the
    # 4-decimal JSON text: one rounding for the builders, the MLLM stage and re-derivation.
    raw = json.loads(row["subject_json"])["keypoints"][0]
    assert read.keypoints[0] == as_float32(raw) == np.asarray(raw, np.float32).tolist()
    assert read.keypoints[1] is None and read.boxes[1] is None
    assert read.track_id == 3 and read.rule == "most_frames"


def test_no_subject_is_none():
    assert subject_of({}) is None and subject_of({"subject_json": None}) is None
    empty = Subject(track_id=1, rule="r", boxes=[], keypoints=[], present=0.0)
    assert subject_of({"subject_json": empty.to_json()}) is None
