"""Blind baseline and balance figures of a run: `python bench/blind_baseline.py RUN [--json OUT]`.

RUN is a run dir/URI or an output root (its latest run). Per task (and per two-choice kind
such as up/down): rows, chance (mean 1/len(choices)), the accuracy of a text-only model that
answers with the most common answer for the same masked question in the OTHER videos
(proxyqa.core.balance.blind_baseline; ties count fractionally), and the delta. Also the rows
the run's balancing dropped (report.json counts.balanced_away) and whether every task with
>= 50 rows is within chance + 0.05 (the issue-14 target). Exit status 1 when one is not.
"""
from __future__ import annotations

import argparse
import json
import sys

from proxyqa.core.balance import blind_baseline
from proxyqa.core.layout import REPORT
from proxyqa.trainer.reader import iter_rows, load_json, resolve_run

COLUMNS = ["task", "video_id", "question", "answer", "choices", "split", "template_id"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--min-rows", type=int, default=50)
    ap.add_argument("--max-delta", type=float, default=0.05)
    args = ap.parse_args(argv)
    run = resolve_run(args.run)
    rows = list(iter_rows(run, columns=COLUMNS))
    stats = blind_baseline(rows)
    counts = load_json(run, REPORT).get("counts", {})
    away = counts.get("balanced_away", {})
    print(f"run {run}: {len(rows)} rows; splits {counts.get('rows_by_split')}")
    print(f"{'task / kind':40s} {'rows':>6s} {'chance':>7s} {'blind':>7s} {'delta':>7s} {'dropped':>8s}")
    ok = True
    for kind, s in stats.items():
        flag = ""
        if s.rows >= args.min_rows and s.delta > args.max_delta:
            ok, flag = False, "  OVER"
        print(f"{kind:40s} {s.rows:6d} {s.chance:7.3f} {s.blind:7.3f} {s.delta:+7.3f} "
              f"{away.get(kind, '') if ':' not in kind else '':>8}{flag}")
    templates: dict[str, set] = {}
    for r in rows:
        templates.setdefault(r["task"], set()).add(r.get("template_id"))
    print("templates per task: " + ", ".join(f"{t} {len(v)}" for t, v in sorted(templates.items())))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"run": run, "blind": {k: {**vars(s), "delta": s.delta} for k, s in stats.items()},
                       "balanced_away": away, "rows_by_split": counts.get("rows_by_split"),
                       "templates": {t: sorted(map(str, v)) for t, v in templates.items()}}, fh, indent=1)
    print("target met" if ok else f"target NOT met (delta > {args.max_delta} on a task with >= {args.min_rows} rows)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
