"""Idempotent nightly submission of the pipeline to a long-lived Ray cluster.

Run by clusters/nightly-cronjob.yaml. A CronJob's `concurrencyPolicy: Forbid` only sees
Kubernetes Jobs; a retried pod, a dropped log stream or a deadline would otherwise submit a
second Ray job onto the same output. So this script:

- derives the Ray submission id from the CronJob's *scheduled* time (the Job name the
  CronJob controller gives each run ends in it, in minutes since the epoch), so every pod
  of one night uses the same id;
- asks the cluster first (status, then submit): tonight's job already running -> wait for
  it; already finished -> report it; another nightly job still active -> refuse;
- exits 0 only when the Ray job SUCCEEDED (`ray job submit` also exits 0 for STOPPED);
- enforces its own deadline, stopping the Ray job before Kubernetes' activeDeadlineSeconds
  kills this pod (which would leave the Ray job running);
- prints the tail of the driver log, which stays in the failed Job's pod log.

The pipeline's own run lock is the last line of defence: a second `proxyqa run` on the same
output exits 2, naming the holder.

    python clusters/nightly_submit.py --address http://HEAD:8265 --job-name NAME \
        --runtime-env clusters/runtime_env.yaml -- proxyqa run --config ... --incremental
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import yaml

ACTIVE = {"PENDING", "RUNNING"}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def submission_id(job_name: str, prefix: str) -> str:
    """Submission id of one scheduled night, the same for every pod and retry of it.

    The CronJob controller names its Jobs `<cronjob>-<scheduled time in minutes since the
    epoch>` (the CronJob is named like the prefix). A Job made by hand
    (`kubectl create job --from=cronjob/...`) has another name and is its own run; it keeps
    the prefix so that nights and manual runs see each other as active.
    """
    match = re.fullmatch(rf"{re.escape(prefix)}-(\d+)", job_name)
    if not match:
        return f"{prefix}-{job_name}"
    scheduled = dt.datetime.fromtimestamp(int(match.group(1)) * 60, tz=dt.timezone.utc)
    return f"{prefix}-{scheduled:%Y%m%d-%H%M}"


def _status(job: Any) -> str:
    status = getattr(job, "status", job)
    return str(getattr(status, "value", status))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True, help="Ray dashboard URL (http://HEAD:8265).")
    p.add_argument("--job-name", required=True,
                   help="Kubernetes Job name (downward API); the submission id derives from it.")
    p.add_argument("--prefix", default="proxyqa-nightly",
                   help="Submission id prefix; active jobs with it block a new submission.")
    p.add_argument("--runtime-env", required=True, help="Runtime env YAML (working_dir etc.).")
    p.add_argument("--deadline-s", type=float, default=22 * 3600,
                   help="Stop the Ray job and fail after this long (keep it below the "
                        "Job's activeDeadlineSeconds).")
    p.add_argument("--poll-s", type=float, default=30.0, help="Status poll interval.")
    p.add_argument("--log-lines", type=int, default=200, help="Driver log lines printed at the end.")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- command run as the Ray job.")
    return p


def run(argv: list[str], client: Any, sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic) -> int:
    """Submits (or re-attaches to) tonight's Ray job and waits; 0 only if it SUCCEEDED."""
    args = _parser().parse_args(argv)
    entry = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not entry:
        print("nightly: no entrypoint after --", file=sys.stderr)
        return 2
    sid = submission_id(args.job_name, args.prefix)
    start = clock()

    jobs = {j.submission_id: j for j in client.list_jobs() if getattr(j, "submission_id", None)}
    if sid in jobs:
        print(f"nightly: {sid} already submitted ({_status(jobs[sid])}); attaching", flush=True)
    else:
        busy = sorted(s for s, j in jobs.items()
                      if s.startswith(args.prefix) and _status(j) in ACTIVE)
        if busy:
            print(f"nightly: not submitting {sid}: {', '.join(busy)} still active on the "
                  "same output", flush=True)
            return 1
        runtime_env = yaml.safe_load(Path(args.runtime_env).read_text())
        try:
            client.submit_job(entrypoint=shlex.join(entry), submission_id=sid,
                              runtime_env=runtime_env)
            print(f"nightly: submitted {sid}: {shlex.join(entry)}", flush=True)
        except RuntimeError as exc:  # lost a race with another pod of the same night
            if "already exists" not in str(exc):
                raise
            print(f"nightly: {sid} already submitted; attaching", flush=True)

    status, errors = "PENDING", 0
    while True:
        try:
            status, errors = _status(client.get_job_status(sid)), 0
        except Exception as exc:  # a dashboard restart or a network blip is not a failed night
            errors += 1
            print(f"nightly: status of {sid} unavailable ({errors}): {exc}", flush=True)
            if errors >= 10:
                raise  # the pod fails and its retry re-attaches to the same submission id
        if status in TERMINAL:
            break
        if clock() - start > args.deadline_s:
            print(f"nightly: {sid} still {status} after {args.deadline_s:.0f} s; stopping it",
                  flush=True)
            client.stop_job(sid)
            status = _wait_terminal(client, sid, sleep, args.poll_s, tries=20)
            break
        sleep(args.poll_s)

    _print_log_tail(client, sid, args.log_lines)
    print(f"nightly: ray job {sid}: {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _wait_terminal(client: Any, sid: str, sleep: Callable[[float], None], poll_s: float,
                   tries: int) -> str:
    status = _status(client.get_job_status(sid))
    for _ in range(tries):
        if status in TERMINAL:
            break
        sleep(poll_s)
        status = _status(client.get_job_status(sid))
    return status


def _print_log_tail(client: Any, sid: str, lines: int) -> None:
    try:
        text = client.get_job_logs(sid)
    except Exception as exc:  # noqa: BLE001 - logs are a courtesy; the status decides the exit code
        print(f"nightly: no driver log for {sid}: {exc}", flush=True)
        return
    tail = text.splitlines()[-lines:]
    print(f"--- last {len(tail)} lines of the driver log of {sid} ---", flush=True)
    print("\n".join(tail), flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    from ray.job_submission import JobSubmissionClient  # RAY_AUTH_MODE/RAY_AUTH_TOKEN: token auth

    argv = sys.argv[1:] if argv is None else argv
    address = _parser().parse_args(argv).address
    return run(argv, JobSubmissionClient(address))


if __name__ == "__main__":
    sys.exit(main())
