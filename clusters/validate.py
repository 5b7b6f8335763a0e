"""Offline validation of clusters/: what the API server, KubeRay and Ray would reject, and
what would only fail at 02:00 (names that do not match across files, pods that never fit).

    PROXYQA_SHARED=../shared python clusters/validate.py      # prints problems, exit 1 if any

Checks (each returns a list of problems; tests/test_cluster_manifests.py breaks a copy of
the files for each and expects it to be reported):
- crd: every ray.io object against the KubeRay v1.7.0 CRD schema (openAPIV3Schema of v1),
  strictly: unknown fields are errors, as the API server would silently prune them;
- core: every other Kubernetes object (and each Ray pod template) with kubernetes-validate's
  offline schemas for Kubernetes K8S_VERSION, strict;
- launcher: clusters/ray-cluster.aws.yaml with Ray's own validate_config;
- serve: the Ray Serve LLM apps against the field names of Ray's own config models;
- consistency: token auth, Secrets, ServiceAccounts, PVCs, namespace, image tag vs the Ray
  pin, sizes vs the named instance types, GPU placement, the served endpoint vs
  configs/cluster.yaml, the nightly submitter, IAM.
"""
from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
KUBERAY_VERSION = "1.7.0"
K8S_VERSION = "1.30"
NAMESPACE = "proxyqa"
TOKEN_SECRET = "proxyqa-ray-token"
TOKEN_KEY = "auth_token"            # the key KubeRay reads from authOptions.secretName
MIN_RAY_FOR_TOKEN_AUTH = (2, 52)
IMAGE_DIR = "/app"

# Files with Kubernetes objects (applied in this order, clusters/README.md).
K8S_FILES = ["kuberay-base.yaml", "kuberay-mllm-weights.yaml", "kuberay-rayservice-mllm.yaml",
             "kuberay-raycluster.yaml", "kuberay-rayjob.yaml", "nightly-cronjob.yaml"]
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
CLUSTER_SCOPED = {"Namespace"}

# Instance types the manifests may name: (vCPU, memory GiB, max pods with the VPC CNI, GPUs).
INSTANCE_TYPES = {
    "m6i.2xlarge": (8, 32, 58, 0),
    "c6i.8xlarge": (32, 64, 234, 0),
    "g5.2xlarge": (8, 32, 58, 1),
}
# Room left for DaemonSets (aws-node, kube-proxy, CSI node drivers, NVIDIA device plugin,
# log/metrics agents) on every node.
DAEMONSET_CPU, DAEMONSET_MEM_GIB = 0.5, 1.0
# The autoscaler sidecar KubeRay injects into the head pod (its default requests/limits).
AUTOSCALER_CPU, AUTOSCALER_MEM_GIB = 0.5, 0.5


def shared_dir() -> Path:
    """The shared data folder, found as tests/conftest.py finds it."""
    return Path(os.environ.get("PROXYQA_SHARED", REPO.parent / "shared")).resolve()


def crd_dir() -> Path:
    return shared_dir() / "data" / f"kuberay-crds-v{KUBERAY_VERSION}"


# --------------------------------------------------------------------------- loading


@dataclass
class Bundle:
    """Everything the checks read, parsed, so that tests can break a copy of it."""
    k8s: dict[str, list[dict]]                 # file -> Kubernetes objects
    launcher: dict
    serve_vm: dict                             # serve-mllm.aws.yaml
    runtime_env: dict
    config: Any                                # pipeline Config of configs/cluster.yaml
    texts: dict[str, str] = field(default_factory=dict)   # Dockerfile, README.md, ...
    iam: dict[str, dict] = field(default_factory=dict)

    def copy(self) -> Bundle:
        return copy.deepcopy(self)

    def objects(self, kind: Optional[str] = None) -> Iterator[tuple[str, dict]]:
        for name, docs in self.k8s.items():
            for doc in docs:
                if kind is None or doc.get("kind") == kind:
                    yield name, doc

    def one(self, kind: str) -> dict:
        [doc] = [d for _, d in self.objects(kind)]
        return doc


def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def load_bundle(repo: Path = REPO) -> Bundle:
    from proxyqa.core.config import load_config

    clusters = repo / "clusters"
    return Bundle(
        k8s={name: _yaml_docs(clusters / name) for name in K8S_FILES},
        launcher=yaml.safe_load((clusters / "ray-cluster.aws.yaml").read_text()),
        serve_vm=yaml.safe_load((clusters / "serve-mllm.aws.yaml").read_text()),
        runtime_env=yaml.safe_load((clusters / "runtime_env.yaml").read_text()),
        config=load_config(repo / "configs" / "cluster.yaml"),
        texts={"Dockerfile": (clusters / "Dockerfile").read_text(),
               "README.md": (clusters / "README.md").read_text(),
               "requirements.txt": (clusters / "requirements.txt").read_text(),
               "constraints.txt": (clusters / "constraints.txt").read_text(),
               "setup.cfg": (repo / "setup.cfg").read_text()},
        iam={p.name: json.loads(p.read_text()) for p in sorted((clusters / "iam").glob("*.json"))},
    )


# --------------------------------------------------------------------------- CRD schemas


