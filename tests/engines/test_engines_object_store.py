"""A run directory on an object store (what Dataflow needs: its workers mount nothing).

The store is moto's S3 server on loopback (`object_store` in tests/conftest.py): real HTTP, the S3
protocol, reached through fsspec (s3fs) exactly as a `gs://` run directory is through gcsfs. Every
engine writes the same bytes there as into a local run directory, and resumes there."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from engine_fixtures import VOLATILE, curate, data_files

from curation.core import storage
from curation.core.errors import UserError
from curation.core.rundir import RunDir, open_atomic, write_json, write_table


def _fs():
    import s3fs

    return s3fs.S3FileSystem(use_listings_cache=False)


def remote_files(url: str) -> dict[str, bytes]:
    """`data_files` of a run directory on the object store."""
    fs, root = _fs(), url.split("://", 1)[1]
    out = {}
    for key in sorted(fs.find(root)):
        rel = key[len(root) + 1:]
        if not rel.startswith(("_stages/", "world/")) and rel.rsplit("/", 1)[-1] not in VOLATILE:
            out[rel] = fs.cat_file(key)
    return out


@pytest.fixture(scope="module")
def remote_runs(engine_runs: dict[str, Path], tiny: Path, object_store) -> dict[str, str]:
    return {engine: curate(tiny, object_store(f"run-{engine}"), engine) for engine in ("local", "ray", "beam")}


@pytest.mark.parametrize("engine", ["local", "ray", "beam"])
def test_run_on_an_object_store_writes_the_same_bytes(remote_runs: dict[str, str], engine_runs: dict[str, Path],
                                                      engine: str) -> None:
    local = data_files(engine_runs["local"])
    remote = remote_files(remote_runs[engine])
    assert sorted(remote) == sorted(local)
    assert [name for name in local if remote[name] != local[name]] == []
    for name in ("output/_index.json", "dedup/components.parquet", "clusters/centroids.npy"):
        assert name in remote, name
    # The scratch of the global stages (k-NN vectors, hash sorts, query files, output spill) is gone.
    assert not [k for k in remote if k.startswith(("_work/knn", "_work/hash_edges", "output/_spill"))
                or "/_queries-" in k]
    # Nor are the local copies of those scratch arrays, made by the driver and the workers of this host
    # (the ONNX exports of the embedder, `onnx/`, are a cache kept across runs on purpose).
    assert sorted(p.name for p in storage.cache_dir().iterdir() if p.name != "onnx") == []
    manifest = json.loads(_fs().cat_file(remote_runs[engine].split("://", 1)[1] + "/manifest.json"))
    assert {info["engine"] for info in manifest["stages"].values()} == {engine}


def test_resume_on_an_object_store(remote_runs: dict[str, str], tiny: Path) -> None:
    """Objects of a killed run deleted: a rerun redoes only what is missing, to the same bytes."""
    url = remote_runs["local"]
    before = remote_files(url)
    fs, root = _fs(), url.split("://", 1)[1]
    for rel in ("_stages/embed.json", "embeddings/part-00001.parquet", "_stages/components.json",
                "dedup/components.parquet"):
        fs.rm(f"{root}/{rel}")
    curate(tiny, url, "local")
    assert remote_files(url) == before
    stages = json.loads(fs.cat_file(f"{root}/manifest.json"))["stages"]
    assert not stages["embed"]["skipped"] and not stages["components"]["skipped"]
    assert stages["ingest"]["skipped"] and stages["hash"]["skipped"]


def test_demo_world_must_be_given_for_a_url_run(object_store) -> None:
    from pipelines.cli import main

    assert main(["curate", "--out", object_store("no-world"), "--no-progress"]) == 2


def test_unknown_url_scheme_is_a_user_error() -> None:
    with pytest.raises(UserError, match="install the filesystem"):
        RunDir("nosuchfs://bucket/run")


def test_run_on_google_cloud_storage_writes_the_same_bytes(engine_runs: dict[str, Path], tiny: Path, gcs_store) -> None:
    """gs://, what a Dataflow run uses (gcsfs against a GCS emulator on loopback), local engine."""
    import gcsfs

    url = curate(tiny, gcs_store("run"), "local")
    fs, root = gcsfs.GCSFileSystem(), url.split("://", 1)[1]
    remote = {key[len(root) + 1:]: fs.cat_file(key) for key in sorted(fs.find(root))}
    remote = {k: v for k, v in remote.items()
              if not k.startswith(("_stages/", "world/")) and k.rsplit("/", 1)[-1] not in VOLATILE}
    assert remote == data_files(engine_runs["local"])


