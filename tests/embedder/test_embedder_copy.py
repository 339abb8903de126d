"""The packaged copy-detection descriptors (`lvd_copy_v1`, the trained default; `efficientnet_lite0_copy`,
the earlier untrained grid head) and the dedup model rule."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from curation.config import GRID_COPY_MODEL, PACKAGED_COPY_MODEL, PACKAGED_MODEL, TRAINED_COPY_MODEL, RunConfig, dedup_model_for
from embedder.copy_descriptor import GRID, grid_descriptor
from embedder.inference import embed_bytes
from embedder.models import calibrated_thresholds, load_model, packaged_classifier


@pytest.fixture(scope="module")
def copy_model():
    return load_model(GRID_COPY_MODEL, device="cpu")


@pytest.fixture(scope="module")
def trained_model():
    return load_model(TRAINED_COPY_MODEL, device="cpu")


def _jpeg(img: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _copies(img: Image.Image) -> dict[str, bytes]:
    w, h = img.size
    overlay = img.copy()
    ImageDraw.Draw(overlay).rectangle([w // 10, h // 10, w // 10 + w // 3, h // 10 + h // 7], fill=(255, 255, 255))
    return {
        "crop": _jpeg(img.crop((w // 12, h // 14, w - w // 16, h - h // 12))),
        "overlay": _jpeg(overlay),
        "border": _jpeg(ImageOps.expand(img, border=min(w, h) // 16, fill=(20, 200, 40))),
        "reencode": _jpeg(img, 30),
    }


def test_descriptor_shape_and_norm(copy_model):
    assert copy_model.embed_dim == 192 * GRID * GRID == 1728
    assert copy_model.crop_pct == 1.0  # the whole shorter side: copies are judged on the whole picture
    out = copy_model.module(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1728)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    # Each of the 9 cells is unit norm before the final normalisation: an overlay on one cell
    # cannot outweigh the other eight.
    cells = out.view(2, 192, GRID * GRID).norm(dim=1)
    assert torch.allclose(cells, torch.full_like(cells, 1 / GRID), atol=1e-4)


def test_grid_descriptor_reuses_the_classifier_trunk():
    classifier = packaged_classifier()
    desc = grid_descriptor(classifier)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        features = classifier.blocks[:6](classifier.bn1(classifier.conv_stem(x)))
        expected = torch.nn.functional.adaptive_avg_pool2d(features, GRID)
        expected = torch.nn.functional.normalize(torch.nn.functional.normalize(expected, dim=1).flatten(1), dim=1)
        assert torch.allclose(desc(x), expected, atol=1e-6)


def test_copies_are_closer_than_other_photos(copy_model, photos):
    """Every copy of a photo is nearer to its original than any other photo is (raw cosine)."""
    names = list(photos)
    originals = [_jpeg(Image.fromarray(photos[n]).convert("RGB"), 92) for n in names]
    base = embed_bytes(copy_model, originals, batch_size=5).astype(np.float32)
    between = base @ base.T
    np.fill_diagonal(between, -1)
    for i, name in enumerate(names):
        copies = _copies(Image.fromarray(photos[name]).convert("RGB"))
        emb = embed_bytes(copy_model, list(copies.values()), batch_size=4).astype(np.float32)
        sims = emb @ base.T
        assert (sims.argmax(axis=1) == i).all(), (name, dict(zip(copies, sims.round(3).tolist())))
        assert sims[:, i].min() > between[i].max(), name


def test_trained_descriptor_shape_and_norm(trained_model):
    assert PACKAGED_COPY_MODEL == TRAINED_COPY_MODEL != GRID_COPY_MODEL  # the dedup default
    assert trained_model.embed_dim == 512 and trained_model.crop_pct == 1.0
    x = torch.randn(2, 3, trained_model.input_size, trained_model.input_size)
    with torch.inference_mode():
        out = trained_model.module(x)
    assert out.shape == (2, 512)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-4)


def test_trained_copies_are_closer_than_other_photos(trained_model, photos):
    """The trained descriptor on the same copies: each nearest its own original."""
    names = list(photos)
    originals = [_jpeg(Image.fromarray(photos[n]).convert("RGB"), 92) for n in names]
    base = embed_bytes(trained_model, originals, batch_size=5).astype(np.float32)
    mirrored = [_jpeg(ImageOps.mirror(Image.fromarray(photos[n]).convert("RGB"))) for n in names]
    assert (embed_bytes(trained_model, mirrored, batch_size=5).astype(np.float32) @ base.T).argmax(axis=1).tolist() == list(range(len(names)))
    for i, name in enumerate(names):
        emb = embed_bytes(trained_model, list(_copies(Image.fromarray(photos[name]).convert("RGB")).values()), batch_size=4)
        assert ((emb.astype(np.float32) @ base.T).argmax(axis=1) == i).all(), name


def test_dedup_model_rule():
    assert dedup_model_for(PACKAGED_MODEL) == PACKAGED_COPY_MODEL  # packaged default: the trained descriptor
    assert dedup_model_for(PACKAGED_MODEL, TRAINED_COPY_MODEL) == TRAINED_COPY_MODEL
    assert dedup_model_for("vit_huge_patch16_224:/w.safetensors") == "vit_huge_patch16_224:/w.safetensors"
    assert dedup_model_for(PACKAGED_MODEL, "/models/sscd.torchscript") == "/models/sscd.torchscript"
    cfg = RunConfig()
    assert cfg.dedup_model() == PACKAGED_COPY_MODEL
    assert RunConfig.model_validate({"dedup": {"model": PACKAGED_MODEL}}).dedup_model() == PACKAGED_MODEL


def test_copy_head_has_its_own_calibration():
    self_t, rel_t, dim = calibrated_thresholds(GRID_COPY_MODEL)
    assert (self_t, rel_t, dim) != calibrated_thresholds(PACKAGED_MODEL)
    assert 0 < rel_t <= self_t < 1 and dim > 0
    self_t, rel_t, dim = calibrated_thresholds(TRAINED_COPY_MODEL)  # chosen on the tuning photos
    assert 0 < rel_t <= self_t < 1 and dim == 0
    assert calibrated_thresholds("/models/sscd.torchscript") == (0.6, 0.45, 0)  # the paper's, unwhitened
