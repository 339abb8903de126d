"""Shared fixtures: one small demo world and one curated run per test session (they are slow to
build on 2 cores, and many tests only read them)."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The test object store's endpoint and credentials are in the environment from the start, before
# any worker process exists (forkserver children and Ray workers keep the environment they were
# started with), so every engine's workers reach it through fsspec (s3fs) like a real bucket.
S3_BUCKET = "lvd-test"
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
os.environ.update(S3_ENV)
# The same for Google Cloud Storage (gcsfs honours STORAGE_EMULATOR_HOST; `gcs_store`).
GCS_BUCKET = "lvd-test-gcs"
os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{_free_port()}"
# Local copies of remote arrays (curation/core/storage.py) go to a folder of this session, shared by
# every process of it, so a test can see what a run leaves behind there.
os.environ["LVD_CACHE_DIR"] = tempfile.mkdtemp(prefix="lvd-test-cache-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(os.environ["LVD_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curation.demo.world import build_world

    return build_world(tmp_path_factory.mktemp("world") / "small", "small", seed=0)


@pytest.fixture(scope="session")
def demo_run(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`lvd curate` on the small world (the whole pipeline as far as it exists)."""
    from pipelines.cli import main

    out = tmp_path_factory.mktemp("runs") / "demo"
    assert main(["curate", "--world", str(small_world), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def object_store():
    """An S3 object store on loopback (moto's server: real HTTP, the S3 protocol) with one bucket;
    returns a function giving a fresh `s3://` URL in it per call."""
    import itertools

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(S3_ENV["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]),
                                verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    counter = itertools.count()
    yield lambda name: f"s3://{S3_BUCKET}/{name}-{next(counter)}"
    server.stop()


@pytest.fixture(scope="session")
def gcs_store():
    """A Google Cloud Storage emulator on loopback (gcp-storage-emulator: the JSON API over HTTP,
    in memory) with one bucket, reached through gcsfs as a real bucket is; returns a function
    giving a fresh `gs://` URL in it per call."""
    import itertools

    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    logging.getLogger("gcsfs").setLevel(logging.ERROR)  # "could not determine bucket type": no credentials here
    server = create_server("127.0.0.1", int(os.environ["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1]), in_memory=True,
                           default_bucket=GCS_BUCKET)
    server.start()
    counter = itertools.count()
    yield lambda name: f"gs://{GCS_BUCKET}/{name}-{next(counter)}"
    server.stop()
