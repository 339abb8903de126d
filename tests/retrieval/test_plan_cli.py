"""`lvd plan`: the lvd142m recipe reproduces the paper's Table 15 row by row, and the cost model."""
from __future__ import annotations

import json

import pytest

from pipelines.cli import main

# Table 15 of the paper, written out independently of the recipe and the registry:
# (dataset, mode, images, retrieved or None, final).
TABLE_15 = [
    ("imagenet22k", "as_is", 14_197_086, None, 14_197_086),
    ("imagenet22k", "sample", 14_197_086, 56_788_344, 56_788_344),
    ("imagenet1k", "sample", 1_281_167, 40_997_344, 40_997_344),
    ("caltech101", "cluster", 3_030, 2_630_000, 1_000_000),
    ("cub200", "cluster", 5_994, 1_300_000, 1_000_000),
    ("dtd", "cluster", 1_880, 1_580_000, 1_000_000),
    ("fgvc_aircraft", "cluster", 3_334, 1_170_000, 1_000_000),
    ("flowers102", "cluster", 1_020, 1_060_000, 1_000_000),
    ("food101", "cluster", 75_750, 21_670_000, 1_000_000),
    ("oxford_pets", "cluster", 3_680, 2_750_000, 1_000_000),
    ("stanford_cars", "cluster", 8_144, 7_220_000, 1_000_000),
    ("sun397", "cluster", 19_850, 18_950_000, 1_000_000),
    ("voc2007", "cluster", 2_501, 1_010_000, 1_000_000),
    ("ade20k", "cluster", 20_210, 20_720_000, 1_000_000),
    ("cityscapes", "cluster", 2_975, 1_390_000, 1_000_000),
    ("voc2012_seg", "cluster", 1_464, 10_140_000, 1_000_000),
    ("mapillary_sls", "as_is", 1_434_262, None, 1_434_262),
    ("kitti", "cluster", 23_158, 3_700_000, 1_000_000),
    ("nyu_depth_v2", "cluster", 24_231, 10_850_000, 1_000_000),
    ("sun_rgbd", "cluster", 4_829, 4_870_000, 1_000_000),
    ("gldv2", "as_is", 1_580_470, None, 1_580_470),
    ("gldv2", "sample", 1_580_470, 6_321_880, 6_321_880),
    ("amstertime_new", "cluster", 1_231, 960_000, 960_000),
    ("amstertime_old", "cluster", 1_231, 830_000, 830_000),
    ("met", "cluster", 397_121, 62_860_000, 1_000_000),
    ("roxford", "cluster", 4_993, 3_680_000, 1_000_000),
    ("rparis", "cluster", 6_322, 3_660_000, 1_000_000),
]


