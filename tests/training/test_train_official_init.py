"""Official checkpoints in and out of the trainer: `lvd train --init NAME:PATH` continues from a released
backbone (full-size ViT-S files with random values, tiny crops to keep CPU cost small), and
`lvd export --format dinov2|dinov3` writes the official layout that timm and torch.hub load as is."""
from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml
from conftest import TINY_FAST
from official_layout import save_checkpoints, shapes
from test_train_parity_fixes import official_interpolation

from pipelines.cli import main
from training.config import load_config
from training.export import load_backbone
from training.meta_arch import SSLMetaArch
from training.models.official import build_official
from training.official_init import apply_init_arch, read_init

SMALL_CROPS = {14: ["crops.global_crops_size=56", "crops.local_crops_size=28", "highres.global_crops_size=56",
                    "highres.local_crops_size=28"],
               16: ["crops.global_crops_size=64", "crops.local_crops_size=32", "highres.global_crops_size=64",
                    "highres.local_crops_size=32"]}


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    return save_checkpoints(root, ("dinov2_vits14", "dinov3_vits16"), seed=2)


def test_init_sets_the_architecture_and_both_backbones(released):
    cfg = load_config("training/configs/tiny.yaml", SMALL_CROPS[14] + [f"model.init={json.dumps('dinov2_vits14:' + str(released['dinov2_vits14']))}"])
    name, arch, state = read_init(cfg.model.init)
    apply_init_arch(cfg, name, arch)
    m = cfg.model
    assert (m.embed_dim, m.depth, m.num_heads, m.patch_size, m.img_size, m.interpolate_offset) == (384, 12, 6, 14, 518, 0.1)
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg, None, state)
    for net in (meta.student, meta.teacher):
        own = net["backbone"].state_dict()
        assert all(torch.equal(own[k], state[k]) for k in state)
    # heads are fresh: the tiny config's shapes, randomly initialised
    assert meta.student["dino_head"].last_layer.weight_v.shape == (1024, 64)


def test_patch_mismatch_names_the_crop_sizes(released):
    spec = f"dinov3_vits16:{released['dinov3_vits16']}"
    cfg = load_config("training/configs/tiny.yaml", SMALL_CROPS[14] + [f"model.init={json.dumps(spec)}"])
    name, arch, _ = read_init(spec)
    with pytest.raises(Exception, match="local_crops_size=96"):
        apply_init_arch(cfg, name, arch)


@pytest.mark.parametrize("name,timm_name,patch", [("dinov2_vits14", "vit_small_patch14_dinov2", 14),
                                                  ("dinov3_vits16", "vit_small_patch16_dinov3_qkvb", 16)])
def test_lvd_train_init_then_export_official(released, shards, tmp_path, name, timm_name, patch):
    out = tmp_path / "run"
    assert main(["train", "--config", "training/configs/tiny.yaml", "--data", str(shards), "--out", str(out),
                 "--init", f"{name}:{released[name]}", *TINY_FAST, *SMALL_CROPS[patch]]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["init"] == f"{name}:{released[name]}" and saved["model"]["embed_dim"] == 384
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)

    # the exported teacher started from the file: 3 steps (warm-up lr, EMA 0.9) move its features a little
    backbone, info = load_backbone(out / "backbone.pth")
    original = build_official(name, torch.load(released[name], weights_only=True))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        trained, start = backbone(x), original(x)
    moved = (trained - start).abs().max().item()
    assert 0 < moved < 0.5 * start.abs().max().item()

    family = name.split("_")[0]
    exported = tmp_path / f"{family}.pth"
    assert main(["export", str(out), "--out", str(exported), "--format", family]) == 0
    state = torch.load(exported, weights_only=True)
    # the released file's layout, key for key and shape for shape: torch.hub's builder loads it strictly
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: v for k, v in shapes(name).items() if "local_cls" not in k}
    # and timm's model of the architecture gives the exported backbone's features
    if family == "dinov2":
        from timm.models.vision_transformer import checkpoint_filter_fn

        state["pos_embed"] = official_interpolation(state["pos_embed"], 16, 16, 0.1, False)
        ref = timm.create_model(timm_name, pretrained=False, num_classes=0, img_size=224)
    else:
        from timm.models.eva import checkpoint_filter_fn

        ref = timm.create_model(timm_name, pretrained=False, num_classes=0, global_pool="token")
    ref.load_state_dict(checkpoint_filter_fn(state, ref), strict=True)
    with torch.no_grad():
        assert (ref.eval()(x) - trained).abs().max() <= 1e-5


def test_tiny_run_exports_a_dinov2_file_timm_loads(tiny_run, tmp_path):
    """A backbone trained here (4 x 128, patch 8, 48 px) in DINOv2's layout, into timm's DINOv2 ViT."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = tmp_path / "tiny_dinov2.pth"
    assert main(["export", str(tiny_run), "--out", str(path), "--format", "dinov2"]) == 0
    state = torch.load(path, weights_only=True)
    assert set(state) >= {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "blocks.3.ls2.gamma", "norm.bias"}
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=48, patch_size=8,
                            embed_dim=128, depth=4, num_heads=4, init_values=0.1)
    ref.load_state_dict(checkpoint_filter_fn(dict(state), ref), strict=True)
    ours, _ = load_backbone(tiny_run / "backbone.pth")
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert (ref.eval()(x) - ours(x)).abs().max() <= 1e-5
    with pytest.raises(SystemExit):
        main(["export", str(tiny_run), "--out", str(tmp_path / "x.pth"), "--format", "dinov9"])


def test_a_backbone_trained_at_224_exports_the_released_37x37_table():
    """A DINOv2 ViT trained from scratch at 224 px has a 16 x 16 position table; torch.hub's builders
    (and timm's default) build 518 px models with 37 x 37. The export resamples the table as DINOv2
    does at inference, so at 518 px timm's model of the file gives our model's features."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from training.models import build_vit
    from training.models.official import official_model, to_official

    torch.manual_seed(0)
    ours = build_vit(**dict(official_model("dinov2_vits14").arch, depth=1, img_size=224)).eval()
    assert ours.pos_embed.shape[1] == 1 + 16 * 16
    state = to_official(ours, "dinov2", grid=37)
    assert state["pos_embed"].shape[1] == 1 + 37 * 37
    assert to_official(ours, "dinov2")["pos_embed"].shape[1] == 1 + 16 * 16  # --native-grid
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, depth=1)  # 518 px
    ref.load_state_dict(checkpoint_filter_fn(state, ref), strict=True)
    x = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        assert (ref.eval()(x) - ours(x)).abs().max() <= 1e-4
