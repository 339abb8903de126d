"""Rates for `lvd plan`'s scale estimate: measured in `bench/results.json`, or assumed.

`load_rates` is the only reader of `bench/results.json` (written by `python -m bench.run`). Each
rate it returns carries its unit and its source: "measured" with the results key it came from, or,
when the file or the key is missing or unreadable, a documented conservative default labelled
"assumed".

CPU rates come from a 2-core development machine: they are stated per core (process CPU time, or
wall time x cores where only wall time was recorded), and `curation.plan.scale_model` multiplies them by
the number of CPU workers.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

#: The measured rates, written by `python -m bench.run`.
RESULTS_PATH = Path(__file__).resolve().parents[2] / "bench" / "results.json"  # curation/plan/ -> the checkout


@dataclass(frozen=True)
class Rate:
    """One rate with its unit and where it comes from (`source`)."""

    value: float
    unit: str
    source: str  # measured | assumed | given | baseline
    basis: str


@dataclass(frozen=True)
class Growth:
    """Core-seconds of a step measured on `ref_n` items (and `ref_dim`-d vectors when it has a
    dimension), extrapolated as (n / ref_n) ** exponent x (dim / ref_dim)."""

    ref_n: float
    ref_core_s: float
    exponent: float
    source: str
    basis: str
    ref_dim: int = 0

    def core_seconds(self, n: float, dim: Optional[int] = None) -> float:
        scale = (n / self.ref_n) ** self.exponent
        return self.ref_core_s * scale * (dim / self.ref_dim if dim and self.ref_dim else 1.0)


@dataclass(frozen=True)
class Rates:
    """Every rate the scale model uses, each labelled measured or assumed."""

    path: Optional[str]  # the results file read, None when it was missing or unreadable
    ingest: Rate  # decode + filter + resize + re-encode, images/s per core
    safety: Rate  # NSFW filter + face detection and blurring of crawled images, core-s per image
    hash_image: Rate  # PCA hash stage, core-seconds per image
    verify: Rate  # pixel verification (`verify` stage), core-s per checked candidate pair, features included
    verify_pairs: Rate  # self candidate pairs the verify stage checks per pool image
    hamming: Growth  # Hamming-radius pairs (total core time; the search splits into pieces)
    knn: Growth  # k-NN graph: index training, adding, calibration, search (FAISS on CPU)
    union_find: Rate  # one-process union-find, edges/s per core (local engine)
    ray_merge: Rate  # union-find per edge shard + merge tree, edges/s per core
    star: Rate  # large-star/small-star rounds, edges/s per core (all rounds of a run)
    beam_round_s: Rate  # fixed wall seconds per Beam star round (pipeline launch, shuffles)
    star_ref_nodes: Rate  # nodes of the largest measured star run ...
    star_ref_rounds: Rate  # ... and its rounds (the typical-rounds anchor)
    beam_rounds_per_pipeline: Rate
    flat_search: Rate  # exact inner-product search (FAISS IndexFlatIP), core-s per multiply-add
    kmeans: Rate  # FAISS k-means training, core-s per multiply-add (points x K x d x iterations)
    output: Rate  # the output join (curation.output.join), bytes moved (pool read + output) per core-s
    driver_plan: Rate  # driver peak planning the kept pool, bytes per image id
    driver_components: Rate  # driver peak of the components stage, bytes per pool row
    overhead: dict[str, Rate] = field(default_factory=dict)  # engine -> core-seconds per image vs local


def load_rates(path: Optional[Path | str] = None) -> Rates:
    """The measured rates in `path` (default: this checkout's bench/results.json).

    A missing or unreadable file, or a missing key, gives the conservative default for that rate,
    labelled "assumed". Per-core conversions use the `cpus` the benchmark recorded (2 here).
    """
    path = Path(path) if path is not None else RESULTS_PATH
    try:
        data = json.loads(path.read_text())
        read: Optional[str] = str(path)
    except (OSError, ValueError):
        data, read = {}, None
    dev = "per core, measured on a {cpus}-core dev machine"

    def rate(unit: str, default: float, assumed: str, key: str, fn: Callable[[Any], tuple[float, int]]) -> Rate:
        """`fn(data)` gives (value, cpus of the machine it was measured on; 0: not a per-core rate)."""
        try:
            value, cpus = fn(data)
            if not value >= 0:
                raise ValueError(value)
            where = dev.format(cpus=cpus) if cpus else "one process, measured on the dev machine"
            return Rate(float(value), unit, "measured", f"bench/results.json {key} ({where})")
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
            return Rate(float(default), unit, "assumed", assumed)

    def growth(default: Growth, fn: Callable[[Any], Growth]) -> Growth:
        try:
            got = fn(data)
            if not (got.ref_n > 0 and got.ref_core_s > 0 and got.exponent > 0):
                raise ValueError(got)
            return got
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
            return default

    def hamming(d: Any) -> Growth:
        small, big = sorted(d["hashdedup"]["hamming_scale"], key=lambda r: r["hashes"])[-2:]
        exponent = math.log(big["seconds"] / small["seconds"]) / math.log(big["hashes"] / small["hashes"])
        return Growth(big["hashes"], big["seconds"], round(exponent, 3), "measured",
                      f"bench/results.json hashdedup.hamming_scale: {big['seconds']:.1f} s on {big['hashes']:,} hashes,"
                      f" exponent fitted on its two sizes (one process, {d['hashdedup']['machine']['cpus']}-core dev machine)")

    def knn(d: Any) -> Growth:
        k = d["knn"]
        big = max(k["sizes"], key=lambda r: r["n"])
        return Growth(big["n"], big["cpu_s"], float(k["growth_exponent_cpu"]), "measured",
                      f"bench/results.json knn: {big['cpu_s']:.0f} CPU-s on {big['n']:,} x {k['data']['d']}-d"
                      f" ({big['index']['kind']}, recall@{big['k']} {big['recall_at_k']:.3f}), x n^growth_exponent_cpu,"
                      f" x dim; {k['cpu_count']}-core dev machine", ref_dim=int(k["data"]["d"]))

    def star_run(d: Any) -> dict:
        return max((r for r in d["components"]["runs"] if r["method"] == "star"), key=lambda r: r["nodes"])

    def flat_search(k: Any) -> float:
        big = max(k["sizes"], key=lambda r: r["n"])
        return big["exact_cpu_s_extrapolated"] / (float(big["n"]) ** 2 * k["data"]["d"])

    def largest_pool(d: Any) -> dict:
        return max(d["driver_ids"]["pools"], key=lambda p: p["ids"])

    def overhead(engine: str, entry: str) -> Rate:
        def fn(d: Any) -> tuple[float, int]:
            r = d["engines"]["map_stages"][entry]
            per_image_ms = max(0.0, r["ingest_overhead_ms_per_image"]) + max(0.0, r["embed_overhead_ms_per_image"])
            return per_image_ms / 1000 * r["cpus"], r["cpus"]  # wall on `cpus` cores -> core-seconds
        default = {"ray": 0.005, "beam": 0.010}[engine]
        return rate("core-s per image", default, "assumed: a few ms of task and serialisation cost per image",
                    f"engines.map_stages.{entry} (ingest + embed overhead vs local, negatives counted as 0)", fn)

    return Rates(
        path=read,
        ingest=rate("images/s per core", 80.0, "assumed: img2dataset's 1,300 img/s on 16 cores",
                    "ingest.images_per_s_per_core", lambda d: (d["ingest"]["images_per_s_per_core"], d["ingest"]["machine"]["cpus"])),
        # Core-seconds the safety models add per fetched image: `lvd fetch` with them on minus off,
        # same URL list, same run (bench_crawl.py --modes safety). Default: issue 17's measurement
        # of the pre-batching path (154 s - 6.2 s for 10,000 images on 2 cores).
        safety=rate("core-s per image", 0.03, "assumed: 30 core-ms per image (issue 17, the pre-batching path)",
                    "crawl.safety.safety_core_ms_per_image",
                    lambda d: (d["crawl"]["safety"]["safety_core_ms_per_image"] / 1e3, d["crawl"]["machine"]["cpus"])),
        # One core, in process (bench_verify.py): the check of a pair plus its share of describing
        # the images (features once per image), on the real-photo benchmark's candidates.
        verify=rate("core-s per pair", 0.015, "assumed: 15 core-ms per candidate pair",
                    "verify.real_photo.stage.ms_per_pair + features_ms_per_image x images / pairs",
                    lambda d: ((v := d["verify"]["real_photo"])["stage"]["ms_per_pair"] / 1e3
                               + v["features_ms_per_image"] * v["images"] / v["pairs"] / 1e3, d["verify"]["machine"]["cpus"])),
        verify_pairs=rate("pairs per image", 5.0, "assumed: 5 checked candidate pairs per pool image",
                          "dedup_quality.demo_world_models.lvd_copy_v1.stage_counts: verify.self_checked / knn_edges.images",
                          lambda d: ((c := d["dedup_quality"]["demo_world_models"]["lvd_copy_v1"]["stage_counts"])["verify"]
                                     ["self_checked"] / c["knn_edges"]["images"], 0)),
        hash_image=rate("core-s per image", 0.005, "assumed: 5 ms of one core per image",
                        "hashdedup.ours.pca.dedup_stage_seconds x cpus / images",
                        lambda d: (d["hashdedup"]["ours"]["pca"]["dedup_stage_seconds"] * d["hashdedup"]["machine"]["cpus"]
                                   / d["hashdedup"]["images"], d["hashdedup"]["machine"]["cpus"])),
        hamming=growth(Growth(1e6, 60.0, 2.0, "assumed", "assumed: 60 s per 1M hashes, quadratic (16-bit chunk keys"
                              " of curation/dedup/hamming.py: buckets grow with n)"), hamming),
        knn=growth(Growth(1e6, 600.0, 1.5, "assumed", "assumed: 600 CPU-s per 1M x 256-d, x n^1.5 (IVF, nlist ~ sqrt n)",
                          ref_dim=256), knn),
        union_find=rate("edges/s per core", 1e6, "assumed: 1M edges/s per core",
                        "components.runs[union_find, most edges].edges_per_cpu_s",
                        lambda d: (max((r for r in d["components"]["runs"] if r["method"] == "union_find"),
                                       key=lambda r: (r["edges"], r["nodes"]))["edges_per_cpu_s"], d["components"]["cpu_count"])),
        ray_merge=rate("edges/s per core", 1e5, "assumed: 100k edges/s per core",
                       "engines.components.ray_merge_tree.edges_per_s / cpus",
                       lambda d: (d["engines"]["components"]["ray_merge_tree"]["edges_per_s"] / d["engines"]["machine"]["cpus"],
                                  d["engines"]["machine"]["cpus"])),
        star=rate("edges/s per core", 2e5, "assumed: 200k edges/s per core", "components.runs[star, most nodes].edges_per_cpu_s",
                  lambda d: (star_run(d)["edges_per_cpu_s"], d["components"]["cpu_count"])),
        beam_round_s=rate("s per round", 10.0, "assumed: 10 s per star round",
                          "engines.components.beam_star_rounds.seconds / rounds",
                          lambda d: ((b := d["engines"]["components"]["beam_star_rounds"])["seconds"] / b["rounds"],
                                     d["engines"]["machine"]["cpus"])),
        star_ref_nodes=rate("nodes", 0, "assumed: no measured star run", "components.runs[star].nodes",
                            lambda d: (star_run(d)["nodes"], d["components"]["cpu_count"])),
        star_ref_rounds=rate("rounds", 0, "assumed: no measured star run", "components.runs[star].rounds",
                             lambda d: (star_run(d)["rounds"], d["components"]["cpu_count"])),
        beam_rounds_per_pipeline=rate("rounds", 4, "assumed: BeamEngine's default 4", "engines.components.beam_star_rounds.rounds_per_pipeline",
                                      lambda d: (d["engines"]["components"]["beam_star_rounds"]["rounds_per_pipeline"],
                                                 d["engines"]["machine"]["cpus"])),
        flat_search=rate("core-s per multiply-add", 5e-11, "assumed: 20 G multiply-adds/s per core (float32 GEMM)",
                         "knn.sizes[largest].exact_cpu_s_extrapolated / (n x n x d)",
                         lambda d: (flat_search(d["knn"]), d["knn"]["cpu_count"])),
        kmeans=rate("core-s per multiply-add", 1e-10, "assumed: 10 G multiply-adds/s per core",
                    "kmeans.faiss.cpu_seconds / (n x K x d x niter)",
                    lambda d: (d["kmeans"]["faiss"]["cpu_seconds"] / math.prod(
                        d["kmeans"]["data"][key] for key in ("n", "k", "d")) / d["kmeans"]["faiss"]["niter"],
                               d["kmeans"]["machine"]["cpus"])),
        output=rate("bytes/s per core", 50e6, "assumed: 50 MB/s per core of Parquet read + write",
                    "output.bytes_moved_per_core_s", lambda d: (d["output"]["bytes_moved_per_core_s"], d["output"]["machine"]["cpus"])),
        driver_plan=rate("B per id", 100.0, "assumed: 100 B per id (sorting 32-byte ids)",
                         "driver_ids.pools[largest].bytes_per_id.bytes",
                         lambda d: (largest_pool(d)["bytes_per_id"]["bytes"], 0)),
        driver_components=rate("B per row", 150.0, "assumed: 150 B per pool row",
                               "driver_ids.pools[largest].components.components.bytes_per_row",
                               lambda d: (largest_pool(d)["components"]["components"]["bytes_per_row"], 0)),
        overhead={"local": Rate(0.0, "core-s per image", "baseline", "local is the baseline of engines.map_stages"),
                  "ray": overhead("ray", "ray_2cpu"), "beam": overhead("beam", "beam")},
    )
