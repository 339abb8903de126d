"""The stage graph is a DAG of data dependencies: a change recomputes the stages it touches and
their readers, transitively, nothing else (issue 14, item 8)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from curation.config import RunConfig, load_config
from pipelines.context import RunContext
from pipelines.graph import Stage, check_order, readers, run_stages, stage_keys
from pipelines.pipeline import pipeline
from curation.core.rundir import RunDir

# -- the driver on toy stages (no images) --------------------------------------------------------


class _Toy:
    """Toy stages over a dict of parameters: each run logs its name and writes one output file."""

    def __init__(self, root: Path):
        self.params: dict[str, Any] = {}
        self.on: dict[str, bool] = {}
        self.ran: list[str] = []
        self.root = root

    def stage(self, name: str, reads: Any = ()) -> Stage:
        def run(ctx: RunContext) -> dict[str, Any]:
            self.ran.append(name)
            out = self.root / name / "out.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(str(self.params.get(name)))
            return {}

        return Stage(name, run, lambda ctx: self.params.get(name), reads=reads,
                     enabled=lambda ctx: self.on.get(name, True), outputs=(name,))

    def run(self, stages: list[Stage], **kw: Any) -> list[str]:
        self.ran = []
        ctx = RunContext(run=RunDir(self.root), cfg=RunConfig(), engine=SimpleNamespace(name="toy"), progress=False)
        report = run_stages(ctx, stages, **kw)
        assert sorted(n for n, info in report.items() if not info["skipped"]) == sorted(self.ran)
        return self.ran


@pytest.fixture()
def toy(tmp_path: Path) -> tuple[_Toy, list[Stage]]:
    t = _Toy(tmp_path / "run")
    #   a ── b ── d          e (reads nothing)
    #    └── c ──┘           f (off) ── g
    stages = [t.stage("a"), t.stage("b", ("a",)), t.stage("c", ("a",)), t.stage("d", ("b", "c")), t.stage("e"),
              t.stage("f"), t.stage("g", lambda ctx: ("f", "e"))]
    t.on["f"] = False
    return t, stages


def test_a_change_reruns_its_stage_and_its_readers_only(toy) -> None:
    t, stages = toy
    assert t.run(stages) == ["a", "b", "c", "d", "e", "g"]
    assert t.run(stages) == []
    t.params["c"] = 1
    assert t.run(stages) == ["c", "d"]
    t.params["a"] = 1
    assert t.run(stages) == ["a", "b", "c", "d"]
    t.params["e"] = 1
    assert t.run(stages) == ["e", "g"]


def test_a_disabled_stage_adds_no_key(toy) -> None:
    t, stages = toy
    t.run(stages)
    t.params["f"] = 1  # f is off: its key is not part of g's
    assert t.run(stages) == []
    t.on["f"] = True  # f on: g reads it now
    assert t.run(stages) == ["f", "g"]


def test_force_reruns_the_stage_and_its_readers(toy) -> None:
    t, stages = toy
    t.run(stages)
    assert t.run(stages, force=("b",)) == ["b", "d"]
    assert t.run(stages, force=("a",)) == ["a", "b", "c", "d"]
    assert t.run(stages, force=("e",)) == ["e", "g"]
    assert t.run(stages) == []
    assert readers(stages, ["c"]) == {"c", "d"}


def test_until_and_the_outputs_of_a_changed_stage(toy) -> None:
    t, stages = toy
    t.run(stages)
    stale = t.root / "c" / "stale.txt"
    stale.write_text("from another key")
    partial = t.root / "b" / "partial.txt"
    partial.write_text("a killed run's finished shard")
    RunDir(t.root).invalidate("b")  # b killed midway: no marker, its partial outputs stay
    t.params["c"] = 2
    assert t.run(stages, until="c") == ["b", "c"]
    assert not stale.exists() and partial.exists() and (t.root / "c" / "out.txt").read_text() == "2"
    assert t.run(stages) == ["d"]


def test_stages_read_only_earlier_stages(toy) -> None:
    t, stages = toy
    with pytest.raises(ValueError, match="'b' reads 'd'"):
        check_order([stages[0], t.stage("b", ("d",)), stages[3]])
    with pytest.raises(ValueError, match="listed twice"):
        check_order([stages[0], stages[0]])


# -- the curation pipeline's keys (no images) ----------------------------------------------------
DEDUP_SIDE = {"ingest", "hash", "hash_edges", "embed", "eval_embed", "seeds"}


def _keys(tmp_path: Path, *overrides: str, **context: Any) -> dict[str, str]:
    from curation.config import parse_overrides
    from curation.retrieval.recipes import Recipe

    for name in ("pool", "eval", "seeds/a", "seeds/b"):  # inputs: their fingerprints are part of keys
        if not (tmp_path / name / "x.jpg").exists():
            (tmp_path / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / name / "x.jpg").write_bytes(b"x")
    seeds = [SimpleNamespace(name=n, location=SimpleNamespace(path=str(tmp_path / "seeds" / n), format="folder"))
             for n in ("a", "b")]
    recipe = Recipe.model_validate({"name": "t", "rows": [{"dataset": "a", "mode": "sample", "n": 2},
                                                          {"dataset": "b", "mode": "cluster"}]})
    ctx = RunContext(run=RunDir(tmp_path / "run"), cfg=load_config(overrides=parse_overrides(list(overrides))),
                     engine=SimpleNamespace(name="toy"), pool_sources=[str(tmp_path / "pool")],
                     eval_sources=[str(tmp_path / "eval")], dedup_methods=("hash", "embedding"), recipe=recipe,
                     seeds=seeds, **context)
    stages = pipeline()
    check_order(stages, ctx)
    return stage_keys(ctx, stages)


def _changed(tmp_path: Path, *overrides: str) -> set[str]:
    before, after = _keys(tmp_path), _keys(tmp_path, *overrides)
    assert before.keys() == after.keys()
    return {name for name in before if before[name] != after[name]}


@pytest.mark.parametrize("overrides, changed", [
    (["dedup.k=32"], {"knn_edges", "eval_edges", "components", "cluster", "retrieve", "output", "report"}),
    # eval_edges too: it reads the whitening knn_edges fits (one output of that stage)
    (["dedup.self_threshold=0.3"], {"knn_edges", "eval_edges", "components", "cluster", "retrieve", "output",
                                    "report"}),
    (["dedup.relative_threshold=0.3"], {"eval_edges", "components", "cluster", "retrieve", "output", "report"}),
    (["hashing.radius=4"], {"hash_edges", "components", "cluster", "retrieve", "output", "report"}),
    (["clustering.k=8"], {"cluster", "retrieve", "output", "report"}),
    (["clustering.balanced.target=5"], {"retrieve", "output", "report"}),
    (["retrieval.sample_n=3"], {"retrieve", "output", "report"}),
    (["retrieval.cluster_m=3", "retrieval.seed=1"], {"retrieve", "output", "report"}),
    (["output.shard_rows=7"], {"output", "report"}),
    (["embed.batch_size=3"], set()),  # speed only
    (["embed.image_size=160"], {"embed", "knn_edges", "eval_embed", "eval_edges", "components", "seeds", "cluster",
                                "retrieve", "output", "report"}),
    (["decode.max_side=256"], "all"),  # every stage reads the pool, or ingests its own images
])
def test_a_config_change_changes_the_keys_of_its_readers_only(tmp_path: Path, overrides, changed) -> None:
    # The default dedup model's candidate pairs are pixel-verified: `verify` reads the hash edges
    # and both graphs, so it changes with any of them.
    if changed != "all" and changed & {"hash_edges", "knn_edges", "eval_edges"}:
        changed = changed | {"verify"}
    assert _changed(tmp_path, *overrides) == (set(_keys(tmp_path)) if changed == "all" else changed)


def test_dedup_settings_never_touch_the_embeddings(tmp_path: Path) -> None:
    changed = _changed(tmp_path, "dedup.k=8", "dedup.self_threshold=0.1", "dedup.relative_threshold=0.1",
                       "dedup.whiten_eps=0.01", "knn.nprobe=3", "retrieval.sample_n=2", "clustering.k=3",
                       "retrieval.keep_multiplicity=true")
    assert not changed & DEDUP_SIDE


def test_the_retrieval_model_decides_what_cluster_reads(tmp_path: Path) -> None:
    """With one model for dedup and retrieval, `seeds` does not embed the pool: the k-means reads
    the dedup embeddings, and a change of the seed sets leaves it alone."""
    same = ("dedup.model=efficientnet_lite0",)
    base = _keys(tmp_path, *same)
    (tmp_path / "seeds" / "a" / "y.jpg").write_bytes(b"y")  # a seed set changes
    after = _keys(tmp_path, *same)
    assert {n for n in base if base[n] != after[n]} == {"seeds", "retrieve", "output", "report"}
    # The packaged default: copy head for dedup, the plain model for retrieval (the pool embedded twice).
    base = _keys(tmp_path)
    (tmp_path / "seeds" / "a" / "z.jpg").write_bytes(b"z")
    after = _keys(tmp_path)
    assert {n for n in base if base[n] != after[n]} == {"seeds", "cluster", "retrieve", "output", "report"}


# -- a tiny curate run: what a rerun recomputes ----------------------------------------------------
TINY_RECIPE = """name: tiny-dag
config:
  clustering: {k: 4}
  retrieval: {cluster_m: 4, cluster_cap: 20}
