"""`proxyqa` command line."""
from __future__ import annotations

import argparse
import os
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc

from proxyqa.core.config import ConfigError, describe_fields, load_config
from proxyqa.core.errors import one_line
from proxyqa.pipeline.fingerprint import config_hash
from proxyqa.pipeline.lock import LockHeld, RunLock
from proxyqa.pipeline.run import OutputError, commit, open_run, plan_run, read_video_records, thread_mapper
from proxyqa.pipeline.sources import SourceError, list_videos_table


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
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        _check_paths_shared(cfg)      # a cluster: refuse node-local paths before any work
    chash = config_hash(cfg)
    lock = _lock(cfg, "incremental" if args.incremental else "full")
    try:
        t0 = time.time()
        videos = list_videos_table(cfg)   # Arrow columns: ~110 bytes per listed video
        timings = {"list": round(time.time() - t0, 2)}
        return _run_locked(cfg, args, chash, videos, started, lock, timings)
    finally:
        if lock is not None:
            lock.release()


def _lock(cfg, mode: str) -> RunLock | None:
    """The output's run lock (exit 2 when another run holds it)."""
    if not cfg.lock.enabled:
        return None
    from proxyqa.core.storage import ensure_dir, get_fs

    try:
        fs, root = get_fs(cfg.output, cfg.s3)
        ensure_dir(fs, root)
    except Exception as exc:  # noqa: BLE001 - any storage error means "cannot write here"
        raise OutputError(f"output {cfg.output} is not usable: {one_line(exc)}") from None
    return RunLock(fs, root, cfg.output, cfg.lock, mode).acquire()


def _check_paths_shared(cfg) -> None:
    """On a cluster of several nodes, a local input/output path is each worker's own disk:
    refused unless `ray.shared_paths` says every node sees the same files."""
    from proxyqa.core.storage import is_s3

    local = [f"{what} {uri}" for what, uri in (("input", cfg.input), ("output", cfg.output))
             if uri and not is_s3(uri)]
    if not local or cfg.ray.shared_paths:
        return
    from proxyqa.pipeline.graph import init_ray, is_multinode

    init_ray(cfg)
    if is_multinode():
        raise ConfigError(f"{' and '.join(local)}: a local path on a Ray cluster of several "
                          "nodes (each worker would read and write its own disk); use s3:// "
                          "or set ray.shared_paths=true if every node mounts it")


def _run_locked(cfg, args, chash: str, videos: pa.Table, started: float,
                lock: RunLock | None, timings: dict[str, float]) -> int:
    threads = cfg.write.commit_parallelism
    t0 = time.time()
    run = open_run(cfg, chash, args.run_id)
    plan = plan_run(run, videos, incremental=args.incremental, threads=threads)
    timings["plan"] = round(time.time() - t0, 2)
    print(f"proxyqa: run {run.run_id}: {len(videos)} videos listed, {len(plan.todo)} to process"
          + (f", {len(plan.carried)} unchanged since run {plan.base.run_id}" if plan.base else "")
          + (f" (resuming, {len(plan.done)} already done)" if len(plan.done) else ""), flush=True)

    records = None
    mapper = None
    try:
        t0 = time.time()
        if plan.todo.num_rows:  # nothing to do: no need to start Ray
            from proxyqa.pipeline.graph import (
                EngineStartError,
                Stalled,
                Unschedulable,
                is_multinode,
                ray_mapper,
                served_engine,
            )

            try:
                with served_engine(cfg) as engine_urls:   # engine mode's replicas, else []
                    records = _execute_passes(cfg, run, plan.todo, engine_urls)
            except Unschedulable as exc:
                fix = ("" if isinstance(exc, Stalled)
                       else "add nodes that carry those resources and ")
                raise RunIncomplete(f"run {run.run_id} did not complete ({exc}); {fix}run the "
                                    "same command again to resume it") from None
            except EngineStartError as exc:
                raise RunIncomplete(f"run {run.run_id} did not start ({exc}); run the same "
                                    "command again to resume it") from None
            if is_multinode():   # compaction on the workers, next to the storage
                mapper = ray_mapper(threads, thread_mapper(threads),
                                    cfg.write.commit_on_workers_min_files)
        timings["execute"] = round(time.time() - t0, 2)
        if lock is not None:
            lock.check()
        manifest = commit(run, cfg, videos, plan, started, cfg.input or "", records, mapper,
                          timings)
    except (ConfigError, LockHeld):
        raise
    except RunIncomplete:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. output storage down: one line, resumable
        raise RunIncomplete(f"run {run.run_id} did not complete ({one_line(exc)}); "
                            "run the same command again to resume it") from exc
    _print_summary(run, manifest)
    return 0


def _execute_passes(cfg, run, todo: pa.Table, engine_urls: list[str]) -> pa.Table | None:
    """The run's pass, then up to `ray.lost_video_passes` passes over videos that still have
    no record (lost with a node or a worker) -> the run's video records."""
    from proxyqa.pipeline.graph import Unschedulable, execute

    threads = cfg.write.commit_parallelism
    records = None
    for attempt in range(cfg.ray.lost_video_passes + 1):
        if attempt:
            print(f"proxyqa: {len(todo)} videos have no record (lost with a node "
                  f"or a worker): running them again (pass {attempt + 1})", flush=True)
        try:
            # Retry passes: one video per block (see execute).
            execute(cfg, run, todo, per_block=1 if attempt else None, engine_urls=engine_urls)
        except Unschedulable:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. blocks lost with a node
            if attempt == cfg.ray.lost_video_passes:
                raise
            print(f"proxyqa: pass {attempt + 1} ended early ({one_line(exc)})", flush=True)
        records = read_video_records(run, threads)
        todo = todo.filter(pc.invert(pc.is_in(todo["video_id"], value_set=records["video_id"])))
        if not todo.num_rows:
            break
    return records


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
    print("  wall: " + "  ".join(f"{k}={v:.1f}s" for k, v in manifest["timings_s"].items()))
    print(f"  shards: {len(manifest['shards'])} files; report: {run.uri}/report.json "
          "(per video: report.parquet)")


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
    except (ConfigError, SourceError, OutputError, LockHeld) as exc:
        print(f"proxyqa: error: {exc}", file=sys.stderr)
        return 2
    except RunIncomplete as exc:
        print(f"proxyqa: error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
