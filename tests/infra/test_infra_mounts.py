"""The run directory on the Ray clusters: the KubeRay RayJob mounts the bucket with the GCS FUSE CSI
driver on every pod, the `ray up` config mounts it with gcsfuse on every node, and `--out` lives
under that mount or is the bucket as a gs:// URL (`curation.core.rundir.run_path`, `curation/core/storage.py`),
never a path or URL local to one pod (file://, memory://)."""
from __future__ import annotations

import posixpath

from infra_common import *  # noqa: F401,F403 - paths, helpers, pytest, yaml, ...

GCSFUSE_DRIVER = "gcsfuse.csi.storage.gke.io"
GCSFUSE_ANNOTATION = "gke-gcsfuse/volumes"
OBJECT_STORES = ("gs://", "s3://")  # run-directory URLs every pod reaches (gcsfs, s3fs in the images)


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    cluster = doc["spec"]["rayClusterSpec"]
    return [("headGroupSpec", cluster["headGroupSpec"].get("template") or {})] + [
        (f"workerGroupSpecs[{g.get('groupName')}]", g.get("template") or {}) for g in cluster["workerGroupSpecs"]]


def _gcsfuse_mounts(template: dict) -> list[tuple[str, dict]]:
    """(mountPath, csi volume source) of every gcsfuse CSI volume the Ray container mounts.

    KubeRay runs Ray in the pod's first container."""
    spec = template.get("spec") or {}
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    ray_container = (spec.get("containers") or [{}])[0]
    mounts = []
    for m in ray_container.get("volumeMounts") or []:
        csi = (volumes.get(m.get("name")) or {}).get("csi") or {}
        if csi.get("driver") == GCSFUSE_DRIVER:
            mounts.append((str(m.get("mountPath")), csi))
    return mounts


def _under(path: str, root: str) -> bool:
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _option(argv: list[str], flag: str) -> str | None:
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def run_dir_mount_problems(doc: dict) -> list[str]:
    problems = []
    volumes = {}
    for where, template in _pod_templates(doc):
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        if annotations.get(GCSFUSE_ANNOTATION) != "true":
            problems.append(f'{where}: the pod template needs the annotation {GCSFUSE_ANNOTATION}: "true" '
                            "(without it GKE injects no gcsfuse sidecar and the volume never mounts)")
        mounts = _gcsfuse_mounts(template)
        if len(mounts) != 1:
            problems.append(f"{where}: the Ray container must mount exactly one {GCSFUSE_DRIVER} volume, "
                            f"found {len(mounts)}")
            continue
        path, csi = mounts[0]
        if not (csi.get("volumeAttributes") or {}).get("bucketName"):
            problems.append(f"{where}: the gcsfuse volume needs volumeAttributes.bucketName")
        if csi.get("readOnly"):
            problems.append(f"{where}: the run directory's volume must be writable")
        volumes[where] = (path, csi)
    if len({json.dumps(v, sort_keys=True) for v in volumes.values()}) > 1:
        problems.append("the head and every worker group must mount the same gcsfuse volume (bucket, options) "
                        f"at the same path, got {volumes}")
    out = _option(_entrypoint_argv(doc), "--out")
    if out is None:
        problems.append("the entrypoint has no --out")
    elif "://" in out:
        if not out.startswith(OBJECT_STORES):
            problems.append(f"entrypoint --out {out!r} is a URL local to each pod: the run directory must be "
                            f"an object store ({', '.join(OBJECT_STORES)}) or a path under the gcsfuse mount")
    elif not any(_under(out, path) for path, _ in volumes.values()):
        problems.append(f"entrypoint --out {out!r} is not under the gcsfuse mount "
                        f"({sorted({p for p, _ in volumes.values()})}): workers would write to their own disks")
    return problems


