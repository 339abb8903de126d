"""infra/ray: the KubeRay RayJob and the `ray up` cluster config."""
from __future__ import annotations

from infra_common import *  # noqa: F401,F403 - paths, helpers, pytest, yaml, ...


# ---------------------------------------------------------------------------------------------
# KubeRay RayJob (field names of the ray.io/v1 CRD: ray-operator/apis/ray/v1/*_types.go)

RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
    "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule",
}
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "upgradeStrategy",
}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy", "suspend", "idleTimeoutSeconds", "resources", "labels",
}
AUTOSCALER_OPTION_FIELDS = {
    "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
    "idleTimeoutSeconds", "upscalingMode", "version",
}
POD_SPEC_FIELDS = {
    "containers", "initContainers", "volumes", "nodeSelector", "tolerations", "affinity",
    "serviceAccountName", "securityContext", "imagePullSecrets", "priorityClassName",
    "terminationGracePeriodSeconds", "restartPolicy", "schedulerName", "topologySpreadConstraints",
    "hostNetwork", "dnsPolicy", "runtimeClassName", "enableServiceLinks",
}
CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports", "resources",
    "volumeMounts", "lifecycle", "securityContext", "livenessProbe", "readinessProbe", "startupProbe",
    "workingDir",
}
POD_METADATA_FIELDS = {"labels", "annotations", "name", "namespace", "generateName"}
# core/v1 Volume (the volume sources used here and a few common ones), CSIVolumeSource, VolumeMount.
VOLUME_FIELDS = {"name", "emptyDir", "csi", "ephemeral", "persistentVolumeClaim", "configMap", "secret",
                 "hostPath", "projected", "downwardAPI"}
CSI_VOLUME_FIELDS = {"driver", "readOnly", "fsType", "volumeAttributes", "nodePublishSecretRef"}
VOLUME_MOUNT_FIELDS = {"name", "mountPath", "readOnly", "recursiveReadOnly", "subPath", "subPathExpr",
                       "mountPropagation"}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")



def _pod_problems(template: dict, where: str) -> list[str]:
    problems = []
    metadata = (template or {}).get("metadata") or {}
    problems += _unknown(metadata, POD_METADATA_FIELDS, f"{where}.template.metadata")
    for kind in ("labels", "annotations"):
        # map[string]string: an unquoted `true` or number is rejected by the API server.
        problems += [f"{where}.template.metadata.{kind}.{k}: value must be a string, got {v!r}"
                     for k, v in (metadata.get(kind) or {}).items() if not isinstance(v, str)]
    spec = (template or {}).get("spec") or {}
    problems += _unknown(spec, POD_SPEC_FIELDS, f"{where}.template.spec")
    volumes = {}
    for v in spec.get("volumes") or []:
        vw = f"{where}.volumes[{v.get('name')}]"
        volumes[v.get("name")] = v
        problems += _unknown(v, VOLUME_FIELDS, vw)
        if "csi" in v:
            problems += _unknown(v["csi"] or {}, CSI_VOLUME_FIELDS, f"{vw}.csi")
            problems += [f"{vw}.csi.volumeAttributes.{k}: value must be a string, got {val!r}"
                         for k, val in ((v["csi"] or {}).get("volumeAttributes") or {}).items()
                         if not isinstance(val, str)]
    if len(volumes) != len(spec.get("volumes") or []):
        problems.append(f"{where}: duplicate volume names")
    containers = spec.get("containers") or []
    if not containers:
        problems.append(f"{where}: no containers")
    for i, c in enumerate(containers):
        cw = f"{where}.containers[{i}]"
        problems += _unknown(c, CONTAINER_FIELDS, cw)
        if not c.get("name") or not c.get("image"):
            problems.append(f"{cw}: needs name and image")
        for m in c.get("volumeMounts") or []:
            problems += _unknown(m, VOLUME_MOUNT_FIELDS, f"{cw}.volumeMounts[{m.get('name')}]")
            if m.get("name") not in volumes:
                problems.append(f"{cw}: volumeMount {m.get('name')!r} has no volume of that name")
        for kind in ("requests", "limits"):
            for res, qty in ((c.get("resources") or {}).get(kind) or {}).items():
                if not isinstance(qty, (str, int)) or not QUANTITY.match(str(qty)):
                    problems.append(f"{cw}.resources.{kind}.{res}: bad quantity {qty!r}")
    return problems