def strict_schema(schema: Any) -> Any:
    """The schema with every object that lists `properties` closed to other fields, unless it
    preserves unknown fields: what API-server pruning means for a strict check."""
    if isinstance(schema, dict):
        out = {k: strict_schema(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict_schema(v) for v in schema]
    return schema


@functools.cache
def crd_validator(kind: str, directory: Optional[str] = None):
    """A jsonschema validator for the v1 version of a KubeRay CRD."""
    import jsonschema

    path = Path(directory or crd_dir()) / CRD_FILES[kind]
    crd = yaml.safe_load(path.read_text())
    assert crd["spec"]["names"]["kind"] == kind, path
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def check_crd(bundle: Bundle, directory: Optional[str] = None) -> list[str]:
    problems = []
    for name, doc in bundle.objects():
        if not str(doc.get("apiVersion", "")).startswith("ray.io/"):
            continue
        if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") not in CRD_FILES:
            problems.append(f"{name}: {doc.get('apiVersion')} {doc.get('kind')} is not a KubeRay "
                            f"v{KUBERAY_VERSION} v1 kind")
            continue
        for err in sorted(crd_validator(doc["kind"], directory).iter_errors(doc), key=str):
            where = ".".join(str(p) for p in err.absolute_path) or "<root>"
            problems.append(f"{name}: {doc['kind']} {where}: {err.message}")
    return problems


# --------------------------------------------------------------------------- core objects


def _pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod template) of every pod a KubeRay object describes."""
    kind, spec = doc.get("kind"), doc.get("spec", {})
    clusters = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
                "RayService": spec.get("rayClusterConfig")}
    cluster = clusters.get(kind)
    if cluster:
        yield "headGroupSpec", cluster.get("headGroupSpec", {}).get("template", {})
        for g in cluster.get("workerGroupSpecs", []):
            yield f"workerGroupSpecs[{g.get('groupName')}]", g.get("template", {})
    if kind == "RayJob" and spec.get("submitterPodTemplate"):
        yield "submitterPodTemplate", spec["submitterPodTemplate"]


def check_core(bundle: Bundle, k8s_version: str = K8S_VERSION) -> list[str]:
    """Core objects, and the pod templates inside ray.io objects, with kubernetes-validate."""
    try:
        import kubernetes_validate
    except ImportError:
        return ["kubernetes-validate is not installed (setup.cfg test extra)"]

    def validate(name: str, what: str, obj: dict) -> list[str]:
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "<root>"
            return [f"{name}: {what} {where}: {exc.message}"]
        except kubernetes_validate.SchemaNotFoundError:
            return [f"{name}: {what}: no Kubernetes {k8s_version} schema for "
                    f"{obj.get('apiVersion')} {obj.get('kind')}"]
        return []

    problems = []
    for name, doc in bundle.objects():
        if str(doc.get("apiVersion", "")).startswith("ray.io/"):
            for where, template in _pod_templates(doc):
                wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                           "metadata": {"name": "check"}, "template": template}
                problems += validate(name, f"{doc['kind']} {where}", wrapped)
        else:
            problems += validate(name, f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}", doc)
    return problems


# --------------------------------------------------------------------------- launcher


def check_launcher(bundle: Bundle) -> list[str]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(bundle.launcher)))
    except Exception as exc:  # noqa: BLE001 - jsonschema.ValidationError, ValueError: Ray's own messages
        return [f"ray-cluster.aws.yaml: {type(exc).__name__}: {str(exc).splitlines()[0]}"]
    return []


# --------------------------------------------------------------------------- Ray Serve LLM


def _ray_source(rel: str) -> Path:
    spec = importlib.util.find_spec("ray")
    return Path(spec.origin).parent / rel


@functools.cache
def pydantic_fields(rel: str, cls: str) -> frozenset[str]:
    """Field names of a pydantic model in Ray's source, read without importing it (Ray Serve
    LLM needs vLLM to import; its models forbid extra fields)."""
    tree = ast.parse(_ray_source(rel).read_text())
    [node] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    return frozenset(s.target.id for s in node.body if isinstance(s, ast.AnnAssign)
                     and isinstance(s.target, ast.Name) and not s.target.id.startswith("_")
                     and s.target.id != "model_config")


SERVE_MODELS = {
    "deploy": ("serve/schema.py", "ServeDeploySchema"),
    "app": ("serve/schema.py", "ServeApplicationSchema"),
    "deployment": ("serve/schema.py", "DeploymentSchema"),
    "autoscaling": ("serve/config.py", "AutoscalingConfig"),
    "llm": ("llm/_internal/serve/core/configs/llm_config.py", "LLMConfig"),
    "loading": ("llm/_internal/serve/core/configs/llm_config.py", "ModelLoadingConfig"),
    "serving_args": ("llm/_internal/serve/core/ingress/builder.py", "LLMServingArgs"),
}


def _unknown(where: str, value: Any, model: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: expected a mapping"]
    extra = sorted(set(value) - pydantic_fields(*SERVE_MODELS[model]))
    return [f"{where}: unknown field(s) {extra} (Ray's {SERVE_MODELS[model][1]})"] if extra else []


def serve_problems(where: str, config: dict) -> list[str]:
    problems = _unknown(where, config, "deploy")
    for i, app in enumerate(config.get("applications") or []):
        at = f"{where} applications[{i}]"
        problems += _unknown(at, app, "app")
        if app.get("import_path") != "ray.serve.llm:build_openai_app":
            problems.append(f"{at}: import_path is not ray.serve.llm:build_openai_app")
        args = app.get("args") or {}
        problems += _unknown(f"{at} args", args, "serving_args")
        for j, llm in enumerate(args.get("llm_configs") or []):
            lat = f"{at} llm_configs[{j}]"
            problems += _unknown(lat, llm, "llm")
            problems += _unknown(f"{lat} model_loading_config", llm.get("model_loading_config"), "loading")
            dep = llm.get("deployment_config") or {}
            problems += _unknown(f"{lat} deployment_config", dep, "deployment")
            problems += _unknown(f"{lat} autoscaling_config", dep.get("autoscaling_config") or {},
                                 "autoscaling")
    if not config.get("applications"):
        problems.append(f"{where}: no applications")
    return problems


def rayservice_serve_config(bundle: Bundle) -> dict:
    return yaml.safe_load(bundle.one("RayService")["spec"]["serveConfigV2"])


def check_serve(bundle: Bundle) -> list[str]:
    problems = serve_problems("RayService serveConfigV2", rayservice_serve_config(bundle))
    problems += serve_problems("serve-mllm.aws.yaml", bundle.serve_vm)
    k8s_llm = _llm_config(rayservice_serve_config(bundle))
    vm_llm = _llm_config(bundle.serve_vm)
    if k8s_llm and vm_llm:
        a = {k: v for k, v in k8s_llm.items() if k != "model_loading_config"}
        b = {k: v for k, v in vm_llm.items() if k != "model_loading_config"}
        if a != b or k8s_llm["model_loading_config"].get("model_id") != \
                vm_llm["model_loading_config"].get("model_id"):
            problems.append("serve-mllm.aws.yaml: the served model differs from the RayService's "
                            "(only model_source may differ)")
    return problems


def _llm_config(serve_config: dict) -> Optional[dict]:
    try:
        [app] = serve_config["applications"]
        [llm] = app["args"]["llm_configs"]
        return llm
    except (KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- helpers


def quantity(value: Any) -> float:
    """A Kubernetes quantity as a float (CPUs, or GiB for memory)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10,
             "k": 1e3 / 2**30, "M": 1e6 / 2**30, "G": 1e9 / 2**30}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    number, unit = float(match.group(1)), match.group(2)
    return number * units[unit] if unit else number


