"""Continue pretraining from a released checkpoint: `lvd train --init dinov2_vitb14:PATH` (config key
`model.init`).

The checkpoint file (official key layout, see `training.models.official`) fixes the backbone's
architecture: its `model.*` keys are set from the released model (size, patch, registers, position
table and its interpolation, or DINOv3's RoPE, norms and key-bias mask), so the run's config.yaml
states what was trained. Student and teacher backbones start from the file; the DINO / iBOT heads
start fresh. A resumed run reads its own checkpoint instead of the file's weights.
"""
from __future__ import annotations

from typing import Any

import torch

from curation.core.errors import UserError
from training.config import Config, validate
from training.models.official import from_official, split_init_spec

# build_vit arguments that the released model decides (the rest: drop path, layerscale init, stay the config's).
_ARCH_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "ffn_layer", "mlp_ratio", "num_register_tokens",
              "qkv_bias", "proj_bias", "ffn_bias", "interpolate_antialias", "interpolate_offset", "img_size",
              "pos_embed", "rope_base", "norm_eps", "mask_k_bias", "swiglu_align")


def read_init(spec: str) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(model name, build_vit arguments, our state dict) of `NAME:PATH`."""
    from training.weights import read_state_dict

    model, path = split_init_spec(spec)
    state = read_state_dict(path)
    arch, ours = from_official(model.name, state)
    return model.name, arch, ours


def apply_init_arch(cfg: Config, name: str, arch: dict[str, Any]) -> None:
    """Set `cfg.model` to the released architecture (in place) and re-check the config."""
    m = cfg.model
    for key in _ARCH_KEYS:
        if key in arch:
            m[key] = arch[key]
    if arch.get("pos_embed") == "rope" and m.rope_rescale_coords is None:
        m["rope_rescale_coords"] = 2.0  # how DINOv3 trained its released models
    try:
        validate({**cfg, "model": {**m, "init": None}})  # every check, the patch multiples included
    except UserError as exc:
        raise UserError(f"--init {name}: {exc} (the released model has patch {arch['patch_size']}: e.g. "
                        f"crops.local_crops_size={6 * arch['patch_size']} highres.local_crops_size={6 * arch['patch_size']})") from None
