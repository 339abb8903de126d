"""Shard streams (coverage, shuffling, exact resume, resharding), multi-crop augmentation, the loader."""
from __future__ import annotations

import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curation.core.errors import UserError
from training.data.augment import CropSpec, MultiCropAugmentation
from training.data.loader import DataState, MaskSpec, MultiCropBatches, build_loader
from training.data.shards import ShardStream, StreamPosition, list_shards, plan_units

IDS = ("image_id",)


def all_ids(shards) -> list[str]:
    return sorted(i for p in list_shards(str(shards)) for i in pq.read_table(p, columns=["image_id"]).column(0).to_pylist())


def take(stream: ShardStream, n: int) -> list[str]:
    return [next(stream)[0]["image_id"] for _ in range(n)]


def test_listing_and_errors(shards, tmp_path):
    assert len(list_shards(str(shards))) == 2
    assert list_shards(str(shards / "part-00001.parquet")) == [str(shards / "part-00001.parquet")]
    assert len(list_shards(str(shards) + "/*.parquet")) == 2
    with pytest.raises(UserError, match="no Parquet shards"):
        list_shards(str(tmp_path))
    units = plan_units(list_shards(str(shards)), min_units=10)
    assert len(units) >= 10 and sum(u.rows for u in units) == 72


@pytest.mark.parametrize("num_streams", [1, 3, 7])
def test_every_sample_once_per_epoch_and_epochs_reshuffle(shards, num_streams):
    units = plan_units(list_shards(str(shards)), num_streams)
    streams = [ShardStream(units, s, num_streams, seed=0, buffer_size=20, columns=IDS) for s in range(num_streams)]
    epoch0 = []
    for s in streams:
        while s.position.epoch == 0:
            epoch0.append(next(s)[0]["image_id"])
    assert sorted(epoch0) == all_ids(shards)
    first = take(ShardStream(units, 0, num_streams, 0, 20, IDS), 10)
    second = take(ShardStream(units, 0, num_streams, 0, 20, IDS, StreamPosition(epoch=1)), 10)
    assert first != second  # a new permutation each epoch
    assert first == take(ShardStream(units, 0, num_streams, 0, 20, IDS), 10)  # and deterministic


def test_stream_resumes_at_exact_position(shards):
    units = plan_units(list_shards(str(shards)), 2)
    straight = ShardStream(units, 1, 2, seed=5, buffer_size=16, columns=IDS)
    head = take(straight, 23)
    saved = StreamPosition(*straight.position.as_list())
    tail = take(straight, 40)  # crosses into the next epoch
    resumed = ShardStream(units, 1, 2, seed=5, buffer_size=16, columns=IDS, position=saved)
    assert take(resumed, 40) == tail
    assert len(set(head)) == 23


def test_augmentation_shapes_determinism_and_blur_choice():
    # a sharp checkerboard shows blur as lost high-frequency energy
    board = (np.indices((96, 96)).sum(0) // 4 % 2 * 255).astype(np.uint8)
    img = Image.fromarray(np.stack([board] * 3, -1))
    spec = CropSpec(global_size=32, local_size=16, n_local=3, global_scale=(0.9, 1.0))
    g, l = MultiCropAugmentation(spec)(img, random.Random(1))
    assert [t.shape for t in g] == [(3, 32, 32)] * 2 and [t.shape for t in l] == [(3, 16, 16)] * 3
    g2, _ = MultiCropAugmentation(spec)(img, random.Random(1))
    assert all(torch.equal(a, b) for a, b in zip(g, g2))

    def sharpness(blur_as_official: bool) -> float:
        aug = MultiCropAugmentation(CropSpec(global_size=32, local_size=16, n_local=0, global_scale=(0.9, 1.0),
                                             blur_as_official=blur_as_official))
        crops = [aug(img, random.Random(i))[0][0] for i in range(40)]
        return float(np.mean([(c[:, 1:] - c[:, :-1]).abs().mean() for c in crops]))

    # intended (default): the first global view is always blurred; DINOv2's official code never blurs it
    assert sharpness(False) < 0.6 * sharpness(True)
    assert CropSpec().blur_probabilities == (1.0, 0.1, 0.5)
    assert CropSpec(blur_as_official=True).blur_probabilities == (0.0, 0.9, 0.5)


def _dataset(shards, state, workers, steps_done=0):
    units = plan_units(list_shards(str(shards)), state.num_streams)
    spec = CropSpec(global_size=32, local_size=16, n_local=2)
    return MultiCropBatches(units, state, 4, spec, MaskSpec(), 8, seed=0, rank=0, world_size=1, num_workers=workers,
                            buffer_size=16, steps_done=steps_done)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_with_identical_batches(shards, workers):
    readers = max(workers, 1)
    state = DataState(num_streams=2 * readers, layout=(1, readers))
    it = iter(build_loader(_dataset(shards, state, workers), pin_memory=False))
    batches = []
    for _ in range(5):
        b = next(it)
        state.update(b.pop("data_state"))
        batches.append(b)
        if len(batches) == 3:
            saved = DataState.from_json(state.to_json())
    del it
    resumed = iter(build_loader(_dataset(shards, saved, workers, steps_done=3), pin_memory=False))
    for expected in batches[3:]:
        got = next(resumed)
        got.pop("data_state")
        assert torch.equal(got["global_crops"], expected["global_crops"])
        assert torch.equal(got["local_crops"], expected["local_crops"])
        assert torch.equal(got["masks"], expected["masks"])
    assert batches[0]["masks"].shape == (8, 16) and batches[0]["global_crops"].shape == (8, 3, 32, 32)


def test_resume_on_another_layout_keeps_stream_positions(shards):
    """Positions are per stream, whatever reader owned it: streams read by two readers, stopped, and
    continued by one reader (another grouping), still cover the epoch exactly once."""
    units = plan_units(list_shards(str(shards)), 4)
    first, positions = [], {}
    for sid in (0, 2, 1, 3):  # reader 0 owned streams 0 and 2, reader 1 streams 1 and 3
        s = ShardStream(units, sid, 4, 0, 16, IDS)
        for _ in range(3):
            if s.position.epoch == 0:
                first.append(next(s)[0]["image_id"])
        positions[sid] = StreamPosition(*s.position.as_list())
    rest = []
    for sid in range(4):  # one reader now owns all streams
        s = ShardStream(units, sid, 4, 0, 16, IDS, positions[sid])
        while s.position.epoch == 0:
            rest.append(next(s)[0]["image_id"])
    assert len(first) == 12
    assert sorted(first + rest) == all_ids(shards)