def allocatable(instance_type: str) -> tuple[float, float, int]:
    """(CPUs, GiB, GPUs) a pod can request on an EKS node of this type: capacity less the
    kubelet's kube-reserved (EKS AMI formula), the hard eviction threshold, the memory the
    kernel and firmware keep (~4%) and DaemonSets."""
    vcpu, gib, max_pods, gpus = INSTANCE_TYPES[instance_type]
    reserved_m = 60 + (10 if vcpu > 1 else 0) + 5 * min(max(vcpu - 2, 0), 2) + 2.5 * max(vcpu - 4, 0)
    cpu = vcpu - reserved_m / 1000 - DAEMONSET_CPU
    mem = gib * 0.96 - (11 * max_pods + 255) / 1024 - 0.1 - DAEMONSET_MEM_GIB
    return cpu, mem, gpus


def ray_cluster_specs(bundle: Bundle) -> Iterator[tuple[str, dict]]:
    for name, doc in bundle.objects():
        spec = doc.get("spec", {})
        inner = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
                 "RayService": spec.get("rayClusterConfig")}.get(doc.get("kind"))
        if inner is not None:
            yield f"{name} {doc['kind']} {doc['metadata'].get('name') or doc['metadata'].get('generateName')}", inner


def _groups(spec: dict) -> Iterator[tuple[str, dict, bool]]:
    yield "head", spec.get("headGroupSpec", {}), True
    for g in spec.get("workerGroupSpecs", []):
        yield g.get("groupName", "?"), g, False


def _containers(template: dict) -> list[dict]:
    spec = template.get("spec", {})
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def all_pod_specs(bundle: Bundle) -> Iterator[tuple[str, dict]]:
    """(where, pod spec) of every pod any manifest makes."""
    for name, doc in bundle.objects():
        kind = doc.get("kind")
        if kind in CRD_FILES:
            for where, template in _pod_templates(doc):
                yield f"{name} {kind} {where}", template.get("spec", {})
        elif kind == "CronJob":
            yield f"{name} CronJob", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
            yield f"{name} {kind}", doc["spec"]["template"]["spec"]


def custom_resources(start_params: dict) -> dict:
    """rayStartParams.resources ('"{\\"gpu_node\\": 1}"', KubeRay's quoting) as a dict."""
    raw = start_params.get("resources")
    if not raw:
        return {}
    text = raw.strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('\\"', '"')
    return json.loads(text)


def ray_pin(bundle: Bundle) -> Optional[str]:
    match = re.search(r"^ray\[([^\]]*)\]==([0-9.]+)\s*$", bundle.texts["requirements.txt"], re.M)
    return match.group(2) if match and "llm" in match.group(1).split(",") else None