rows:
  - {dataset: demo_textures, mode: sample, n: 2}
  - {dataset: demo_scenes, mode: cluster}
"""


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@pytest.fixture(scope="module")
def dag_world(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few pool images with their planted copies, two per concept of two seed sets and of the
    evaluation set."""
    out = tmp_path_factory.mktemp("dag") / "world"
    for name in ("world.json", "seeds.yaml", "truth.parquet"):
        _copy(small_world / name, out / name)
    originals = sorted((small_world / "pool" / "batch-0").iterdir())[:16]
    for f in originals:
        _copy(f, out / "pool" / "batch-0" / f.name)
    stems = {f.stem for f in originals}
    for f in sorted((small_world / "pool" / "copies").iterdir()):
        if f.name.split("-copy")[0] in stems:
            _copy(f, out / "pool" / "copies" / f.name)
    for folder in ("seeds/demo_textures/*", "seeds/demo_scenes/*", "eval/*/*/*"):
        for d in sorted(small_world.glob(folder)):
            for f in sorted(d.iterdir())[:2]:
                _copy(f, out / f.relative_to(small_world))
    (out / "recipe.yaml").write_text(TINY_RECIPE)
    return out


def _curate(world: Path, out: Path, *extra: str) -> dict[str, bool]:
    """`lvd curate` on the tiny world; which stages were skipped."""
    from pipelines.cli import main

    # The copy head (no pixel verification, unlike the default), whose thresholds these are;
    # verification is switched on below as a change.
    argv = ["curate", "--world", str(world), "--recipe", str(world / "recipe.yaml"), "--out", str(out),
            "--set", "dedup.model=efficientnet_lite0_copy",
            "--set", "shard_rows=20", "--set", "dedup.self_threshold=0.2", "--set", "dedup.relative_threshold=0.2",
            "--workers", "1", "--no-progress", *extra]
    assert main(argv) == 0, argv
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    return {name: info["skipped"] for name, info in stages.items()}


