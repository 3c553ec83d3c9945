"""deploy/rayservice.yaml (KubeRay RayService) and its GPU patch: generated from conf/serve.yaml, and valid for ser.

No cluster and no Ray runtime: the manifest is read as YAML, its serveConfigV2 is checked against Ray Serve's own
config schema, realtime.cluster (imported, never started), ClusterArgs.parse and the daemon config schema; the
generator's --check must pass. Tests that import Ray skip, saying so, where it is not installed.
"""

from __future__ import annotations

import copy
import importlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.config import ConfigError
from deploy import make_rayservice as gen
from realtime.config import daemon_config_from_mapping

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / gen.MANIFEST
GPU_PATCH = REPO / gen.GPU_PATCH
SERVE_YAML = REPO / gen.SERVE_CONFIG
DOCKERFILE = REPO / "deploy" / "Dockerfile"
TEST_TOKEN = "test-token-not-a-secret"

# Ray Serve's schema modules use pydantic v1-style Field arguments: their deprecation warnings are Ray's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")


def _ray_or_skip() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        pytest.skip("ray is not installed (pip install 'ray[serve]'): the Serve-side checks need its modules")


@pytest.fixture(scope="module")
def cluster() -> Any:
    """realtime.cluster (imports Ray Serve and FastAPI; starts nothing)."""
    _ray_or_skip()
    try:
        return importlib.import_module("realtime.cluster")
    except ImportError as exc:
        pytest.skip(f"realtime.cluster cannot be imported here ({exc}): its Ray Serve dependencies are missing")


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def serve_config(manifest: dict[str, Any]) -> dict[str, Any]:
    text = manifest["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 must be a YAML string, as KubeRay takes it"
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def gpu_patch() -> dict[str, Any]:
    return yaml.safe_load(GPU_PATCH.read_text())


@pytest.fixture(scope="module")
def gpu_config(gpu_patch: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(gpu_patch["spec"]["serveConfigV2"])


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """$SER_TOKEN as the Secret sets it in every Ray pod."""
    monkeypatch.setenv(gen.TOKEN_ENV, TEST_TOKEN)
    return TEST_TOKEN


def the_app(cfg: dict[str, Any]) -> dict[str, Any]:
    apps = [a for a in cfg["applications"] if a["import_path"] == gen.IMPORT_PATH]
    assert len(apps) == 1, f"one application runs {gen.IMPORT_PATH}"
    return apps[0]


def deployment(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    (dep,) = [d for d in the_app(cfg)["deployments"] if d["name"] == name]
    return dep


def differences(a: Any, b: Any, path: str = "") -> set[str]:
    """Paths (dotted; list items by their name or index) where ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            if k not in a or k not in b:
                out.add(f"{path}{k}")
            else:
                out |= differences(a[k], b[k], f"{path}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = set()
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            key = x.get("name", i) if isinstance(x, dict) else i
            out |= differences(x, y, f"{path}{key}.")
        return out
    return set() if a == b else {path.rstrip(".")}


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    rc = manifest["spec"]["rayClusterConfig"]
    groups = [rc["headGroupSpec"], *rc["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def worker_group(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    (group,) = [g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == name]
    return group


# ---------------------------------------------------------------- the manifest as Kubernetes reads it


def test_manifest_is_a_rayservice(manifest: dict[str, Any]) -> None:
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"] == "ser"
    assert set(manifest["spec"]) == {"serveConfigV2", "rayClusterConfig"}
    rc = manifest["spec"]["rayClusterConfig"]
    assert {"rayVersion", "headGroupSpec", "workerGroupSpecs"} <= set(rc)
    assert rc["enableInTreeAutoscaling"] is True  # Serve autoscaling needs pods added for its replicas


# Field names of KubeRay's ray.io/v1 API (ray-operator/apis/ray/v1/rayservice_types.go, raycluster_types.go): a typo
# here would be pruned by the API server without a word, so the test catches it instead.
RAYSERVICE_SPEC = {"serveConfigV2", "rayClusterConfig", "upgradeStrategy", "serveService", "excludeHeadPodFromServeSvc"}
RAYCLUSTER_SPEC = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
                   "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions"}
AUTOSCALER_OPTIONS = {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode",
                      "env", "envFrom", "volumeMounts", "version"}
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                "rayStartParams", "template", "scaleStrategy", "numOfHosts"}


def test_manifest_fields_are_kuberay_v1_fields(manifest: dict[str, Any]) -> None:
    spec = manifest["spec"]
    assert set(spec) <= RAYSERVICE_SPEC
    rc = spec["rayClusterConfig"]
    assert set(rc) <= RAYCLUSTER_SPEC
    assert set(rc["autoscalerOptions"]) <= AUTOSCALER_OPTIONS
    assert rc["autoscalerOptions"]["upscalingMode"] in ("Default", "Aggressive", "Conservative")
    assert set(rc["headGroupSpec"]) <= HEAD_GROUP
    for group in rc["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    for group in [rc["headGroupSpec"], *rc["workerGroupSpecs"]]:
        params = group["rayStartParams"]  # required by the v1 API, and a map of strings
        assert all(isinstance(v, str) for v in params.values())
        for c in group["template"]["spec"]["containers"]:
            assert c["resources"]["requests"] == c["resources"]["limits"], c["name"]


def test_cluster_layout(manifest: dict[str, Any]) -> None:
    rc = manifest["spec"]["rayClusterConfig"]
    head = rc["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # a string, as rayStartParams takes; no replicas on the head
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["dashboard"] == 8265 and ports["serve"] == 8000

    cpu = worker_group(manifest, "cpu")
    assert (cpu["minReplicas"], cpu["maxReplicas"]) == (1, 8)
    (cpu_c,) = cpu["template"]["spec"]["containers"]
    assert cpu_c["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"} == cpu_c["resources"]["requests"]
    assert gen.GPU_RESOURCE not in cpu_c["resources"]["limits"]

    gpu = worker_group(manifest, "gpu")
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 4)
    (gpu_c,) = gpu["template"]["spec"]["containers"]
    assert gpu_c["resources"]["limits"][gen.GPU_RESOURCE] == 1


def test_images_are_built_from_this_repository(manifest: dict[str, Any]) -> None:
    """ser:VERSION on the CPU groups, ser:VERSION-gpu on the GPU one: deploy/Dockerfile over Ray's images."""
    version = gen.project_version(REPO)
    rc = manifest["spec"]["rayClusterConfig"]
    for c in containers(manifest):
        gpus = c["resources"]["limits"].get(gen.GPU_RESOURCE, 0)
        assert c["image"] == (f"ser:{version}-gpu" if gpus else f"ser:{version}"), c["name"]
    ray_version = rc["rayVersion"]
    docker = DOCKERFILE.read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray_version}-py311\n" in docker
    assert f"rayproject/ray:{ray_version}-py311-gpu" in docker and "onnxruntime-gpu" in docker
    assert "--no-deps" in docker


def test_ray_version_is_the_installed_one(manifest: dict[str, Any]) -> None:
    ray = _ray_or_skip()
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_token_comes_from_the_secret_in_every_ray_container(manifest: dict[str, Any], serve_config: dict[str, Any]) -> None:
    """The manifest names the token (an OmegaConf env interpolation) and never holds one."""
    server = the_app(serve_config)["args"]["config"]["server"]
    assert server["token"] == gen.TOKEN_PLACEHOLDER == "${oc.env:SER_TOKEN}"
    for c in containers(manifest):
        (env,) = [e for e in c.get("env", []) if e["name"] == gen.TOKEN_ENV]
        assert "value" not in env, f"{c['name']}: $SER_TOKEN must come from a Secret, not a literal"
        assert env["valueFrom"]["secretKeyRef"] == {"name": gen.TOKEN_SECRET, "key": "token"}


# ---------------------------------------------------------------- serveConfigV2: conf/serve.yaml, in-cluster


def test_serve_config_is_conf_serve_yaml_plus_the_in_cluster_overrides(serve_config: dict[str, Any]) -> None:
    local = yaml.safe_load(SERVE_YAML.read_text())
    app = the_app(local)["name"]
    assert differences(local, serve_config) == {
        "http_options.host",
        f"applications.{app}.args.config.server.host",
        f"applications.{app}.args.config.server.token",
    }
    assert serve_config["http_options"]["host"] == "0.0.0.0"
    assert the_app(serve_config)["args"]["config"]["server"]["host"] == serve_config["http_options"]["host"]
    assert serve_config["http_options"]["port"] == 8000  # the port KubeRay's ser-serve-svc forwards


def test_serve_config_passes_ray_serve_schema(serve_config: dict[str, Any], gpu_config: dict[str, Any]) -> None:
    """Ray Serve's own schema (types, ranges), and every key one it knows (its schema lets unknown ones through)."""
    _ray_or_skip()
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    for cfg in (serve_config, gpu_config):
        ServeDeploySchema.model_validate(cfg)
        assert set(cfg) <= set(ServeDeploySchema.model_fields)
        assert set(cfg["http_options"]) <= set(HTTPOptionsSchema.model_fields)
        app = the_app(cfg)
        assert set(app) <= set(ServeApplicationSchema.model_fields)
        for dep in app["deployments"]:
            assert set(dep) <= set(DeploymentSchema.model_fields), dep["name"]
            assert set(dep.get("ray_actor_options", {})) <= set(RayActorOptionsSchema.model_fields), dep["name"]
            assert set(dep.get("autoscaling_config", {})) <= set(AutoscalingConfig.model_fields), dep["name"]


def test_import_path_resolves_to_build_app(serve_config: dict[str, Any], cluster: Any) -> None:
    module, _, attr = the_app(serve_config)["import_path"].partition(":")
    assert module == cluster.__name__
    assert callable(getattr(importlib.import_module(module), attr))


def _deployment_names(cluster: Any) -> set[str]:
    return {cluster.Ingress.name, cluster.Encoder.name}


@pytest.mark.parametrize("source", ["manifest", "conf/serve.yaml", "gpu patch"])
def test_deployment_names_match_realtime_cluster(source: str, serve_config: dict[str, Any],
                                                 gpu_config: dict[str, Any], cluster: Any) -> None:
    cfg = {"manifest": serve_config, "conf/serve.yaml": yaml.safe_load(SERVE_YAML.read_text()),
           "gpu patch": gpu_config}[source]
    assert {d["name"] for d in the_app(cfg)["deployments"]} == _deployment_names(cluster)
    assert cluster.Encoder.name == gen.ENCODER


def test_args_are_accepted_by_cluster_args(serve_config: dict[str, Any], gpu_config: dict[str, Any],
                                           cluster: Any, token_env: str) -> None:
    """ClusterArgs.parse is build_app's check; the token resolves from $SER_TOKEN (the Secret in the pods)."""
    for cfg in (serve_config, gpu_config):
        parsed = cluster.ClusterArgs.parse(the_app(cfg)["args"])
        typed = daemon_config_from_mapping(parsed.config, "args.config")
        assert typed.server.host == "0.0.0.0" and typed.server.token == token_env
    assert cluster.ClusterArgs.parse(the_app(gpu_config)["args"]).device == "cuda"


def test_conf_serve_yaml_args_are_accepted_by_cluster_args(cluster: Any) -> None:
    local = yaml.safe_load(SERVE_YAML.read_text())
    parsed = cluster.ClusterArgs.parse(the_app(local)["args"])
    assert daemon_config_from_mapping(parsed.config).server.host == local["http_options"]["host"]


def test_args_config_keys_are_daemon_config_keys(serve_config: dict[str, Any], token_env: str) -> None:
    config = the_app(serve_config)["args"]["config"]
    cfg = daemon_config_from_mapping(config, "args.config")  # ConfigError on an unknown section or key
    for section, keys in config.items():
        for key in keys:
            assert key in cfg[section], f"{section}.{key}"
    wrong = copy.deepcopy(config)
    wrong["server"]["no_such_key"] = 1
    with pytest.raises(ConfigError, match="no_such_key"):  # the check above would catch a typo
        daemon_config_from_mapping(wrong, "args.config")


def test_without_the_secret_a_replica_refuses_to_start(serve_config: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """No $SER_TOKEN: the daemon config does not resolve, and an empty one fails the non-loopback rule."""
    config = the_app(serve_config)["args"]["config"]
    monkeypatch.delenv(gen.TOKEN_ENV, raising=False)
    with pytest.raises(Exception, match=gen.TOKEN_ENV):
        daemon_config_from_mapping(config, "args.config")
    monkeypatch.setenv(gen.TOKEN_ENV, "")
    with pytest.raises(ConfigError, match="server.token"):
        daemon_config_from_mapping(config, "args.config")


# ---------------------------------------------------------------- the GPU patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what `kubectl patch --type merge` applies)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def test_gpu_patch_puts_the_encoder_on_a_gpu(manifest: dict[str, Any], serve_config: dict[str, Any],
                                             gpu_patch: dict[str, Any], gpu_config: dict[str, Any]) -> None:
    for key in ("apiVersion", "kind"):
        assert gpu_patch[key] == manifest[key]
    assert gpu_patch["metadata"] == {"name": manifest["metadata"]["name"]}
    assert set(gpu_patch["spec"]) == {"serveConfigV2"}  # the cluster layout is left alone

    encoder = deployment(gpu_config, gen.ENCODER)
    assert encoder["ray_actor_options"]["num_gpus"] == 1
    assert the_app(gpu_config)["args"]["device"] == "cuda"
    capacity = gen.gpu_capacity(manifest)
    assert capacity == 4  # the gpu group: at most 4 pods of 1 GPU
    assert encoder["autoscaling_config"]["max_replicas"] <= capacity
    app = the_app(gpu_config)["name"]
    assert differences(serve_config, gpu_config) <= {
        f"applications.{app}.args.device",
        f"applications.{app}.deployments.{gen.ENCODER}.ray_actor_options.num_gpus",
        f"applications.{app}.deployments.{gen.ENCODER}.autoscaling_config.max_replicas",
    }
    assert "num_gpus" not in deployment(gpu_config, "Ingress").get("ray_actor_options", {})

    patched = merge_patch(manifest, gpu_patch)
    assert yaml.safe_load(patched["spec"]["serveConfigV2"]) == gpu_config
    assert patched["spec"]["rayClusterConfig"] == manifest["spec"]["rayClusterConfig"]


# ---------------------------------------------------------------- the generator


def test_check_passes_on_the_committed_files() -> None:
    run = subprocess.run([sys.executable, "-m", "deploy.make_rayservice", "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_check_fails_on_a_stale_manifest(tmp_path: Path) -> None:
    for rel in (gen.SERVE_CONFIG, gen.TEMPLATE, gen.MANIFEST, gen.GPU_PATCH, gen.PYPROJECT):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0

    serve = tmp_path / gen.SERVE_CONFIG
    local = yaml.safe_load(serve.read_text())
    the_app(local)["args"]["config"].setdefault("server", {})["max_clients"] = 48
    serve.write_text(yaml.safe_dump(local, sort_keys=False))
    assert gen.main(["--check", "--root", str(tmp_path)]) == 1  # conf/serve.yaml changed, the manifest did not
    assert gen.stale(tmp_path) == [gen.MANIFEST, gen.GPU_PATCH]

    assert gen.main(["--root", str(tmp_path)]) == 0
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0
    cfg = yaml.safe_load(yaml.safe_load((tmp_path / gen.MANIFEST).read_text())["spec"]["serveConfigV2"])
    assert the_app(cfg)["args"]["config"]["server"]["max_clients"] == 48