def pipeline_gpus(cfg: Any) -> tuple[float, float]:
    """(GPUs the pipeline holds at once, most GPUs one actor needs) for a config. In endpoint
    mode the MLLM's GPUs belong to the served model, not to the run."""
    stages = [cfg.decode.resources, cfg.pose.resources, cfg.tasks.resources, cfg.write.resources]
    stages += [cfg.mllm.resources] if cfg.mllm.enabled else []
    total, largest = 0.0, 0.0
    for res in stages:
        if res.num_gpus:
            total += res.num_gpus * (res.concurrency or 1)
            largest = max(largest, res.num_gpus)
    if cfg.mllm.enabled and cfg.mllm.mode == "engine":
        # Engine mode: the job's own vLLM replicas (pipeline/graph.py served_engine), shared
        # by every MLLM task: concurrency x GPUs per replica, whatever the tasks.
        eng = cfg.mllm.engine
        per = eng.tensor_parallel_size if eng.num_gpus is None else eng.num_gpus
        total += eng.concurrency * per
        largest = max(largest, per)
    return total, largest


# --------------------------------------------------------------------------- consistency


def check_auth(bundle: Bundle) -> list[str]:
    """Token auth through authOptions on every Ray cluster, from the one Secret."""
    problems = []
    for where, spec in ray_cluster_specs(bundle):
        auth = spec.get("authOptions") or {}
        if auth.get("mode") != "token":
            problems.append(f"{where}: authOptions.mode is not 'token' (KubeRay then gives the "
                            "autoscaler and its dashboard client no token)")
        if auth.get("secretName") != TOKEN_SECRET:
            problems.append(f"{where}: authOptions.secretName is {auth.get('secretName')!r}, "
                            f"not {TOKEN_SECRET!r}")
        version = tuple(int(x) for x in re.findall(r"\d+", str(spec.get("rayVersion")))[:2])
        if version < MIN_RAY_FOR_TOKEN_AUTH:
            problems.append(f"{where}: rayVersion {spec.get('rayVersion')} < 2.52 (token auth)")
        for group, g, _ in _groups(spec):
            for c in _containers(g.get("template", {})):
                names = {e.get("name") for e in c.get("env", [])}
                if names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}:
                    problems.append(f"{where} {group}: sets RAY_AUTH_* by hand; authOptions sets "
                                    "them (and hand-set values override the operator's)")
    # Submitters outside KubeRay read the same Secret.
    for where, pod in all_pod_specs(bundle):
        for c in _containers({"spec": pod}):
            env = {e.get("name"): e for e in c.get("env", [])}
            if "RAY_AUTH_TOKEN" in env:
                ref = (env["RAY_AUTH_TOKEN"].get("valueFrom") or {}).get("secretKeyRef") or {}
                if (ref.get("name"), ref.get("key")) != (TOKEN_SECRET, TOKEN_KEY):
                    problems.append(f"{where}: RAY_AUTH_TOKEN from {ref.get('name')}/{ref.get('key')}, "
                                    f"not {TOKEN_SECRET}/{TOKEN_KEY}")
                if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token":
                    problems.append(f"{where}: RAY_AUTH_TOKEN without RAY_AUTH_MODE=token")
    return problems


def check_references(bundle: Bundle) -> list[str]:
    """ServiceAccounts, PVCs, Secrets and the namespace every pod names exist / are created."""
    problems = []
    base = bundle.k8s.get("kuberay-base.yaml", [])
    accounts = {(d["metadata"].get("namespace"), d["metadata"]["name"])
                for d in base if d.get("kind") == "ServiceAccount"}
    claims = {(d["metadata"].get("namespace"), d["metadata"]["name"])
              for d in base if d.get("kind") == "PersistentVolumeClaim"}
    namespaces = {d["metadata"]["name"] for d in base if d.get("kind") == "Namespace"}
    if NAMESPACE not in namespaces:
        problems.append(f"kuberay-base.yaml: no Namespace {NAMESPACE}")
    readme = bundle.texts.get("README.md", "")
    created = set(re.findall(r"kubectl create secret generic ([\w.-]+)", readme))
    for name, doc in bundle.objects():
        meta = doc.get("metadata", {})
        if doc.get("kind") not in CLUSTER_SCOPED and meta.get("namespace") != NAMESPACE:
            problems.append(f"{name}: {doc.get('kind')} {meta.get('name') or meta.get('generateName')} "
                            f"is not in namespace {NAMESPACE}")
    for where, pod in all_pod_specs(bundle):
        sa = pod.get("serviceAccountName")
        if not sa:
            problems.append(f"{where}: no serviceAccountName (the namespace default has no IRSA role)")
        elif (NAMESPACE, sa) not in accounts:
            problems.append(f"{where}: ServiceAccount {sa} is not defined in kuberay-base.yaml")
        for vol in pod.get("volumes", []):
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and (NAMESPACE, claim) not in claims:
                problems.append(f"{where}: PVC {claim} is not defined in kuberay-base.yaml")
        for c in _containers({"spec": pod}):
            refs = [(e.get("valueFrom") or {}).get("secretKeyRef") for e in c.get("env", [])]
            refs += [e.get("secretRef") for e in c.get("envFrom", [])]
            for ref in filter(None, refs):
                if ref.get("name") not in created:
                    problems.append(f"{where}: Secret {ref.get('name')} is never created in "
                                    "clusters/README.md (kubectl create secret generic ...)")
    for where, spec in ray_cluster_specs(bundle):
        secret = (spec.get("authOptions") or {}).get("secretName")
        if secret and secret not in created:
            problems.append(f"{where}: Secret {secret} is never created in clusters/README.md")
    return problems