def test_reruns_recompute_what_a_change_touches(dag_world: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _curate(dag_world, run)
    # every stage on, but `balance` (the recipe has no balanced rows) and `verify` (the copy head has
    # no verified calibration)
    assert set(first) == {s.name for s in pipeline()} - {"balance", "verify"} and not any(first.values())
    assert all(_curate(dag_world, run).values())

    def rerun(*sets: str, force: str | None = None) -> set[str]:
        args = [a for s in sets for a in ("--set", s)] + (["--force", force] if force else [])
        return {name for name, skipped in _curate(dag_world, run, *args).items() if not skipped}

    late = {"retrieve", "output", "report"}
    # Each change is made on top of the last (--set holds for one invocation: earlier ones repeat).
    assert rerun("dedup.k=8") == {"knn_edges", "eval_edges", "components", "cluster"} | late
    assert rerun("dedup.k=8", "dedup.self_threshold=0.3") == {"knn_edges", "eval_edges", "components", "cluster"} | late
    assert rerun("dedup.k=8", "dedup.self_threshold=0.3", "clustering.k=3") == {"cluster"} | late
    assert rerun("dedup.k=8", "dedup.self_threshold=0.3", "clustering.k=3", "retrieval.sample_n=1") == late
    embeddings = {"embed", "knn_edges", "eval_embed", "eval_edges", "components", "seeds", "cluster"}
    assert rerun("dedup.k=8", "dedup.self_threshold=0.3", "clustering.k=3", "retrieval.sample_n=1",
                 "embed.image_size=160") == embeddings | late
    # --force: the stage and its readers only.
    assert rerun("dedup.k=8", "dedup.self_threshold=0.3", "clustering.k=3", "retrieval.sample_n=1",
                 "embed.image_size=160", force="cluster") == {"cluster"} | late
    # Verification switched on: the new stage and what reads the components; the graphs stay.
    assert rerun("dedup.k=8", "dedup.self_threshold=0.3", "clustering.k=3", "retrieval.sample_n=1",
                 "embed.image_size=160", "dedup.verify.enabled=true") == {"verify", "components", "cluster"} | late
    # How far apart the parts of one image must lie is read by the components alone.
    assert rerun("dedup.k=8", "dedup.self_threshold=0.3", "clustering.k=3", "retrieval.sample_n=1",
                 "embed.image_size=160", "dedup.verify.enabled=true", "dedup.verify.min_overlap=0.2") == {"components", "cluster"} | late


def test_a_stage_killed_under_another_key_starts_clean(small_world: Path, tmp_path: Path) -> None:
    """Ingest killed after some shards, rerun with another shard size: the killed run's parts are
    stale and cleared (before, a leftover part-00003 of the killed run stayed in the pool)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pyarrow.parquet as pq

    def cmd(rows: int, out: str = "run") -> list[str]:
        return [sys.executable, "-m", "pipelines", "ingest", str(small_world / "pool"), "--out", str(tmp_path / out),
                "--set", f"shard_rows={rows}", "--workers", "1", "--no-progress"]

    markers = tmp_path / "run" / "_work" / "ingest-pool"
    proc = subprocess.Popen(cmd(100), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(markers.glob("*.json"))) < 4:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(markers.glob("*.json"))) >= 4
    subprocess.run(cmd(1000), check=True, capture_output=True)
    subprocess.run(cmd(1000, "clean"), check=True, capture_output=True)
    killed, clean = pq.read_table(tmp_path / "run" / "pool"), pq.read_table(tmp_path / "clean" / "pool")
    assert killed.num_rows == clean.num_rows
    assert sorted(p.name for p in (tmp_path / "run" / "pool").glob("*.parquet")) == \
        sorted(p.name for p in (tmp_path / "clean" / "pool").glob("*.parquet"))
