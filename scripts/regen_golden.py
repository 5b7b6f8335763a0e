"""Regenerate tests/data/golden_local_clips.json ON PURPOSE (rows changed by design).

    PROXYQA_SHARED=../shared python scripts/regen_golden.py "why the rows changed"

Runs configs/local.yaml over the shared clips exactly as tests/integration/test_same_output.py
does and writes every row's sample_id -> [task, answer, answer_struct].
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import CLIPS, LOCAL_CONFIG, latest_run, read_run, run_cli  # noqa: E402

GOLDEN = REPO / "tests" / "data" / "golden_local_clips.json"


def main() -> int:
    note = sys.argv[1] if len(sys.argv) > 1 else "regenerated on purpose"
    with tempfile.TemporaryDirectory() as tmp:
        assert run_cli(LOCAL_CONFIG, "--input", str(CLIPS), "--output", tmp,
                       "--set", "ray.progress_bars=false") == 0
        rows, _, _ = read_run(latest_run(Path(tmp)))
    old = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    data = {k: v for k, v in old.items() if k != "rows"}
    data["about"] = ("sample_id -> [task, answer, answer_struct] of configs/local.yaml over "
                     "../shared/data/clips. tests/integration/test_same_output.py checks that "
                     "the pipeline still gives exactly these rows; regenerate only on purpose "
                     "(scripts/regen_golden.py). Last regenerated: " + note)
    data["rows"] = {r["sample_id"]: [r["task"], r["answer"], r["answer_struct"]] for r in rows}
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{len(data['rows'])} rows written to {GOLDEN}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