def check_images(bundle: Bundle) -> list[str]:
    """One image everywhere, tagged <Ray pin>-<CUDA>-<proxyqa version>, built FROM the Ray
    image of the same Ray and CUDA; ray[llm] pinned to the same Ray; rayVersion the same."""
    from packaging.specifiers import SpecifierSet

    from proxyqa import __version__

    problems = []
    pin = ray_pin(bundle)
    if not pin:
        return ["requirements.txt: no ray[...,llm,...]==<version> pin (vLLM must come from ray[llm])"]
    lock = re.search(r"^ray==([0-9.]+)$", bundle.texts["constraints.txt"], re.M)
    if not lock or lock.group(1) != pin:
        problems.append(f"constraints.txt: ray is not locked at {pin}")
    if re.search(r"^vllm\b", bundle.texts["requirements.txt"], re.M):
        problems.append("requirements.txt: names vllm; ray[llm] brings the vLLM Ray tests")
    setup = re.search(r"^\s*ray\[[^\]]*\]\s*([<>=!~][^\s;#]*)", bundle.texts["setup.cfg"], re.M)
    if setup and pin not in SpecifierSet(setup.group(1)):
        problems.append(f"setup.cfg: ray{setup.group(1)} does not admit the image's Ray {pin}")
    text = bundle.texts["Dockerfile"]
    base = re.search(r"^FROM\s+(\S+)", text, re.M)
    base_tag = base.group(1) if base else ""
    match = re.fullmatch(rf"rayproject/ray(?:-llm)?:{re.escape(pin)}-py3\d+-(cu\d+)(@sha256:[0-9a-f]+)?", base_tag)
    if not match:
        problems.append(f"Dockerfile: base {base_tag!r} is not rayproject/ray:{pin}-py3XX-cuXXX")
        cuda = None
    else:
        cuda = match.group(1)
    code = re.search(r"^COPY\b[^\n]*\s\.\s+\S+\s*$", text, re.M)          # COPY . /app
    deps = re.search(r"^RUN pip install[^\n]*-r\s+\S*requirements\.txt[^\n]*$", text, re.M)
    if not deps:
        problems.append("Dockerfile: no dependency layer installing requirements.txt")
    else:
        if code and code.start() < deps.start():
            problems.append("Dockerfile: the code is copied before the dependency layer")
        if not re.search(r"-c\s+\S*constraints\.txt", deps.group(0)):
            problems.append("Dockerfile: dependencies are not installed under constraints.txt")
    images = set()
    for _where, pod in all_pod_specs(bundle):
        images |= {c.get("image") for c in _containers({"spec": pod})}
    images.add(bundle.launcher.get("docker", {}).get("image"))
    if len(images) != 1:
        problems.append(f"more than one image: {sorted(map(str, images))}")
    for image in images:
        tag = str(image).rpartition(":")[2]
        if tag != f"{pin}-{cuda}-{__version__}":
            problems.append(f"image {image}: tag is not <Ray {pin}>-<{cuda}>-<proxyqa {__version__}>")
    for where, spec in ray_cluster_specs(bundle):
        if spec.get("rayVersion") != pin:
            problems.append(f"{where}: rayVersion {spec.get('rayVersion')} != the image's Ray {pin}")
    return problems


