"""Regenerate the config reference in docs/config.md from the pydantic models (tests check it is current)."""
from __future__ import annotations

import sys
from pathlib import Path

from proxyqa.core.config import describe_fields

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def table() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, desc in describe_fields():
        lines.append(f"| `{key}` | `{default}` | {desc.replace('|', '/')} |")
    return "\n".join(lines)


def render(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/config.md")
    path.write_text(render(path.read_text()))
