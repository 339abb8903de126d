"""ViT behaviour: efficient stochastic depth, position-embedding interpolation, registers, mask token,
architecture sizes, heads."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from training.models import DINOHead, build_vit
from training.models.layers import swiglu_hidden
from training.models.stochastic_depth import drop_add_residual, kept_count


def tiny_vit(**kw) -> nn.Module:
    torch.manual_seed(0)
    return build_vit(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, **kw).eval()


def test_efficient_drop_path_is_unbiased_and_touches_a_subset():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4)
    w = torch.randn(4, 4)
    f = lambda t: torch.tanh(t @ w)  # noqa: E731  per-sample branch
    kept = kept_count(8, 0.25)
    assert kept == 6 and kept_count(64, 0.3) == 44 and kept_count(2, 0.9) == 1
    draws = torch.stack([drop_add_residual(x, f, 0.25) for _ in range(4000)])
    changed = (draws != x).flatten(2).any(-1)  # [draw, sample]
    assert (changed.sum(1) == kept).all()
    # a changed sample received exactly (batch / kept) * f(x)
    scaled = x + (8 / 6) * f(x)
    assert torch.allclose(draws[0][changed[0]], scaled[changed[0]], atol=1e-6)
    # the mean over draws converges to x + f(x): tolerance 5 standard errors of the Monte-Carlo mean
    mean = draws.mean(0)
    target = x + f(x)
    std_err = ((8 / 6) * f(x)).abs() * (0.75 * 0.25) ** 0.5 / 4000**0.5
    assert ((mean - target).abs() <= 5 * std_err + 1e-6).all()


def test_drop_path_only_in_training():
    vit = tiny_vit(drop_path_rate=0.5)
    x = torch.randn(4, 3, 56, 56)
    a, b = vit(x), vit(x)
    assert torch.equal(a, b)  # eval: deterministic, no dropped paths
    vit.train()
    torch.manual_seed(1)
    c = vit(x)
    assert not torch.allclose(a, c)


def test_position_embedding_interpolation_any_resolution():
    vit = tiny_vit(num_register_tokens=4)
    assert vit.num_patches == 16
    same = vit.interpolate_pos_encoding(4, 4, torch.float32)
    assert same.data_ptr() == vit.pos_embed.data_ptr() or torch.equal(same, vit.pos_embed)
    with torch.no_grad():
        vit.pos_embed[:, 1:] = 0.5  # a constant field stays constant under bicubic resizing
    big = vit.interpolate_pos_encoding(7, 5, torch.float32)
    assert big.shape == (1, 1 + 35, 32)
    assert torch.allclose(big[:, 1:], torch.full_like(big[:, 1:], 0.5), atol=1e-6)
    for side in (28, 98, 70):
        feats = vit.forward_features(torch.randn(2, 3, side, side))
        n = (side // 14) ** 2
        assert feats["cls"].shape == (2, 32) and feats["registers"].shape == (2, 4, 32) and feats["patches"].shape == (2, n, 32)


def test_fully_masked_input_is_independent_of_the_image():
    vit = tiny_vit()
    with torch.no_grad():
        vit.mask_token.normal_()
    x1, x2 = torch.randn(1, 3, 56, 56), torch.randn(1, 3, 56, 56)
    all_masked = torch.ones(1, 16, dtype=torch.bool)
    assert torch.allclose(vit(x1, masks=all_masked), vit(x2, masks=all_masked), atol=1e-6)
    assert not torch.allclose(vit(x1), vit(x2))
    partly = torch.zeros(1, 16, dtype=torch.bool)
    partly[0, :8] = True
    assert not torch.allclose(vit(x1, masks=partly), vit(x1))


def _expected_params(dim: int, depth: int, hidden: int, swiglu: bool, tokens: int, patch: int) -> int:
    attn = 3 * dim * dim + 3 * dim + dim * dim + dim
    ffn = (dim * 2 * hidden + 2 * hidden + hidden * dim + dim) if swiglu else (2 * dim * hidden + hidden + dim)
    block = attn + ffn + 4 * dim + 2 * dim  # two LayerNorms, two LayerScales
    embed = 3 * patch * patch * dim + dim + tokens * dim + dim + dim  # conv, cls, pos, mask token
    return depth * block + embed + 2 * dim  # final norm


@pytest.mark.parametrize("arch,dim,depth,swiglu", [("vit_small", 384, 12, False), ("vit_large", 1024, 24, False), ("vit_giant2", 1536, 40, True)])
def test_architecture_sizes(arch, dim, depth, swiglu):
    with torch.device("meta"):
        vit = build_vit(arch, img_size=518, patch_size=14)
    hidden = swiglu_hidden(4 * dim) if swiglu else 4 * dim
    assert sum(p.numel() for p in vit.parameters()) == _expected_params(dim, depth, hidden, swiglu, 1 + 37 * 37, 14)
    assert len(vit.blocks) == depth and vit.embed_dim == dim
    if swiglu:
        assert hidden == 4096  # DINOv2 ViT-g: 2/3 of 6144, rounded to a multiple of 8


def test_dino_head_outputs_cosines_to_prototypes():
    torch.manual_seed(0)
    head = DINOHead(32, out_dim=50, nlayers=3, hidden_dim=64, bottleneck_dim=16)
    out = head(torch.randn(7, 32))
    assert out.shape == (7, 50)
    assert out.abs().max() <= 1.0 + 1e-5  # unit bottleneck x unit prototype rows
    scaled = head.last_layer.weight_v.detach() * 3.0
    with torch.no_grad():
        before = head(torch.ones(1, 32))
        head.last_layer.weight_v.copy_(scaled)
        assert torch.allclose(head(torch.ones(1, 32)), before, atol=1e-6)  # weight norm: row scale is irrelevant
