"""bench/stages.py's machine limit: cores / raw CPU-seconds per video of the configured work."""
from __future__ import annotations

import os
import sys

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

import stages  # noqa: E402  (bench/stages.py)
from proxyqa.core.config import load_config  # noqa: E402


def _results(decord: float, mediapipe: float, tasks: float, write: float,
             hog: float | None = None, faces: float | None = None) -> list[dict]:
    checks = [{"stage": name, "cpu_ms_per_video": ms}
              for name, ms in (("raw HOG detectMultiScale", hog), ("raw BlazeFace process", faces))
              if ms is not None]
    return [{"stage": "raw decord get_batch", "cpu_ms_per_video": decord},
            {"stage": "raw mediapipe detect", "cpu_ms_per_video": mediapipe}, *checks,
            {"stage": "tasks", "cpu_ms_per_video": tasks},
            {"stage": "write", "cpu_ms_per_video": write},
            {"stage": "pose (mediapipe)", "cpu_ms_per_video": 999.0}]   # the stage itself: not counted


def test_limit_is_cores_over_raw_cpu_per_video():
    cfg = load_config(REPO / "configs" / "local.yaml")
    lim = stages.machine_limit(_results(216, 421, 21, 20), cfg)
    assert lim["pose_model_passes"] == 2           # pose.checks.flip_test is on by default
    assert lim["total_cpu_ms_per_video"] == 216 + 2 * 421 + 21 + 20
    assert lim["videos_per_s"] == round(os.cpu_count() * 1000 / 1099, 3)
    cfg.pose.checks.flip_test = False
    assert stages.machine_limit(_results(216, 421, 21, 20), cfg)["total_cpu_ms_per_video"] == 678


def test_the_check_models_the_pose_stage_runs_count_in_the_limit():
    cfg = load_config(REPO / "configs" / "local.yaml")
    lim = stages.machine_limit(_results(216, 421, 21, 20, hog=400, faces=40), cfg)
    assert lim["total_cpu_ms_per_video"] == 216 + 2 * 421 + 400 + 40 + 21 + 20
    assert lim["cpu_ms_per_video"]["pose: HOG detectMultiScale"] == 400
    assert stages.pose_raw_parts(_results(216, 421, 21, 20, hog=400), cfg) == {
        "raw mediapipe detect x 2": 842, "raw HOG detectMultiScale": 400}


def test_a_flip_pass_in_the_config_counts_twice():
    class Section:
        def __init__(self, **kw):
            self.__dict__.update(kw)

        def model_dump(self):
            return dict(self.__dict__)

    plain = Section(backend="mediapipe", mediapipe=Section(num_poses=2))
    flipped = Section(backend="mediapipe", mediapipe=Section(num_poses=2, flip_pass=True))
    off = Section(backend="mediapipe", mirror=False, mediapipe=Section(num_poses=2))
    assert stages.pose_model_passes(plain) == 1
    assert stages.pose_model_passes(flipped) == 2
    assert stages.pose_model_passes(off) == 1
