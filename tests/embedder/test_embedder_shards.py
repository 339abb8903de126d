"""The per-shard embed stage and `lvd embed`: outputs, resume, invalidation, user errors."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.config import EmbedConfig
from curation.core.schemas import POOL
from embedder.models import load_model
from embedder.shards import META_KEY, embed_pool_shard, shard_key
from embedder.store import file_metadata, read_embeddings
from pipelines.cli import main
from pipelines.commands.embed import embed_config
from curation.core.rundir import RunDir, write_table


def _pool(images: list[bytes], ids: list[str]) -> pa.Table:
    n = len(images)
    return pa.table({"image_id": ids, "source": [f"src/{i}" for i in ids], "width": [0] * n, "height": [0] * n,
                     "orig_width": [0] * n, "orig_height": [0] * n, "orig_format": ["JPEG"] * n,
                     "image": images, "meta": ["{}"] * n}, schema=POOL)


@pytest.fixture()
def run_dir(tmp_path, photos, encode) -> Path:
    write_table(_pool([encode(photos["chelsea"]), encode(photos["coffee"])], ["id-cat", "id-cup"]),
                tmp_path / "pool" / "part-00000.parquet")
    write_table(_pool([encode(photos["rocket"])], ["id-rocket"]), tmp_path / "pool" / "part-00001.parquet")
    return tmp_path


def _stamp(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, path.read_bytes()


def test_shard_is_written_then_skipped_then_redone_when_inputs_change(run_dir, lite0, photos, encode):
    cfg = EmbedConfig(batch_size=2)
    src, out = run_dir / "pool" / "part-00000.parquet", run_dir / "embeddings" / "part-00000.parquet"
    first = embed_pool_shard(src, out, lite0, cfg)
    assert (first["rows"], first["skipped"]) == (2, False)
    ids, emb = read_embeddings(out)
    assert list(ids) == ["id-cat", "id-cup"] and emb.shape == (2, 1280) and emb.dtype == np.float16
    assert file_metadata(out)[META_KEY] == shard_key(src, lite0)
    before = _stamp(out)

    again = embed_pool_shard(src, out, lite0, EmbedConfig(batch_size=1, num_workers=0))
    assert (again["rows"], again["skipped"]) == (2, True) and _stamp(out) == before

    # Another model (here: another input resolution) makes the shard stale ...
    smaller = load_model("efficientnet_lite0", device="cpu", image_size=128)
    assert smaller.key != lite0.key
    assert embed_pool_shard(src, out, smaller, cfg)["skipped"] is False
    # ... and so do other pool bytes under the same name.
    write_table(_pool([encode(photos["astronaut"])], ["id-astro"]), src)
    redone = embed_pool_shard(src, out, lite0, cfg)
    assert (redone["rows"], redone["skipped"]) == (1, False)
    assert list(read_embeddings(out)[0]) == ["id-astro"]


def test_lvd_embed_command_embeds_all_shards_and_resumes(run_dir, capsys):
    assert main(["embed", str(run_dir), "--device", "cpu", "--batch-size", "2"]) == 0
    outs = sorted((run_dir / "embeddings").glob("part-*.parquet"))
    assert [p.name for p in outs] == ["part-00000.parquet", "part-00001.parquet"]
    ids, emb = read_embeddings(outs)
    # The default model is the run's dedup model: the packaged copy descriptor lvd_copy_v1 (512-d).
    assert list(ids) == ["id-cat", "id-cup", "id-rocket"] and emb.shape == (3, 512)
    stamps = [_stamp(p) for p in outs]
    # A killed run loses at most the shard in flight: drop one output and rerun.
    os.remove(outs[1])
    assert main(["embed", str(run_dir), "--device", "cpu"]) == 0
    assert _stamp(outs[0]) == stamps[0]
    assert read_embeddings(outs[1])[1].tobytes() == emb[2:].tobytes()
    # An explicit --model is honoured (the retrieval model here).
    assert main(["embed", str(run_dir), "--device", "cpu", "--model", "efficientnet_lite0"]) == 0
    assert read_embeddings(sorted((run_dir / "embeddings").glob("part-*.parquet")))[1].shape == (3, 1280)


def test_lvd_embed_user_errors_are_one_line(run_dir, tmp_path_factory, capsys):
    assert main(["embed", str(run_dir), "--model", "vit_huge_patch16_224"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--model vit_huge_patch16_224:/path/to/weights.safetensors" in err
    empty = tmp_path_factory.mktemp("empty-run")
    assert main(["embed", str(empty)]) == 2
    assert "no pool shards" in capsys.readouterr().err


def test_config_comes_from_the_run_with_flags_on_top(run_dir):
    RunDir(run_dir).update_manifest(config={"embed": {"batch_size": 7, "num_workers": 1, "model": "x:/w.pth"}})
    args = argparse.Namespace(model=None, device="cpu", batch_size=None, num_workers=0, compile=None)
    cfg = embed_config(RunDir(run_dir), args)
    assert (cfg.batch_size, cfg.num_workers, cfg.model, cfg.device) == (7, 0, "x:/w.pth", "cpu")
    assert json.loads((run_dir / "manifest.json").read_text())["config"]["embed"]["batch_size"] == 7
