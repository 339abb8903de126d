"""`mode: balanced` recipe rows through the `balance` and `retrieve` stages (local engine), on a
skewed pool of synthetic embeddings written as embedding files: one concept 50x more frequent than
the others is cut to within 2x of the median concept; every level is written and resumable; the
named configurations scale to the pool; K scales to the pool; `lvd plan` costs the hierarchy."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import paper
from curation.retrieval.balanced import concept_balance, scaled_levels
from curation.retrieval.clustering import scaled_k
from curation.config import BalancedConfig, RunConfig
from curation.retrieval.recipes import Recipe
from embedder.store import write_embeddings
from pipelines.context import RunContext
from pipelines.engines import make_engine
from curation.core.rundir import RunDir, write_table

CONCEPTS, SMALL, SKEW, DIM = 20, 40, 50, 32  # one concept of 50 x 40 images, nineteen of 40
LEVELS = {"clusters": [120, 20], "resampling_steps": [0, 10], "sample_sizes": [1, 3], "niter": 20}


def skewed_pool(run: RunDir, seed: int = 0) -> dict[str, int]:
    """Embedding files (3, ids shuffled across them) of CONCEPTS well-separated concepts, concept 0
    SKEW times as frequent, and a components file keeping every image; returns id -> concept."""
    rng = np.random.default_rng(seed)
    sizes = np.full(CONCEPTS, SMALL)
    sizes[0] *= SKEW
    centres = rng.standard_normal((CONCEPTS, DIM))
    x = np.concatenate([c + 0.25 * rng.standard_normal((s, DIM)) for c, s in zip(centres, sizes)])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    concept = np.repeat(np.arange(CONCEPTS), sizes)
    ids = np.array([f"{i:032x}" for i in rng.permutation(len(x))])
    for part, rows in enumerate(np.array_split(np.arange(len(x)), 3)):
        write_embeddings(run.path("embeddings", f"part-{part:05d}.parquet"), ids[rows], x[rows])
    write_table(pa.table({"image_id": pa.array(ids, pa.string()), "keep": pa.array(np.ones(len(ids), bool))}),
                run.path("dedup", "components.parquet"))
    return dict(zip(ids.tolist(), concept.tolist()))


def context(run: RunDir, target: int, **balanced) -> RunContext:
    cfg = RunConfig.model_validate({"embed": {"model": "m"}, "dedup": {"model": "m"}, "retrieval": {"model": "m"},
                                    "clustering": {"use_gpu": "never", "balanced": {**LEVELS, **balanced}}})
    recipe = Recipe.model_validate({"name": "skewed", "rows": [{"mode": "balanced", "target": target}]})
    return RunContext(run=run, cfg=cfg, engine=make_engine("local", 2, progress=False), recipe=recipe)


@pytest.fixture(scope="module")
def balanced_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunContext, dict[str, int], dict]:
    from pipelines.stages.balance import run_balance
    from pipelines.stages.retrieval import run_retrieve

    run = RunDir(tmp_path_factory.mktemp("balanced") / "run")
    truth = skewed_pool(run)
    ctx = context(run, target=400)
    counts = run_balance(ctx)
    run_retrieve(ctx)
    yield ctx, truth, counts
    ctx.engine.close()


def test_the_skewed_concept_is_cut_to_within_2x_of_the_median(balanced_run) -> None:
    ctx, truth, counts = balanced_run
    got = pq.read_table(ctx.run.path("retrieval", "retrieved.parquet"))
    assert got.num_rows == 400 and set(got.column("mode").to_pylist()) == {"balanced"}
    assert got.column("seed_dataset").null_count == 400
    picked = np.array([truth[i] for i in got.column("image_id").to_pylist()])
    per_concept = np.bincount(picked, minlength=CONCEPTS)
    pool = concept_balance(np.array(list(truth.values())))
    out = concept_balance(picked)
    # Pool: 50x the median (2.02 bits, evenness 0.467); balanced: every concept, flat.
    assert pool["max_over_median"] == 50.0
    assert per_concept[0] <= 2 * np.median(per_concept), per_concept
    assert (per_concept > 0).all() and out["evenness"] > 0.95 and out["entropy_bits"] - pool["entropy_bits"] > 2
    # Provenance: mode balanced with each row's leaf cluster, as in the `cluster` column.
    prov = [json.loads(p)[0] for p in got.column("provenance").to_pylist()]
    assert {p["mode"] for p in prov} == {"balanced"} and [p["cluster"] for p in prov] == got.column("cluster").to_pylist()
    assert counts["levels"] == "120 -> 20" and counts["images"] == len(truth)


def test_every_level_is_written_and_the_sampling_recorded(balanced_run) -> None:
    ctx, truth, _ = balanced_run
    level1 = pq.read_table(ctx.run.path("balanced", "level-1", "assignments.parquet"))
    assert level1.column_names == ["image_id", "cluster", "sqdist", "similarity"] and level1.num_rows == len(truth)
    labels2 = np.load(ctx.run.path("balanced", "level-2", "labels.npy"))
    assert len(labels2) == len(np.load(ctx.run.path("balanced", "level-1", "centroids.npy"))) == 120
    recipe = json.loads(ctx.run.path("recipe.json").read_text())
    levels = recipe["rows"][0]["balanced"]["levels"]
    assert [lv["clusters"] for lv in levels] == [120, 20]
    top = levels[-1]
    assert top["cap"] is not None and top["largest_after"] <= top["cap"] + 1 < top["largest_before"]
    stats = np.load(ctx.run.path("retrieval", "balanced-0.npz"))
    assert stats["after_1"].sum() == stats["after_2"].sum() == 400
    assert stats["before_1"].sum() == stats["before_2"].sum() == len(truth)


def test_a_killed_run_resumes_at_the_first_unfinished_level(balanced_run) -> None:
    from pipelines.stages.balance import run_balance

    ctx, _, counts = balanced_run
    level1 = ctx.run.path("balanced", "level-1", "assignments.parquet")
    level2 = ctx.run.path("balanced", "level-2", "labels.npy")
    before = (level1.stat().st_mtime_ns, level1.read_bytes(), level2.read_bytes())
    ctx.run.path("balanced", "level-2", "done.json").unlink()
    assert run_balance(ctx) == counts
    assert (level1.stat().st_mtime_ns, level1.read_bytes(), level2.read_bytes()) == before  # level 1 kept, 2 same bytes


def test_splits_at_pool_scale_split_every_member(tmp_path: Path) -> None:
    """Level 1 as coarse clusters (trained on a sample) split by engine tasks over all their
    members (a shuffle by coarse cluster); the spill is gone afterwards; every image has a leaf."""
    from curation.retrieval.balanced_leaves import assign_leaves, leaf_model, split_members, unsplit
    from pipelines.stages.balance import run_balance
    from pipelines.stages import balance

    run = RunDir(tmp_path / "run")
    truth = skewed_pool(run, seed=1)
    ctx = context(run, target=100, clusters=[10, 5], splits=[6, 1], train_sample=1500)
    balance.SPLIT_BUCKET_ROWS, before = 700, balance.SPLIT_BUCKET_ROWS  # several split tasks
    try:
        counts = run_balance(ctx)
    finally:
        balance.SPLIT_BUCKET_ROWS = before
        ctx.engine.close()
    model = json.loads(run.path("balanced", "level-1", "model.json").read_text())
    assert model["train_sample"] == 1500 and model["coarse"] == 10 and 10 < model["leaves"] <= 60
    assert not run.path("_work", "balance").exists()
    table = pq.read_table(run.path("balanced", "level-1", "assignments.parquet"))
    labels = table.column("cluster").to_numpy()
    assert len(labels) == len(truth) and int(counts["levels"].split(" -> ")[0]) == len(np.unique(labels))
    # The same leaves as splitting each coarse cluster's members in memory.
    from pipelines.stages.embedding import read_unique

    ids, x = read_unique(run, "embeddings")
    coarse = np.load(run.path("balanced", "level-1", "coarse.npy"))
    coarse_labels = assign_leaves(x, unsplit(coarse), use_gpu="never")[0]
    want = leaf_model(coarse, split_members(x.astype(np.float32), coarse_labels, np.arange(len(x)), 6, 20, 0))
    assert np.array_equal(np.load(run.path("balanced", "level-1", "leaves.npy")), want.leaves)


@pytest.mark.parametrize("pool, expected", [
    (paper.VO_WEB_POOL, ((100_000, 500_000, 50_000, 10_000), (100, 1, 1, 1))),
    (74_300_000, ((10_000, 50_000, 5_000, 1_000), (100, 1, 1, 1))),  # a tenth: every level a tenth
    (743_000, ((100, 500, 50, 10), (100, 1, 1, 1))),
    (20_000, ((3, 13), (100, 1))),  # 2.7 -> 3 coarse clusters split in 100; 50k x f = 1.3 < 2: dropped
    (1_872, ((25,), (1,))),  # the demo pool: one level of 25 leaves
    (30, ((2,), (1,))),  # the floor (clustering.balanced.min_clusters)
    (1, ((1,), (1,))),  # never more clusters than images
])
def test_the_web_preset_scales_to_the_pool(pool: int, expected) -> None:
    plan = scaled_levels(BalancedConfig(), pool)
    assert (plan.clusters, plan.splits) == expected
    assert len(plan.resampling_steps) == len(plan.sample_sizes) == len(plan.clusters)


def test_named_and_custom_levels() -> None:
    dinov3 = BalancedConfig(preset="dinov3")
    assert dinov3.clusters[0] * dinov3.splits[0] == paper.DINOV3_LEVELS[0] and tuple(dinov3.clusters[1:]) == paper.DINOV3_LEVELS[1:]
    assert scaled_levels(dinov3, paper.DINOV3_POOL).clusters == tuple(dinov3.clusters)
    assert scaled_levels(dinov3, 170_000_000).clusters == (20_000, 80_000, 8_000, 1_000, 250)
    custom = BalancedConfig(clusters=[100, 20])
    assert custom.preset == "custom" and custom.splits == [1, 1] and custom.resampling_steps == [0, 0]
    assert scaled_levels(custom, 50).clusters == (100, 20)  # as given (k-means clamps K to the items)
    with pytest.raises(ValueError, match="one entry per level"):
        BalancedConfig(clusters=[10, 4], splits=[3])
    again = BalancedConfig.model_validate(dinov3.model_dump())
    assert again == dinov3


@pytest.mark.parametrize("k, pool, chosen", [
    (None, paper.POOL_AFTER_RELATIVE_DEDUP, paper.KMEANS_CLUSTERS),
    (None, 380, 16),  # issue 19: 380 images got K=380 (every image alone); now the floor
    (None, 7_440_000, 1_000),
    (None, 10, 10),
    (32, 1_872, 32),  # a K the config gives is kept
    (100_000, 380, 380),
])
def test_k_scales_to_the_pool(k, pool: int, chosen: int) -> None:
    got, note = scaled_k(k, pool, 16)
    assert got == chosen and f"K={chosen:,}" in note


def test_plan_costs_the_hierarchy_of_the_lvd1689m_recipe() -> None:
    from curation.plan.planner import build_plan, format_plan
    from curation.retrieval.recipes import load_recipe

    plan = build_plan(load_recipe("lvd1689m"))
    parts = plan["parts"]
    assert parts["clustering"]["images"] == paper.DINOV3_CLUSTERED
    assert set(parts) == {"clustering", "retrieval", "raw sets as is"}
    assert 0.9 < parts["clustering"]["fraction"] < 0.95 and parts["raw sets as is"]["images"] == 1_281_167 + 14_197_086 + 1_434_262
    h = plan["scale"]["hierarchy"]
    assert [lv["leaves"] for lv in h["levels"]] == list(paper.DINOV3_LEVELS)
    level1 = h["levels"][0]
    assert level1["pool_passes"] == 2  # the spill by coarse cluster, then the leaf assignment
    assert level1["centroid_bytes"] == (2_000_000 + 200_000_000) * 1280 * 4 and h["spill_bytes"] == 17_000_000_000 * 1280 * 2
    assert level1["split_macs"] == 17_000_000_000 * 100 * 1280 * 51  # every member, 50 iterations + the last assignment
    stages = [s["name"] for s in plan["scale"]["stages"]]
    assert stages.index("balance_train") < stages.index("balance_split") < stages.index("balance_assign") < stages.index("retrieve")
    text = format_plan(plan)
    assert "hierarchical k-means (balanced rows): dinov3 levels" in text and "parts: clustering 1,689,000,000" in text


def test_a_balanced_only_recipe_enables_its_stages() -> None:
    from pipelines.pipeline import pipeline

    recipe = Recipe.model_validate({"name": "b", "rows": [{"mode": "balanced", "target": 5}]})
    ctx = SimpleNamespace(recipe=recipe, seeds=[], cfg=RunConfig(), dedup_methods=("hash", "embedding"), eval_sources=[])
    enabled = {s.name for s in pipeline() if s.enabled(ctx)}
    assert {"seeds", "balance", "retrieve", "output"} <= enabled and "cluster" not in enabled


def test_the_report_shows_every_level_before_and_after(balanced_run) -> None:
    from curation.report.write import render_report

    ctx, _, _ = balanced_run
    page = render_report(ctx.run.root)
    section = page[page.index('<section id="balanced">'):]
    section = section[:section.index("</section>")]
    assert "levels 120 / 20 as configured" in section and "target 400, got 400" in section
    for level in (1, 2):
        assert f"level {level}: images per cluster, before" in section
        assert f"level {level}: images sampled per cluster, after" in section
    assert section.count("<h3>leaf ") == 6 and " sampled</h3>" in section
    assert '<a href="#balanced">' in page


def test_level_one_resampling_passes_run_as_engine_tasks(tmp_path: Path) -> None:
    """Resampling at level 1 (their configs skip it): assign every image, re-fit on the closest
    `sample_size` per cluster, twice; then the final assignment."""
    from pipelines.stages.balance import run_balance

    run = RunDir(tmp_path / "run")
    truth = skewed_pool(run, seed=2)
    ctx = context(run, target=100, clusters=[30, 6], resampling_steps=[2, 0], sample_sizes=[5, 1], train_sample=800)
    try:
        counts = run_balance(ctx)
    finally:
        ctx.engine.close()
    assert counts["images"] == len(truth) and counts["levels"].endswith("-> 6")
    assert not run.path("balanced", "level-1", "resample").exists()  # the passes' model is scratch
    assert json.loads(run.path("balanced", "level-1", "model.json").read_text())["coarse"] == 30


def test_a_balanced_target_keeps_its_fraction_of_the_recipes_pool() -> None:
    from curation.plan.planner import balanced_target

    assert balanced_target(paper.DINOV3_CLUSTERED, paper.DINOV3_POOL, paper.DINOV3_POOL) == (1_689_000_000, "target")
    assert balanced_target(paper.DINOV3_CLUSTERED, 2_000_000, paper.DINOV3_POOL) == (198_706, "scaled")  # ~9.9 %
    assert balanced_target(300, 1_872, None) == (300, "target") and balanced_target(300, 100, None) == (100, "target")