def _gpus(template: dict) -> int:
    total = 0
    for c in ((template or {}).get("spec") or {}).get("containers") or []:
        total += int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
    return total


def rayjob_problems(doc: dict) -> list[str]:
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion must be ray.io/v1, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != "RayJob":
        problems.append(f"kind must be RayJob, got {doc.get('kind')!r}")
    if not DNS1123.match(str((doc.get("metadata") or {}).get("name", ""))):
        problems.append("metadata.name must be a DNS-1123 label")
    spec = doc.get("spec") or {}
    problems += _unknown(spec, RAYJOB_SPEC_FIELDS, "spec")
    entry = spec.get("entrypoint")
    if not isinstance(entry, str) or not entry.strip():
        problems.append("spec.entrypoint is missing")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("spec.shutdownAfterJobFinishes must be true")
    ttl = spec.get("ttlSecondsAfterFinished")
    if not isinstance(ttl, int) or ttl < 0:
        problems.append("spec.ttlSecondsAfterFinished must be a non-negative integer")
    cluster = spec.get("rayClusterSpec")
    if not isinstance(cluster, dict):
        return problems + ["spec.rayClusterSpec is missing"]
    problems += _unknown(cluster, RAYCLUSTER_SPEC_FIELDS, "rayClusterSpec")
    problems += _unknown(cluster.get("autoscalerOptions") or {}, AUTOSCALER_OPTION_FIELDS, "autoscalerOptions")
    head = cluster.get("headGroupSpec")
    if not isinstance(head, dict):
        problems.append("rayClusterSpec.headGroupSpec is missing")
    else:
        problems += _unknown(head, HEAD_GROUP_FIELDS, "headGroupSpec")
        problems += _start_params_problems(head, "headGroupSpec")
        problems += _pod_problems(head.get("template"), "headGroupSpec")
    groups = cluster.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        return problems + ["rayClusterSpec.workerGroupSpecs is missing"]
    names = [g.get("groupName") for g in groups]
    if len(set(names)) != len(names) or not all(names):
        problems.append(f"workerGroupSpecs need distinct groupNames, got {names}")
    for g in groups:
        where = f"workerGroupSpecs[{g.get('groupName')}]"
        problems += _unknown(g, WORKER_GROUP_FIELDS, where)
        problems += _start_params_problems(g, where)
        problems += _pod_problems(g.get("template"), where)
        lo, hi = g.get("minReplicas"), g.get("maxReplicas")
        n = g.get("replicas", lo)
        if not all(isinstance(v, int) for v in (lo, hi, n)) or not (0 <= lo <= n <= hi):
            problems.append(f"{where}: need 0 <= minReplicas <= replicas <= maxReplicas, got {lo}, {n}, {hi}")
    gpu_groups = [g for g in groups if _gpus(g.get("template")) > 0]
    if not gpu_groups:
        problems.append("no worker group with nvidia.com/gpu limits")
    if all(_gpus(g.get("template")) > 0 for g in groups):
        problems.append("no CPU-only worker group")
    for g in gpu_groups:
        for c in g["template"]["spec"]["containers"]:
            res = c.get("resources") or {}
            req = (res.get("requests") or {}).get("nvidia.com/gpu")
            if req is not None and str(req) != str(res["limits"]["nvidia.com/gpu"]):
                problems.append(f"{g['groupName']}: GPU requests must equal limits")
    return problems


def _start_params_problems(group: dict, where: str) -> list[str]:
    params = group.get("rayStartParams")
    if not isinstance(params, dict):
        return [f"{where}: rayStartParams is required (may be {{}})"]
    # The CRD types it map[string]string: an unquoted number or boolean is rejected by the API server.
    return [f"{where}.rayStartParams.{k}: value must be a string, got {v!r}" for k, v in params.items()
            if not isinstance(v, str)]


