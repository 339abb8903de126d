"""The run directory on an object store against a local one: `lvd curate` of the small demo world,
same engine, config and seed, once with `--out` on the local disk and once with `--out s3://...`.

    python -m bench.bench_object_store --out bench/scratch/object_store.json [--engine local]

The store is moto's S3 server on loopback (real HTTP and the S3 protocol through s3fs, as gcsfs
talks to GCS), so the ratio measures what the object-store path costs the pipeline itself:
request round trips, uploads instead of renames, arrays copied to the local cache before they are
memory-mapped. A real bucket adds network latency and bandwidth on top. The two runs must give the
same bytes (checked here).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import SCRATCH, parser, python, run_measured, world, write_result

BUCKET = "lvd-bench"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _curate(out: str, world_dir: Path, engine: str, env: dict[str, str]) -> dict[str, Any]:
    cmd = [python(), "-m", "pipelines", "curate", "--recipe", "demo", "--world", str(world_dir), "--out", out,
           "--engine", engine, "--no-progress"]
    start = time.perf_counter()
    res = run_measured(cmd, env=env)
    return {"wall_seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": res["peak_rss_mib"]}


def main() -> None:
    p = parser("object_store", __doc__)
    p.add_argument("--engine", default="local")
    args = p.parse_args()

    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "LVD_CACHE_DIR": str(SCRATCH / "object-store-cache")}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        world_dir = world("small")
        local = SCRATCH / "object-store-local"
        shutil.rmtree(local, ignore_errors=True)
        shutil.rmtree(env["LVD_CACHE_DIR"], ignore_errors=True)
        runs = {"local_path": _curate(str(local), world_dir, args.engine, env),
                "s3_url": _curate(f"s3://{BUCKET}/run", world_dir, args.engine, env)}
        fetched = SCRATCH / "object-store-fetched"
        shutil.rmtree(fetched, ignore_errors=True)
        s3fs.S3FileSystem().get(f"{BUCKET}/run", str(fetched), recursive=True)
        stages = {}
        for name, path in (("local_path", local), ("s3_url", fetched)):
            manifest = json.loads((path / "manifest.json").read_text())
            stages[name] = {s: info["seconds"] for s, info in manifest["stages"].items()}
        a, b = _files(local), _files(fetched)
        volatile = ("manifest.json", "report.html")
        same = sorted(k for k in a if not k.startswith("_stages/") and k not in volatile) == \
            sorted(k for k in b if not k.startswith("_stages/") and k not in volatile) and \
            all(a[k] == b[k] for k in a if not k.startswith("_stages/") and k not in volatile)
        cache_files = list(Path(env["LVD_CACHE_DIR"]).glob("*")) if Path(env["LVD_CACHE_DIR"]).exists() else []
    finally:
        server.stop()
    stage_ratio = {s: round(stages["s3_url"][s] / stages["local_path"][s], 2)
                   for s in stages["local_path"] if stages["local_path"][s] > 0.05 and s in stages["s3_url"]}
    write_result(args.out, {
        "engine": args.engine, "world": "small", "runs": runs, "stage_seconds": stages,
        "wall_ratio_s3_over_local": round(runs["s3_url"]["wall_seconds"] / runs["local_path"]["wall_seconds"], 2),
        "stage_ratio_s3_over_local": stage_ratio,
        "run_files": len(a), "run_bytes": sum(len(v) for v in a.values()),
        "identical_outputs": same, "driver_cache_files_left": len(cache_files),
    })


if __name__ == "__main__":
    main()
