"""`python -m training.ablate`: the curated / uncurated / seeds table on a small hand-made run directory
(the real table comes from a demo run; here 2 iterations per arm check the plumbing)."""
from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import jpeg, photos, view, write_image_folder

from training.ablate import main


def _shard(path, images):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image_id": [str(i) for i in range(len(images))], "image": pa.array(images, pa.binary())}), path)


@pytest.mark.slow  # three short trainings and four evaluations: ~45 s on 2 shared cores
def test_ablation_table(tmp_path):
    rng = random.Random(0)
    imgs = photos(("astronaut", "chelsea", "coffee", "rocket"), short_side=96)
    crops = {n: [jpeg(view(img, rng, 64)) for _ in range(8)] for n, img in imgs.items()}
    run, world = tmp_path / "run", tmp_path / "world"
    _shard(run / "output" / "part-00000.parquet", crops["astronaut"][:6] + crops["chelsea"][:6])
    _shard(run / "pool" / "part-00000.parquet", [c for n in imgs for c in crops[n]][:20])
    _shard(run / "pool" / "part-00001.parquet", [c for n in imgs for c in crops[n]][20:])
    _shard(run / "seeds" / "set_a" / "pool" / "part-00000.parquet", crops["astronaut"][6:] + crops["chelsea"][6:])
    for concept in ("astronaut", "chelsea"):
        (world / "seeds" / "set_a" / concept).mkdir(parents=True)
    names = ("astronaut", "chelsea", "coffee")
    write_image_folder(world / "eval" / "demo_eval" / "train", 3, seed=1, size=48, names=names)
    write_image_folder(world / "eval" / "demo_eval" / "test", 2, seed=2, size=48, names=names)

    out = tmp_path / "ablation"
    assert main(["--run", str(run), "--world", str(world), "--out", str(out), "--steps", "4", "optim.epochs=2",
                 "train.batch_size_per_gpu=4", "data.num_workers=0", "data.shuffle_buffer=8"]) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert result["iterations"] == 4 and result["seed_concepts"] == ["astronaut", "chelsea"]
    assert result["n_test"] == {"seed concepts": 4, "all concepts": 6}
    rows = result["rows"]
    assert list(rows) == ["init", "curated", "uncurated", "seeds"]
    assert rows["curated"]["images"] == rows["uncurated"]["images"] == 12 and rows["seeds"]["images"] == 4
    assert all(0.0 <= r["seed concepts"] <= 1.0 and 0.0 <= r["all concepts"] <= 1.0 for r in rows.values())
    assert pq.read_metadata(out / "data" / "uncurated" / "part-00000.parquet").num_rows == 12
    assert "(a) curated output" in (out / "ablation.md").read_text()


def test_lvd_ablate_without_a_curated_run_is_one_line(tmp_path, capsys) -> None:
    from pipelines.cli import main

    assert main(["ablate", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lvd ablate: error: no curated shards" in err[0] and "lvd curate" in err[0]