def test_rayjob_is_a_valid_ray_io_v1_rayjob():
    assert rayjob_problems(_rayjob()) == []


@pytest.mark.parametrize("breakage, expected", [
    (lambda d: d.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
    (lambda d: d["spec"].pop("entrypoint"), "entrypoint"),
    (lambda d: d["spec"].update(shutdownAfterJobFinishes=False), "shutdownAfterJobFinishes"),
    (lambda d: d["spec"].update(ttlSecondAfterFinished=60), "unknown field 'ttlSecondAfterFinished'"),
    (lambda d: d["spec"]["rayClusterSpec"].pop("headGroupSpec"), "headGroupSpec"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "must be a string"),
    (lambda d: [c["resources"]["limits"].pop("nvidia.com/gpu") for g in d["spec"]["rayClusterSpec"]["workerGroupSpecs"]
                for c in g["template"]["spec"]["containers"] if "nvidia.com/gpu" in c["resources"].get("limits", {})],
     "nvidia.com/gpu"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=100), "minReplicas"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
     ["resources"]["limits"].update(memory="100 GB"), "bad quantity"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["annotations"]
     .update({"gke-gcsfuse/volumes": True}), "must be a string"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"][-1]["csi"]
     .update(volumeAttribute={}), "unknown field 'volumeAttribute'"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
     ["volumeMounts"].append({"name": "gcs-fuse", "mountPath": "/x"}), "no volume of that name"),
])
def test_rayjob_checker_catches_broken_manifests(breakage, expected):
    assert_breakage_caught(rayjob_problems, _rayjob(), breakage, expected)


def test_rayjob_entrypoint_runs_lvd_curate_on_ray():
    argv = _entrypoint_argv()
    assert argv[:2] == ["lvd", "curate"]
    opts = dict(zip(argv[2::2], argv[3::2]))
    assert opts.get("--engine") == "ray"
    assert opts.get("--ray-address") == "auto"
    assert opts.get("--recipe") == "lvd142m"
    # Inputs are read through fsspec; the run directory is the bucket, through the mount of every pod
    # (test_infra_mounts.py) or as a gs:// URL.
    assert opts.get("--pool", "").startswith("gs://")
    assert opts.get("--seeds-config", "").startswith("gs://")
    assert opts.get("--out", "").startswith(("/mnt/gcs/", "gs://"))


def test_rayjob_entrypoint_parses_with_lvd_curate():
    _parses(_curate_parser("ray"), _entrypoint_argv()[2:])


def test_rayjob_images_and_ray_version_match_the_dockerfiles():
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == _dockerfile_args(INFRA / "docker" / "Dockerfile.cuda")["RAY_VERSION"]
    for g in cluster["workerGroupSpecs"]:
        for c in g["template"]["spec"]["containers"]:
            flavour = "cuda" if _gpus(g["template"]) else "cpu"
            assert f"lvd-{flavour}" in c["image"], (g["groupName"], c["image"])


# ---------------------------------------------------------------------------------------------
# `ray up` cluster config (GCP)

# Accelerator-optimized GCE machine types and the GPUs they come with.
GCE_BUNDLED_GPUS = {
    **{f"a2-highgpu-{n}g": n for n in (1, 2, 4, 8)}, "a2-megagpu-16g": 16,
    **{f"a2-ultragpu-{n}g": n for n in (1, 2, 4, 8)}, "a3-highgpu-8g": 8, "a3-megagpu-8g": 8,
    **{f"g2-standard-{n}": 1 for n in (4, 8, 12, 16, 32)}, "g2-standard-24": 2, "g2-standard-48": 4,
    "g2-standard-96": 8,
}


def _node_gpus(node_config: dict) -> int:
    attached = sum(int(a.get("acceleratorCount", 0)) for a in node_config.get("guestAccelerators", []))
    return attached or GCE_BUNDLED_GPUS.get(node_config.get("machineType", ""), 0)


