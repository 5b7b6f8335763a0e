"""`proxyqa` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline.config import ConfigError, config_hash, describe_fields, load_config
from pipeline.run import OutputError, commit, open_run, read_video_records
from pipeline.sources import SourceError, list_videos


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
    doc = sub.add_parser("config-doc", help="print every config key with its default")
    doc.add_argument("--markdown", action="store_true")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    started = time.time()
    cfg = load_config(args.config, args.set)
    if args.input:
        cfg.input = args.input
    if args.output:
        cfg.output = args.output
    chash = config_hash(cfg)
    videos = list_videos(cfg)
    run = open_run(cfg, chash, args.run_id)
    done = {r["video_id"] for r in read_video_records(run)} if run.resumed else set()
    todo = [v for v in videos if v["video_id"] not in done]
    print(f"proxyqa: run {run.run_id}: {len(videos)} videos listed, {len(todo)} to process"
          + (f" (resuming, {len(done)} already done)" if done else ""), flush=True)

    from pipeline.graph import execute

    for _ in execute(cfg, run, todo):
        pass
    manifest = commit(run, cfg, videos, [], started, cfg.input or "")
    _print_summary(run, manifest)
    return 0


def _print_summary(run, manifest: dict) -> None:
    c = manifest["counts"]
    print(f"\nproxyqa: run {run.run_id} complete in {manifest['wall_s']:.1f}s -> {run.uri}")
    print(f"  videos: {c['videos']}  " + "  ".join(f"{k}={v}" for k, v in c["videos_by_status"].items()))
    print(f"  rows:   {c['rows']}  " + "  ".join(f"{k}={v}" for k, v in c["rows_by_task"].items()))
    for reason, n in c["failures_by_reason"].items():
        print(f"  not ok: {n} x {reason}")
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
        return cmd_config_doc(args)
    except (ConfigError, SourceError, OutputError) as exc:
        print(f"proxyqa: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