def test_rayjob_run_directory_is_on_the_gcsfuse_mount_of_every_pod():
    doc = _rayjob()
    assert run_dir_mount_problems(doc) == []
    templates = _pod_templates(doc)
    assert len(templates) == 1 + len(doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]) >= 3
    (path, csi), = {(p, json.dumps(c, sort_keys=True)) for _, t in templates for p, c in _gcsfuse_mounts(t)}
    assert path == "/mnt/gcs"
    assert _option(_entrypoint_argv(doc), "--out") == "/mnt/gcs/lvd/lvd142m"
    assert "implicit-dirs" in json.loads(csi)["volumeAttributes"]["mountOptions"].split(",")
    for where, template in templates:  # /dev/shm stays next to the mount
        mounts = {m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert {"/dev/shm", "/mnt/gcs"} <= mounts, where


def test_rayjob_out_is_accepted_as_a_run_directory():
    from curation.core.errors import UserError
    from curation.core.rundir import run_path

    out = _option(_entrypoint_argv(), "--out")
    assert str(run_path(out)) == out
    # The bucket as a URL is a run directory too, once its fsspec filesystem is installed (the images
    # install gcsfs and s3fs); without it, a user error that names the package.
    for url, package in (("gs://my-bucket/lvd/lvd142m", "gcsfs"), ("s3://my-bucket/lvd/lvd142m", "s3fs")):
        if importlib.util.find_spec(package):
            assert str(run_path(url)) == url
        else:
            with pytest.raises(UserError, match=package):
                run_path(url)


def test_rayjob_may_write_the_run_directory_to_the_bucket_url():
    doc = _rayjob()
    _set_out(doc, "gs://my-bucket/lvd/lvd142m")
    assert run_dir_mount_problems(doc) == []


def _set_out(doc: dict, value: str) -> None:
    doc["spec"]["entrypoint"] = re.sub(r"--out \S+", f"--out {value}", doc["spec"]["entrypoint"])


def _template(doc: dict, group: str) -> dict:
    cluster = doc["spec"]["rayClusterSpec"]
    if group == "head":
        return cluster["headGroupSpec"]["template"]
    return next(g["template"] for g in cluster["workerGroupSpecs"] if g["groupName"] == group)


def _gcs_volume(doc: dict, group: str) -> dict:
    return next(v for v in _template(doc, group)["spec"]["volumes"] if "csi" in v)


@pytest.mark.parametrize("breakage, expected", [
    (lambda d: _set_out(d, "file:///data/lvd142m"), "is a URL local to each pod"),
    (lambda d: _set_out(d, "memory://lvd142m"), "is a URL local to each pod"),
    (lambda d: _set_out(d, "/data/lvd142m"), "not under the gcsfuse mount"),
    (lambda d: _set_out(d, "/mnt/gcsx/lvd142m"), "not under the gcsfuse mount"),
    (lambda d: d["spec"].update(entrypoint="lvd curate --engine ray --pool gs://b/p"), "no --out"),
    (lambda d: _template(d, "gpu")["metadata"]["annotations"].pop("gke-gcsfuse/volumes"), "workerGroupSpecs[gpu]: the pod template needs"),
    (lambda d: _template(d, "head")["metadata"]["annotations"].update({"gke-gcsfuse/volumes": True}), "headGroupSpec: the pod template needs"),
    (lambda d: _template(d, "cpu")["spec"]["containers"][0]["volumeMounts"][-1].update(mountPath="/mnt/bucket"), "same path"),
    (lambda d: _gcs_volume(d, "gpu")["csi"]["volumeAttributes"].update(bucketName="other-bucket"), "same gcsfuse volume"),
    (lambda d: _gcs_volume(d, "head")["csi"].update(driver="gcsfuse.csi.storage.gke.com"), "headGroupSpec: the Ray container must mount exactly one"),
    (lambda d: _template(d, "cpu")["spec"]["containers"][0]["volumeMounts"].pop(), "workerGroupSpecs[cpu]: the Ray container must mount exactly one"),
    (lambda d: _gcs_volume(d, "gpu")["csi"]["volumeAttributes"].pop("bucketName"), "bucketName"),
    (lambda d: _gcs_volume(d, "cpu")["csi"].update(readOnly=True), "writable"),
])
def test_run_dir_mount_checker_catches_broken_manifests(breakage, expected):
    assert_breakage_caught(run_dir_mount_problems, _rayjob(), breakage, expected)


# The run directory on the VM cluster: every node mounts the bucket with gcsfuse on the host
# (initialization_commands run there, before the Ray container starts) and the container sees it
# through a bind mount at the same path.
SHELL_OPERATORS = {"||", "&&", ";", "|", "&", "(", ")", "{", "}", ">", "<", ">>"}


def _gcsfuse_invocations(commands: list[str]) -> list[list[str]]:
    """The argument lists of the `gcsfuse ...` commands (not `command -v gcsfuse`) in shell commands."""
    found = []
    for command in commands:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            if token == "gcsfuse" and (i == 0 or tokens[i - 1] in SHELL_OPERATORS | {"sudo"}):
                args = []
                for t in tokens[i + 1:]:
                    if t in SHELL_OPERATORS:
                        break
                    args.append(t)
                found.append(args)
    return found


def _fuse_options(args: list[str]) -> set[str]:
    return {o for i, a in enumerate(args[:-1]) if a == "-o" for o in args[i + 1].split(",")}


def ray_cluster_mount_problems(cfg: dict) -> list[str]:
    """Problems of the bucket mount that holds the run directory (--out), on every node type."""
    problems = []
    docker = cfg.get("docker") or {}
    mounts = {}
    for name, nt in cfg.get("available_node_types", {}).items():
        commands = nt.get("initialization_commands", cfg.get("initialization_commands") or [])
        calls = _gcsfuse_invocations(commands)
        if len(calls) != 1 or len(calls[0]) < 2:
            problems.append(f"{name}: initialization_commands must mount the bucket with exactly one "
                            f"`gcsfuse ... BUCKET MOUNT_POINT`, found {calls}")
            continue
        args = calls[0]
        bucket, mount = args[-2], args[-1]
        mounts[name] = (bucket, mount)
        if not mount.startswith("/"):
            problems.append(f"{name}: gcsfuse mount point {mount!r} must be an absolute path")
        if docker and "allow_other" not in _fuse_options(args):
            problems.append(f"{name}: gcsfuse needs -o allow_other, or the container cannot use the host's mount")
        if docker:
            head = name == cfg.get("head_node_type")
            specific = ((docker.get("head_run_options") or []) if head else
                        (nt.get("docker") or {}).get("worker_run_options", docker.get("worker_run_options") or []))
            options = " ".join([*(docker.get("run_options") or []), *specific]).split()
            binds = {options[i + 1] for i, o in enumerate(options[:-1]) if o in ("-v", "--volume")}
            binds |= {o.split("=", 1)[1] for o in options if o.startswith("--volume=")}
            if not any(b.split(":")[:2] == [mount, mount] for b in binds):
                problems.append(f"{name}: docker run options need -v {mount}:{mount} (the container must see "
                                f"the bucket at the same path), got {sorted(binds)}")
    if len(set(mounts.values())) > 1:
        problems.append(f"every node must mount the same bucket at the same path, got {mounts}")
    return problems


def _example_outs(text: str) -> list[str]:
    """The `--out` values of the commands in the file's comments."""
    return re.findall(r"--out[= ](\S+)", "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#")))


