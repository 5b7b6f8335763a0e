"""The pose-model interface the pose stage uses: one list of people per frame."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from proxyqa.core.config import ConfigError, PoseConfig
from proxyqa.core.people import Person


class PoseEstimator(Protocol):
    def predict(self, frames_rgb: list[np.ndarray]) -> list[list[Person]]:
        """One list of people per frame (RGB uint8 HxWx3)."""
        ...


def check_pose_config(cfg: PoseConfig) -> None:
    """Cheap checks on the driver before any worker starts (ConfigError names the key)."""
    if cfg.backend == "ultralytics":
        from proxyqa.models.yolo_pose import resolve_ultralytics_weights

        resolve_ultralytics_weights(cfg.ultralytics.model)
    elif cfg.backend == "mediapipe" and cfg.mediapipe.task_file:
        if not Path(cfg.mediapipe.task_file).is_file():
            raise ConfigError(f"pose.mediapipe.task_file not found: {cfg.mediapipe.task_file}")


def build_estimator(cfg: PoseConfig) -> PoseEstimator:
    """The configured model; each backend's module is imported only when it is used."""
    if cfg.backend == "mediapipe":
        from proxyqa.models.mediapipe_pose import MediaPipePose

        return MediaPipePose(cfg.mediapipe)
    if cfg.backend == "ultralytics":
        from proxyqa.models.yolo_pose import UltralyticsPose

        return UltralyticsPose(cfg.ultralytics)
    raise ConfigError(f"pose.backend '{cfg.backend}' has no estimator")
