"""Bring your own copy detector (issue 15): ONNX and TorchScript model files the test builds and
exports itself, each with its own preprocessing, through the embedder API and through `lvd dedup`,
against a reference computed here from the images (PIL resize and crop, the torch model in float32);
the clear errors of a wrong declaration; GPU parts skip without a GPU."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from pydantic import ValidationError
from torch import nn

from curation.config import EmbedConfig, ModelFileConfig
from curation.core.errors import UserError
from embedder import model_files
from embedder.inference import embed_bytes, forward_features, preprocess_for
from embedder.models import load_from_config, load_model
from tiny_models import TinyDescriptor

# The two files' preprocessing: SSCD-style whole images (uint8 in, normalised in the graph) and a
# normalised float input with a centre crop.
NHWC = {"input": "uint8_nhwc", "resize": 48, "crop": False, "interpolation": "bilinear"}
NCHW = {"input": "float_nchw", "resize": 40, "crop": True, "interpolation": "bicubic",
        "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
# Float32 embeddings: the reference and ours differ in rounding only.
FEATURE_ATOL = 1e-5
# Float16 embeddings (what the embedder returns): half a unit in the last place near 1 is 2.4e-4;
# one more for the float32 difference that can straddle a rounding boundary.
HALF_ATOL = 1e-3


class PixelsDescriptor(nn.Module):
    """An SSCD-style export: uint8 [B, H, W, 3] in, its own normalisation inside the graph."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.inner(pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0)


