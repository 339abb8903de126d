"""ONNX Runtime, the CPU default of the embedders (issue 17): parity with torch (the reference) on
real photos for every model source, byte-for-byte determinism, the export cache, the fallback to
torch, and one decode for several models (`embed_shared`)."""
from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from curation.config import EmbedConfig
from embedder import onnx_runtime
from embedder.inference import embed_bytes, embed_checked, embed_shared
from embedder.models import load_from_config, load_model
from curation.core.errors import UserError
from tiny_models import TinyDescriptor

# float16 outputs: one unit in the last place of a unit-norm component is ~6e-5 (2^-14 near 0.03..0.06).
PARITY_ATOL = 2e-4


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory, monkeypatch_module):
    path = tmp_path_factory.mktemp("onnx-cache")
    monkeypatch_module.setenv(onnx_runtime.ENV_CACHE, str(path))
    return path


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def images(photos, encode) -> list[bytes]:
    """Real photos as JPEG, plus a PNG and a large JPEG (the decoder's draft scale comes into play)."""
    out = [encode(p) for p in photos.values()]
    buf = io.BytesIO()
    Image.fromarray(photos["coffee"]).save(buf, "PNG")
    big = io.BytesIO()
    Image.fromarray(photos["astronaut"]).resize((1800, 1400)).save(big, "JPEG", quality=85)
    return out + [buf.getvalue(), big.getvalue()]


@pytest.mark.parametrize("spec", ["efficientnet_lite0_copy", "efficientnet_lite0"])
def test_packaged_models_onnx_equals_torch(onnx_cache, images, spec):
    ort_model = load_model(spec, device="cpu", runtime="onnx")
    torch_model = load_model(spec, device="cpu")
    assert (ort_model.runtime, torch_model.runtime) == ("onnx", "torch")
    assert ort_model.key != torch_model.key  # another runtime, other bytes: its own resume key
    got = embed_bytes(ort_model, images, batch_size=3).astype(np.float32)
    ref = embed_bytes(torch_model, images, batch_size=3).astype(np.float32)
    assert np.abs(got - ref).max() <= PARITY_ATOL
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=2e-3)


def test_onnx_is_deterministic_and_cached(onnx_cache, images):
    model = load_model("efficientnet_lite0_copy", device="cpu", runtime="onnx")
    first = embed_bytes(model, images, batch_size=4)
    assert np.array_equal(first, embed_bytes(model, images, batch_size=4))
    assert np.array_equal(first, embed_bytes(model, images, batch_size=7))  # batch split: same bytes
    # The export in this test's cache (models loaded earlier in the session may come from another):
    # written once, atomically (no temporaries left), then reused by every new session.
    torch_model = load_model("efficientnet_lite0_copy", device="cpu")
    path = onnx_runtime.cached_export(torch_model)
    assert path.parent.parent == onnx_cache and not list(onnx_cache.glob(".*tmp*"))
    stamp = path.stat().st_mtime_ns
    again = onnx_runtime.build_embedder(torch_model, threads=1)  # another thread count: same bytes
    assert again is not None and again.threads == 1
    fields = ("module", "name", "embed_dim", "input_size", "mean", "std", "interpolation", "crop_pct", "device")
    fresh_onnx = type(model)(**{f: getattr(torch_model, f) for f in fields}, onnx=again)
    assert np.array_equal(first, embed_bytes(fresh_onnx, images, batch_size=4))
    assert onnx_runtime.cached_export(torch_model) == path and path.stat().st_mtime_ns == stamp


def test_cache_key_follows_weights_and_input(onnx_cache):
    base = load_model("efficientnet_lite0", device="cpu")
    key = onnx_runtime.export_key(base)
    assert onnx_runtime.export_key(load_model("efficientnet_lite0", device="cpu", image_size=192)) != key
    assert onnx_runtime.export_key(load_model("efficientnet_lite0_copy", device="cpu")) != key
    net = nn.Linear(3, 2)
    before = onnx_runtime.weights_digest(net)
    with torch.no_grad():
        net.weight[0, 0] += 1e-3
    assert onnx_runtime.weights_digest(net) != before


