"""The restructure into one `proxyqa` namespace changed no output: configs/local.yaml over
the shared clips gives exactly the sample_ids and answers of the last commit before it
(tests/data/golden_local_clips.json, written by that commit's code)."""
from __future__ import annotations

import json

from tests.helpers import CLIPS, LOCAL_CONFIG, REPO, latest_run, read_run, run_cli

GOLDEN = REPO / "tests" / "data" / "golden_local_clips.json"


def test_local_config_over_the_shared_clips_gives_the_golden_rows(tmp_path):
    assert run_cli(LOCAL_CONFIG, "--input", str(CLIPS), "--output", str(tmp_path),
                   "--set", "ray.progress_bars=false") == 0
    rows, _, _ = read_run(latest_run(tmp_path))
    got = {r["sample_id"]: [r["task"], r["answer"], r["answer_struct"]] for r in rows}
    want = json.loads(GOLDEN.read_text())["rows"]
    assert len(got) == len(rows), "duplicate sample_ids"
    assert set(got) == set(want), (f"{len(set(got) - set(want))} new, "
                                    f"{len(set(want) - set(got))} missing sample_ids")
    differ = [sid for sid in want if got[sid] != want[sid]]
    assert not differ, f"{len(differ)} rows changed, e.g. {got[differ[0]]} != {want[differ[0]]}"
