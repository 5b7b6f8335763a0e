"""YOLO-pose through ultralytics: batched predict, or its tracker on dense frames.

Weights must be a local file (no download at run time); a model yaml builds a random-init
network of that size (tests, benchmarks).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from proxyqa.core.config import ConfigError, UltralyticsConfig
from proxyqa.core.people import Person

log = logging.getLogger(__name__)


def _ultralytics_offline_env() -> None:
    """No network from ultralytics: no downloads, no pip auto-install, a writable settings dir.

    Must run before ultralytics is first imported (it reads these at import time).
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "proxyqa-ultralytics"))


def resolve_ultralytics_weights(model: str) -> str:
    """The local weights file (or a .yaml for a random-init model); a clear error if absent."""
    if model.endswith((".yaml", ".yml")):
        return model  # built from ultralytics' bundled model configs; random weights (tests)
    path = Path(model).expanduser()
    if path.is_file():
        return str(path)
    raise ConfigError(
        f"ultralytics pose weights not found: '{model}' (resolved to {path.resolve()}). "
        "The pipeline never downloads at run time: fetch the file once where there is network "
        "(e.g. https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n-pose.pt), "
        "copy it to every worker (or bake it into the image) and set "
        "pose.ultralytics.model to its path."
    )


class UltralyticsPose:
    """YOLO-pose through ultralytics: batched predict, or its tracker on dense frames."""

    # PoseStage gives `predict` the frames of all videos of a batch at once: one video's
    # frames (decode.num_frames) would leave a larger `batch` of a GPU half empty.
    frames_across_videos = True

    def __init__(self, cfg: UltralyticsConfig):
        _ultralytics_offline_env()
        weights = resolve_ultralytics_weights(cfg.model)
        if "torch" not in sys.modules and _nvblas_loaded():
            # decord2 dlopens every nvidia/*/lib/*.so RTLD_GLOBAL, libnvblas included; a
            # torch loaded afterwards sends some CPU convolutions to nvblas and segfaults.
            raise RuntimeError("libnvblas was loaded before torch in this process (decord does "
                               "that); import torch first to use the ultralytics backend")
        import torch
        from ultralytics import YOLO
        from ultralytics.cfg import DEFAULT_CFG_DICT

        self.cfg = cfg
        self.device = cfg.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        half = cfg.half and self.device.startswith("cuda")
        # ultralytics 8.4 replaced `half` by `quantize`; older releases only know `half`.
        precision = ({"quantize": 16 if half else None} if "quantize" in DEFAULT_CFG_DICT
                     else {"half": half})
        if weights.endswith((".yaml", ".yml")):
            log.warning("pose.ultralytics.model=%s builds a random-init model: tests only", weights)
        self.model = YOLO(weights, task="pose")
        self.person_class = _person_class(self.model.names)
        self._args = dict(imgsz=cfg.imgsz, conf=cfg.conf, device=self.device, verbose=False,
                          classes=[self.person_class], **precision)

    def predict(self, frames_rgb: list[np.ndarray]) -> list[list[Person]]:
        out: list[list[Person]] = []
        for start in range(0, len(frames_rgb), self.cfg.batch):
            chunk = [_bgr(f) for f in frames_rgb[start:start + self.cfg.batch]]
            results = self.model.predict(chunk, batch=self.cfg.batch, **self._args)
            out.extend(_results_to_people(r) for r in results)
        return out

    def track(self, frames_rgb: list[np.ndarray]) -> list[list[Person]]:
        """People with ultralytics tracker ids; the tracker is reset for every call (video).

        Detections the tracker does not confirm are left out, as ultralytics does.
        """
        predictor = getattr(self.model, "predictor", None)
        for tracker in getattr(predictor, "trackers", None) or []:
            tracker.reset()
        # persist=True: frames of one list share one tracker (ids carry across frames).
        results = self.model.track([_bgr(f) for f in frames_rgb], persist=True,
                                   tracker=self.cfg.tracker, batch=self.cfg.batch, **self._args)
        return [_results_to_people(r) for r in results]


def _nvblas_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return "libnvblas" in maps.read()
    except OSError:
        return False


def _person_class(names: dict[int, str]) -> int:
    for idx, name in names.items():
        if name == "person":
            return int(idx)
    return 0


def _bgr(rgb: np.ndarray) -> np.ndarray:
    # ultralytics takes numpy images as BGR (OpenCV order).
    return np.ascontiguousarray(rgb[..., ::-1])


def _results_to_people(result: Any) -> list[Person]:
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return []
    xyxyn = boxes.xyxyn.cpu().numpy().clip(0, 1)
    scores = boxes.conf.cpu().numpy()
    ids = boxes.id.cpu().numpy().astype(int) if boxes.id is not None else [None] * len(xyxyn)
    kps = np.zeros((len(xyxyn), 17, 3), np.float32)
    if result.keypoints is not None:
        kps[:, :, :2] = result.keypoints.xyn.cpu().numpy().clip(0, 1)
        conf = result.keypoints.conf
        kps[:, :, 2] = conf.cpu().numpy() if conf is not None else 1.0
    return [Person(box=[float(v) for v in b], score=float(s), keypoints=k,
                   track_id=None if t is None else int(t))
            for b, s, k, t in zip(xyxyn, scores, kps, ids)]