def check_sizes(bundle: Bundle) -> list[str]:
    """Every Ray pod fits the allocatable capacity of the instance type it is pinned to;
    GPU pods are pinned to GPU nodes and tolerate their taint; placement resources exist."""
    problems = []
    for where, spec in ray_cluster_specs(bundle):
        for group, g, is_head in _groups(spec):
            at = f"{where} {group}"
            pod = g.get("template", {}).get("spec", {})
            itype = (pod.get("nodeSelector") or {}).get("node.kubernetes.io/instance-type")
            if itype not in INSTANCE_TYPES:
                problems.append(f"{at}: nodeSelector names no known instance type ({itype})")
                continue
            cpu = mem = gpu = 0.0
            for c in pod.get("containers", []):
                res = c.get("resources", {})
                req, lim = res.get("requests", {}), res.get("limits", {})
                if c is pod["containers"][0] and req != lim:
                    problems.append(f"{at}: requests != limits (Ray sizes itself from limits)")
                cpu += quantity(req.get("cpu", lim.get("cpu", 0)))
                mem += quantity(req.get("memory", lim.get("memory", 0)))
                gpu += quantity(lim.get("nvidia.com/gpu", 0))
            if is_head and spec.get("enableInTreeAutoscaling"):
                cpu, mem = cpu + AUTOSCALER_CPU, mem + AUTOSCALER_MEM_GIB
            a_cpu, a_mem, a_gpu = allocatable(itype)
            if cpu > a_cpu or mem > a_mem or gpu > a_gpu:
                problems.append(f"{at}: asks {cpu:g} CPU / {mem:g} GiB / {gpu:g} GPU; a {itype} "
                                f"has {a_cpu:.2f} / {a_mem:.2f} / {a_gpu} allocatable")
            tolerates = any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
            if gpu and not tolerates:
                problems.append(f"{at}: GPU pod without the nvidia.com/gpu toleration")
            if INSTANCE_TYPES[itype][3] and not gpu:
                problems.append(f"{at}: CPU-only group on GPU instances ({itype})")
            start = g.get("rayStartParams") or {}
            if g.get("resources") and any(start.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
                problems.append(f"{at}: resources in both rayStartParams and the group (KubeRay rejects it)")
            if not is_head:
                custom = custom_resources(start)
                want = "gpu_node" if gpu else "decode_node"
                if custom.get(want) != 1:
                    problems.append(f"{at}: no custom resource {want}: 1 in rayStartParams.resources")
                if not 0 <= g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 0):
                    problems.append(f"{at}: replicas outside minReplicas..maxReplicas")
    for name, t in bundle.launcher.get("available_node_types", {}).items():
        if name == bundle.launcher.get("head_node_type"):
            continue
        want = "gpu_node" if t["resources"].get("GPU") else "decode_node"
        if t["resources"].get(want) != 1:
            problems.append(f"ray-cluster.aws.yaml {name}: no custom resource {want}: 1")
        itype = t.get("node_config", {}).get("InstanceType")
        if itype in INSTANCE_TYPES:
            vcpu, _, _, gpus = INSTANCE_TYPES[itype]
            if t["resources"].get("CPU", 0) > vcpu or t["resources"].get("GPU", 0) > gpus:
                problems.append(f"ray-cluster.aws.yaml {name}: resources exceed a {itype}")
    return problems


def _gpu_capacity(spec: dict) -> tuple[float, float]:
    total = largest = 0.0
    for _, g, is_head in _groups(spec):
        if is_head:
            continue
        [c] = g["template"]["spec"]["containers"][:1]
        gpus = quantity(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        total += gpus * g.get("maxReplicas", 0)
        largest = max(largest, gpus)
    return total, largest


def served_endpoint(bundle: Bundle) -> str:
    service = bundle.one("RayService")["metadata"]
    return f"http://{service['name']}-serve-svc.{service.get('namespace')}.svc:8000/v1"


def check_mllm(bundle: Bundle) -> list[str]:
    """configs/cluster.yaml calls the RayService; its GPUs, bounds and weights line up."""
    problems = []
    cfg = bundle.config
    llm = _llm_config(rayservice_serve_config(bundle))
    if llm is None:
        return ["RayService: not exactly one application with one llm_config"]
    if not cfg.mllm.enabled or cfg.mllm.mode != "endpoint":
        problems.append("configs/cluster.yaml: mllm is not enabled in endpoint mode (the served model)")
    if cfg.mllm.endpoint.base_url != served_endpoint(bundle):
        problems.append(f"configs/cluster.yaml: mllm.endpoint.base_url {cfg.mllm.endpoint.base_url} "
                        f"!= the RayService's {served_endpoint(bundle)}")
    loading = llm.get("model_loading_config", {})
    if cfg.mllm.endpoint.model != loading.get("model_id"):
        problems.append(f"configs/cluster.yaml: mllm.endpoint.model {cfg.mllm.endpoint.model} != "
                        f"served model_id {loading.get('model_id')}")
    engine = llm.get("engine_kwargs", {})
    if engine.get("max_model_len", 0) < cfg.mllm.engine.max_model_len:
        problems.append("RayService: max_model_len below configs/cluster.yaml's")
    if engine.get("limit_mm_per_prompt", {}).get("image", 0) < 4:
        problems.append("RayService: limit_mm_per_prompt.image < 4 (the pipeline sends up to 4 images)")
    scaling = llm.get("deployment_config", {}).get("autoscaling_config", {})
    lo, hi = scaling.get("min_replicas"), scaling.get("max_replicas")
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        problems.append("RayService: autoscaling_config needs 1 <= min_replicas <= max_replicas")
        lo = hi = 0
    per_replica = engine.get("tensor_parallel_size", 1) * engine.get("pipeline_parallel_size", 1)
    spec = bundle.one("RayService")["spec"]["rayClusterConfig"]
    capacity, largest = _gpu_capacity(spec)
    if capacity < hi * per_replica or largest < 1:
        problems.append(f"RayService: GPU groups hold {capacity:g} GPUs; max_replicas {hi} needs "
                        f"{hi * per_replica}")
    gpu_groups = [g for _, g, h in _groups(spec) if not h and _gpu_capacity({"workerGroupSpecs": [g]})[0]]
    if sum(g.get("minReplicas", 0) for g in gpu_groups) < lo * per_replica:
        problems.append("RayService: GPU groups' minReplicas below min_replicas (cold start on every scale-in)")
    # Weights: a local path on a volume from the shared PVC, filled by the weights Job, offline.
    source = loading.get("model_source")
    if not isinstance(source, str) or not source.startswith("/"):
        problems.append("RayService: model_source is not a local path (weights would download at run time)")
    else:
        for group, g, h in _groups(spec):
            if h:
                continue
            pod = g["template"]["spec"]
            claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
                      for v in pod.get("volumes", [])}
            mounts = [m for m in pod["containers"][0].get("volumeMounts", [])
                      if source.startswith(m["mountPath"].rstrip("/") + "/") and claims.get(m["name"])]
            if not mounts:
                problems.append(f"RayService {group}: {source} is not on a mounted PVC")
        job = [d for _, d in bundle.objects("Job")
               if d["metadata"]["name"] == "proxyqa-mllm-weights"]
        command = job[0]["spec"]["template"]["spec"]["containers"][0]["command"] if job else []
        if command[-2:] != [loading.get("model_id"), source]:
            problems.append("kuberay-mllm-weights.yaml: does not download the served model_id "
                            "into the served model_source")
    if (llm.get("runtime_env", {}).get("env_vars", {}) or {}).get("HF_HUB_OFFLINE") != "1":
        problems.append("RayService: replicas may reach the Hub at run time (HF_HUB_OFFLINE != 1)")
    return problems


