"""Official checkpoint files as the curation pipeline's embedder: `--model dinov2_vits14:PATH`,
`embed.weights` name mapping, the families' preprocessing, timm's features."""
from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from official_layout import save_checkpoints
from PIL import Image

from embedder.models import load_model
from curation.core.errors import UserError


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Full-size ViT-S files (random values) in the official layouts, as torch.hub's files."""
    root = tmp_path_factory.mktemp("official")
    return save_checkpoints(root, ("dinov2_vits14_reg4", "dinov3_vits16"), seed=1, suffix="_pretrain.pth")


@pytest.mark.parametrize("name,timm_name", [("dinov2_vits14_reg4", "vit_small_patch14_reg4_dinov2"),
                                            ("dinov3_vits16", "vit_small_patch16_dinov3_qkvb")])
def test_official_file_as_embedder(checkpoints, name, timm_name):
    path = checkpoints[name]
    model = load_model(f"{name}:{path}", "cpu")
    assert model.source == "official" and model.embed_dim == 384
    assert (model.input_size, model.crop_pct, model.interpolation) == (224, 224 / 256, "bicubic")
    assert model.mean == (0.485, 0.456, 0.406) and model.std == (0.229, 0.224, 0.225)
    # the same file under its name through embed.weights, and the hub's own spelling of the name
    alias = "dinov2_vits14_reg" if name.startswith("dinov2") else name
    assert load_model(alias, "cpu", weights_map={alias: str(path)}).embed_dim == 384
    # CLS features equal timm's model of the architecture (224 px: DINOv2's table is interpolated 37 -> 16)
    state = torch.load(path, weights_only=True)
    if name.startswith("dinov2"):
        from test_train_parity_fixes import official_interpolation
        from timm.models.vision_transformer import checkpoint_filter_fn

        state["pos_embed"] = official_interpolation(state["pos_embed"], 16, 16, 0.0, True)
        ref = timm.create_model(timm_name, pretrained=False, num_classes=0, img_size=224)
    else:
        from timm.models.eva import checkpoint_filter_fn

        ref = timm.create_model(timm_name, pretrained=False, num_classes=0, global_pool="token")
    ref.load_state_dict(checkpoint_filter_fn(state, ref))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, theirs = model.module(x), ref.eval()(x)
    assert (ours - theirs).abs().max() <= 1e-5


def test_embedding_images_end_to_end(checkpoints):
    from embedder.inference import embed_bytes

    model = load_model(f"dinov3_vits16:{checkpoints['dinov3_vits16']}", "cpu")
    rng = np.random.default_rng(0)
    images = []
    for _ in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (300, 240, 3), dtype=np.uint8)).save(buf, "JPEG")
        images.append(buf.getvalue())
    emb = embed_bytes(model, images, batch_size=2)
    assert emb.shape == (3, 384)
    assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=1e-2)


def test_missing_weights_and_wrong_files_are_user_errors(checkpoints, tmp_path):
    with pytest.raises(UserError, match="needs local weights"):
        load_model("dinov2_vitg14", "cpu")
    with pytest.raises(UserError, match="do not fit dinov2_vitb14"):
        load_model(f"dinov2_vitb14:{checkpoints['dinov2_vits14_reg4']}", "cpu")
    with pytest.raises(UserError, match="not found"):
        load_model(f"dinov2_vitb14:{tmp_path / 'missing.pth'}", "cpu")