def ray_cluster_problems(cfg: dict) -> list[str]:
    problems = []
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        if key not in cfg:
            problems.append(f"missing {key}")
    if problems:
        return problems
    provider = cfg["provider"]
    if provider.get("type") != "gcp":
        problems.append("provider.type must be gcp")
    for key in ("project_id", "region", "availability_zone"):
        if not provider.get(key):
            problems.append(f"provider.{key} is required for gcp")
    zone = str(provider.get("availability_zone", ""))
    if not zone.startswith(str(provider.get("region", "")) + "-"):
        problems.append(f"availability_zone {zone!r} is not in region {provider.get('region')!r}")
    types = cfg["available_node_types"]
    if cfg["head_node_type"] not in types:
        problems.append(f"head_node_type {cfg['head_node_type']!r} is not an available node type")
    extras = _extras()
    total_max = 0
    gpu_types = []
    for name, nt in types.items():
        node_config = nt.get("node_config") or {}
        if not node_config.get("machineType"):
            problems.append(f"{name}: node_config.machineType is required")
        declared = int((nt.get("resources") or {}).get("GPU", 0))
        actual = _node_gpus(node_config)
        if declared != actual:
            problems.append(f"{name}: resources.GPU={declared} but {node_config.get('machineType')} has {actual} GPUs")
        if name != cfg["head_node_type"]:
            lo, hi = nt.get("min_workers", 0), nt.get("max_workers", 0)
            if not 0 <= lo <= hi:
                problems.append(f"{name}: need 0 <= min_workers <= max_workers")
            total_max += hi
        commands = " ".join(nt.get("worker_setup_commands", cfg.get("setup_commands", [])))
        for extra in PACKAGE_EXTRAS.findall(commands):
            for e in extra.split(","):
                if e not in extras:
                    problems.append(f"{name}: setup installs extra [{e}] which setup.cfg does not define")
        if actual:
            gpu_types.append(name)
            if "[gpu]" not in commands:
                problems.append(f"{name}: a GPU node must install the package with [gpu]")
            if (node_config.get("scheduling") or {}).get("onHostMaintenance") != "TERMINATE":
                problems.append(f"{name}: GPU VMs need scheduling.onHostMaintenance: TERMINATE")
            docker = nt.get("docker") or {}
            if cfg.get("docker") and "--gpus all" not in " ".join(docker.get("worker_run_options", [])):
                problems.append(f"{name}: GPU containers need worker_run_options --gpus all")
        elif "[gpu]" in commands:
            problems.append(f"{name}: a CPU node must not install faiss-gpu ([gpu])")
    if not gpu_types:
        problems.append("no GPU worker node type")
    if total_max > cfg["max_workers"]:
        problems.append(f"node types allow {total_max} workers but max_workers is {cfg['max_workers']}")
    return problems


def test_ray_cluster_config_is_consistent():
    assert ray_cluster_problems(_ray_cluster()) == []


@pytest.mark.parametrize("breakage, expected", [
    (lambda c: c.pop("head_node_type"), "head_node_type"),
    (lambda c: c.update(head_node_type="nope"), "not an available node type"),
    (lambda c: c.update(max_workers=1), "max_workers"),
    (lambda c: c["available_node_types"]["worker_gpu"]["resources"].update(GPU=4), "resources.GPU=4"),
    (lambda c: c["available_node_types"]["worker_gpu"]["node_config"].pop("scheduling"), "onHostMaintenance"),
    (lambda c: c["available_node_types"]["worker_gpu"].update(worker_setup_commands=['pip install "$HOME/lvd[cpu]"']), "[gpu]"),
    (lambda c: c["available_node_types"]["worker_cpu"].update(worker_setup_commands=['pip install "$HOME/lvd[cuda]"']), "extra [cuda]"),
    (lambda c: c["provider"].update(availability_zone="europe-west4-a"), "availability_zone"),
])
def test_ray_cluster_checker_catches_broken_configs(breakage, expected):
    assert_breakage_caught(ray_cluster_problems, _ray_cluster(), breakage, expected)


def test_ray_cluster_config_passes_rays_own_validation():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_ray_cluster()))
    broken = _ray_cluster()
    broken["available_node_types"]["worker_cpu"]["max_worker"] = 3  # typo: Ray must refuse it
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))