def _descriptor(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return TinyDescriptor().eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """ONNX and TorchScript files of both layouts (uint8 NHWC of any height and width; float
    NCHW of any or of a fixed size) and a file that is neither."""
    root = tmp_path_factory.mktemp("model-files")
    nhwc = PixelsDescriptor(_descriptor(1)).eval()
    onnx_path = root / "tiny_sscd.onnx"
    with torch.inference_mode():
        torch.onnx.export(nhwc, (torch.zeros(1, 48, 64, 3, dtype=torch.uint8),), str(onnx_path), dynamo=False,
                          opset_version=17, input_names=["images"], output_names=["embeddings"],
                          dynamic_axes={"images": {0: "b", 1: "h", 2: "w"}, "embeddings": {0: "b"}})
    static_path = root / "static.onnx"
    with torch.inference_mode():
        torch.onnx.export(_descriptor(2), (torch.zeros(1, 3, 40, 40),), str(static_path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"])
    any_size = root / "any_size.onnx"  # float NCHW of any size: what a bare .onnx path defaults to
    with torch.inference_mode():
        torch.onnx.export(_descriptor(2), (torch.zeros(1, 3, 40, 40),), str(any_size), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    script_path = root / "tiny_desc.pt"
    torch.jit.script(_descriptor(3)).save(str(script_path))
    script_nhwc = root / "tiny_sscd.torchscript.pt"
    torch.jit.script(nhwc).save(str(script_nhwc))
    junk = root / "junk.pt"
    junk.write_bytes(b"not a model")
    return {"onnx": onnx_path, "static": static_path, "any_size": any_size, "script": script_path, "junk": junk,
            "script_nhwc": script_nhwc, "nhwc_module": nhwc, "nchw_module": _descriptor(3), "any_module": _descriptor(2)}


@pytest.fixture(scope="module")
def images(photos) -> list[bytes]:
    """PNGs (no JPEG draft decoding: the reference decodes them exactly): three aspect ratios, two
    images sharing one, so whole-image batches hold groups of several sizes."""
    out = []
    for name, size in (("chelsea", (90, 60)), ("coffee", (80, 60)), ("astronaut", (90, 60)), ("rocket", (60, 100))):
        buf = io.BytesIO()
        Image.fromarray(photos[name]).resize(size, Image.Resampling.BILINEAR).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def reference_pixels(data: bytes, spec: dict) -> np.ndarray:
    """uint8 [H, W, 3]: the shorter side resized to `resize` (torchvision's rounding), centre crop."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    n = spec["resize"]
    ow, oh = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[spec["interpolation"]]
    img = img.resize((ow, oh), resample)
    if spec["crop"]:
        left, top = int(round((ow - n) / 2)), int(round((oh - n) / 2))
        img = img.crop((left, top, left + n, top + n))
    return np.asarray(img, dtype=np.uint8)


def reference_features(module: nn.Module, pixels: np.ndarray, spec: dict) -> np.ndarray:
    """float32 unit-norm [D] of one image, computed the plain way."""
    x = torch.from_numpy(pixels.copy())[None]
    if spec["input"] == "float_nchw":
        mean, std = (torch.tensor(spec[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
        x = (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.inference_mode():
        return F.normalize(module(x).float(), dim=1)[0].numpy()


def _models(files: dict, **extra) -> dict:
    return {"tiny_sscd": {"path": str(files["onnx"]), **NHWC, **extra}, "tiny_desc": {"path": str(files["script"]), **NCHW},
            "script_nhwc": {"path": str(files["script_nhwc"]), **NHWC}, "onnx_nchw": {"path": str(files["any_size"]), **NCHW}}


def _load(files: dict, name: str) -> object:
    return load_from_config(EmbedConfig.model_validate({"model": name, "device": "cpu", "models": _models(files)}))


@pytest.mark.parametrize("name, spec, module", [("tiny_sscd", NHWC, "nhwc_module"), ("tiny_desc", NCHW, "nchw_module"),
                                                ("script_nhwc", NHWC, "nhwc_module"), ("onnx_nchw", NCHW, "any_module")])
def test_model_file_equals_the_reference(files, images, name, spec, module):
    model = _load(files, name)
    onnx = name in ("tiny_sscd", "onnx_nchw")
    assert (model.source, model.runtime, model.embed_dim) == (f"{'onnx' if onnx else 'torchscript'}-file",
                                                               "onnx" if onnx else "torch", 24)
    pre = preprocess_for(model)
    want_pixels = [reference_pixels(b, spec) for b in images]
    for data, want in zip(images, want_pixels):
        assert np.array_equal(pre(data), want)
    if not spec["crop"]:  # whole images: their own sizes (two share one)
        assert [p.shape for p in want_pixels] == [(48, 72, 3), (48, 64, 3), (48, 72, 3), (80, 48, 3)]
    want = np.stack([reference_features(files[module], p, spec) for p in want_pixels])
    ours = np.stack([_features(model, p) for p in want_pixels])
    assert np.abs(ours - want).max() <= FEATURE_ATOL
    got = embed_bytes(model, images, batch_size=3)  # batches across the size groups
    assert got.dtype == np.float16 and got.shape == (len(images), 24)
    assert np.abs(got.astype(np.float32) - want).max() <= HALF_ATOL
    assert embed_bytes(model, images, batch_size=3).tobytes() == got.tobytes()  # deterministic


def test_one_decode_for_a_whole_image_model_and_a_cropping_one(files, images):
    from embedder.inference import embed_shared

    models = [_load(files, "tiny_sscd"), _load(files, "tiny_desc")]
    (a, b), failed = embed_shared(models, images, batch_size=3)
    assert not failed
    assert a.tobytes() == embed_bytes(models[0], images, batch_size=3).tobytes()
    assert b.tobytes() == embed_bytes(models[1], images, batch_size=3).tobytes()


def _features(model, pixels: np.ndarray) -> np.ndarray:
    """float32 unit-norm embedding of one preprocessed image through the loaded model's runtime."""
    return forward_features(model, torch.from_numpy(pixels[None].copy()).permute(0, 3, 1, 2)).cpu().numpy()[0]


def test_bare_onnx_path_takes_the_defaults(files):
    model = load_model(str(files["any_size"]), device="cpu")  # float NCHW, ImageNet statistics, 224 crop
    assert (model.name, model.layout, model.input_size, model.crop, model.source) == (
        "any_size", "float_nchw", 224, True, "onnx-file")
    with pytest.raises(UserError, match="takes no NAME: give its path alone, or describe it under embed.models"):
        load_model(f"sscd:{files['any_size']}x.onnx", device="cpu")
    with pytest.raises(UserError, match=r"fixed 40 x 40 input.*set crop: true and resize: 40"):
        load_model("s40", device="cpu", models={"s40": ModelFileConfig(path=str(files["static"]), resize=32)})
    fixed = load_model("s40", device="cpu", models={"s40": ModelFileConfig(path=str(files["static"]), resize=40)})
    assert fixed.embed_dim == 24 and fixed.input_size == 40


@pytest.mark.parametrize("entry, message", [
    ({"path": "{onnx}", "input": "float_nchw"},
     r"takes images: tensor\(uint8\) \[b, h, w, 3\], not the declared input float_nchw .*is its input uint8_nhwc"),
    ({"path": "{script}", "input": "uint8_nhwc"}, r"fails on a \[1, 40, 40, 3\] uint8 batch, the declared input uint8_nhwc: .*Input type \(unsigned char\)"),
    ({"path": "{junk}"}, r"neither an ONNX graph .* nor a TorchScript archive"),
    ({"path": "/no/such/model.onnx"}, r"model file of 'bad' not found: /no/such/model.onnx"),
])
def test_wrong_declarations_fail_at_load_naming_the_model_input(files, entry, message):
    entry = {k: v.format(**{k2: str(p) for k2, p in files.items() if isinstance(p, Path)}) if isinstance(v, str) else v
             for k, v in entry.items()}
    entry.setdefault("resize", 40)
    with pytest.raises(UserError, match=message):
        load_model("bad", device="cpu", models={"bad": ModelFileConfig.model_validate(entry)})


@pytest.mark.parametrize("entry, message", [
    ({"path": "m.onnx", "input": "uint8", "resize": 288}, "input"),
    ({"path": "m.onnx", "input": "uint8_nhwc", "mean": [0.5, 0.5, 0.5]}, "apply to input float_nchw only"),
    ({"path": "m.onnx", "std": [0.2, 0.0, 0.2]}, "std must be > 0"),
    ({"path": "m.onnx", "resize": 0}, "resize"),
    ({"path": "m.onnx", "crop": "sometimes"}, "crop"),
    ({"path": "m.onnx", "interpolation": "cubic"}, "interpolation"),
    ({"path": "m.onnx", "size": 288}, "size"),
])
def test_preprocessing_description_is_validated(entry, message):
    with pytest.raises(ValidationError, match=message):
        EmbedConfig.model_validate({"models": {"mine": entry}})
    with pytest.raises(ValidationError, match="cannot name a model file"):
        EmbedConfig.model_validate({"models": {"efficientnet_lite0_copy": {"path": "m.onnx"}}})


def test_config_file_and_set_name_the_wrong_value(tmp_path):
    from curation.config import load_config, parse_overrides
    from pipelines.options import check_override

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"embed": {"models": {"sscd": {"path": "m.onnx", "input": "nhwc"}}}}))
    with pytest.raises(UserError, match=r"bad config value embed.models.sscd.input: Input should be 'uint8_nhwc'"):
        load_config(str(bad))
    (key, value), = parse_overrides(["embed.models={sscd: {path: m.onnx, input: uint8_nhwc, std: [1, 1, 1]}}"]).items()
    with pytest.raises(UserError, match=r"embed.models.sscd: Value error, mean / std apply to input float_nchw only"):
        check_override(key, value, "...")


def test_the_embed_key_follows_the_model_file_only_when_named():
    from curation.config import RunConfig
    from pipelines.stages.embedding import model_key

    plain = RunConfig()
    assert "model_file" not in model_key(plain, plain.dedup_model())  # the default's key as before
    with_file = RunConfig.model_validate({"embed": {"models": {"m": {"path": "m.onnx", "resize": 288}}}, "dedup": {"model": "m"}})
    other_size = RunConfig.model_validate({"embed": {"models": {"m": {"path": "m.onnx", "resize": 320}}}, "dedup": {"model": "m"}})
    assert model_key(with_file, "m")["model_file"]["resize"] == 288
    assert model_key(with_file, "m") != model_key(other_size, "m")
    assert model_key(with_file, plain.dedup_model()) == model_key(plain, plain.dedup_model())


def test_gpu_without_onnxruntime_gpu_runs_on_the_cpu(files, monkeypatch):
    """A GPU device whose onnxruntime has no CUDA provider: the CPU provider runs the file, no error."""
    monkeypatch.setattr(model_files, "providers_for", lambda device: None if device != "cpu" else ["CPUExecutionProvider"])
    opened = model_files.open_model_file("m", ModelFileConfig(path=str(files["onnx"]), **NHWC), "cuda", 1, 48)
    assert opened.device == "cpu" and opened.runner.provider == "CPUExecutionProvider"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["tiny_sscd", "tiny_desc"])
