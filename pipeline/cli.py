"""`proxyqa` command line."""
from __future__ import annotations

import argparse
import sys
import time

from proxyqa.core.config import ConfigError, describe_fields, load_config
from proxyqa.core.errors import one_line
from proxyqa.pipeline.fingerprint import config_hash
from proxyqa.pipeline.run import OutputError, commit, open_run, plan_run
from proxyqa.pipeline.sources import SourceError, list_videos


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyqa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="turn videos into proxy QA Parquet shards")
    run.add_argument("--config", required=True, help="YAML config file")
    run.add_argument("--input", help="folder, s3:// prefix or manifest (overrides `input`)")
    run.add_argument("--output", help="output root (overrides `output`)")
    run.add_argument("--run-id", help="run id (default: resume an incomplete run or new)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set decode.num_frames=8")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--incremental", action="store_true",
                      help="nightly mode: process only videos new or changed since the latest "
                      "complete run (or done under another config); carry the rest over")
    mode.add_argument("--full", action="store_true",
                      help="process every listed video (the default)")
    doc = sub.add_parser("config-doc", help="print every config key with its default")
    doc.add_argument("--markdown", action="store_true")
    card = sub.add_parser("card", help="write a Markdown dataset card (charts, examples) for a run")
    card.add_argument("run", help="run dir/URI, or an output root (its latest run)")
    card.add_argument("--out", help="output folder (default: RUN/card)")
    card.add_argument("--examples", type=int, default=2, help="example rows per task")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    started = time.time()
    cfg = load_config(args.config, args.set)
    if args.input:
        cfg.input = args.input
    if args.output:
        cfg.output = args.output
    if cfg.pose.backend != "none":   # e.g. missing weights: exit 2 before anything starts
        from proxyqa.models.pose_base import check_pose_config

        check_pose_config(cfg.pose)
    chash = config_hash(cfg)
    videos = list_videos(cfg)
    run = open_run(cfg, chash, args.run_id)
    plan = plan_run(run, videos, incremental=args.incremental)
    print(f"proxyqa: run {run.run_id}: {len(videos)} videos listed, {len(plan.todo)} to process"
          + (f", {len(plan.carried)} unchanged since run {plan.base.run_id}" if plan.base else "")
          + (f" (resuming, {len(plan.done)} already done)" if plan.done else ""), flush=True)

    try:
        if plan.todo:  # nothing to do: no need to start Ray
            from proxyqa.pipeline.graph import execute

            for _ in execute(cfg, run, plan.todo):
                pass
        manifest = commit(run, cfg, videos, plan, started, cfg.input or "")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. output storage down: one line, resumable
        raise RunIncomplete(f"run {run.run_id} did not complete ({one_line(exc)}); "
                            "run the same command again to resume it") from exc
    _print_summary(run, manifest)
    return 0


class RunIncomplete(RuntimeError):
    """The run started but could not finish; what it wrote is kept for the rerun."""


def _print_summary(run, manifest: dict) -> None:
    c = manifest["counts"]
    print(f"\nproxyqa: run {run.run_id} complete in {manifest['wall_s']:.1f}s -> {run.uri}")
    print(f"  videos: {c['videos']}  " + "  ".join(f"{k}={v}" for k, v in c["videos_by_status"].items()))
    print(f"  rows:   {c['rows']}  " + "  ".join(f"{k}={v}" for k, v in c["rows_by_task"].items()))
    print(f"  {manifest['mode']}: {c['videos_processed']} videos processed, "
          f"{c['videos_carried']} carried over, {c['rows_written']} rows written")
    for reason, n in c["failures_by_reason"].items():
        print(f"  not ok: {n} x {reason}")
    for kind, n in c.get("task_errors_by_kind", {}).items():
        print(f"  task errors: {n} x {kind}")
    print(f"  shards: {len(manifest['shards'])} files; report: {run.uri}/report.json")


def cmd_config_doc(args: argparse.Namespace) -> int:
    rows = describe_fields()
    if args.markdown:
        print("| key | default | meaning |\n|---|---|---|")
        for key, default, desc in rows:
            print(f"| `{key}` | `{default}` | {desc} |")
    else:
        for key, default, desc in rows:
            print(f"{key} = {default}\n    {desc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "card":
            from proxyqa.trainer.card import cmd_card

            return cmd_card(args)
        return cmd_config_doc(args)
    except (ConfigError, SourceError, OutputError) as exc:
        print(f"proxyqa: error: {exc}", file=sys.stderr)
        return 2
    except RunIncomplete as exc:
        print(f"proxyqa: error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
