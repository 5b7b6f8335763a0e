"""Stage classes: plain callables ``__call__(batch) -> batch`` with no Ray import."""
