"""CPU-side preprocessing: same pixels as timm's eval transform, exact crop geometry, fast paths."""
from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from embedder.preprocess import EncodedImages, Preprocess, collate_uint8


def _timm_reference(pil: Image.Image, size: int, crop_pct: float, interpolation: str) -> torch.Tensor:
    cfg = {"input_size": (3, size, size), "crop_pct": crop_pct, "interpolation": interpolation,
           "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "crop_mode": "center"}
    return timm.data.create_transform(**cfg)(pil)  # float in [0, 1], CHW


@pytest.mark.parametrize("name", ["chelsea", "motorcycle"])
@pytest.mark.parametrize("size,crop_pct,interpolation", [(224, 0.875, "bicubic"), (224, 1.0, "bilinear"), (160, 0.95, "bicubic")])
def test_pixels_match_timm_eval_transform(photos, encode, name, size, crop_pct, interpolation):
    data = encode(photos[name])
    ours = Preprocess(size, crop_pct, interpolation)(data)
    ref = _timm_reference(Image.open(io.BytesIO(data)).convert("RGB"), size, crop_pct, interpolation)
    assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
    ref_u8 = (ref * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, ref_u8)


@pytest.mark.parametrize("w,h", [(300, 600), (600, 300)])
def test_shorter_side_resize_and_centre_crop(w, h):
    # Each pixel holds its own row (R) and column (G) index scaled to 0..255: the crop window of
    # the output can be read back from the values.
    rows = np.repeat(np.linspace(0, 255, h)[:, None], w, axis=1)
    cols = np.repeat(np.linspace(0, 255, w)[None, :], h, axis=0)
    img = Image.fromarray(np.stack([rows, cols, np.zeros_like(rows)], axis=-1).round().astype(np.uint8))
    out = Preprocess(100, 0.5, "bilinear").image(img)  # shorter side -> 200, crop centre 100 x 100
    assert out.shape == (100, 100, 3)
    long_axis = 0 if h > w else 1  # 400 px long after resize: the crop keeps 150..250
    along = out[:, 50, long_axis] if long_axis == 0 else out[50, :, long_axis]
    across = out[50, :, 1 - long_axis] if long_axis == 0 else out[:, 50, 1 - long_axis]
    assert abs(int(along[0]) - 255 * 150 / 399) <= 2 and abs(int(along[-1]) - 255 * 249 / 399) <= 2
    assert abs(int(across[0]) - 255 * 50 / 199) <= 2 and abs(int(across[-1]) - 255 * 149 / 199) <= 2


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "lanczos", "box", "nearest"])
def test_split_resize_gives_the_bytes_of_resize_then_crop(interpolation):
    # `Preprocess.image` runs Pillow's two resize passes as two calls (the vertical one on the
    # kept columns only): byte for byte what one resize then the crop give, at any size and aspect.
    rng = np.random.default_rng(0)
    resample = Image.Resampling[interpolation.upper()]
    for crop_pct in (0.875, 1.0):
        pre = Preprocess(64, crop_pct, interpolation)
        for w, h in [(73, 73), (64, 90), (90, 64), *rng.integers(20, 400, (8, 2)).tolist()]:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            s = pre.scale_size
            ow, oh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
            left, top = int(round((ow - 64) / 2.0)), int(round((oh - 64) / 2.0))
            ref = img.resize((ow, oh), resample) if (ow, oh) != (w, h) else img
            ref = np.asarray(ref.crop((left, top, left + 64, top + 64)))
            assert np.array_equal(pre.image(img), ref), (w, h, crop_pct)


def test_large_jpeg_uses_reduced_decode_with_the_same_result(photos):
    big = Image.fromarray(photos["chelsea"]).resize((1804, 1200), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=95)
    pre = Preprocess(224, 0.875, "bicubic")
    fast = pre(buf.getvalue())  # libjpeg decodes at 1/2 scale (902 x 600 >= 2 x 256)
    full = pre.image(Image.open(io.BytesIO(buf.getvalue())))  # full 1804 x 1200 decode
    diff = np.abs(fast.astype(np.int16) - full.astype(np.int16))
    assert fast.shape == full.shape == (224, 224, 3)
    assert diff.max() > 0  # a different decode really happened ...
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4  # ... nearly the same pixels (0.23, 1)


def test_modes_and_formats_become_rgb(photos):
    pre = Preprocess(64, 1.0, "bicubic")
    gray, png, cmyk = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.fromarray(photos["coffee"]).convert("L").save(gray, "JPEG")
    Image.fromarray(photos["coffee"]).convert("RGBA").save(png, "PNG")
    Image.fromarray(photos["coffee"]).convert("CMYK").save(cmyk, "JPEG")
    for buf in (gray, png, cmyk):
        out = pre(buf.getvalue())
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    g = pre(gray.getvalue())
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])


def test_batches_are_uint8_channels_last(photos, encode):
    ds = EncodedImages([encode(photos["chelsea"]), encode(photos["rocket"])], Preprocess(32, 1.0, "bilinear"))
    batch = collate_uint8([ds[0], ds[1]])
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.uint8
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch[1].permute(1, 2, 0), torch.tensor(ds[1]))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(224, 0.875, "cubic-ish")
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocess(224, 1.5, "bicubic")
