"""clusters/validate.py: every check passes on the real files and reports a deliberately
broken copy; clusters/nightly_submit.py: the nightly submission is idempotent and fails
unless the Ray job SUCCEEDED."""
from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO

CLUSTERS = REPO / "clusters"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


V = sys.modules.get("clusters_validate") or _load("clusters_validate", CLUSTERS / "validate.py")
NS = _load("clusters_nightly_submit", CLUSTERS / "nightly_submit.py")


@pytest.fixture(scope="module")
def bundle():
    return V.load_bundle(REPO)


def test_the_crds_are_read_from_shared_data():
    path = V.crd_dir()
    assert path.is_dir(), path
    for folder in (CLUSTERS, REPO / "tests", REPO / "configs"):
        assert not list(folder.rglob("ray.io_*.yaml")), "the CRDs are read from shared data, never copied"


@pytest.mark.parametrize("check", sorted(V.CHECKS))
def test_check_passes_on_the_real_files(bundle, check):
    assert V.CHECKS[check](bundle) == []


def test_every_ray_object_sets_token_auth(bundle):
    specs = dict(V.ray_cluster_specs(bundle))
    assert {w.split()[1] for w in specs} == {"RayCluster", "RayJob", "RayService"}
    for spec in specs.values():
        assert spec["authOptions"] == {"mode": "token", "secretName": V.TOKEN_SECRET}


def test_strict_schema_closes_objects_the_crd_leaves_open():
    """Without the strict pass jsonschema would accept what the API server prunes."""
    import jsonschema

    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}}}
    doc = {"a": {"b": 1, "typo": 2}}
    assert jsonschema.Draft7Validator(schema).is_valid(doc)
    assert not jsonschema.Draft7Validator(V.strict_schema(schema)).is_valid(doc)
    kept = {"type": "object", "properties": {"x": {}}, "x-kubernetes-preserve-unknown-fields": True}
    assert "additionalProperties" not in V.strict_schema(kept)


# --------------------------------------------------------------------------- broken copies


def _raycluster(b) -> dict:
    return b.one("RayCluster")["spec"]


def _rayjob(b) -> dict:
    return b.one("RayJob")["spec"]


def _rayservice(b) -> dict:
    return b.one("RayService")["spec"]


def _group(spec: dict, name: str) -> dict:
    [g] = [g for g in spec["workerGroupSpecs"] if g["groupName"] == name]
    return g


def _worker(spec: dict, name: str) -> dict:
    return _group(spec, name)["template"]["spec"]["containers"][0]


def _cron_container(b) -> dict:
    return b.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def _set_serve(b, edit: Callable[[dict], None]) -> None:
    spec = _rayservice(b)
    config = yaml.safe_load(spec["serveConfigV2"])
    edit(config["applications"][0]["args"]["llm_configs"][0])
    spec["serveConfigV2"] = yaml.safe_dump(config)


def _set_cmd_arg(b, flag: str, value: str) -> None:
    cmd = _cron_container(b)["command"]
    cmd[cmd.index(flag) + 1] = value


def _statement(policy: dict, sid: str) -> dict:
    [st] = [s for s in policy["Statement"] if s.get("Sid") == sid]
    return st


