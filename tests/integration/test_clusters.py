"""clusters/: every file parses, points at real entry points and configs, and the resources
the cluster config asks for fit the clusters that are described."""
from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
import ray
import yaml

from proxyqa.core.config import load_config
from proxyqa.core.schema import MLLM_TASKS
from proxyqa.pipeline.cli import _parser
from proxyqa.stages.tasks import BUILDERS
from tests.helpers import REPO

CLUSTERS = REPO / "clusters"
IMAGE_DIR = "/app"  # where clusters/Dockerfile puts the repo


def _load_validate():
    """clusters/validate.py (clusters/ is not a package of the project)."""
    spec = importlib.util.spec_from_file_location("clusters_validate", CLUSTERS / "validate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


VALIDATE = _load_validate()


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTERS / name).read_text()) if d is not None]


def _one(name: str, kind: str) -> dict:
    [doc] = [d for d in _docs(name) if d.get("kind") == kind]
    return doc


def _repo_path(path: str) -> Path:
    """A path used inside the image (/app/...) or relative to the repo -> the repo file."""
    return REPO / (path[len(IMAGE_DIR) + 1:] if path.startswith(IMAGE_DIR + "/") else path)


def _check_proxyqa_command(words: list[str]) -> None:
    """`proxyqa run ...` parses with the real CLI and names a config that loads."""
    assert words[0] == "proxyqa", words
    args = _parser().parse_args(words[1:])
    assert args.command == "run"
    config = _repo_path(args.config)
    assert config.is_file(), config
    load_config(config, args.set)


def _entry_point_is_installed() -> None:
    setup = (REPO / "setup.cfg").read_text()
    assert re.search(r"^\s*proxyqa\s*=\s*proxyqa\.pipeline\.cli:main\s*$", setup, re.M)


def _gpus_needed(config_path: Path) -> tuple[float, float]:
    """(GPUs the pipeline holds at once, most GPUs one actor needs) for a config."""
    for res in (lambda c: [c.decode.resources, c.pose.resources, c.tasks.resources,
                           c.write.resources, c.mllm.resources])(load_config(config_path)):
        assert not res.num_gpus or res.concurrency, "a GPU stage needs a fixed concurrency"
    return VALIDATE.pipeline_gpus(load_config(config_path))


def _largest_cpu_actor(config_path: Path) -> float:
    cfg = load_config(config_path)
    return max(r.num_cpus for r in (cfg.decode.resources, cfg.pose.resources,
                                   cfg.tasks.resources, cfg.write.resources))


CLUSTER_CONFIG = REPO / "configs" / "cluster.yaml"


def test_every_file_parses():
    files = sorted(CLUSTERS.glob("*.yaml"))
    assert {f.name for f in files} >= {"ray-cluster.aws.yaml", "kuberay-raycluster.yaml",
                                       "kuberay-rayjob.yaml", "nightly-cronjob.yaml",
                                       "runtime_env.yaml", "kuberay-base.yaml",
                                       "kuberay-rayservice-mllm.yaml", "kuberay-mllm-weights.yaml",
                                       "serve-mllm.aws.yaml"}
    for f in files:
        assert _docs(f.name), f


def test_cluster_config_is_valid_and_uses_gpus_for_pose():
    cfg = load_config(CLUSTER_CONFIG)
    assert cfg.pose.backend == "ultralytics" and cfg.pose.resources.num_gpus >= 1
    assert cfg.decode.resources.num_gpus == 0 and cfg.tasks.resources.num_gpus == 0
    unknown = set(cfg.tasks.enabled) - set(BUILDERS) - set(MLLM_TASKS)
    assert not unknown, unknown
    assert cfg.input.startswith("s3://") and cfg.output.startswith("s3://")
    assert cfg.s3.key is None and cfg.s3.secret is None, "credentials come from the AWS chain"
    assert cfg.mllm.enabled and cfg.mllm.mode == "endpoint", "the shared served MLLM"
    assert cfg.mllm.endpoint.api_key is None
    assert cfg.mllm.engine.model_source.startswith("/models/hf/"), "engine mode: weights PVC, no Hub"


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTERS / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # raises on unknown or malformed fields
    assert env["working_dir"] == "."
    assert {".venv", ".git", "out"} <= set(env["excludes"])
    assert env["env_vars"]["YOLO_OFFLINE"] == "1"


