"""The config hash: what decides the content of the rows, so that a changed setting
regenerates exactly the rows it affects (and nothing else does)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from proxyqa import __version__
from proxyqa.core.config import Config
from proxyqa.core.schema import SCHEMA_VERSION
from proxyqa.stages.prompts import prompt_versions

# Keys that change what rows are produced. Resources, paths and Ray settings do not.
_HASHED_SECTIONS = ("decode", "pose", "tasks", "limits", "mllm")
_UNHASHED_KEYS = {"resources", "num_threads", "device", "batch", "half", "base_url", "api_key",
                  "timeout_s", "max_retries", "backoff_s", "concurrency", "circuit_breaker"}


def _strip(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _strip(v) for k, v in sorted(tree.items()) if k not in _UNHASHED_KEYS}
    return tree


def config_hash(cfg: Config) -> str:
    """Hash of everything that decides the content of the rows (not where or how fast)."""
    tree = {s: _strip(cfg.model_dump(mode="json")[s]) for s in _HASHED_SECTIONS}
    if cfg.mllm.enabled:
        tree["prompts"] = prompt_versions()
    else:
        tree["mllm"] = {"enabled": False}  # settings of a disabled MLLM change no rows
    tree["versions"] = {"pipeline": __version__, "schema": SCHEMA_VERSION}
    blob = json.dumps(tree, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