BROKEN: list[tuple[str, str, Callable[[Any], None], str]] = [
    # check, case, break it, expected in a problem
    ("crd", "unknown spec field", lambda b: _raycluster(b).update(authOption={"mode": "token"}),
     "'authOption' was unexpected"),
    ("crd", "unknown field in a pod template",
     lambda b: _worker(_rayjob(b)["rayClusterSpec"], "gpu").update(resource={"limits": {}}), "'resource' was unexpected"),
    ("crd", "bad authOptions.mode", lambda b: _rayservice(b)["rayClusterConfig"]["authOptions"].update(mode="tokens"),
     "is not one of ['disabled', 'token']"),
    ("crd", "wrong type", lambda b: _group(_raycluster(b), "cpu").update(maxReplicas="16"),
     "is not of type 'integer'"),
    ("core", "unknown CronJob field", lambda b: b.one("CronJob")["spec"].update(concurrency="Forbid"),
     "'concurrency' was unexpected"),
    ("core", "wrong type in a Job", lambda b: b.one("Job")["spec"].update(backoffLimit="two"),
     "is not of type"),
    ("core", "unknown container field in a Ray pod",
     lambda b: _worker(_raycluster(b), "cpu").update(envfrom=[]), "'envfrom' was unexpected"),
    ("core", "unknown ServiceAccount field",
     lambda b: [d for d in b.k8s["kuberay-base.yaml"] if d["kind"] == "ServiceAccount"][0].update(automount=False),
     "'automount' was unexpected"),
    ("launcher", "unknown launcher key", lambda b: b.launcher.update(max_worker=3), "max_worker"),
    ("launcher", "bad launcher type", lambda b: b.launcher.update(idle_timeout_minutes="ten"), "ten"),
    ("serve", "unknown LLMConfig field", lambda b: _set_serve(b, lambda c: c.update(engine_kwarg={})),
     "engine_kwarg"),
    ("serve", "unknown autoscaling field",
     lambda b: _set_serve(b, lambda c: c["deployment_config"]["autoscaling_config"].update(max_replica=4)),
     "max_replica"),
    ("serve", "VM and Kubernetes serve different models",
     lambda b: b.serve_vm["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"].update(max_model_len=4096),
     "differs from the RayService"),
    ("auth", "RayJob without authOptions", lambda b: _rayjob(b)["rayClusterSpec"].pop("authOptions"),
     "authOptions.mode is not 'token'"),
    ("auth", "authOptions secret renamed",
     lambda b: _raycluster(b)["authOptions"].update(secretName="ray-token"), "authOptions.secretName"),
    ("auth", "token env set by hand",
     lambda b: _worker(_raycluster(b), "cpu").setdefault("env", []).append({"name": "RAY_AUTH_MODE", "value": "token"}),
     "sets RAY_AUTH_* by hand"),
    ("auth", "CronJob reads another secret",
     lambda b: [e for e in _cron_container(b)["env"] if e["name"] == "RAY_AUTH_TOKEN"][0]["valueFrom"]
     ["secretKeyRef"].update(name="proxyqa-token"), "RAY_AUTH_TOKEN from proxyqa-token"),
    ("references", "ServiceAccount only in another file",
     lambda b: b.k8s["kuberay-base.yaml"].__setitem__(slice(None), [
         d for d in b.k8s["kuberay-base.yaml"] if (d["kind"], d["metadata"]["name"]) != ("ServiceAccount", "proxyqa")]),
     "ServiceAccount proxyqa is not defined"),
    ("references", "unknown PVC", lambda b: _group(_rayservice(b)["rayClusterConfig"], "gpu")["template"]
     ["spec"]["volumes"][1]["persistentVolumeClaim"].update(claimName="models"), "PVC models"),
    ("references", "secret never created",
     lambda b: b.texts.update({"README.md": b.texts["README.md"].replace("generic proxyqa-hf-token", "generic hf")}),
     "Secret proxyqa-hf-token is never created"),
    ("references", "object outside the namespace", lambda b: b.one("RayService")["metadata"].pop("namespace"),
     "is not in namespace proxyqa"),
    ("images", "one file on another image",
     lambda b: _cron_container(b).update(image="ghcr.io/example/proxyqa:0.1.0"), "more than one image"),
    ("images", "floating base tag", lambda b: b.texts.update(
        {"Dockerfile": b.texts["Dockerfile"].replace("rayproject/ray:2.60.0-py312-cu130", "rayproject/ray:2.60.0-gpu")}),
     "Dockerfile: base"),
    ("images", "vLLM not from ray[llm]", lambda b: b.texts.update(
        {"requirements.txt": b.texts["requirements.txt"].replace("ray[data,default,llm]", "ray[data,default]")
         + "vllm>=0.10\n"}), "ray[...,llm,...]"),
    ("images", "code copied before the dependency layer", lambda b: b.texts.update(
        {"Dockerfile": b.texts["Dockerfile"].replace("WORKDIR /app\n", "WORKDIR /app\nCOPY --chown=ray:users . /app\n", 1)}),
     "before the dependency layer"),
    ("images", "dependencies not locked", lambda b: b.texts.update(
        {"Dockerfile": b.texts["Dockerfile"].replace(" -c /tmp/deps/constraints.txt", "")}), "constraints.txt"),
    ("images", "rayVersion differs", lambda b: _rayservice(b)["rayClusterConfig"].update(rayVersion="2.59.0"),
     "rayVersion 2.59.0"),
    ("sizes", "a whole c6i.8xlarge", lambda b: _worker(_raycluster(b), "cpu")["resources"].update(
        requests={"cpu": "32", "memory": "64Gi"}, limits={"cpu": "32", "memory": "64Gi"}), "c6i.8xlarge has"),
    ("sizes", "48Gi on a g5.2xlarge", lambda b: [r.update(memory="48Gi") for r in
                                                  _worker(_rayjob(b)["rayClusterSpec"], "gpu")["resources"].values()],
     "g5.2xlarge has"),
    ("sizes", "GPU pod without a GPU node", lambda b: _group(_raycluster(b), "gpu")["template"]["spec"].pop("nodeSelector"),
     "nodeSelector names no known instance type"),
    ("sizes", "GPU pod without the toleration",
     lambda b: _group(_rayservice(b)["rayClusterConfig"], "gpu")["template"]["spec"].pop("tolerations"),
     "nvidia.com/gpu toleration"),
    ("sizes", "no placement resource", lambda b: _group(_raycluster(b), "cpu").update(rayStartParams={}),
     "decode_node"),
    ("sizes", "launcher GPU type without gpu_node",
     lambda b: b.launcher["available_node_types"]["gpu_worker"]["resources"].pop("gpu_node"), "gpu_node"),
    ("mllm", "config points elsewhere",
     lambda b: setattr(b.config.mllm.endpoint, "base_url", "http://127.0.0.1:8000/v1"), "base_url"),
    ("mllm", "config asks for another model",
     lambda b: setattr(b.config.mllm.endpoint, "model", "Qwen/Qwen2.5-VL-3B-Instruct"), "mllm.endpoint.model"),
    ("mllm", "replicas beyond the GPU group",
     lambda b: _set_serve(b, lambda c: c["deployment_config"]["autoscaling_config"].update(max_replicas=8)),
     "max_replicas 8 needs 8"),
    ("mllm", "weights from the Hub at run time",
     lambda b: _set_serve(b, lambda c: c["model_loading_config"].update(model_source="Qwen/Qwen2.5-VL-7B-Instruct")),
     "not a local path"),
    ("mllm", "weights Job fills another folder",
     lambda b: b.one("Job")["spec"]["template"]["spec"]["containers"][0]["command"].__setitem__(-1, "/models/hf/x"),
     "kuberay-mllm-weights.yaml"),
    ("pipeline_fits", "too few GPUs", lambda b: _group(_raycluster(b), "gpu").update(maxReplicas=1, replicas=0),
     "needing 2"),
    ("pipeline_fits", "launcher GPUs for pipeline + served model",
     lambda b: b.launcher["available_node_types"]["gpu_worker"].update(max_workers=4), "served MLLM"),
    ("nightly", "overlap allowed", lambda b: b.one("CronJob")["spec"].update(concurrencyPolicy="Allow"), "Forbid"),
    ("nightly", "plain ray job submit", lambda b: _cron_container(b).update(
        command=["ray", "job", "submit", "--address", "http://proxyqa-head-svc:8265", "--", "proxyqa", "run"]),
     "nightly_submit.py"),
    ("nightly", "submission id not from the schedule", lambda b: _set_cmd_arg(b, "--job-name", "nightly"),
     "submission id"),
    ("nightly", "pod killed before the submitter stops the job",
     lambda b: b.one("CronJob")["spec"]["jobTemplate"]["spec"].update(activeDeadlineSeconds=86400 // 4),
     "activeDeadlineSeconds"),
    ("nightly", "wrong head address", lambda b: _set_cmd_arg(b, "--address", "http://proxyqa-head-svc:8265"),
     "--address"),
    ("iam", "head cannot start workers", lambda b: _statement(b.iam["ray-autoscaler-policy.json"], "RayAutoscalerEC2")
     ["Action"].remove("ec2:RunInstances"), "ec2:RunInstances"),
    ("iam", "head cannot pass the worker role",
     lambda b: _statement(b.iam["ray-autoscaler-policy.json"], "PassWorkerRoleToNewInstances")
     .update(Resource="arn:aws:iam::123456789012:role/other"), "iam:PassRole"),
    ("iam", "cannot write the dataset", lambda b: _statement(b.iam["proxyqa-s3-policy.json"], "ReadWriteDataset")
     ["Action"].remove("s3:PutObject"), "s3:PutObject"),
    ("iam", "workers with the head's profile", lambda b: b.launcher["available_node_types"]["cpu_worker"]
     ["node_config"].update(IamInstanceProfile=b.launcher["available_node_types"]["head"]["node_config"]
                            ["IamInstanceProfile"]), "own (S3-only) instance profile"),
]


@pytest.mark.parametrize("check,case,breaker,expected", BROKEN, ids=[f"{c}-{n}" for c, n, _, _ in BROKEN])
def test_check_reports_a_broken_copy(bundle, check, case, breaker, expected):
    broken = bundle.copy()
    breaker(broken)
    problems = V.CHECKS[check](broken)
    assert any(expected in p for p in problems), problems
    assert V.CHECKS[check](bundle) == [], "the real files stay untouched"


def test_every_check_has_a_broken_copy():
    assert {c for c, _, _, _ in BROKEN} == set(V.CHECKS)


def test_autoscaler_actions_come_from_rays_source():
    actions = V.autoscaler_ec2_actions()
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:DescribeInstances",
            "ec2:CreateTags"} <= actions


