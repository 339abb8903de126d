"""Every model source through one loader: timm names with local weights, TorchScript, our
trainer's exports, and the errors a user sees when weights are missing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from embedder.inference import embed_bytes, normalise, preprocess_for
from embedder.models import load_model, resolve_device
from embedder.preprocess import collate_uint8
from training.weights import file_kind
from curation.core.errors import UserError
from tiny_models import TinyDescriptor

SMALL_VIT = "test_vit"  # timm's 0.3 M-parameter VisionTransformer: the ViT code path at test cost


@pytest.fixture(scope="module")
def reference_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(SMALL_VIT, pretrained=False, num_classes=0).eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def expected(reference_vit, batch) -> np.ndarray:
    with torch.inference_mode():
        return reference_vit(batch).numpy()


def _same_output(loaded, x: torch.Tensor, expected: np.ndarray) -> None:
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.module(x).numpy(), expected, atol=1e-4, rtol=1e-4)


def _by_hand(loaded, net: nn.Module, images: list[bytes]) -> np.ndarray:
    """What embed_bytes should return, computed step by step with the original network."""
    pre = preprocess_for(loaded)
    x = normalise(loaded, collate_uint8([pre(b) for b in images]))
    with torch.inference_mode():
        return torch.nn.functional.normalize(net(x), dim=1).numpy()


def test_timm_name_with_safetensors(tmp_path, reference_vit, batch, expected):
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in reference_vit.state_dict().items()}, str(path))
    loaded = load_model(f"{SMALL_VIT}:{path}", device="cpu")
    assert (loaded.name, loaded.source, loaded.embed_dim, loaded.input_size) == (SMALL_VIT, "timm", 64, 160)
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.crop_pct == 0.95  # timm's config of this preset
    _same_output(loaded, batch, expected)
    assert load_model(f"{SMALL_VIT}:{path}", device="cpu") is loaded  # cached per spec


def test_training_checkpoint_with_wrappers_and_head(tmp_path, reference_vit, batch, expected):
    # A DDP-wrapped training checkpoint: nested under "state_dict", "module." prefixes, a
    # classifier head the embedder drops, and non-tensor entries beside the weights.
    state = {f"module.{k}": v for k, v in reference_vit.state_dict().items()}
    state["module.head.weight"] = torch.zeros(1000, 64)
    state["module.head.bias"] = torch.zeros(1000)
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": state}, path)
    assert file_kind(path) == "state-dict"
    loaded = load_model(f"{SMALL_VIT}:{path}", device="cpu")
    _same_output(loaded, batch, expected)


def test_mapped_weights_from_the_config(tmp_path, reference_vit, batch, expected):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in reference_vit.state_dict().items()}, str(path))
    loaded = load_model(SMALL_VIT, device="cpu", weights_map={SMALL_VIT: str(path)})
    _same_output(loaded, batch, expected)


def test_wrong_architecture_is_a_user_error(tmp_path, reference_vit):
    path = tmp_path / "vit.pth"
    torch.save(reference_vit.state_dict(), path)
    with pytest.raises(UserError, match=r"do not fit .*is the model name right"):
        load_model(f"test_vit2:{path}", device="cpu")  # register tokens, no class token


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch marks torch.jit as deprecated
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_round_trip(tmp_path, how, photos, encode):
    torch.manual_seed(0)
    net = TinyDescriptor().eval()
    scripted = torch.jit.script(net) if how == "script" else torch.jit.trace(net, torch.zeros(1, 3, 64, 64))
    meta = {"input_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 1.0}
    path = tmp_path / f"descriptor-{how}.pt"
    torch.jit.save(scripted, str(path), _extra_files={"lvd_preprocess.json": json.dumps(meta)})
    assert file_kind(path) == "torchscript"
    loaded = load_model(str(path), device="cpu")
    assert (loaded.source, loaded.embed_dim, loaded.input_size, loaded.std) == ("torchscript", 24, 64, (0.25,) * 3)
    images = [encode(photos["rocket"]), encode(photos["coffee"])]
    np.testing.assert_allclose(embed_bytes(loaded, images).astype(np.float32), _by_hand(loaded, net, images), atol=1e-3)

    # Without saved preprocessing: ImageNet statistics at 224 px, whole shorter side.
    bare = tmp_path / "bare.pt"
    torch.jit.save(scripted, str(bare))
    plain = load_model(str(bare), device="cpu")
    assert (plain.input_size, plain.crop_pct, plain.mean) == (224, 1.0, (0.485, 0.456, 0.406))


def test_named_model_without_weights_says_how_to_give_them():
    with pytest.raises(UserError) as err:
        load_model("vit_huge_patch16_224", device="cpu")
    message = str(err.value)
    assert "--model vit_huge_patch16_224:/path/to/weights.safetensors" in message
    assert "embed.weights" in message and "\n" not in message
    with pytest.raises(UserError, match=r"--model vit_large_patch16_224:/path/to/weights\.safetensors"):
        load_model("vit_large_patch16_224", device="cpu")


def test_missing_files_and_unknown_names(tmp_path, reference_vit):
    with pytest.raises(UserError, match=r"model weights not found: /nonexistent/h16\.safetensors"):
        load_model("vit_huge_patch16_224:/nonexistent/h16.safetensors", device="cpu")
    with pytest.raises(UserError, match="model weights not found"):
        load_model(str(tmp_path / "nothing.pt"), device="cpu")
    with pytest.raises(UserError, match="unknown model 'not_a_model'"):
        load_model("not_a_model", device="cpu")
    plain = tmp_path / "plain.pth"
    torch.save(reference_vit.state_dict(), plain)
    with pytest.raises(UserError, match=r"plain weights without an architecture: pass --model NAME:"):
        load_model(str(plain), device="cpu")


def test_pickled_objects_are_not_executed(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"model": nn.Linear(2, 2)}, path)  # a whole module: needs arbitrary unpickling
    with pytest.raises(UserError, match="must hold only tensors"):
        load_model(f"{SMALL_VIT}:{path}", device="cpu")


def test_device_resolution():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")


def test_lvd_backbone_export(tmp_path, photos, encode):
    export = pytest.importorskip("training.export", reason="training.export (the trainer's exporter) not there yet")
    from training.models.vit import build_vit

    torch.manual_seed(0)
    arch = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 16}
    net = build_vit(**arch).eval()
    path = export.save_backbone(net, tmp_path / "backbone.pt", arch, img_size=32, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    assert file_kind(path) == "lvd-backbone"
    loaded = load_model(str(path), device="cpu")
    assert (loaded.source, loaded.embed_dim, loaded.input_size, loaded.std) == ("lvd-backbone", 64, 32, (0.2,) * 3)
    images = [encode(photos["chelsea"]), encode(photos["rocket"])]
    np.testing.assert_allclose(embed_bytes(loaded, images).astype(np.float32), _by_hand(loaded, net, images), atol=1e-3)