def test_launcher_yaml_passes_rays_schema_and_fits_the_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTERS / "ray-cluster.aws.yaml").read_text())
    validate_config(prepare_config(raw))
    types = raw["available_node_types"]
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU")}
    cpu_types = {n: t for n, t in types.items() if not t["resources"].get("GPU") and n != raw["head_node_type"]}
    assert gpu_types and cpu_types
    assert raw["max_workers"] >= sum(t["max_workers"] for n, t in types.items() if n != raw["head_node_type"])
    for t in types.values():
        assert 0 <= t["min_workers"] <= t["max_workers"]
    needed, per_actor = _gpus_needed(CLUSTER_CONFIG)
    assert sum(t["resources"]["GPU"] * t["max_workers"] for t in gpu_types.values()) >= needed
    assert max(t["resources"]["GPU"] for t in gpu_types.values()) >= per_actor
    assert max(t["resources"]["CPU"] for t in cpu_types.values()) >= _largest_cpu_actor(CLUSTER_CONFIG)
    starts = " ".join(raw["head_start_ray_commands"] + raw["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    assert all(t["resources"].get("gpu_node") == 1 for t in gpu_types.values())
    assert all(t["resources"].get("decode_node") == 1 for t in cpu_types.values())
    head_profile = types[raw["head_node_type"]]["node_config"]["IamInstanceProfile"]["Arn"]
    assert all(t["node_config"]["IamInstanceProfile"]["Arn"] != head_profile for t in cpu_types.values())


def _group_resources(template: dict) -> tuple[float, float]:
    [container] = template["spec"]["containers"]
    limits = container["resources"]["limits"]
    return float(limits["cpu"]), float(limits.get("nvidia.com/gpu", 0))


def _token_env(container: dict) -> tuple[str, str]:
    """Secret (name, key) a submitter outside KubeRay reads the Ray token from."""
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def _auth_secret(spec: dict) -> tuple[str, str]:
    """Secret (name, key) KubeRay hands to every Ray container, the autoscaler and its client."""
    assert spec["authOptions"]["mode"] == "token"
    return spec["authOptions"]["secretName"], "auth_token"


def _image(container: dict) -> str:
    return container["image"]


def test_kuberay_cluster_fits_the_config_and_uses_one_image_and_token():
    cluster = _one("kuberay-raycluster.yaml", "RayCluster")
    accounts = {d["metadata"]["name"] for d in _docs("kuberay-base.yaml") if d["kind"] == "ServiceAccount"}
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert _auth_secret(spec) == ("proxyqa-ray-token", "auth_token")
    head = spec["headGroupSpec"]["template"]
    groups = spec["workerGroupSpecs"]
    containers = [head["spec"]["containers"][0]] + [g["template"]["spec"]["containers"][0] for g in groups]
    assert len({_image(c) for c in containers}) == 1
    for c in containers:  # authOptions sets them; hand-set values would override the operator's
        assert not {e["name"] for e in c.get("env", [])} & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    for template in [head] + [g["template"] for g in groups]:
        assert template["spec"]["serviceAccountName"] in accounts
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    needed, per_actor = _gpus_needed(CLUSTER_CONFIG)
    gpu = [(g, *_group_resources(g["template"])) for g in groups]
    assert sum(n_gpu * g["maxReplicas"] for g, _, n_gpu in gpu) >= needed
    assert max(n_gpu for _, _, n_gpu in gpu) >= per_actor
    assert max(cpu for g, cpu, n_gpu in gpu if not n_gpu) >= _largest_cpu_actor(CLUSTER_CONFIG)
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for g, _, n_gpu in gpu:
        pod = g["template"]["spec"]
        assert VALIDATE.custom_resources(g["rayStartParams"]) == {"gpu_node" if n_gpu else "decode_node": 1}
        if n_gpu:
            assert pod["nodeSelector"]["node.kubernetes.io/instance-type"] == "g5.2xlarge"
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_rayjob_runs_the_pipeline_on_the_same_cluster_spec():
    job = _one("kuberay-rayjob.yaml", "RayJob")
    cluster = _one("kuberay-raycluster.yaml", "RayCluster")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    words = shlex.split(job["spec"]["entrypoint"])
    _check_proxyqa_command(words)
    assert "--full" in words
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    shared = yaml.safe_load((CLUSTERS / "runtime_env.yaml").read_text())
    assert runtime_env["env_vars"] == shared["env_vars"]
    assert _auth_secret(job["spec"]["rayClusterSpec"])[0] == "proxyqa-ray-token"
    [submitter] = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _image(submitter) == _image(head)
    accounts = {d["metadata"]["name"] for d in _docs("kuberay-base.yaml") if d["kind"] == "ServiceAccount"}
    assert job["spec"]["submitterPodTemplate"]["spec"]["serviceAccountName"] in accounts
    _entry_point_is_installed()


def test_nightly_cronjob_submits_an_incremental_run_to_the_cluster():
    cron = _one("nightly-cronjob.yaml", "CronJob")
    cluster = _one("kuberay-raycluster.yaml", "RayCluster")
    spec = cron["spec"]
    assert len(spec["schedule"].split()) == 5 and spec["concurrencyPolicy"] == "Forbid"
    [container] = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    cmd = container["command"]
    assert cmd[:2] == ["python", "clusters/nightly_submit.py"] and (REPO / cmd[1]).is_file()
    address = cmd[cmd.index("--address") + 1]
    meta = cluster["metadata"]
    assert address == f"http://{meta['name']}-head-svc.{meta['namespace']}.svc:8265"
    assert (REPO / cmd[cmd.index("--runtime-env") + 1]).is_file()
    assert container["workingDir"] == IMAGE_DIR
    assert yaml.safe_load((CLUSTERS / "runtime_env.yaml").read_text())["working_dir"] == "."
    assert cmd[cmd.index("--job-name") + 1] == "$(JOB_NAME)"
    entry = cmd[cmd.index("--") + 1:]
    _check_proxyqa_command(entry)
    assert "--incremental" in entry
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _image(container) == _image(head)
    assert _token_env(container) == _auth_secret(cluster["spec"])
    _entry_point_is_installed()


def test_dockerfile_matches_the_ray_version_and_the_images():
    text = (CLUSTERS / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray.__version__)}-py3\d+-cu\d+", base), base
    assert re.search(rf"^WORKDIR\s+{IMAGE_DIR}\s*$", text, re.M)
    requirements = (CLUSTERS / "requirements.txt").read_text()
    assert re.search(rf"^ray\[[^\]]*\bllm\b[^\]]*\]=={re.escape(ray.__version__)}$", requirements, re.M)
    # dependencies (locked) before the code, so a code edit keeps the dependency layer
    assert text.index("constraints.txt") < text.index("COPY --chown=ray:users . /app")
    weights = load_config(CLUSTER_CONFIG).pose.ultralytics.model
    assert weights in text, "the pose weights the config names are baked into the image"
    launcher = yaml.safe_load((CLUSTERS / "ray-cluster.aws.yaml").read_text())
    cluster = _one("kuberay-raycluster.yaml", "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert launcher["docker"]["image"] == _image(head)
    assert _image(head).rpartition(":")[2].startswith(ray.__version__ + "-cu")


@pytest.mark.parametrize("doc", ["clusters/README.md"])
def test_readme_commands_use_real_files(doc):
    text = (REPO / doc).read_text()
    for match in re.finditer(r"proxyqa run [^\n`]*", text):
        words = [w for w in shlex.split(match.group(0).rstrip("\\ ")) if w != "\\"]
        _check_proxyqa_command(words)
    for path in re.findall(r"clusters/[\w./-]+", text):
        path = path.rstrip("./")
        assert (REPO / path).exists(), path
