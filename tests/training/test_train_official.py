"""Official DINOv2 / DINOv3 checkpoints in our ViT: every name gives timm's features.

For each name a random state dict in the official key layout (`official_layout`) is loaded into our
model (`training.models.official`) and into timm's own implementation of that architecture
(`vit_*_patch14[_reg4]_dinov2`, `vit_*_patch16_dinov3[_qkvb]`, through timm's `checkpoint_filter_fn`),
and CLS and patch features are compared at 224 px and at a non-square resolution (float32, max abs diff
<= 1e-5). To keep CPU cost small the networks keep their full width but only 2 blocks (1 for the widths
>= 1024: L, g, H+); ViT-7B/16 is also narrowed to 512 (4 heads of 128, its head width). Separately, the full-size layout of every
name is mapped on the meta device (names and shapes of every tensor, no memory) and our parameter
count is checked against timm's full-size model.

timm resamples DINOv2's 37 x 37 position table when it loads (antialiased, no offset), the official
model interpolates at every forward (offset 0.1 without antialias, or antialias without offset for
the "_reg" releases). timm is therefore given the table already interpolated by the official
formula for the test resolution (`official_interpolation`), so the comparison covers both the
architecture and our interpolation. DINOv3 has no table (RoPE): timm runs it at any size.
"""
from __future__ import annotations

import pytest
import timm
import torch
from official_layout import LAYOUTS, random_state
from test_train_parity_fixes import official_interpolation

from curation.core.errors import UserError
from training.models.official import OFFICIAL, build_official, from_official, official_model, to_official

TOLERANCE = 1e-5
# 2 blocks, 1 for the widths >= 1024 (L, g, H+); ViT-7B also narrowed (its head width of 128 kept)
REDUCED = {name: dict(depth=1 if LAYOUTS[name][1] >= 1024 else 2) for name in LAYOUTS}
REDUCED["dinov3_vit7b16"] = dict(depth=2, dim=512, heads=4)
RESOLUTIONS = {"dinov2": [(224, 224), (112, 168)], "dinov3": [(224, 224), (96, 160)]}  # and a non-square one
DIFFS: dict[str, float] = {}


def timm_reference(name: str, state: dict[str, torch.Tensor], size: tuple[int, int], depth: int, dim: int | None,
                   heads: int | None) -> torch.nn.Module:
    spec = official_model(name)
    kwargs = dict(pretrained=False, num_classes=0, depth=depth)
    if dim:
        kwargs.update(embed_dim=dim, num_heads=heads)
    state = dict(state)
    if spec.family == "dinov2":
        kwargs["img_size"] = size
        pos = official_interpolation(state["pos_embed"], size[0] // 14, size[1] // 14,
                                     spec.arch["interpolate_offset"], spec.arch["interpolate_antialias"])
        state["pos_embed"] = pos
        from timm.models.vision_transformer import checkpoint_filter_fn
    else:
        from timm.models.eva import checkpoint_filter_fn
    model = timm.create_model(spec.timm_name, **kwargs).eval()
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    return model


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_features_equal_timm(name):
    torch.manual_seed(0)
    size = REDUCED[name]
    state = random_state(name, **size)
    ours = build_official(name, state, depth=size["depth"], **({"embed_dim": size["dim"], "num_heads": size["heads"]} if "dim" in size else {}))
    worst = 0.0
    for h, w in RESOLUTIONS[official_model(name).family]:
        ref = timm_reference(name, state, (h, w), size["depth"], size.get("dim"), size.get("heads"))
        x = torch.randn(1 if LAYOUTS[name][1] >= 1024 else 2, 3, h, w)
        with torch.no_grad():
            mine = ours.forward_features(x)
            theirs = ref.forward_features(x)
        cls, patches = theirs[:, 0], theirs[:, ref.num_prefix_tokens:]
        assert mine["patches"].shape == patches.shape
        diff = max((mine["cls"] - cls).abs().max().item(), (mine["patches"] - patches).abs().max().item())
        assert diff <= TOLERANCE, f"{name} at {h}x{w}: max abs diff {diff:.2e}"
        assert cls.std() > 0.1 and (patches[:, 0] - patches[:, -1]).abs().max() > 0.1  # non-degenerate features
        worst = max(worst, diff)
    DIFFS[name] = worst
    print(f"{name}: max abs diff {worst:.2e}")


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_full_size_layout_maps_onto_our_model(name):
    state = random_state(name, device="meta")
    arch, ours = from_official(name, state)
    spec = official_model(name)
    assert arch["depth"] == LAYOUTS[name][2] and arch["embed_dim"] == LAYOUTS[name][1]
    with torch.device("meta"):
        ref = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    n_ours = sum(v.numel() for k, v in ours.items())
    n_timm = sum(p.numel() for p in ref.parameters())
    # timm drops the (pretraining-only) mask token; with registers it folds the CLS position into
    # cls_token; for DINOv3 it keeps no key bias (always masked to 0) where we keep the official qkv bias
    d = arch["embed_dim"]
    folded = d if spec.family == "dinov2" and arch["num_register_tokens"] else 0
    key_bias = arch["depth"] * d if spec.family == "dinov3" and arch["qkv_bias"] else 0
    assert n_ours == n_timm + d + folded + key_bias


def test_chunked_training_checkpoints_and_wrong_names():
    state = random_state("dinov2_vits14", depth=4)
    chunked = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = k.replace(f"blocks.{i}.", f"blocks.{i // 2}.{i}.", 1)
        chunked[k] = v
    assert "blocks.1.3.norm1.weight" in chunked  # FSDP training checkpoints (block_chunks=2)
    _, a = from_official("dinov2_vits14", state, depth=4)
    _, b = from_official("dinov2_vits14", chunked, depth=4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="do not fit dinov2_vitb14"):
        from_official("dinov2_vitb14", state, depth=4)
    with pytest.raises(UserError, match="unknown official model"):
        official_model("dinov2_vitx14")
    assert official_model("dinov2_vitg14_reg").name == "dinov2_vitg14_reg4"
    assert official_model("dinov3_vith+16").name == "dinov3_vith16plus"


@pytest.mark.parametrize("name", ["dinov2_vitb14_reg4", "dinov3_vits16plus"])
def test_official_layout_round_trips(name):
    family = official_model(name).family
    state = random_state(name, depth=2)
    model = build_official(name, state, depth=2)
    back = to_official(model, family)
    assert back.keys() == state.keys() - {"local_cls_norm.weight", "local_cls_norm.bias"}
    assert all(torch.equal(back[k], state[k]) for k in back), [k for k in back if not torch.equal(back[k], state[k])]


def test_dinov3_recipe_builds_the_released_architecture():
    """training/configs/dinov3_vitl16.yaml trains exactly the backbone dinov3_vitl16 releases."""
    from training.config import load_config
    from training.meta_arch import student_arch
    from training.models import build_vit

    with torch.device("meta"):
        ours = build_vit(**student_arch(load_config("dinov3_vitl16"))).state_dict()
    _, released = from_official("dinov3_vitl16", random_state("dinov3_vitl16", device="meta"))
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in released.items()}
