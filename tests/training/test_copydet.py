"""The copy-descriptor trainer (`training.copydet`): augmentations, batches, loss, a few steps of
training on tiny input, the saved file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.copydet import augment
from training.copydet.data import PairBatches, disjoint_regions, procedural_image, to_input
from training.copydet.loss import copy_loss, info_nce
from training.copydet.model import DIM, build, load_trained, save_trained, trained_state
from training.copydet.train import lr_at, optimiser


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    return {f"p{k}": Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).resize((256, 192)) for k in range(3)}


def test_every_augmentation_gives_an_rgb_image(photos):
    im, pool = photos["p0"], [photos["p1"]]
    for name, aug in augment.AUGMENTS.items():
        out = aug(im, np.random.default_rng(1), pool)
        assert out.mode == "RGB" and min(out.size) >= 8, name
    assert augment.copy_view(im, np.random.default_rng(2), pool).mode == "RGB"


def test_regions_of_one_photo_never_overlap(photos):
    for seed in range(20):
        regions = disjoint_regions(photos["p0"], np.random.default_rng(seed), 4)
        assert 1 <= len(regions) <= 4
    assert to_input(photos["p0"], 64).shape == (64, 64, 3)
    assert procedural_image(np.random.default_rng(0), list(photos.values())).mode == "RGB"


def test_batches_are_seeded(photos):
    data = PairBatches(photos, instances=4, size=48, seed=3)
    a, b = data.batch(5), PairBatches(photos, instances=4, size=48, seed=3).batch(5)
    assert a.shape == (8, 3, 48, 48) and torch.equal(a, b)
    assert not torch.equal(a, data.batch(6))


def test_info_nce_prefers_matching_views():
    z = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    matched, shuffled = torch.cat([z, z]), torch.cat([z, z[[1, 2, 3, 0]]])
    assert info_nce(matched) < info_nce(shuffled)
    loss, parts = copy_loss(matched)
    assert set(parts) == {"loss", "infonce", "koleo"} and torch.isfinite(loss)


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, 10) < 0.02


def test_a_few_steps_lower_the_loss_and_the_output_is_unit_norm(photos, tmp_path):
    torch.manual_seed(0)
    model = build(flip_invariant=False).train()
    opt = optimiser(model, 1e-3)
    x = PairBatches(photos, instances=4, size=64, seed=0).batch(0)
    losses = []
    for _ in range(4):
        loss, _ = copy_loss(model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    model.eval()
    with torch.inference_mode():
        z = model(x)
    assert z.shape == (8, DIM)
    assert torch.allclose(z.norm(dim=1), torch.ones(8), atol=1e-5)
    # The frozen trunk did not move; the saved file holds only trained parameters, as float16.
    assert all(not p.requires_grad for p in model.frozen.parameters())
    path = tmp_path / "w.safetensors"
    save_trained(model, path)
    again = load_trained(path, flip_invariant=False)
    assert set(trained_state(again)) == set(trained_state(model))
    with torch.inference_mode():
        assert torch.allclose(again(x), z, atol=2e-2)
        flip = load_trained(path)  # the default: flip-invariant
        assert torch.allclose(flip(x), flip(torch.flip(x, dims=[3])), atol=1e-5)


def test_training_is_deterministic(tmp_path, monkeypatch, photos):
    """Two runs of the CLI's loop with one seed write the same weights (one thread)."""
    import training.copydet.train as train_mod

    monkeypatch.setattr(train_mod, "training_photos", lambda: photos)
    torch.set_num_threads(1)
    outs = []
    for k in range(2):
        out = tmp_path / f"w{k}.safetensors"
        train_mod.train(out, seed=0, steps=2, instances=3, size=48, warmup=1, save_every=0, log=lambda s: None)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