def test_ray_cluster_mounts_the_bucket_for_the_run_directory_on_every_node():
    cfg = _ray_cluster()
    assert ray_cluster_mount_problems(cfg) == []
    (bucket, mount), = {tuple(_gcsfuse_invocations(
        nt.get("initialization_commands", cfg["initialization_commands"]))[0][-2:])
        for nt in cfg["available_node_types"].values()}
    assert mount == "/mnt/gcs" and bucket == "MY_BUCKET"
    assert "--implicit-dirs" in _gcsfuse_invocations(cfg["initialization_commands"])[0]
    outs = [out.strip("`") for out in _example_outs(RAY_CLUSTER.read_text())]
    assert outs[0] == "/mnt/gcs/lvd142m"  # the example `ray exec ... lvd curate` at the top
    # Elsewhere the comments may name the bucket itself as the run directory (gs://, no mount needed).
    assert all(_under(out, mount) or out.startswith(f"gs://{bucket}/") for out in outs), outs


@pytest.mark.parametrize("breakage, expected", [
    (lambda c: c.update(initialization_commands=[]), "exactly one"),
    (lambda c: c["available_node_types"]["worker_gpu"].update(initialization_commands=["echo"]), "worker_gpu: initialization_commands"),
    (lambda c: c["available_node_types"]["worker_cpu"].update(
        initialization_commands=["sudo gcsfuse -o allow_other OTHER_BUCKET /mnt/gcs"]), "same bucket"),
    (lambda c: c.update(initialization_commands=[x.replace(" -o allow_other", "") for x in c["initialization_commands"]]),
     "allow_other"),
    (lambda c: c["docker"].update(run_options=[o for o in c["docker"]["run_options"] if "/mnt/gcs" not in o]), "-v /mnt/gcs:/mnt/gcs"),
    (lambda c: c["docker"].update(run_options=[o.replace(":/mnt/gcs", ":/gcs") for o in c["docker"]["run_options"]]), "-v /mnt/gcs:/mnt/gcs"),
    (lambda c: c.update(initialization_commands=[x.replace(" /mnt/gcs", " /mnt/bucket") for x in c["initialization_commands"]]),
     "-v /mnt/bucket:/mnt/bucket"),
])
def test_ray_cluster_mount_checker_catches_broken_configs(breakage, expected):
    assert_breakage_caught(ray_cluster_mount_problems, _ray_cluster(), breakage, expected)
