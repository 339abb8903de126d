"""infra/: every YAML / JSON file is there and parses."""
from __future__ import annotations

from infra_common import *  # noqa: F401,F403 - paths, helpers, pytest, yaml, ...


# ---------------------------------------------------------------------------------------------
# Every YAML / JSON file parses


def _data_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file())


def test_infra_has_the_expected_files():
    for path in (RAYJOB, RAY_CLUSTER, METADATA, LAUNCH, INFRA / "README.md",
                 INFRA / "docker" / "Dockerfile.cpu", INFRA / "docker" / "Dockerfile.cuda"):
        assert path.is_file(), f"missing {path.relative_to(REPO)}"


@pytest.mark.parametrize("path", _data_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_and_json_parse(path: Path):
    text = path.read_text()
    if path.suffix == ".json":
        docs = [json.loads(text)]
    else:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs and all(isinstance(d, dict) and d for d in docs), f"{path} holds no mapping"


# ---------------------------------------------------------------------------------------------
# The run directory is a path every worker sees, never a URL (pipelines/rundir.py refuses one)


def _out_values(text: str) -> list[str]:
    return re.findall(r"--out[= ]+(\S+)", text)


def _commands_outside_dataflow(readme: str) -> str:
    """The fenced code blocks of infra/README.md outside its "Google Dataflow" section (whose gs://
    --out is a dry run only)."""
    rest = re.sub(r"(?ms)^## Google Dataflow.*?(?=^## )", "", readme)
    return "\n".join(re.findall(r"(?ms)^```[a-z]*\n(.*?)^```", rest))


def test_no_ray_or_readme_example_writes_the_run_directory_to_a_url():
    readme = (INFRA / "README.md").read_text()
    assert "## Google Dataflow" in readme and "## What the tests check" in readme
    sources = {
        "infra/README.md (commands outside the Dataflow section)": _commands_outside_dataflow(readme),
        **{str(p.relative_to(REPO)): p.read_text() for p in sorted((INFRA / "ray").glob("*.yaml"))},
    }
    found = {name: _out_values(text) for name, text in sources.items()}
    assert sum(map(len, found.values())) >= 3, found  # README (VM + KubeRay), rayjob.yaml, cluster-gcp.yaml
    urls = {name: [v for v in values if "://" in v] for name, values in found.items()}
    assert not any(urls.values()), f"--out must be a mounted path, not a URL: {urls}"
    assert all(v.startswith("/mnt/gcs/") for values in found.values() for v in values), found


def test_readme_says_where_the_run_directory_lives_and_why_dataflow_cannot_run_yet():
    readme = (INFRA / "README.md").read_text()
    assert "### Where the run directory lives" in readme
    dataflow = re.search(r"(?ms)^## Google Dataflow.*?(?=^## )", readme).group(0)
    assert "Status: not runnable yet" in dataflow and "fsspec-backed `RunDir`" in dataflow
    assert "## Status" in (INFRA / "dataflow" / "README.md").read_text()
