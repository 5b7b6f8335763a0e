"""Versioned prompt files. A prompt's version is its file name's `vN` plus a digest of its text,
so editing a prompt changes the config hash and regenerates the rows it affects."""
from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from string import Template

HERE = Path(__file__).parent
PROMPTS = {
    "pose_description": "pose_description.v1.txt",
    "pose_difference": "pose_difference.v1.txt",
    "synthesized_qa": "synthesized_qa.v1.txt",
    # pose_description with mllm.rule_draft: the rule caption as a draft (docs/captions.md)
    "pose_description_rewrite": "pose_description_rewrite.v1.txt",
}


@cache
def load(task: str) -> tuple[Template, str]:
    """(template, version) of a task's prompt."""
    name = PROMPTS[task]
    text = (HERE / name).read_text(encoding="utf-8")
    version = name.rsplit(".", 2)[1] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return Template(text), version


def render(task: str, **values: str) -> tuple[str, str]:
    template, version = load(task)
    return template.substitute(**values).strip(), version


def prompt_versions() -> dict[str, str]:
    return {task: load(task)[1] for task in PROMPTS}