@pytest.fixture(params=["local", "s3", "gs"])
def folder(request, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("object_store" if request.param == "s3" else "gcs_store")("storage")


def test_storage_round_trip(folder: str) -> None:
    """Parquet, JSON, arrays and listings behave the same on a local folder and a bucket."""
    run = RunDir(folder)
    t = pa.table({"image_id": ["b", "a"], "x": [1, 2]})
    write_table(t, run.path("pool", "part-00001.parquet"))
    write_table(t.slice(0, 1), run.path("pool", "part-00000.parquet"))
    write_json({"k": 1}, run.path("_stages", "s.json"))
    assert [p.name for p in run.pool_files()] == ["part-00000.parquet", "part-00001.parquet"]
    assert storage.read_parquet(run.path("pool", "part-00001.parquet"), ["x"]).column("x").to_pylist() == [1, 2]
    assert storage.parquet_rows(run.path("pool", "part-00001.parquet")) == 2
    assert run.stage_info("s") == {"k": 1} and run.stage_info("t") is None
    # Atomic writes leave no temporary names behind, and a failed write leaves nothing.
    with pytest.raises(RuntimeError):
        with open_atomic(run.path("pool", "part-00002.parquet")) as f:
            f.write(b"PAR1 half a file")
            raise RuntimeError("killed mid-write")
    assert [p.name for p in run.pool_files()] == ["part-00000.parquet", "part-00001.parquet"]
    assert [p.name for p in storage.files(run.root, "**/*") if ".tmp-" in p.name] == []

    big = storage.create_array(run.path("_work", "v.npy"), np.float16, (5, 3))
    big[:] = np.arange(15, dtype=np.float16).reshape(5, 3)
    mapped = storage.publish_array(run.path("_work", "v.npy"), big)
    assert isinstance(mapped, np.memmap) and mapped.sum() == 105
    again = storage.load_array(str(run.path("_work", "v.npy")))
    assert np.array_equal(again, mapped)
    from pipelines.engines.distributed import memmap_file

    assert memmap_file(again) == str(run.path("_work", "v.npy"))  # workers are told the run file, not a copy

    # Shard workers read their own rows only (a remote file is not copied whole).
    rows_path = run.path("_work", "rows.npy")
    storage.save_array(rows_path, np.arange(40, dtype=np.float32).reshape(10, 4))
    cached = sorted(storage.cache_dir().iterdir())
    assert np.array_equal(storage.load_rows(str(rows_path), 3, 7), np.arange(12, 28, dtype=np.float32).reshape(4, 4))
    assert storage.load_rows(str(rows_path), 8, 99).shape == (2, 4) and storage.load_rows(rows_path, 5, 5).shape == (0, 4)
    several = storage.load_ranges(str(rows_path), [(0, 1), (5, 5), (9, 12), (2, 4)])  # one open, each range alone
    assert [r.shape for r in several] == [(1, 4), (0, 4), (1, 4), (2, 4)]
    assert np.array_equal(several[3], np.arange(8, 16, dtype=np.float32).reshape(2, 4)) and several[2][0, 0] == 36
    assert sorted(storage.cache_dir().iterdir()) == cached

    storage.save_array(run.path("_work", "v.npy"), np.zeros((2, 2)))  # a rewrite is read again
    assert storage.load_array(run.path("_work", "v.npy")).shape == (2, 2)
    run.clear("_work")
    assert not storage.as_path(run.path("_work", "v.npy")).exists()
    run.invalidate("s")
    assert run.stage_info("s") is None


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_hosts_prune_their_copies_of_gone_objects(object_store, engine: str, request: pytest.FixtureRequest) -> None:
    """A worker host keeps copies of a stage's scratch arrays after the driver removed them (only
    the driver's host drops them at once); `prune_caches` after each stage deletes the copies whose
    object is gone or was rewritten, on every host, and keeps the current ones."""
    from pipelines.engines import make_engine, prune_caches

    if engine == "ray":
        request.getfixturevalue("ray_cluster")
    eng = make_engine(engine, 1, progress=False)
    root = object_store("prune")
    gone, rewritten, kept = (f"{root}/{name}.npy" for name in ("gone", "rewritten", "kept"))
    for path in (gone, rewritten, kept):
        storage.save_array(path, np.arange(4))
    copies = {path: Path(storage.local_copy(path)) for path in (gone, rewritten, kept)}
    assert all(c.exists() and c.with_suffix(".origin").read_text() == p for p, c in copies.items())
    try:
        assert prune_caches(eng) == 0
        _fs().rm(gone.split("://", 1)[1])  # removed behind the cache's back, as by another host
        storage.save_array(rewritten, np.arange(5))  # a new version of the object
        assert prune_caches(eng) == 2
        assert not copies[gone].exists() and not copies[rewritten].exists() and copies[kept].exists()
        assert not copies[gone].with_suffix(".origin").exists()
        assert np.array_equal(storage.load_array(rewritten), np.arange(5))
        assert prune_caches(eng) == 0
    finally:
        eng.close()
        storage.remove(root)