def _by_torch_and_onnx(spec: str, images: list[bytes], **kw) -> tuple[np.ndarray, np.ndarray]:
    ort_model = load_model(spec, device="cpu", runtime="onnx", **kw)
    assert ort_model.runtime == "onnx"
    return (embed_bytes(ort_model, images, batch_size=2).astype(np.float32),
            embed_bytes(load_model(spec, device="cpu", **kw), images, batch_size=2).astype(np.float32))


def test_vit_from_local_weights_onnx_equals_torch(onnx_cache, tmp_path, images):
    torch.manual_seed(0)
    net = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    path = tmp_path / "vit.safetensors"
    save_file(net.state_dict(), str(path))
    got, ref = _by_torch_and_onnx(f"test_vit:{path}", images[:4])
    assert np.abs(got - ref).max() <= PARITY_ATOL


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch marks torch.jit as deprecated
def test_torchscript_file_onnx_equals_torch(onnx_cache, tmp_path, images):
    torch.manual_seed(0)
    scripted = torch.jit.trace(TinyDescriptor().eval(), torch.zeros(1, 3, 64, 64))
    path = tmp_path / "tiny.pt"
    meta = {"input_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 1.0}
    torch.jit.save(scripted, str(path), _extra_files={"lvd_preprocess.json": json.dumps(meta)})
    got, ref = _by_torch_and_onnx(str(path), images[:4])
    assert np.abs(got - ref).max() <= PARITY_ATOL


def test_failed_export_falls_back_to_torch_with_one_warning(onnx_cache, tmp_path, images, monkeypatch, caplog):
    def broken(model, path):
        raise RuntimeError("exporter cannot handle this model")

    monkeypatch.setattr(onnx_runtime, "export_onnx", broken)
    torch.manual_seed(1)
    net = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    path = tmp_path / "vit-broken.safetensors"
    save_file(net.state_dict(), str(path))
    with caplog.at_level(logging.WARNING, logger="lvd"):
        model = load_model(f"test_vit:{path}", device="cpu", runtime="onnx")
        again = load_model(f"test_vit:{path}", device="cpu", runtime="onnx", threads=1)
    assert (model.runtime, again.runtime) == ("torch", "torch")
    assert sum("ONNX export or session failed" in r.getMessage() for r in caplog.records) == 1
    ref = load_model(f"test_vit:{path}", device="cpu")
    assert np.array_equal(embed_bytes(model, images[:2]), embed_bytes(ref, images[:2]))
    assert not list(onnx_cache.glob(".*tmp*"))  # nothing half-written left behind


def test_runtime_is_configured_and_validated(onnx_cache):
    cfg = EmbedConfig()
    assert (cfg.runtime, cfg.threads) == ("onnx", None)  # the CPU default
    assert load_from_config(EmbedConfig(model="efficientnet_lite0", device="cpu")).runtime == "onnx"
    assert load_from_config(EmbedConfig(model="efficientnet_lite0", device="cpu", runtime="torch")).runtime == "torch"
    with pytest.raises(ValueError):
        EmbedConfig(runtime="tensorrt")
    with pytest.raises(ValueError):
        EmbedConfig(threads=0)
    with pytest.raises(UserError, match="unknown embedding runtime"):
        load_model("efficientnet_lite0", device="cpu", runtime="tvm")


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_one_decode_for_two_models_gives_each_models_embeddings(onnx_cache, images, runtime):
    """Dedup descriptor and retrieval model from one decode of each image (different crops and
    input sizes from the same pixels): each equal to that model embedding alone, failures too."""
    models = [load_model("efficientnet_lite0_copy", device="cpu", runtime=runtime),
              load_model("efficientnet_lite0", device="cpu", runtime=runtime, image_size=192)]
    batch = images + [b"not an image"] + images[:2]
    (copy_emb, retr_emb), failed = embed_shared(models, batch, batch_size=3)
    assert set(failed) == {len(images)}
    for model, emb in zip(models, (copy_emb, retr_emb)):
        alone, alone_failed = embed_checked(model, batch, batch_size=3)
        assert alone_failed.keys() == failed.keys()
        assert np.array_equal(emb, alone)


def test_trainer_backbone_export_onnx_equals_torch(onnx_cache, tmp_path, images):
    export = pytest.importorskip("training.export", reason="the trainer is optional for curation")
    from training.models.vit import build_vit

    torch.manual_seed(0)
    arch = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 16}
    path = export.save_backbone(build_vit(**arch).eval(), tmp_path / "backbone.pt", arch, img_size=32,
                                mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    got, ref = _by_torch_and_onnx(str(path), images[:4])
    assert np.abs(got - ref).max() <= PARITY_ATOL


def test_decode_ahead_keeps_the_strict_contract(onnx_cache, images):
    """With onnxruntime the next batch decodes in a thread while the current one runs: an image
    that cannot be decoded still raises (naming it) from `embed_bytes`, and the thread ends."""
    import threading

    model = load_model("efficientnet_lite0_copy", device="cpu", runtime="onnx")
    with pytest.raises(ValueError, match="image 3 cannot be decoded"):
        embed_bytes(model, images[:3] + [b"not an image"] + images[:2], batch_size=1)
    gen = embed_shared([model], images * 3, batch_size=1)
    assert len(gen[0][0]) == 3 * len(images)
    assert not [t for t in threading.enumerate() if t.name == "lvd-decode-ahead"]


def test_overlapped_onnx_decodes_in_a_few_calls_of_every_model():
    # A short first decode batch lets the forward start sooner; a multiple of every model's call
    # batch keeps each call's rows (and bytes) as under batch_size 64. Torch or workers: unchanged.
    from types import SimpleNamespace

    from embedder.inference import _AHEAD_CALLS, _decode_batch

    onnx = [SimpleNamespace(onnx=SimpleNamespace(batch=b, workers=1)) for b in (2, 3)]
    assert _decode_batch(onnx[:1], 64, 0) == 2 * _AHEAD_CALLS
    assert _decode_batch(onnx, 64, 0) == 6 * _AHEAD_CALLS
    # Two calls in flight: every call thread gets its own full calls in each decode batch.
    assert _decode_batch([SimpleNamespace(onnx=SimpleNamespace(batch=2, workers=2))], 64, 0) == 4 * _AHEAD_CALLS
    assert _decode_batch(onnx[:1], 4, 0) == 4
    assert _decode_batch(onnx[:1], 64, 2) == 64
    assert _decode_batch([*onnx, SimpleNamespace(onnx=None)], 64, 0) == 64


def test_calls_in_flight_give_the_bytes_of_one_call_at_a_time(onnx_cache, images):
    """On the CPU each session has one intra-op thread and a task's cores run that many calls at
    once, the calls of both models started together: the bytes equal one call at a time (and the
    torch reference within PARITY_ATOL), so they cannot depend on the cores or the scheduling."""
    import threading

    specs = ("efficientnet_lite0_copy", "efficientnet_lite0")
    one = [load_model(s, device="cpu", runtime="onnx", threads=1) for s in specs]
    two = [load_model(s, device="cpu", runtime="onnx", threads=2) for s in specs]
    assert [m.onnx.workers for m in one + two] == [1, 1, 2, 2]
    for m in one + two:
        assert m.onnx.session.get_session_options().intra_op_num_threads == 1
    batch = images * 3
    (a1, b1), _ = embed_shared(one, batch, batch_size=8)
    (a2, b2), _ = embed_shared(two, batch, batch_size=8)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2)
    assert any(t.name.startswith("lvd-onnx") for t in threading.enumerate())  # the calls ran on the pool
    assert np.array_equal(b2, embed_bytes(two[1], batch, batch_size=5))
    ref = embed_bytes(load_model(specs[0], device="cpu"), batch, batch_size=8).astype(np.float32)
    assert np.abs(a2.astype(np.float32) - ref).max() <= PARITY_ATOL
