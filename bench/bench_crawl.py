"""Crawl throughput: `lvd fetch` against img2dataset, side by side on one loopback server (DESIGN §5).

Both tools get the same URL list (>= 10k URLs) from the same server (its own process), the same
number of worker processes and, in `full` mode, the same resize settings: longest side <= 512,
never upscaled, JPEG quality 90 (4:2:0). Downscaling: ours is the decode stage's own
(`curation.sources.images`: JPEG DCT-domain reduction, then bicubic / 2x-supersampled bicubic / area by
factor); img2dataset's is area averaging (its default and its cheapest anti-aliased filter, so the
comparison does not flatter us; it decodes every image at full size). Modes:
- full: download + decode + resize + re-encode into Parquet (`lvd fetch` -> RUN/pool);
- download: the downloaders alone, bytes into Parquet (img2dataset: resize_mode=no, skip_reencode).
Per run: images/s, images/s per core (wall rate / worker processes, capped at the machine's
cores), images per CPU second of the tool's whole process tree (sampled from /proc: the measure
that stays meaningful when other jobs share the machine), success ratio. Runs alternate (ours,
theirs, ours, ...) so that outside load hits both alike; ratios compare the best run of each.

img2dataset lives in its own venv (pandas<3, albumentations<2, opencv<5), made by `--setup`:
    python3.11 -m venv bench/.venv-img2dataset
    bench/.venv-img2dataset/bin/pip install img2dataset "pandas<3" "albumentations<2" "opencv-python-headless<5"

    python bench/bench_crawl.py --out bench/scratch/crawl.json [--n 10000] [--procs 2] [--repeats 2]

Safety (issue 17, `--modes safety`): the first `--safety-n` URLs fetched with the NSFW filter and
face blurring off, on, and on through the reference (pre-issue-17) path (`safety.reference=true`),
alternating in one run: images/s and images per CPU second of each, the ratios on / reference
(target >= 4) and on / off, the core-ms per image the models add (the rate `lvd plan` scales), and
each model's CPU ms per image on both paths (bench/safety_models.py).
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
I2D_VENV = ROOT / "bench" / ".venv-img2dataset"
MAX_SIDE, QUALITY = 512, 90


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs of web sizes (longest side 320-1280): crops of scikit-image's photos."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    photos = [np.asarray(getattr(data, n)())[..., :3] for n in ("astronaut", "coffee", "chelsea", "rocket")]
    for i, path in enumerate(paths):
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        side = int(rng.uniform(320, 1280))
        scale = side / max(ch, cw)
        img = Image.fromarray(src[y : y + ch, x : x + cw]).resize((max(64, int(cw * scale)), max(64, int(ch * scale))))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(75, 95)))
        path.write_bytes(buf.getvalue())
    return paths


def serve(folder: str, port_file: str) -> None:
    """The loopback image server (run as its own process): /img/<k>.jpg -> image k mod count."""
    import asyncio
    import socket

    from aiohttp import web

    images = [Path(p).read_bytes() for p in sorted(glob.glob(f"{folder}/*.jpg"), key=lambda p: int(Path(p).stem))]

    async def image(request: web.Request) -> web.Response:
        k = int(request.match_info["k"])
        return web.Response(body=images[k % len(images)], content_type="image/jpeg")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/img/{k:\\d+}.jpg", image)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock, backlog=1024).start()
        Path(port_file).write_text(str(sock.getsockname()[1]))
        await asyncio.Event().wait()

    asyncio.run(main())


_TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int, seen: dict[int, float]) -> None:
    """Record the CPU seconds (user + system) of `root` and every descendant into `seen`.

    rusage cannot be used: multiprocessing's forkserver workers are not children of the tool's
    process, so their CPU never reaches it. Sampling /proc every 0.2 s loses at most the last
    0.2 s of each short-lived process; the tools' workers live for the whole run.
    """
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in stats:
            seen[pid] = max(seen.get(pid, 0.0), stats[pid])
        stack.extend(children.get(pid, []))


def timed(cmd: list[str], env: dict | None = None, log: Path | None = None) -> tuple[float, float, int]:
    """Run a command to completion: (wall seconds, CPU seconds of its whole process tree, exit code)."""
    seen: dict[int, float] = {}
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            _tree_cpu(proc.pid, seen)
            time.sleep(0.2)
    return time.perf_counter() - t0, sum(seen.values()), proc.returncode


def download_only(urls: str, out: str, concurrency: int) -> None:
    """Our downloader alone (run as its own process): bytes to Parquet, no decode."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.config import CrawlConfig
    from curation.crawl.fetch import fetch_stream

    cfg = CrawlConfig(allow_private=True, concurrency=concurrency, max_per_host=concurrency, retries=0, total_timeout=30)
    Path(out).mkdir(parents=True, exist_ok=True)
    refs = ((line.strip(), {}) for line in open(urls) if line.strip())
    rows: list[tuple[str, bytes]] = []
    part = 0
    for result, _ in fetch_stream(refs, cfg):
        if result.ok:
            rows.append((result.url, result.data))
        if len(rows) == 2500:
            pq.write_table(pa.table({"url": [r[0] for r in rows], "image": [r[1] for r in rows]}), f"{out}/part-{part:05d}.parquet")
            rows, part = [], part + 1
    if rows:
        pq.write_table(pa.table({"url": [r[0] for r in rows], "image": [r[1] for r in rows]}), f"{out}/part-{part:05d}.parquet")


