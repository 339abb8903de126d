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
# The run directory is one location every worker reaches: a gs:// URL (curation/core/storage.py) or a
# path under the bucket's mount, never a node's own disk


def _out_values(text: str) -> list[str]:
    return re.findall(r"--out[= ]+(\S+)", text)


def _code_blocks(readme: str) -> str:
    """The fenced code blocks of a Markdown page."""
    return "\n".join(re.findall(r"(?ms)^```[a-z]*\n(.*?)^```", readme))


def test_every_example_run_directory_is_shared_by_all_workers():
    readme = (INFRA / "README.md").read_text()
    assert "## Google Dataflow" in readme and "## What the tests check" in readme
    sources = {
        "infra/README.md (commands)": _code_blocks(readme),
        "infra/dataflow/README.md (commands)": _code_blocks((INFRA / "dataflow" / "README.md").read_text()),
        **{str(p.relative_to(REPO)): p.read_text() for p in sorted((INFRA / "ray").glob("*.yaml"))},
    }
    found = {name: _out_values(text) for name, text in sources.items()}
    assert sum(map(len, found.values())) >= 5, found  # README (VM, KubeRay, Dataflow), dataflow README, 2 Ray configs
    unshared = {name: [v for v in values if not v.startswith(("/mnt/gcs/", "gs://"))] for name, values in found.items()}
    assert not any(unshared.values()), f"--out must be gs:// or under the /mnt/gcs mount: {unshared}"
    dataflow = re.search(r"(?ms)^## Google Dataflow.*?(?=^## )", readme).group(0)
    assert all(v.startswith("gs://") for v in _out_values(_code_blocks(dataflow)))  # Dataflow workers mount nothing


STALE_CLAIMS = ("not runnable yet", "not supported yet", "fsspec-backed `rundir`", "refuses a url",
                "posix-only", "the only mode that works")


@pytest.mark.parametrize("path", [INFRA / "README.md", INFRA / "dataflow" / "README.md", METADATA, LAUNCH,
                                  INFRA / "dataflow" / "main.py", RAYJOB, RAY_CLUSTER, REPO / "README.md",
                                  REPO / "ARCHITECTURE.md"], ids=lambda p: str(p.relative_to(REPO)))
def test_docs_do_not_say_the_run_directory_cannot_be_a_url(path: Path):
    text = " ".join(path.read_text().lower().split())  # claims wrapped over lines too
    assert not [c for c in STALE_CLAIMS if c in text]


def test_readme_says_where_the_run_directory_lives_and_how_dataflow_runs():
    readme = (INFRA / "README.md").read_text()
    where = re.search(r"(?ms)^### Where the run directory lives.*?(?=^## )", readme).group(0)
    assert "`gs://bucket/run`" in where and "`s3://bucket/run`" in where and "curation/core/storage.py" in where
    dataflow = re.search(r"(?ms)^## Google Dataflow.*?(?=^## )", readme).group(0)
    assert "not yet run on Dataflow itself" in dataflow  # the honest caveat stays until a job has run
    status = re.search(r"(?ms)^## Status.*?(?=^## )", (INFRA / "dataflow" / "README.md").read_text()).group(0)
    assert "not yet run on Dataflow itself" in status and "`gs://`" in status
