"""`curation.plan.scale_model` and `curation.plan.rates`: bytes, shards, rounds, hours and rates of the engine-aware scale estimate."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from curation import paper
from curation.plan.rates import Growth, load_rates
from curation.plan.scale_model import (
    ScaleError,
    human_bytes,
    ivfpq_size,
    merge_tree_rounds,
    raw_embedding_bytes,
    rounds_bound,
    rounds_typical,
    scale_estimate,
    shard_plan,
)

N = 1_200_000_000


def _results(tmp_path: Path, **override: object) -> Path:
    """A small results file with round numbers (cpus = 2 everywhere)."""
    machine = {"cpus": 2}
    data = {
        "ingest": {"images_per_s_per_core": 500.0, "machine": machine},
        "crawl": {"machine": machine, "safety": {"safety_core_ms_per_image": 8.0}},
        "verify": {"real_photo": {"stage": {"ms_per_pair": 10.0}, "features_ms_per_image": 6.0, "images": 1000, "pairs": 2000},
                   "machine": machine},
        "dedup_quality": {"demo_world_models": {"lvd_copy_v1": {"stage_counts": {
            "verify": {"self_checked": 5000}, "knn_edges": {"images": 2000}}}}},
        "hashdedup": {
            "images": 10_000, "machine": machine, "ours": {"pca": {"dedup_stage_seconds": 10.0}},
            "hamming_scale": [{"hashes": 100_000, "seconds": 0.1}, {"hashes": 1_000_000, "seconds": 10.0}],
        },
        "knn": {"cpu_count": 2, "data": {"d": 256}, "growth_exponent_cpu": 1.0,
                "sizes": [{"n": 1_000_000, "cpu_s": 360.0, "k": 64, "recall_at_k": 0.96, "index": {"kind": "ivf_flat"}}]},
        "components": {"cpu_count": 2, "runs": [
            {"method": "union_find", "edges": 10_000_000, "nodes": 10_000_000, "edges_per_cpu_s": 2_000_000, "rounds": None},
            {"method": "star", "edges": 10_000_000, "nodes": 1_048_576, "edges_per_cpu_s": 500_000, "rounds": 10},
        ]},
        "engines": {"machine": machine, "components": {
            "ray_merge_tree": {"edges_per_s": 400_000, "rounds": 4, "shards": 8},
            "beam_star_rounds": {"seconds": 12.0, "rounds": 6, "rounds_per_pipeline": 3},
        }, "map_stages": {
            "ray_2cpu": {"cpus": 2, "ingest_overhead_ms_per_image": -1.0, "embed_overhead_ms_per_image": 0.5},
            "beam": {"cpus": 2, "ingest_overhead_ms_per_image": 2.0, "embed_overhead_ms_per_image": 1.0},
        }},
        "kmeans": {"data": {"n": 1_000_000, "k": 500, "d": 200}, "faiss": {"cpu_seconds": 50.0, "niter": 10},
                   "machine": machine},
        "knn_exact": None,
        "output": {"bytes_moved_per_core_s": 100_000_000, "machine": machine},
        "driver_ids": {"machine": machine, "pools": [
            {"ids": 1_000, "bytes_per_id": {"bytes": 500.0}, "components": {"components": {"bytes_per_row": 900.0}}},
            {"ids": 8_000_000, "bytes_per_id": {"bytes": 90.0}, "components": {"components": {"bytes_per_row": 120.0}}},
        ]},
    }
    data["knn"]["sizes"][0].update(exact_cpu_s_extrapolated=20_480.0)  # 1M x 1M x 256 multiply-adds: 8e-11 s each
    del data["knn_exact"]
    data.update(override)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return path


def test_raw_embedding_bytes_of_the_issue_example() -> None:
    assert raw_embedding_bytes(N, 1024, 2) == 2_457_600_000_000
    assert raw_embedding_bytes(N, 1280) == 3_072_000_000_000  # float16 by default
    assert human_bytes(2_457_600_000_000) == "2.5 TB"


def test_ivfpq_size_uses_the_knn_stage_nlist_rule() -> None:
    size = ivfpq_size(N, 1024, 64)
    assert size.nlist == round(4 * math.sqrt(N)) == 138_564  # 4 sqrt(n), well under n / 40
    assert (size.codes, size.ids) == (N * 64, N * 8)
    assert size.centroids == 138_564 * 1024 * 4
    assert size.codebook == 256 * 1024 * 4
    assert size.total == size.codes + size.ids + size.centroids + size.codebook
    assert ivfpq_size(10_000, 64, 8).nlist == 10_000 // 40  # capped by training points per list
    with pytest.raises(ScaleError, match="not a multiple"):
        ivfpq_size(N, 1000, 64)


def test_shards_are_the_fewest_that_fit_and_grow_as_memory_shrinks() -> None:
    index = ivfpq_size(N, 1280, 64)
    counts = []
    for gib in (64, 32, 16, 8):
        plan = shard_plan(index, gib, "ray", gpus=160, workers=800, batch=16_384, fetch=65 * 4)
        per_vector = 64 + 8
        assert plan.budget_bytes == gib * 2**30 // 2
        assert plan.search_buffer_bytes == 16_384 * 260 * 12 + 16_384 * 1280 * 4
        assert plan.fixed_bytes == index.centroids + index.codebook + plan.search_buffer_bytes
        assert plan.per_worker_bytes == math.ceil(N / plan.count) * per_vector + plan.fixed_bytes <= plan.budget_bytes
        assert math.ceil(N / (plan.count - 1 or 1)) * per_vector + plan.fixed_bytes > plan.budget_bytes or plan.count == 1
        counts.append(plan.count)
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert counts[1] == 6  # 86.4 GB of lists into 16 GiB budgets minus ~0.85 GB fixed


def test_engine_shards_and_memory_fit() -> None:
    index = ivfpq_size(N, 1280, 64)
    local = shard_plan(index, 32, "local", gpus=160, workers=800, batch=16_384, fetch=260)
    ray = shard_plan(index, 32, "ray", gpus=160, workers=800, batch=16_384, fetch=260)
    beam = shard_plan(index, 32, "beam", gpus=160, workers=800, batch=16_384, fetch=260)
    assert (local.engine_shards, ray.engine_shards, beam.engine_shards) == (1, 160, 800)
    assert local.engine_fits is False and ray.engine_fits is True and beam.engine_fits is True
    with pytest.raises(ScaleError, match="too small"):
        shard_plan(index, 0.5, "ray", gpus=160, workers=800, batch=16_384, fetch=260)


@pytest.mark.parametrize("n", [2, 3, 1024, 1025, 10_000_000, N])
def test_rounds_bound_is_ceil_log2(n: int) -> None:
    assert rounds_bound(n) == math.ceil(math.log2(n))


def test_typical_rounds_and_merge_tree() -> None:
    assert rounds_bound(N) == 31
    # 7 rounds measured on 10M nodes, scaled by log2(1.2B) / log2(10M) = 1.297 -> 9.08 -> 10.
    assert rounds_typical(N, 10_000_000, 7) == 10
    assert rounds_typical(N, 0, 0) == 31  # nothing measured: the bound
    assert rounds_typical(2**20, 2**10, 100) == 20  # never above the bound
    assert [merge_tree_rounds(s) for s in (1, 2, 3, 8, 9, 1600)] == [1, 2, 3, 4, 5, 12]


def test_missing_results_file_falls_back_to_assumed(tmp_path: Path) -> None:
    rates = load_rates(tmp_path / "absent.json")
    assert rates.path is None
    assert rates.ingest.source == "assumed" and rates.ingest.value == 80.0
    assert rates.knn.source == rates.hamming.source == "assumed"
    est = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, engine="ray", rates=rates)
    assert {s.source for s in est.stages} == {"assumed"}
    assert est.rates_file is None


def test_partial_results_mix_measured_and_assumed(tmp_path: Path) -> None:
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"ingest": {"images_per_s_per_core": 300.0, "machine": {"cpus": 2}}}))
    rates = load_rates(path)
    assert rates.path == str(path)
    assert (rates.ingest.value, rates.ingest.source) == (300.0, "measured")
    assert "per core" in rates.ingest.basis
    assert rates.union_find.source == "assumed"


def test_rates_are_read_per_core(tmp_path: Path) -> None:
    rates = load_rates(_results(tmp_path))
    assert rates.ingest.value == 500.0
    assert rates.hash_image.value == pytest.approx(10.0 * 2 / 10_000)  # wall x cores / images
    assert rates.hamming == Growth(1_000_000, 10.0, 2.0, "measured", rates.hamming.basis)  # 100x for 10x: n^2
    assert (rates.knn.ref_core_s, rates.knn.exponent, rates.knn.ref_dim) == (360.0, 1.0, 256)
    assert rates.union_find.value == 2_000_000
    assert rates.ray_merge.value == 200_000  # 400k edges/s on 2 cores
    assert rates.star.value == 500_000 and (rates.star_ref_nodes.value, rates.star_ref_rounds.value) == (1_048_576, 10)
    assert rates.beam_round_s.value == 2.0
    assert rates.overhead["ray"].value == pytest.approx(0.5e-3 * 2)  # negative ingest overhead counts as 0
    assert rates.overhead["beam"].value == pytest.approx(3e-3 * 2)
    assert rates.overhead["local"].value == 0.0
    assert rates.flat_search.value == pytest.approx(8e-11)
    assert rates.kmeans.value == pytest.approx(5e-11)  # 50 s / (1M x 500 x 200 x 10) multiply-adds
    assert rates.output.value == 100_000_000
    assert (rates.driver_plan.value, rates.driver_components.value) == (90.0, 120.0)  # the largest pool measured
    assert "one process" in rates.driver_components.basis and "per core" not in rates.driver_components.basis


def test_stage_hours_follow_the_rates(tmp_path: Path) -> None:
    rates = load_rates(_results(tmp_path))
    est = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, engine="ray", gpus=160, workers=1000, dim=1024,
                         images_per_second=500.0, rates=rates)
    h = {s.name: s for s in est.stages}
    assert h["ingest"].wall_hours == pytest.approx(N / 500 / 1000 / 3600)
    assert h["hash"].wall_hours == pytest.approx(N * 0.002 / 1000 / 3600)
    assert h["hash_edges"].units == 1000  # 1,200 pieces (one per million hashes) over 1,000 cores
    assert h["hash_edges"].wall_hours == pytest.approx(10.0 * 1200**2 / 1000 / 3600)  # n^2 core time, split
    assert h["embed"].wall_hours == pytest.approx((N + 763_105_933) / 500 / 160 / 3600)
    assert h["embed"].source == "given"
    assert h["knn_edges"].wall_hours == pytest.approx(360.0 * 1200 * 4 / 1000 / 3600)  # linear growth, 1024 / 256
    assert h["components"].wall_hours == pytest.approx(N * 64 / 200_000 / 1000 / 3600)
    assert h["engine_overhead"].wall_hours == pytest.approx(N * 1e-3 / 1000 / 3600)
    assert est.total_hours == pytest.approx(sum(s.wall_hours for s in est.stages))
    assert est.bottleneck == "embed"
    assert est.fits is (est.total_hours <= paper.PAPER_HOURS)
    assert est.edges_upper_bound == N * 64 and est.edges_parquet_bytes == N * 64 * 20
    assert est.components.engine_rounds == merge_tree_rounds(2000)


def test_fits_turns_true_when_every_stage_is_fast_enough(tmp_path: Path) -> None:
    fast = _results(tmp_path, hashdedup={"images": 10_000, "machine": {"cpus": 2}, "ours": {"pca": {"dedup_stage_seconds": 10.0}},
                                         "hamming_scale": [{"hashes": 100_000, "seconds": 0.1}, {"hashes": 1_000_000, "seconds": 1.0}]})
    est = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, engine="ray", rates=load_rates(fast))
    assert est.total_hours <= 48 and est.fits is True
    slow = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, engine="ray", gpus=16, rates=load_rates(fast))
    assert slow.total_hours > 48 and slow.fits is False  # 10x fewer GPUs: embedding alone ~198 h


def test_components_by_engine(tmp_path: Path) -> None:
    rates = load_rates(_results(tmp_path))
    args = (N, 763_105_933, paper.LVD142M_TOTAL)
    local = scale_estimate(*args, engine="local", workers=800, rates=rates)
    beam = scale_estimate(*args, engine="beam", workers=800, rates=rates)
    comp = {e.engine: next(s for s in e.stages if s.name == "components") for e in (local, beam)}
    assert local.components.engine_rounds == 1 and comp["local"].units == 1
    assert comp["local"].wall_hours == pytest.approx(N * 64 / 2_000_000 / 3600)
    # Star rounds: 10 measured on 2^20 nodes -> ceil(10 x log2(1.2B) / 20) = 16; each round pays 2 s.
    assert beam.components.engine_rounds == beam.components.rounds_typical == 16
    assert comp["beam"].wall_hours == pytest.approx((N * 64 / 500_000 * 16 / 10 / 800 + 16 * 2.0) / 3600)
    assert next(s for s in local.stages if s.name == "engine_overhead").wall_hours == 0.0
    with pytest.raises(ScaleError, match="unknown engine"):
        scale_estimate(*args, engine="spark", rates=rates)


def test_cluster_retrieve_and_output_hours(tmp_path: Path) -> None:
    """k-means trained in the driver on the head's cores, assignment and exact search on the GPUs
    (or, with `use_gpu: never`, on the CPU workers at the measured flat-search rate), the output
    join by bytes."""
    from curation.config import ClusterConfig
    from curation.plan.stage_hours import GPU_SEARCH_MACS, HEAD_CORES

    rates = load_rates(_results(tmp_path))
    cfg = ClusterConfig(k=100_000, train_sample=1_000_000, niter=25)
    args = dict(engine="ray", workers=1000, dim=1024, rates=rates, kept=744_000_000, sample_queries=10_000_000,
                cluster_queries=500_000, clustering=cfg, avg_image_bytes=60_000)
    est = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, gpus=160, **args)
    h = {s.name: s for s in est.stages}
    train = 1e6 * 100_000 * 1024 * 25
    assert (h["cluster_train"].work, h["cluster_train"].units) == (train, HEAD_CORES)
    assert h["cluster_train"].wall_hours == pytest.approx(train * 5e-11 / HEAD_CORES / 3600)
    assert h["cluster_assign"].wall_hours == pytest.approx(744e6 * 100_000 * 1024 / GPU_SEARCH_MACS / 160 / 3600)
    search = 10e6 * 744e6 * 1024 + 500_000 * 100_000 * 1024
    assert (h["retrieve"].work, h["retrieve"].unit, h["retrieve"].source) == (pytest.approx(search), "GPU", "assumed")
    assert h["output"].wall_hours == pytest.approx((N + paper.LVD142M_TOTAL) * 60_000 / 1e8 / 1000 / 3600)
    cpu = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, gpus=160, search_gpu=False, **args)
    c = {s.name: s for s in cpu.stages}
    assert (c["retrieve"].unit, c["retrieve"].units, c["retrieve"].source) == ("core", 1000, "measured")
    assert c["retrieve"].wall_hours == pytest.approx(search * 8e-11 / 1000 / 3600)
    assert c["retrieve"].wall_hours > 40 * h["retrieve"].wall_hours and cpu.bottleneck == "retrieve"
    assert not cpu.fits  # exact search of 10M queries over 744M images on CPUs alone: ~170 h
    with pytest.raises(ScaleError, match="at least one"):
        scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, gpus=0, rates=rates)


def test_driver_memory_from_the_measured_peaks(tmp_path: Path) -> None:
    est = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, engine="ray", rates=load_rates(_results(tmp_path)))
    d = est.driver
    assert d.ids_bytes == N * 32 and d.plan_bytes == N * 90 and d.components_bytes == N * 120
    assert (d.largest, d.largest_bytes) == ("components", N * 120)


def test_safety_stage_from_the_measured_rate(tmp_path: Path) -> None:
    """NSFW + face blur (issue 17): the core-ms per image bench_crawl.py measured, over the workers."""
    rates = load_rates(_results(tmp_path))
    assert (rates.safety.value, rates.safety.source) == (0.008, "measured")
    assert "crawl.safety" in rates.safety.basis and "per core" in rates.safety.basis
    est = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, engine="ray", gpus=160, workers=1000, rates=rates)
    h = {s.name: s for s in est.stages}
    assert [s.name for s in est.stages][:2] == ["ingest", "safety"]
    assert h["safety"].wall_hours == pytest.approx(N * 0.008 / 1000 / 3600)
    assert h["safety"].unit_hours == pytest.approx(N * 0.008 / 3600) and h["safety"].source == "measured"
    assert not any("NSFW" in m for m in est.not_modelled)
    off = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, engine="ray", gpus=160, workers=1000, rates=rates, safety=False)
    assert "safety" not in {s.name for s in off.stages}
    assert est.total_hours == pytest.approx(off.total_hours + h["safety"].wall_hours)
    # Without a measurement: issue 17's figure for the pre-batching path, labelled assumed.
    assumed = load_rates(tmp_path / "missing.json").safety
    assert (assumed.value, assumed.source) == (0.03, "assumed")


def test_the_default_rates_file_is_this_checkouts() -> None:
    """`lvd plan` reads bench/results.json of the checkout (the path broke when rates.py moved to
    curation/plan/ in issue 16, and every rate silently became "assumed")."""
    from curation.plan.rates import RESULTS_PATH

    assert RESULTS_PATH == Path(__file__).resolve().parents[2] / "bench" / "results.json"
    assert RESULTS_PATH.exists() and load_rates().path == str(RESULTS_PATH)
    assert load_rates().safety.source == "measured"


def test_verify_stage_from_the_measured_rates(tmp_path: Path) -> None:
    """Pixel verification (issue 15): pairs per pool image x core-seconds per pair (the check plus
    its share of describing the images), after the k-NN graph; only when the run verifies."""
    rates = load_rates(_results(tmp_path))
    assert (rates.verify.value, rates.verify.source) == (pytest.approx(0.013), "measured")  # 10 ms + 6 ms x 1000 / 2000
    assert (rates.verify_pairs.value, rates.verify_pairs.source) == (2.5, "measured")
    off = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, engine="ray", gpus=160, workers=1000, rates=rates)
    assert "verify" not in {s.name for s in off.stages}
    on = scale_estimate(N, 763_105_933, paper.LVD142M_TOTAL, engine="ray", gpus=160, workers=1000, rates=rates, verify=True)
    names = [s.name for s in on.stages]
    assert names.index("verify") == names.index("knn_edges") + 1
    h = {s.name: s for s in on.stages}
    assert h["verify"].work == N * 2.5 and h["verify"].unit_hours == pytest.approx(N * 2.5 * 0.013 / 3600)
    assert on.total_hours == pytest.approx(off.total_hours + h["verify"].wall_hours)
    assumed = load_rates(tmp_path / "missing.json")
    assert assumed.verify.source == "assumed" and assumed.verify_pairs.source == "assumed"