def _parquet_rows(pattern: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in glob.glob(pattern))


#: `--modes safety`: the same fetch with the safety models off, on (batched), on (reference path).
SAFETY_VARIANTS = {
    "off": ["safety.nsfw=false", "safety.blur_faces=false"],
    "on": ["safety.nsfw=true", "safety.blur_faces=true"],
    "reference": ["safety.nsfw=true", "safety.blur_faces=true", "safety.reference=true"],
}
#: Issue 17's targets for the safety models: >= 4x the reference path's rate, >= 260 images/s on 2 cores.
SAFETY_TARGET_RATIO, SAFETY_TARGET_IMAGES_PER_S = 4.0, 260.0
SAFETY_SHARD_ROWS = 200


def run_ours(urls: Path, out: Path, procs: int, concurrency: int, mode: str, safety: str = "off",
             shard_rows: int = 0) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if mode == "download":
        cmd = [sys.executable, __file__, "--download-only", str(urls), str(out), "--concurrency", str(concurrency)]
        wall, cpu, rc = timed(cmd, env=env, log=out.with_suffix(".log"))
        return {"wall_s": wall, "cpu_s": cpu, "rc": rc, "images": _parquet_rows(f"{out}/part-*.parquet")}
    cmd = [
        sys.executable, "-m", "pipelines", "fetch", str(urls), "--out", str(out), "--allow-private", "--no-progress",
        "--concurrency", str(concurrency), "--max-per-host", str(concurrency), "--retries", "0", "--timeout", "30",
        "--set", f"workers={procs}", "--set", f"decode.max_side={MAX_SIDE}", "--set", f"decode.quality={QUALITY}",
        "--set", "decode.format=JPEG", "--set", "decode.min_side=1", "--set", "decode.max_aspect=100",
        # img2dataset has no NSFW filter or face blurring: compare like with like (they are on by
        # default for crawled data; `--modes safety` measures them).
        *[arg for kv in SAFETY_VARIANTS[safety] for arg in ("--set", kv)],
        *(["--set", f"shard_rows={shard_rows}"] if shard_rows else []),
    ]
    wall, cpu, rc = timed(cmd, env=env, log=out.with_suffix(".log"))
    return {"wall_s": wall, "cpu_s": cpu, "rc": rc, "images": _parquet_rows(f"{out}/pool/part-*.parquet")}