def check_pipeline_fits(bundle: Bundle) -> list[str]:
    """The GPUs and CPUs configs/cluster.yaml asks for fit the clusters that run it."""
    problems = []
    cfg = bundle.config
    needed, per_actor = pipeline_gpus(cfg)
    largest_cpu = max(r.num_cpus for r in (cfg.decode.resources, cfg.pose.resources,
                                           cfg.tasks.resources, cfg.write.resources))
    # The Ray clusters also take the engine-mode fallback (--set mllm.mode=engine).
    engine_cfg = cfg.model_copy(update={"mllm": cfg.mllm.model_copy(update={"mode": "engine"})})
    for where, spec in ray_cluster_specs(bundle):
        if "RayService" in where:
            continue
        capacity, largest = _gpu_capacity(spec)
        for mode, (n, per) in (("", (needed, per_actor)), (" in engine mode", pipeline_gpus(engine_cfg))):
            if capacity < n or largest < per:
                problems.append(f"{where}: {capacity:g} GPUs (largest {largest:g}/pod) for a pipeline "
                                f"needing {n:g}{mode} (largest {per:g}/actor)")
        cpus = [quantity(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
                for _, g, h in _groups(spec) if not h and not _gpu_capacity({"workerGroupSpecs": [g]})[0]]
        if not cpus or max(cpus) < largest_cpu:
            problems.append(f"{where}: no CPU group fits a {largest_cpu:g}-CPU actor")
    # The launcher cluster also runs the served model (serve-mllm.aws.yaml) on its GPU workers.
    types = bundle.launcher.get("available_node_types", {})
    gpu_types = [t for t in types.values() if t["resources"].get("GPU")]
    vm_llm = _llm_config(bundle.serve_vm) or {}
    serve_gpus = (vm_llm.get("deployment_config", {}).get("autoscaling_config", {}).get("max_replicas", 0)
                  * vm_llm.get("engine_kwargs", {}).get("tensor_parallel_size", 1))
    capacity = sum(t["resources"]["GPU"] * t["max_workers"] for t in gpu_types)
    if capacity < needed + serve_gpus:
        problems.append(f"ray-cluster.aws.yaml: {capacity:g} GPUs for pipeline ({needed:g}) + "
                        f"served MLLM ({serve_gpus:g})")
    return problems


def check_nightly(bundle: Bundle) -> list[str]:
    """The CronJob runs the idempotent submitter against the RayCluster, within its deadline."""
    problems = []
    cron = bundle.one("CronJob")
    cluster = bundle.one("RayCluster")["metadata"]
    spec = cron["spec"]
    if spec.get("concurrencyPolicy") != "Forbid":
        problems.append("nightly-cronjob.yaml: concurrencyPolicy is not Forbid")
    job = spec["jobTemplate"]["spec"]
    [container] = job["template"]["spec"]["containers"]
    cmd = container.get("command", [])
    if cmd[:2] != ["python", "clusters/nightly_submit.py"] or container.get("workingDir") != IMAGE_DIR:
        return problems + ["nightly-cronjob.yaml: does not run clusters/nightly_submit.py from /app"]

    def arg(flag: str) -> Optional[str]:
        return cmd[cmd.index(flag) + 1] if flag in cmd else None

    address = f"http://{cluster['name']}-head-svc.{cluster.get('namespace')}.svc:8265"
    if arg("--address") != address:
        problems.append(f"nightly-cronjob.yaml: --address {arg('--address')} != {address}")
    env = {e["name"]: e for e in container.get("env", [])}
    field_path = ((env.get("JOB_NAME") or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
    if arg("--job-name") != "$(JOB_NAME)" or field_path != "metadata.labels['batch.kubernetes.io/job-name']":
        problems.append("nightly-cronjob.yaml: the submission id is not derived from the Job name "
                        "(--job-name $(JOB_NAME) from the batch.kubernetes.io/job-name label)")
    deadline = float(arg("--deadline-s") or 22 * 3600)
    if not job.get("activeDeadlineSeconds") or job["activeDeadlineSeconds"] < deadline + 600:
        problems.append("nightly-cronjob.yaml: activeDeadlineSeconds does not leave the submitter "
                        "time to stop the Ray job after --deadline-s")
    entry = cmd[cmd.index("--") + 1:] if "--" in cmd else []
    if "--incremental" not in entry or entry[:2] != ["proxyqa", "run"]:
        problems.append("nightly-cronjob.yaml: the entrypoint is not `proxyqa run ... --incremental`")
    return problems


def autoscaler_ec2_actions() -> set[str]:
    """EC2 API actions Ray's AWS node provider calls from the head (read from Ray's source)."""
    text = _ray_source("autoscaler/_private/aws/node_provider.py").read_text()
    calls = set(re.findall(r"\.(create_instances|describe_[a-z_]+|create_tags|start_instances|"
                           r"stop_instances|terminate_instances|instances\.filter|terminate|stop)\(", text))
    names = {"create_instances": "RunInstances", "instances.filter": "DescribeInstances",
             "terminate": "TerminateInstances", "stop": "StopInstances"}
    actions = {f"ec2:{names.get(c) or ''.join(w.title() for w in c.split('_'))}" for c in calls}
    # RunInstances with TagSpecifications also needs CreateTags.
    return actions | {"ec2:CreateTags"}


def _allowed(policy: dict, action: str, resource: str = "*") -> bool:
    from fnmatch import fnmatchcase

    for st in policy.get("Statement", []):
        if st.get("Effect") != "Allow":
            continue
        actions = st.get("Action", [])
        resources = st.get("Resource", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        if any(fnmatchcase(action, a) for a in actions) and any(fnmatchcase(resource, r) for r in resources):
            return True
    return False


def _s3_arns(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/{prefix}"


def check_iam(bundle: Bundle) -> list[str]:
    """The head's role can run the autoscaler and pass the workers' role; S3 covers the config."""
    problems = []
    autoscaler = bundle.iam.get("ray-autoscaler-policy.json", {})
    s3 = bundle.iam.get("proxyqa-s3-policy.json", {})
    for action in sorted(autoscaler_ec2_actions()):
        if not _allowed(autoscaler, action):
            problems.append(f"iam/ray-autoscaler-policy.json: does not allow {action} (Ray's AWS node provider)")
    types = bundle.launcher["available_node_types"]
    head = types[bundle.launcher["head_node_type"]]["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
    workers = {t["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
               for n, t in types.items() if n != bundle.launcher["head_node_type"]}
    if not head:
        problems.append("ray-cluster.aws.yaml: the head has no IamInstanceProfile")
    for arn in sorted(workers):
        if not arn or arn == head:
            problems.append("ray-cluster.aws.yaml: workers need their own (S3-only) instance profile")
            continue
        account, name = re.search(r"arn:aws:iam::(\d+):instance-profile/(.+)", arn).groups()
        if not _allowed(autoscaler, "iam:PassRole", f"arn:aws:iam::{account}:role/{name}"):
            problems.append(f"iam/ray-autoscaler-policy.json: no iam:PassRole for the worker role {name} "
                            "(profile and role share the name, clusters/README.md)")
    cfg = bundle.config
    bucket, prefix = _s3_arns(cfg.input)
    if not (_allowed(s3, "s3:ListBucket", bucket) and _allowed(s3, "s3:GetObject", prefix + "x.mp4")):
        problems.append(f"iam/proxyqa-s3-policy.json: cannot read the input {cfg.input}")
    bucket, prefix = _s3_arns(cfg.output)
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        if not _allowed(s3, action, prefix + "run/x.parquet"):
            problems.append(f"iam/proxyqa-s3-policy.json: no {action} on the output {cfg.output}")
    if not _allowed(s3, "s3:ListBucket", bucket):
        problems.append(f"iam/proxyqa-s3-policy.json: cannot list the output bucket of {cfg.output}")
    source = ((_llm_config(bundle.serve_vm) or {}).get("model_loading_config", {})
              .get("model_source") or {})
    if isinstance(source, dict) and source.get("bucket_uri"):
        _, mirror = _s3_arns(source["bucket_uri"])
        if not _allowed(s3, "s3:GetObject", mirror.rstrip("/") + "/config.json"):
            problems.append(f"iam/proxyqa-s3-policy.json: cannot read the model mirror {source['bucket_uri']}")
    return problems


CHECKS = {
    "crd": check_crd, "core": check_core, "launcher": check_launcher, "serve": check_serve,
    "auth": check_auth, "references": check_references, "images": check_images,
    "sizes": check_sizes, "mllm": check_mllm, "pipeline_fits": check_pipeline_fits,
    "nightly": check_nightly, "iam": check_iam,
}


def check_all(bundle: Bundle) -> dict[str, list[str]]:
    return {name: check(bundle) for name, check in CHECKS.items()}


def main() -> int:
    sys.path.insert(0, str(REPO))
    results = check_all(load_bundle())
    bad = 0
    for name, problems in results.items():
        print(f"{name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            print(f"  - {p}")
        bad += len(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
