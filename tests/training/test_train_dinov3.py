"""DINOv3's training additions: constant schedules, Gram anchoring (with its high-resolution Gram
teacher) and homogeneous batches from one seed dataset."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import PHOTOS, jpeg, photos, view

from pipelines.cli import main
from training.config import load_config
from training.data.augment import CropSpec
from training.data.loader import DataState, HomogeneousSpec, MaskSpec, MultiCropBatches, homogeneous_step
from training.data.shards import list_shards, plan_dataset_units, plan_units
from training.losses import gram_loss, resize_patch_features
from training.meta_arch import SSLMetaArch
from training.optim import build_optimizer
from training.schedules import build_schedules
from training.train import crop_spec, training_step


def test_constant_schedules():
    cfg = load_config("training/configs/tiny.yaml", ["optim.schedule=constant", "teacher.momentum_teacher=0.999",
                                                     "teacher.warmup_teacher_temp_epochs=2"])
    s = build_schedules(cfg, 1024)
    e, total = 20, s.total_iters
    assert s.at(0)["lr"] == 0.0 and s.at(e // 2)["lr"] == pytest.approx(0.005)  # linear warm-up (1 epoch) ...
    assert s.at(e)["lr"] == s.at(total // 2)["lr"] == s.at(total - 1)["lr"] == pytest.approx(0.01)  # ... then constant
    assert {s.at(i)["weight_decay"] for i in (0, e, total - 1)} == {0.04}
    assert {s.at(i)["momentum"] for i in (0, e, total - 1)} == {0.999}
    assert s.at(0)["teacher_temp"] == pytest.approx(0.04) and s.at(2 * e)["teacher_temp"] == pytest.approx(0.04)
    assert s.at(0)["last_layer_lr"] == 0.0
    cosine = build_schedules(load_config("training/configs/tiny.yaml"), 1024)
    assert cosine.at(total - 1)["lr"] < 0.001 and cosine.at(total - 1)["weight_decay"] > 0.09


def test_gram_loss_definition():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    assert gram_loss(s, s) == 0 and gram_loss(s, 3 * s) < 1e-12  # normalised features: scale-free
    ns, nt = torch.nn.functional.normalize(s, dim=-1), torch.nn.functional.normalize(t, dim=-1)
    expected = sum(((ns[b] @ ns[b].T - nt[b] @ nt[b].T) ** 2).sum() for b in range(2)) / (2 * 5 * 5)
    assert gram_loss(s, t) == pytest.approx(expected.item(), rel=1e-5)
    flat = torch.cat([ns[0], ns[1]]) @ torch.cat([ns[0], ns[1]]).T - torch.cat([nt[0], nt[1]]) @ torch.cat([nt[0], nt[1]]).T
    assert gram_loss(s, t, img_level=False) == pytest.approx((flat**2).mean().item(), rel=1e-5)
    grid = torch.randn(1, 16, 3)
    assert torch.equal(resize_patch_features(grid, (4, 4), (4, 4)), grid)
    assert resize_patch_features(grid, (4, 4), (2, 2)).shape == (1, 4, 3)


def test_gram_teacher_refresh_schedule():
    cfg = load_config("training/configs/tiny.yaml", ["gram.enabled=true", "gram.start_iteration=3",
                                                     "gram.update_frequency=4", "gram.max_updates=2"])
    meta = SSLMetaArch(cfg)
    assert [i for i in range(20) if meta.gram_refresh_due(i)] == [3, 7, 11]
    with torch.no_grad():
        meta.teacher["backbone"].cls_token.add_(1.0)
    assert not torch.equal(meta.gram_teacher.cls_token, meta.teacher["backbone"].cls_token)
    meta.refresh_gram()
    assert torch.equal(meta.gram_teacher.cls_token, meta.teacher["backbone"].cls_token)
    assert not any(p.requires_grad for p in meta.gram_teacher.parameters())


def test_gram_anchoring_pulls_the_student_towards_its_gram_teacher(shards):
    """Only the Gram loss on (high-resolution Gram crops, 2x): ten steps on one batch shrink it."""
    cfg = load_config("training/configs/tiny.yaml", ["gram.enabled=true", "dino.loss_weight=0", "ibot.loss_weight=0",
                                                     "dino.koleo_loss_weight=0", "model.drop_path_rate=0"])
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg)
    meta.train()
    spec = crop_spec(cfg, highres=False)
    assert spec.gram_size == 96 and spec.global_size == 48
    units = plan_units(list_shards(str(shards)), min_units=1)
    data = MultiCropBatches(units, DataState(1), 8, spec, MaskSpec(), 8, 0, 0, 1, 0, 64)
    batch = next(iter(data))
    batch.pop("data_state")
    assert batch["gram_crops"].shape == (16, 3, 96, 96)
    optimizer = build_optimizer(meta.student, 4, cfg)
    with torch.no_grad():  # move the student away from the teacher, as training does before the Gram phase
        for p in meta.student["backbone"].blocks.parameters():
            p.add_(0.05 * torch.randn_like(p))
    meta.refresh_gram()
    values = {"lr": 3e-3, "last_layer_lr": 0.0, "weight_decay": 0.0, "teacher_temp": 0.04, "momentum": 1.0, "gram_weight": 1.0}
    losses = [float(training_step(meta, optimizer, batch, values, 3.0, False)[1]["gram"]) for _ in range(10)]
    print("gram loss over 10 steps on one batch:", [round(v, 4) for v in losses])
    assert losses[0] > 0.01 and losses[-1] < 0.5 * losses[0], losses


def test_gram_anchoring_and_homogeneous_batches_in_a_tiny_run(tmp_path):
    """`lvd train` with DINOv3's options on shards of three seed datasets: constant schedules, Gram
    anchoring from iteration 4 (2x Gram crops), 30 % of the steps from imagenet1k alone."""
    data = write_mixed_shards(tmp_path / "shards", per_class=6, size=96, names=PHOTOS)
    out = tmp_path / "run"
    assert main(["train", "--config", "training/configs/tiny.yaml", "--data", str(data), "--out", str(out),
                 "optim.epochs=1", "optim.epoch_length=16", "train.batch_size_per_gpu=8", "data.num_workers=0",
                 "train.log_period=1", "gram.enabled=true", "gram.start_iteration=4", "gram.update_frequency=100",
                 "optim.schedule=constant", "data.homogeneous_dataset=imagenet1k", "data.homogeneous_fraction=0.3"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [bool(r["homogeneous"]) for r in records] == [homogeneous_step(0, i, 0.3) for i in range(16)]
    gram = [r["gram"] for r in records]
    assert gram[:4] == [0.0] * 4 and all(g > 0 for g in gram[4:])
    assert {r["gram_weight"] for r in records[4:]} == {2.0}
    first, last = sum(gram[4:8]) / 4, sum(gram[-4:]) / 4
    assert last < first, gram  # the student's Gram matrices approach the Gram teacher's
    print("gram loss, first 4 / last 4 anchored iterations:", round(first, 4), round(last, 4))


def write_mixed_shards(root: Path, per_class: int = 4, size: int = 24, names=PHOTOS[:6]) -> Path:
    """Two files of photo crops labelled with three seed datasets (the curated output's column)."""
    rng = random.Random(0)
    imgs = photos(names, short_side=max(48, 2 * size))
    rows = [(jpeg(view(img, rng, size, scale=(0.3, 1.0), colour=False)), ["imagenet1k", "gldv2", "ade20k"][i % 3])
            for i, img in enumerate(imgs.values()) for _ in range(per_class)]
    rng.shuffle(rows)
    root.mkdir(parents=True, exist_ok=True)
    for f in range(2):
        part = rows[f::2]
        pq.write_table(pa.table({"image_id": [f"{f}-{i}" for i in range(len(part))], "image": pa.array([r[0] for r in part], pa.binary()),
                                 "seed_dataset": [r[1] for r in part]}), root / f"part-{f:05d}.parquet", row_group_size=5)
    return root


def test_homogeneous_batches_composition_and_resume(tmp_path):
    paths = list_shards(str(write_mixed_shards(tmp_path / "mixed")))
    units = plan_units(paths, min_units=2)
    h_units = plan_dataset_units(paths, "imagenet1k", min_units=2)
    assert sum(u.rows for u in h_units) == 8 and sum(u.rows for u in units) == 24
    spec = HomogeneousSpec("imagenet1k", 0.3, tuple(h_units))
    crops = CropSpec(global_size=16, local_size=8, n_local=1)

    def batches(state: DataState, steps_done: int, n: int) -> list[dict]:
        it = iter(MultiCropBatches(units, state, 4, crops, MaskSpec(), 8, 0, 0, 1, 0, 8, steps_done=steps_done, homogeneous=spec))
        return [next(it) for _ in range(n)]

    state = DataState(2)
    run = batches(state, 0, 40)
    flags = [bool(b["homogeneous"]) for b in run]
    assert flags == [homogeneous_step(0, i, 0.3) for i in range(40)]
    assert 6 <= sum(flags) <= 18  # ~30 % of steps
    for b, homog in zip(run, flags):
        counts = Counter(b["seed_datasets"])
        if homog:
            assert counts == {"imagenet1k": 4}  # the whole batch from one seed dataset
    mixed = Counter(d for b, h in zip(run, flags) if not h for d in b["seed_datasets"])
    assert set(mixed) == {"imagenet1k", "gldv2", "ade20k"}  # the other steps read everything
    print("homogeneous steps:", sum(flags), "of 40; heterogeneous composition:", dict(mixed))

    # exact resume: the data state after step 9 restarts steps 10.. identically, both families of streams
    for b in run[:10]:
        state.update(b["data_state"])
    resumed = batches(DataState.from_json(json.loads(json.dumps(state.to_json()))), 10, 8)
    for a, b in zip(run[10:18], resumed):
        assert torch.equal(a["global_crops"], b["global_crops"]) and a["seed_datasets"] == b["seed_datasets"]
    assert any(bool(b["homogeneous"]) for b in resumed)


def test_homogeneous_dataset_errors(tmp_path, shards):
    paths = list_shards(str(write_mixed_shards(tmp_path / "mixed")))
    with pytest.raises(Exception, match="no rows of seed_dataset 'imagenet22k'"):
        plan_dataset_units(paths, "imagenet22k")
    with pytest.raises(Exception, match="no 'seed_dataset' column"):
        plan_dataset_units(list_shards(str(shards)), "imagenet1k")
