"""Exported backbones: the file format `embedder/` loads (`lvd export`, `lvd embed --model`).

Format `lvd-backbone/v1` is one `torch.save` of a plain dict (loadable with `weights_only=True`):

    {"format": "lvd-backbone/v1",
     "arch": {...},            # keyword arguments of `training.models.build_vit`
     "state_dict": {...},      # the backbone's tensors (CPU, float32)
     "img_size": 224,          # the resolution it was trained at (any multiple of the patch works)
     "mean": [r, g, b], "std": [r, g, b],   # input normalisation for [0, 1] pixels
     "heads": {...}}           # optional: DINO/iBOT head weights + config, for distillation teachers

`load_backbone` returns the model in eval mode; `model(x)` maps [B, 3, H, W] normalised float
images to [B, D] CLS features (after the final LayerNorm, not L2-normalised).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from curation.core.errors import UserError
from training.models.vit import VisionTransformer, arch_kwargs, build_vit

FORMAT = "lvd-backbone/v1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    state = module.state_dict()
    if any(hasattr(v, "full_tensor") for v in state.values()):
        raise ValueError("sharded (FSDP) parameters: gather a full state dict first (training.train.export_final_backbone)")
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in state.items()}


def save_backbone(
    model: nn.Module,
    path: str | os.PathLike,
    arch: dict[str, Any],
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    heads: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (a `VisionTransformer`) as an `lvd-backbone/v1` file, atomically."""
    arch = arch_kwargs(**arch)  # every default written out
    arch["drop_path_rate"] = 0.0  # inference never drops paths; keeps the file free of training state
    payload: dict[str, Any] = {
        "format": FORMAT,
        "arch": arch,
        "state_dict": _cpu_state(model),
        "img_size": int(img_size),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }
    if heads is not None:
        payload["heads"] = heads
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def stored_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """The `build_vit` arguments of a stored arch: files written before the position-table
    interpolation offset existed were trained and exported without it."""
    return {"interpolate_offset": 0.0, **arch}


def read_payload(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check an `lvd-backbone/v1` file (tensors stay on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors: not a file we wrote
        raise UserError(f"{path} is not an {FORMAT} file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise UserError(f"{path} is not an {FORMAT} file (format: {found!r})")
    return payload


def load_backbone(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[VisionTransformer, dict[str, Any]]:
    """Rebuild an exported backbone in eval mode on `device`.

    Returns `(model, info)` with info keys `img_size`, `mean`, `std`, `embed_dim`, `arch`.
    """
    payload = read_payload(path)
    payload["arch"] = stored_arch(payload["arch"])
    model = build_vit(**payload["arch"])
    model.load_state_dict(payload["state_dict"], strict=True)
    model.eval().requires_grad_(False).to(device)
    info = {
        "img_size": payload["img_size"],
        "mean": list(payload["mean"]),
        "std": list(payload["std"]),
        "embed_dim": model.embed_dim,
        "arch": dict(payload["arch"]),
    }
    return model, info


def _network_from_checkpoint(ckpt: str | os.PathLike, with_heads: bool) -> tuple[nn.Module, dict[str, Any], Any]:
    """The final network (EMA teacher, or student EMA for distillation runs) of a training checkpoint."""
    from training.checkpoint import load_submodule, read_trainer_state, resolve_checkpoint
    from training.meta_arch import build_network

    ckpt = resolve_checkpoint(ckpt)
    state = read_trainer_state(ckpt)
    arch = dict(stored_arch(state["arch"]), drop_path_rate=0.0)
    heads = state["heads"]
    prefix = "student_ema" if state["distillation"] else "teacher"
    net = build_network(arch, heads)
    if with_heads:
        load_submodule(ckpt, net, prefix)
    else:
        net = net["backbone"]
        load_submodule(ckpt, net, f"{prefix}.backbone")
    import yaml

    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    return net, {"arch": arch, "heads": heads}, cfg


def _heads_entry(net: nn.Module, config: dict[str, Any]) -> dict[str, Any]:
    """The `heads` entry of an export: head shapes and the weights of every non-backbone module."""
    return {"config": config, "state_dict": {k: v for k, v in _cpu_state(net).items() if not k.startswith("backbone.")}}


def export_checkpoint(ckpt: str | os.PathLike, out: str | os.PathLike, with_heads: bool = False) -> Path:
    """Write the final backbone of a training checkpoint (or run directory) as an `lvd-backbone/v1` file.

    `with_heads` also stores the DINO/iBOT heads, which a distillation teacher (`--distill-from`) needs.
    """
    net, shapes, cfg = _network_from_checkpoint(ckpt, with_heads)
    backbone = net["backbone"] if with_heads else net
    heads = _heads_entry(net, shapes["heads"]) if with_heads else None
    return save_backbone(backbone, out, shapes["arch"], int(cfg["crops"]["global_crops_size"]), IMAGENET_MEAN, IMAGENET_STD, heads=heads)


OFFICIAL_FORMATS = ("dinov2", "dinov3")


def export_official(ckpt: str | os.PathLike, out: str | os.PathLike, family: str,
                    native_grid: bool = False) -> tuple[Path, dict[str, Any]]:
    """Write the final backbone of a training checkpoint (or run directory) as a plain state dict in the
    official key layout of `family` (`training.models.official.to_official`): the file torch.hub's
    DINOv2 / DINOv3 builders load with `load_state_dict(strict=True)` and timm's
    `checkpoint_filter_fn` converts. A DINOv2 position table is written on the released grid (37 x 37
    at patch 14, what torch.hub builds) unless `native_grid`: then on the grid of `arch["img_size"]`.
    Returns (path, arch); arch["img_size"] is the size the file's table is built for."""
    from training.models.official import official_grid, to_official

    if family not in OFFICIAL_FORMATS:
        raise UserError(f"unknown official format {family!r}: {' | '.join(OFFICIAL_FORMATS)}")
    net, shapes, _ = _network_from_checkpoint(ckpt, with_heads=False)
    grid = None if native_grid or family != "dinov2" else official_grid(net)
    state = to_official(net, family, grid)
    arch = dict(shapes["arch"], **({"img_size": grid * net.patch_embed.patch_size} if grid else {}))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path, arch


def teacher_payload(path: str | os.PathLike) -> dict[str, Any]:
    """A distillation teacher: an `lvd-backbone/v1` file exported with heads, or a training checkpoint / run dir."""
    path = Path(path)
    if path.is_dir():
        net, shapes, _ = _network_from_checkpoint(path, with_heads=True)
        return {
            "format": FORMAT,
            "arch": shapes["arch"],
            "state_dict": _cpu_state(net["backbone"]),
            "heads": _heads_entry(net, shapes["heads"]),
        }
    payload = read_payload(path)
    if "heads" not in payload:
        raise UserError(f"{path} has no DINO/iBOT heads; export the teacher with `lvd export CKPT --with-heads`")
    payload["arch"] = stored_arch(payload["arch"])
    return payload


def load_any_backbone(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[VisionTransformer, dict[str, Any]]:
    """`load_backbone` for an exported file, or the final backbone of a training checkpoint / run directory."""
    path = Path(path)
    if path.is_dir():
        net, shapes, cfg = _network_from_checkpoint(path, with_heads=False)
        net.eval().requires_grad_(False).to(device)
        info = {"img_size": int(cfg["crops"]["global_crops_size"]), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                "embed_dim": net.embed_dim, "arch": shapes["arch"]}
        return net, info
    return load_backbone(path, device)