def test_model_files_on_cuda(files, images, name):
    import onnxruntime as ort

    cpu = _load(files, name)
    gpu = load_from_config(EmbedConfig.model_validate({"model": name, "device": "cuda", "models": _models(files)}))
    on_cuda = name == "tiny_desc" or "CUDAExecutionProvider" in ort.get_available_providers()
    assert gpu.device == ("cuda" if on_cuda else "cpu")
    a, b = embed_bytes(cpu, images, batch_size=3), embed_bytes(gpu, images, batch_size=3)
    cos = (a.astype(np.float32) * b.astype(np.float32)).sum(1)
    assert cos.min() > 0.999  # bf16 autocast (TorchScript) or CUDA kernels: close, not equal
    assert embed_bytes(gpu, images, batch_size=3).tobytes() == b.tobytes()


def _tiny_world(root: Path, photos: dict) -> Path:
    """Six photos and four copies of them (rescaled, re-encoded, brightened), a few aspect ratios."""
    root.mkdir(parents=True)
    for name in ("chelsea", "coffee", "astronaut", "rocket", "motorcycle"):
        img = Image.fromarray(photos[name]).convert("RGB")
        img.thumbnail((150, 150))  # under twice the JPEG draft size: the pool decodes in full, as the reference
        img.save(root / f"{name}.png")
        if name != "motorcycle":
            img.resize((img.width * 3 // 4, img.height * 3 // 4)).save(root / f"{name}_copy.jpg", quality=80)
    Image.fromarray(photos["coffee"][::-1]).resize((120, 90)).save(root / "flipped.png")
    return root


@pytest.mark.parametrize("name, spec, module", [("tiny_sscd", NHWC, "nhwc_module"), ("tiny_desc", NCHW, "nchw_module")])
def test_lvd_dedup_with_a_model_file(files, photos, tmp_path, name, spec, module):
    from pipelines.cli import main

    world = _tiny_world(tmp_path / "world", photos)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"embed": {"device": "cpu", "models": _models(files)}, "dedup": {"model": name}}))
    run = tmp_path / "run"
    assert main(["ingest", str(world), "--out", str(run), "--no-progress"]) == 0
    assert main(["dedup", str(run), "--config", str(config), "--no-progress", "--workers", "1"]) == 0
    pool = [r for p in sorted((run / "pool").glob("part-*.parquet")) for r in pq.read_table(p, columns=["image_id", "image"]).to_pylist()]
    emb = [r for p in sorted((run / "embeddings").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    got = {r["image_id"]: np.asarray(r["embedding"], dtype=np.float32) for r in emb}
    assert len(got) == len(pool) == 10
    for row in pool:
        want = reference_features(files[module], reference_pixels(row["image"], spec), spec)
        assert np.abs(got[row["image_id"]] - want).max() <= HALF_ATOL, row["image_id"]
    assert (run / "dedup" / "components.parquet").is_file()
    before = sorted(p.read_bytes() for p in (run / "embeddings").glob("*.parquet"))
    # `lvd embed` with the model by name (the run's config holds its description): the same bytes.
    assert main(["embed", str(run), "--model", name, "--device", "cpu"]) == 0
    assert sorted(p.read_bytes() for p in (run / "embeddings").glob("*.parquet")) == before