def _plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_lvd142m_total_and_every_row_equal_table_15(capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan(capsys, "--recipe", "lvd142m")
    assert plan["total"] == 142_109_386
    assert plan["total_complete"] is True
    assert plan["expected_total"] == 142_109_386
    assert plan["pool_size"] == 744_000_000
    got = [(r["dataset"], r["mode"], r["images"], None if r["mode"] == "as_is" else r["retrieved"], r["final"]) for r in plan["rows"]]
    assert got == TABLE_15
    assert sum(row[4] for row in TABLE_15) == 142_109_386  # the literal table is self-consistent


def test_text_output_has_table_and_total(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--recipe", "lvd142m"]) == 0
    out = capsys.readouterr().out
    assert "total final: 142,109,386" in out
    assert "matches the recipe's expected total 142,109,386" in out
    assert "Google Landmarks v2 / train (clean)" in out and "62,860,000" in out
    assert "fits 160 GPUs x 48 h (7,680 GPU-hours): yes" in out


def test_cost_model_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    cost = _plan(capsys, "--recipe", "lvd142m")["cost"]
    # Default rate: 125 TFLOP/s x 35 % / 254 GFLOP per image.
    assert cost["images_per_second_per_gpu"] == pytest.approx(125e12 * 0.35 / 254e9)
    seeds = sum({r[0]: r[2] for r in TABLE_15}.values())  # each dataset embedded once
    assert seeds == 19_105_933
    assert cost["images_to_embed"] == 744_000_000 + seeds
    assert cost["embedding_gpu_hours"] == pytest.approx((744_000_000 + seeds) / (125e12 * 0.35 / 254e9) / 3600)
    assert cost["embedding_gpu_hours"] == pytest.approx(1231.0, abs=1.0)
    assert cost["fits"] is True
    assert cost["index"]["ivfpq"] == 744_000_000 * 72
    assert cost["index"]["flat_float16"] == 744_000_000 * 1280 * 2
    assert cost["disk"]["output_images"] == 142_109_386 * cost["disk"]["avg_image_bytes"]


def test_flags_change_rate_gpus_and_pool(capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan(capsys, "--recipe", "lvd142m", "--gpus", "4", "--images-per-second", "500", "--pool-size", "372000000")
    cost = plan["cost"]
    assert cost["gpus"] == 4
    assert cost["embedding_gpu_hours"] == pytest.approx((372_000_000 + 19_105_933) / 500 / 3600)
    assert cost["fits"] is False  # 217 GPU-hours > 4 x 48 = 192
    rows = {(r["dataset"], r["mode"]): r for r in plan["rows"]}
    # Half the pool: cluster rows' retrieved halves (clusters keep their share of the pool).
    assert rows[("caltech101", "cluster")]["retrieved"] == 1_315_000
    assert rows[("caltech101", "cluster")]["basis"] == "scaled"
    assert rows[("amstertime_new", "cluster")]["final"] == 480_000
    assert rows[("imagenet1k", "sample")]["final"] == 40_997_344  # images x N, pool-independent
    assert plan["expected_total"] is None  # the paper's total holds only at the paper's pool


def test_demo_recipe_without_sizes_marks_unknowns(capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan(capsys, "--recipe", "demo")
    assert [r["dataset"] for r in plan["rows"]] == ["demo_objects", "demo_textures", "demo_scenes"]
    assert [r["mode"] for r in plan["rows"]] == ["as_is", "sample", "cluster"]
    assert plan["clusters_k"] == 32
    assert plan["rows"][2]["m"] == 50 and plan["rows"][2]["cap"] == 300
    assert plan["total_complete"] is False and plan["cost"] is None


def test_unknown_recipe_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--recipe", "lvd142"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lvd plan: error: unknown recipe 'lvd142'; did you mean lvd142m, lvd1689m? (or give a path to a recipe YAML)"


SCALE_KEYS = {
    "engine", "gpus", "workers", "worker_memory_gib", "pool", "retrieval_images", "output", "dim", "dtype_bytes",
    "raw_embedding_bytes", "index", "shards", "k", "edges_upper_bound", "edges_parquet_bytes", "components", "stages",
    "hours", "total_hours", "bottleneck", "budget_hours", "fits", "rates_file", "not_modelled",
    "kept", "clusters", "clusters_note", "sample_queries", "cluster_queries", "driver", "hierarchy",
}


def test_scale_object_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    scale = _plan(capsys, "--recipe", "lvd142m", "--engine", "ray", "--dim", "1024")["scale"]
    assert set(scale) == SCALE_KEYS
    assert scale["pool"] == 1_200_000_000  # 744M traced back through the paper's funnel
    assert scale["output"] == 142_109_386
    assert scale["retrieval_images"] == 744_000_000 + 19_105_933
    assert scale["raw_embedding_bytes"] == 2_457_600_000_000  # 1.2B x 1024 x float16
    assert scale["index"]["codes"] == 1_200_000_000 * 64 and scale["index"]["ids"] == 1_200_000_000 * 8
    assert (scale["engine"], scale["gpus"], scale["workers"], scale["worker_memory_gib"]) == ("ray", 160, 800, 32.0)
    assert scale["components"]["rounds_bound"] == 31  # ceil(log2 1.2e9)
    assert scale["components"]["engine_rounds"] == 12  # 1,600 edge shards: 1 + ceil(log2 1600)
    assert scale["edges_upper_bound"] == 1_200_000_000 * 64
    assert [s["name"] for s in scale["stages"]] == ["ingest", "safety", "hash", "hash_edges", "embed", "knn_edges", "verify", "components",
                                                    "cluster_train", "cluster_assign", "retrieve", "output",
                                                    "engine_overhead"]
    # Retrieval work from the recipe: the deduplicated pool, K, and the seed images of sample / cluster rows.
    assert (scale["kept"], scale["clusters"]) == (744_000_000, 100_000)
    assert scale["sample_queries"] > 10_000_000 and 0 < scale["cluster_queries"] < scale["sample_queries"]
    retrieve = {s["name"]: s for s in scale["stages"]}["retrieve"]
    assert retrieve["work"] == pytest.approx(scale["sample_queries"] * 744_000_000 * 1024
                                             + scale["cluster_queries"] * 100_000 * 1024)
    assert (retrieve["unit"], retrieve["units"]) == ("GPU", 160)
    assert scale["driver"]["components_bytes"] > 0 and scale["driver"]["ids_bytes"] == 1_200_000_000 * 32
    assert scale["hours"] == {s["name"]: s["wall_hours"] for s in scale["stages"]}
    # The fit verdict is the sum of the stage times against the paper's 48 h.
    assert scale["total_hours"] == pytest.approx(sum(scale["hours"].values()))
    assert scale["budget_hours"] == 48.0
    assert scale["fits"] is (scale["total_hours"] <= 48.0)


def test_scale_flags_change_workers_memory_and_engine(capsys: pytest.CaptureFixture[str]) -> None:
    base = _plan(capsys, "--recipe", "lvd142m", "--engine", "ray")["scale"]
    small = _plan(capsys, "--recipe", "lvd142m", "--engine", "ray", "--workers", "400", "--worker-memory-gib", "8")["scale"]
    assert small["workers"] == 400 and small["worker_memory_gib"] == 8.0
    assert small["shards"]["count"] > base["shards"]["count"]
    assert small["components"]["engine_rounds"] == 11  # 800 edge shards
    ingest = {s["name"]: s for s in small["stages"]}["ingest"]
    assert ingest["units"] == 400
    assert ingest["wall_hours"] == pytest.approx(2 * {s["name"]: s for s in base["stages"]}["ingest"]["wall_hours"])
    local = _plan(capsys, "--recipe", "lvd142m")["scale"]
    assert local["engine"] == "local" and local["shards"]["engine_shards"] == 1
    assert {s["name"]: s for s in local["stages"]}["components"]["units"] == 1


def test_missing_rates_file_is_labelled_assumed(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    missing = str(tmp_path / "no-results.json")
    scale = _plan(capsys, "--recipe", "lvd142m", "--rates", missing)["scale"]
    assert scale["rates_file"] is None
    assert {s["source"] for s in scale["stages"]} == {"assumed", "baseline"}  # local: no overhead by definition
    assert {s["source"] for s in scale["stages"] if s["name"] != "engine_overhead"} == {"assumed"}
    assert main(["plan", "--recipe", "lvd142m", "--engine", "ray", "--rates", missing]) == 0
    out = capsys.readouterr().out
    assert "rates: none found: every rate assumed" in out
    rows = [line for line in out.splitlines() if "-h / " in line]  # the stage table
    assert len(rows) == 13 and " assumed " in rows[4]  # embed: FLOP-derived without --images-per-second
    rows = [row for row in rows if not row.startswith("  embed ")]
    assert len(rows) == 12 and all(" assumed " in row and " measured " not in row for row in rows)
    assert "B per pool row (assumed)" in out  # the driver's memory too


def test_text_output_has_scale_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--recipe", "lvd142m", "--engine", "beam", "--dim", "1024"]) == 0
    out = capsys.readouterr().out
    assert "Scale: 1,200,000,000 -> 142,109,386 images on engine beam, 160 GPUs, 800 CPU workers, 32 GiB per worker" in out
    assert "raw embeddings: 1,200,000,000 x 1024-d x 2 B = 2.5 TB" in out
    assert "bound 31 = ceil(log2 n)" in out
    assert "hash_edges" in out and "knn_edges" in out and "engine_overhead" in out
    assert "cluster_train" in out and "retrieve" in out and "driver memory: ids 38.4 GB" in out
    assert ("total" in out) and ("fits (stages" in out or "DOES NOT FIT (stages" in out)


@pytest.mark.parametrize("args, message", [
    (["--worker-memory-gib", "0"], "lvd plan: error: argument --worker-memory-gib: must be positive: 0"),
    (["--workers", "-3"], "lvd plan: error: argument --workers: must be positive: -3"),
    (["--engine", "spark"], "lvd plan: error: argument --engine: invalid choice: 'spark'"),
])
def test_bad_scale_flags_are_usage_errors(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--recipe", "lvd142m", *args])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(message)


@pytest.mark.parametrize("args, message", [
    (["--dim", "1000"], "lvd plan: error: dimension 1000 is not a multiple of the 64-byte PQ code"),
    (["--worker-memory-gib", "0.5"], "lvd plan: error: 0.5 GiB per worker is too small"),
])
def test_unusable_scale_values_are_one_line_errors(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["plan", "--recipe", "lvd142m", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(message)


def test_a_recipe_whose_dedup_model_verifies_plans_the_verify_stage(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    """The default dedup model (`lvd_copy_v1`) has a verified calibration, so its runs check the
    candidate pairs in the pixels: the plan costs a `verify` stage after the k-NN graph; a recipe
    with the copy head (`dedup.model: efficientnet_lite0_copy`, no verification) has none."""
    import yaml

    from curation.retrieval.recipes import RECIPES_DIR

    names = [s["name"] for s in _plan(capsys, "--recipe", "lvd142m")["scale"]["stages"]]
    assert names[names.index("knn_edges") + 1] == "verify"
    verify = next(s for s in _plan(capsys, "--recipe", "lvd142m")["scale"]["stages"] if s["name"] == "verify")
    assert verify["work"] > 1_200_000_000 and verify["wall_hours"] > 0
    recipe = yaml.safe_load((RECIPES_DIR / "lvd142m.yaml").read_text())
    recipe.setdefault("config", {}).setdefault("dedup", {})["model"] = "efficientnet_lite0_copy"
    path = tmp_path / "copy_head.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert "verify" not in [s["name"] for s in _plan(capsys, "--recipe", str(path))["scale"]["stages"]]


