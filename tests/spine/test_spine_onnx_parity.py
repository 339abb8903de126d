"""ONNX Runtime (the CPU default) and torch (the reference) make the same dedup decisions on the
demo world (issue 17), and the default run embeds the pool for both of its models in one pass."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.cli import main


def test_onnx_and_torch_make_the_same_dedup_decisions(demo_run: Path, small_world: Path, tmp_path: Path) -> None:
    torch_run = tmp_path / "torch"
    # As before issue 17: torch, and one decode per model.
    assert main(["curate", "--world", str(small_world), "--out", str(torch_run), "--no-progress", "--until",
                 "components", "--set", "embed.runtime=torch", "--set", "embed.shared_decode=false"]) == 0
    components = [pq.read_table(run / "dedup" / "components.parquet").sort_by("image_id") for run in (demo_run, torch_run)]
    assert components[0].equals(components[1])
    # The graphs: the same pairs, but for pairs whose score lies within float noise of the threshold
    # (the default's evaluation candidates are thousands at its 0.45, in the bulk of the scores).
    for edges in ("knn_edges", "eval_edges"):
        threshold = json.loads((demo_run / "manifest.json").read_text())["stages"][edges]["counts"]["threshold"]
        scored = [{(r["src"], r["dst"]): r["score"] for r in pq.read_table(run / "dedup" / f"{edges}.parquet").to_pylist()}
                  for run in (demo_run, torch_run)]
        differ = set(scored[0]) ^ set(scored[1])
        assert len(differ) <= 0.001 * len(scored[0]), (edges, len(differ))
        assert all(abs(next(s[p] for s in scored if p in s) - threshold) < 1e-3 for p in differ), edges


def test_demo_embeds_the_pool_for_both_models_in_one_pass(demo_run: Path) -> None:
    stages = json.loads((demo_run / "manifest.json").read_text())["stages"]
    counts = stages["embed"]["counts"]
    assert counts["model"] == "lvd_copy_v1"
    assert counts["retrieval_embeddings_model"] == "efficientnet_lite0"
    assert counts["retrieval_embeddings_embedded"] == counts["embedded"] > 0
    # Their resume keys are the ones a pass of the retrieval model alone writes: the seeds stage
    # found them current and embedded only the seed sets.
    from curation.config import EmbedConfig
    from embedder.models import load_from_config
    from embedder.shards import is_current, shard_key

    model = load_from_config(EmbedConfig(model="efficientnet_lite0", device="cpu"))
    shards = sorted((demo_run / "pool").glob("part-*.parquet"))
    assert shards
    for shard in shards:
        assert is_current(demo_run / "retrieval_embeddings" / shard.name, shard_key(shard, model))
