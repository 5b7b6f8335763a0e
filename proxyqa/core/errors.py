"""Errors that travel as data: a per-video failure keeps a short machine-readable kind."""
from __future__ import annotations


def message_line(exc: BaseException, last: bool = False) -> str:
    """The first (or last) non-empty line of an exception's message ('' if it has none)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[-1] if last else lines[0]).strip() if lines else ""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """'ValueError: first line of the message', for reasons and one-line CLI errors."""
    return f"{exc.__class__.__name__}: {message_line(exc)}"[:limit]


class StageError(Exception):
    """A per-video failure with a short machine-readable reason prefix (e.g. 'not_a_video')."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