def test_allocatable_is_below_capacity():
    for itype, (vcpu, gib, _, gpus) in V.INSTANCE_TYPES.items():
        cpu, mem, gpu = V.allocatable(itype)
        assert 0 < cpu < vcpu and 0 < mem < gib and gpu == gpus
    assert V.quantity("500m") == 0.5 and V.quantity("512Mi") == 0.5 and V.quantity("26Gi") == 26


def test_validate_script_runs(capsys):
    assert V.main() == 0
    out = capsys.readouterr().out
    assert "crd: ok" in out and "iam: ok" in out


# --------------------------------------------------------------------------- nightly submitter


class FakeJobs:
    """The part of ray.job_submission.JobSubmissionClient the submitter uses."""

    def __init__(self, jobs: dict[str, list[str]] | None = None, fail_status: int = 0):
        # submission id -> statuses returned by successive get_job_status calls (last repeats)
        self.jobs = {k: list(v) for k, v in (jobs or {}).items()}
        self.submitted: list[dict] = []
        self.stopped: list[str] = []
        self.fail_status = fail_status
        self.next_on_submit = ["PENDING", "RUNNING", "SUCCEEDED"]

    def list_jobs(self):
        return [type("Job", (), {"submission_id": s, "status": v[0]})() for s, v in self.jobs.items()]

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict) -> str:
        if submission_id in self.jobs:
            raise RuntimeError(f"Job with submission_id {submission_id} already exists.")
        self.submitted.append({"entrypoint": entrypoint, "submission_id": submission_id,
                               "runtime_env": runtime_env})
        self.jobs[submission_id] = list(self.next_on_submit)
        return submission_id

    def get_job_status(self, sid: str) -> str:
        if self.fail_status:
            self.fail_status -= 1
            raise ConnectionError("dashboard restarting")
        states = self.jobs[sid]
        return states.pop(0) if len(states) > 1 else states[0]

    def stop_job(self, sid: str) -> bool:
        self.stopped.append(sid)
        self.jobs[sid] = ["STOPPED"]
        return True

    def get_job_logs(self, sid: str) -> str:
        return "\n".join(f"line {i}" for i in range(500)) + f"\nproxyqa: run {sid} complete"


