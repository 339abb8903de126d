"""Recipes: loading, paper references, defaults from the registry and the config, validation."""
from __future__ import annotations

from pathlib import Path

import pytest

from curation import paper
from curation.config import load_config
from curation.plan.planner import build_plan
from curation.retrieval.recipes import load_recipe, recipe_names
from curation.core.errors import UserError


def test_shipped_recipes() -> None:
    assert {"lvd142m", "demo"} <= set(recipe_names())


def test_lvd142m_rows_and_duplicated_datasets() -> None:
    recipe = load_recipe("lvd142m")
    rows = recipe.resolved_rows()
    assert len(rows) == 27
    assert [(r.dataset, r.mode) for r in rows if r.dataset in ("imagenet22k", "gldv2")] == [
        ("imagenet22k", "as_is"), ("imagenet22k", "sample"), ("gldv2", "as_is"), ("gldv2", "sample")
    ]
    by = {(r.dataset, r.mode): r for r in rows}
    assert by[("imagenet1k", "sample")].n == 32
    assert by[("imagenet22k", "sample")].n == 4
    assert by[("met", "cluster")].m == 10_000 and by[("met", "cluster")].cap == 1_000_000
    assert recipe.expected_total == paper.LVD142M_TOTAL == 142_109_386
    assert recipe.expected_pool == 744_000_000
    assert len(recipe.datasets()) == 25  # Table 15's datasets, each once


def test_demo_recipe_config_is_readable_by_load_config() -> None:
    recipe = load_recipe("demo")
    cfg = recipe.run_config()
    assert (cfg.clustering.k, cfg.retrieval.cluster_m, cfg.retrieval.cluster_cap) == (32, 50, 300)
    # The lead's loader reads the same block straight from the file.
    same = load_config(Path(__file__).parents[2] / "curation" / "retrieval" / "recipes" / "demo.yaml")
    assert same == cfg


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_recipe_from_path_with_defaults_and_balanced_row(tmp_path: Path) -> None:
    path = _write(tmp_path, """
name: custom
expected_pool: 1000000
config: {retrieval: {sample_n: 7}, clustering: {k: 1000}}
rows:
  - {dataset: imagenet1k}                      # registry default: sample, N=32
  - {dataset: dtd, mode: sample}               # no registry N: the config's 7
  - {dataset: caltech101}                      # registry default: cluster, no table number
  - {mode: balanced, target: paper.CLUSTER_CAP}
""")
    recipe = load_recipe(str(path))
    rows = recipe.resolved_rows()
    assert [(r.mode, r.n) for r in rows[:2]] == [("sample", 32), ("sample", 7)]
    assert rows[3].target == 1_000_000
    plan = build_plan(recipe)
    caltech = plan["rows"][2]
    # Upper bound: 3,030 // 4 = 757 clusters (<= K) x min(M=10,000, ceil(1e6 / 1,000) = 1,000).
    assert (caltech["retrieved"], caltech["final"], caltech["basis"]) == (757_000, 757_000, "bound")
    assert plan["rows"][3]["final"] == 1_000_000
    assert plan["total"] == 1_281_167 * 32 + 1_880 * 7 + 757_000 + 1_000_000


@pytest.mark.parametrize(
    "body, message",
    [
        ("rows:\n  - {dataset: dtd, mode: cluster, n: 4}", "n does not apply to mode cluster"),
        ("rows:\n  - {dataset: dtd, mode: sample, n: paper.SAMPLE_N}", "unknown paper constant 'paper.SAMPLE_N'; did you mean paper.SAMPLE_N_DEFAULT"),
        ("rows:\n  - {mode: cluster}", "a row needs a dataset"),
        ("rows: []", "rows"),
        ("config: {clustering: {k: many}}\nrows:\n  - {dataset: dtd}", "bad config value clustering.k"),
        ("rows:\n  - {dataset: dtd, mode: nearest}", "rows.0.mode"),
    ],
)
def test_bad_recipes_are_one_line_user_errors(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path, "name: bad\n" + body + "\n")
    with pytest.raises(UserError) as info:
        load_recipe(str(path))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