def run_img2dataset(urls: Path, out: Path, procs: int, threads: int, mode: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    if mode == "download":  # img2dataset's own "no decode" path: resize_mode=no + skip_reencode
        resize = ["--resize_mode", "no", "--skip_reencode", "True"]
    else:  # our decode stage downscales by area averaging (curation/sources/images.py): the same filter here
        resize = ["--image_size", str(MAX_SIDE), "--resize_mode", "keep_ratio_largest", "--resize_only_if_bigger", "True",
                  "--downscale_interpolation", "area"]
    cmd = [
        str(I2D_VENV / "bin" / "img2dataset"), "--url_list", str(urls), "--input_format", "txt",
        "--output_folder", str(out), "--output_format", "parquet", "--processes_count", str(procs),
        "--thread_count", str(threads), *resize, "--encode_quality", str(QUALITY), "--encode_format", "jpg",
        "--timeout", "30", "--retries", "0", "--enable_wandb", "False", "--number_sample_per_shard", "2500",
        # The folder is removed above; "overwrite" would delete img2dataset's own _tmp (a 1.47 bug).
        "--distributor", "multiprocessing", "--incremental_mode", "incremental",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    wall, cpu, rc = timed(cmd, env=env, log=out.with_suffix(".log"))
    ok = sum(json.loads(Path(p).read_text()).get("successes", 0) for p in glob.glob(f"{out}/*_stats.json"))
    return {"wall_s": wall, "cpu_s": cpu, "rc": rc, "images": ok}


def metrics(r: dict, n: int, cores: int) -> dict:
    rate = r["images"] / r["wall_s"] if r["wall_s"] else 0.0
    return {
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()},
        "images_per_s": round(rate, 2),
        "images_per_s_per_core": round(rate / cores, 2),
        # Images per CPU second of the tool's whole process tree: throughput per fully used core,
        # the number that stays meaningful when other jobs share the machine.
        "images_per_cpu_s": round(r["images"] / r["cpu_s"], 2) if r["cpu_s"] else None,
        "success_ratio": round(r["images"] / n, 4),
    }


def safety_runs(urls: Path, scratch: Path, args: argparse.Namespace, cores: int) -> dict:
    """`lvd fetch` of one URL list with the safety models off, on and on through the reference
    path, alternating (outside load hits all alike), then the per-model costs in one process."""
    if str(ROOT) not in sys.path:  # run as a script: the repository's packages
        sys.path.insert(0, str(ROOT))
    from bench.safety_models import model_costs

    runs: dict[str, list] = {name: [] for name in SAFETY_VARIANTS}
    for _ in range(args.repeats):
        for name in SAFETY_VARIANTS:
            # Shards of SAFETY_SHARD_ROWS keep every worker busy to the end on a short URL list
            # (the default 1,000-row shards would leave one core idle for a third of the run).
            r = run_ours(urls, scratch / "safety_run", args.procs, args.concurrency, "full", safety=name,
                         shard_rows=SAFETY_SHARD_ROWS)
            runs[name].append(metrics(r, args.safety_n, cores))
            print("safety", name, runs[name][-1], flush=True)
    med = {name: statistics.median(r["images_per_s"] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r["images_per_cpu_s"] or 0 for r in rs) for name, rs in runs.items()}
    return {
        "urls": args.safety_n, "shard_rows": SAFETY_SHARD_ROWS, "procs": args.procs, "runs": runs,
        "median_images_per_s": med, "median_images_per_cpu_s": cpu,
        "ratio_on_vs_reference": round(med["on"] / med["reference"], 3) if med["reference"] else None,
        "ratio_cpu_on_vs_reference": round(cpu["on"] / cpu["reference"], 3) if cpu["reference"] else None,
        "ratio_on_vs_off": round(med["on"] / med["off"], 3) if med["off"] else None,
        # Core-seconds the safety models add per image (the rate `lvd plan` scales): from the
        # process-tree CPU time, which stays meaningful on a shared machine.
        "safety_core_ms_per_image": round(1e3 * (1 / cpu["on"] - 1 / cpu["off"]), 2) if cpu["on"] and cpu["off"] else None,
        "reference_core_ms_per_image": (round(1e3 * (1 / cpu["reference"] - 1 / cpu["off"]), 2)
                                        if cpu["reference"] and cpu["off"] else None),
        "target_ratio": SAFETY_TARGET_RATIO, "target_images_per_s": SAFETY_TARGET_IMAGES_PER_S,
        "models": model_costs(scratch / "images", count=min(100, args.distinct)),
    }


def compare(runs: dict[str, list]) -> dict:
    def best(name: str, key: str) -> dict | None:
        ok = [r for r in runs[name] if r["rc"] == 0 and r["images"]]
        return max(ok, key=lambda r: r[key] or 0) if ok else None

    out: dict = {}
    for key in ("images_per_cpu_s", "images_per_s_per_core"):
        ours, theirs = best("ours", key), best("img2dataset", key)
        out[f"ratio_{key}"] = round(ours[key] / theirs[key], 3) if ours and theirs and theirs[key] else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/scratch/crawl.json")
    ap.add_argument("--n", type=int, default=10_000, help="URLs in the list")
    ap.add_argument("--distinct", type=int, default=500, help="distinct images behind the URLs")
    ap.add_argument("--procs", type=int, default=2, help="worker processes for each tool")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight (ours) / threads per process (img2dataset)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default="full,download,safety",
                    help="full (download+decode+resize), download (no decode), safety (full with the safety models off / on / reference)")
    ap.add_argument("--safety-n", type=int, default=2_000, help="URLs of the safety mode (the reference path runs ~65 images/s)")
    ap.add_argument("--setup", action="store_true", help="create the img2dataset venv first")
    ap.add_argument("--serve", nargs=2, metavar=("FOLDER", "PORT_FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--download-only", nargs=2, metavar=("URLS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    if args.download_only:
        download_only(*args.download_only, args.concurrency)
        return 0
    scratch = ROOT / "bench" / "scratch" / "crawl_bench"
    scratch.mkdir(parents=True, exist_ok=True)
    if args.setup and not I2D_VENV.exists():
        subprocess.run(["python3.11", "-m", "venv", str(I2D_VENV)], check=True)
        subprocess.run([str(I2D_VENV / "bin" / "pip"), "install", "-q", "img2dataset", "pandas<3", "albumentations<2",
                        "opencv-python-headless<5"], check=True)
    have_i2d = (I2D_VENV / "bin" / "img2dataset").exists()

    make_images(scratch / "images", args.distinct)
    port_file = scratch / "port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(scratch / "images"), str(port_file)])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    cores = min(args.procs, os.cpu_count() or 1)
    results: dict[str, dict] = {}
    try:
        for _ in range(100):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.1)
        port = int(port_file.read_text())
        urls = scratch / "urls.txt"
        urls.write_text("".join(f"http://127.0.0.1:{port}/img/{k}.jpg\n" for k in range(args.n)))
        for mode in modes:
            if mode == "safety":
                safety_urls = scratch / "urls_safety.txt"
                safety_urls.write_text("".join(urls.read_text().splitlines(keepends=True)[: args.safety_n]))
                results[mode] = safety_runs(safety_urls, scratch, args, cores)
                continue
            runs: dict[str, list] = {"ours": [], "img2dataset": []}
            for _ in range(args.repeats):  # alternate, so that load from other jobs hits both alike
                runs["ours"].append(metrics(run_ours(urls, scratch / "ours_run", args.procs, args.concurrency, mode), args.n, cores))
                print(mode, "ours", runs["ours"][-1], flush=True)
                if have_i2d:
                    r = run_img2dataset(urls, scratch / "i2d_run", args.procs, args.concurrency, mode)
                    runs["img2dataset"].append(metrics(r, args.n, cores))
                    print(mode, "img2dataset", runs["img2dataset"][-1], flush=True)
            results[mode] = {"runs": runs, **compare(runs)}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)

    result = {
        "bench": "crawl: download (+ decode + resize) from a loopback server, ours vs img2dataset",
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version()},
        "settings": {"urls": args.n, "distinct_images": args.distinct, "procs": args.procs, "cores_counted": cores,
                     "concurrency": args.concurrency, "max_side": MAX_SIDE, "quality": QUALITY},
        "img2dataset": "installed" if have_i2d else f"not installed at {I2D_VENV} (run with --setup)",
        "target_ratio": 1.5,
        **results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({m: {k: v for k, v in r.items() if k.startswith("ratio") or k.startswith("median")} for m, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