SCHEDULED = dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.timezone.utc)
JOB_NAME = f"proxyqa-nightly-{int(SCHEDULED.timestamp()) // 60}"
SID = "proxyqa-nightly-20260301-0200"
ENTRY = ["proxyqa", "run", "--config", "configs/cluster.yaml", "--incremental"]


def _argv(*extra: str) -> list[str]:
    return ["--address", "http://proxyqa-head-svc.proxyqa.svc:8265", "--job-name", JOB_NAME,
            "--runtime-env", str(CLUSTERS / "runtime_env.yaml"), "--poll-s", "0", *extra, "--", *ENTRY]


def _run(client: FakeJobs, *extra: str) -> int:
    ticks = iter(range(10**6))
    return NS.run(_argv(*extra), client, sleep=lambda s: None, clock=lambda: float(next(ticks)))


def test_submission_id_comes_from_the_scheduled_time():
    assert NS.submission_id(JOB_NAME, "proxyqa-nightly") == SID
    # every pod and retry of one night has the same Job name, hence the same id
    assert NS.submission_id(JOB_NAME, "proxyqa-nightly") == NS.submission_id(JOB_NAME, "proxyqa-nightly")
    # a Job made by hand is its own run, still under the prefix (seen as active by nights)
    assert NS.submission_id("manual-1700000000", "proxyqa-nightly") == "proxyqa-nightly-manual-1700000000"
    assert NS.submission_id("other-29412360", "proxyqa-nightly") == "proxyqa-nightly-other-29412360"


