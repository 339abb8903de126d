"""The lvd-backbone/v1 export format and its loader (the contract with `embedder/`)."""
from __future__ import annotations

import pytest
import torch

from curation.core.errors import UserError
from training.export import FORMAT, IMAGENET_MEAN, IMAGENET_STD, load_backbone, save_backbone
from training.models import build_vit
from training.models.vit import arch_kwargs


def test_save_then_load_gives_the_same_features(tmp_path):
    arch = arch_kwargs("vit_tiny", depth=2, img_size=56, patch_size=14, num_register_tokens=4, drop_path_rate=0.2)
    torch.manual_seed(0)
    model = build_vit(**arch).eval()
    path = save_backbone(model, tmp_path / "bb.pth", arch, 56, IMAGENET_MEAN, IMAGENET_STD)
    payload = torch.load(path, weights_only=True)  # plain data: safe to load
    assert payload["format"] == FORMAT and payload["arch"]["drop_path_rate"] == 0.0
    loaded, info = load_backbone(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert info == {"img_size": 56, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "embed_dim": 192,
                    "arch": payload["arch"]}
    x = torch.randn(3, 3, 56, 56)
    assert torch.equal(loaded(x), model(x))
    assert loaded(torch.randn(2, 3, 112, 84)).shape == (2, 192)  # other resolutions: interpolated positions


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_backbone(tmp_path / "missing.pth")
    torch.save({"format": "something-else"}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="lvd-backbone/v1"):
        load_backbone(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError):
        load_backbone(tmp_path / "junk.pth")