def test_submits_once_and_succeeds(capsys):
    client = FakeJobs()
    assert _run(client) == 0
    [sub] = client.submitted
    assert sub["submission_id"] == SID and sub["entrypoint"] == " ".join(ENTRY)
    assert sub["runtime_env"] == yaml.safe_load((CLUSTERS / "runtime_env.yaml").read_text())
    out = capsys.readouterr().out
    assert f"ray job {SID}: SUCCEEDED" in out and "line 499" in out and "line 100\n" not in out


def test_a_retried_pod_attaches_instead_of_submitting_again():
    client = FakeJobs({SID: ["RUNNING", "RUNNING", "SUCCEEDED"]})
    assert _run(client) == 0
    assert client.submitted == []


@pytest.mark.parametrize("status,code", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1)])
def test_exit_code_follows_the_ray_job(status, code, capsys):
    client = FakeJobs()
    client.next_on_submit = ["RUNNING", status]
    assert _run(client) == code
    assert capsys.readouterr().out.rstrip().endswith(f"ray job {SID}: {status}")


def test_a_finished_night_is_not_run_again():
    for status, code in (("SUCCEEDED", 0), ("FAILED", 1)):
        client = FakeJobs({SID: [status]})
        assert _run(client) == code and client.submitted == []


def test_refuses_while_another_night_is_still_running(capsys):
    client = FakeJobs({"proxyqa-nightly-20260228-0200": ["RUNNING"], "other-job": ["RUNNING"]})
    assert _run(client) == 1
    assert client.submitted == []
    assert "proxyqa-nightly-20260228-0200 still active" in capsys.readouterr().out


def test_a_finished_previous_night_does_not_block():
    client = FakeJobs({"proxyqa-nightly-20260228-0200": ["FAILED"]})
    assert _run(client) == 0 and len(client.submitted) == 1


def test_deadline_stops_the_ray_job_and_fails(capsys):
    client = FakeJobs()
    client.next_on_submit = ["RUNNING"]
    assert _run(client, "--deadline-s", "5") == 1
    assert client.stopped == [SID]
    assert f"ray job {SID}: STOPPED" in capsys.readouterr().out


def test_transient_status_errors_do_not_fail_the_night():
    client = FakeJobs(fail_status=3)
    assert _run(client) == 0


def test_persistent_status_errors_fail_the_pod_for_a_retry():
    client = FakeJobs(fail_status=100)
    with pytest.raises(ConnectionError):
        _run(client)
    assert len(client.submitted) == 1  # the retry will attach to it


def test_losing_a_submit_race_attaches():
    client = FakeJobs()
    real_list = client.list_jobs
    client.list_jobs = lambda: []  # another pod submits between the status check and ours
    client.jobs[SID] = ["RUNNING", "SUCCEEDED"]
    assert _run(client) == 0 and client.submitted == []
    client.list_jobs = real_list
