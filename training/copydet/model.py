"""The copy descriptor: the packaged EfficientNet-Lite0 trunk, GeM pooling, a linear projection.

image [B, 3, H, W] (normalised with `MEAN` / `STD`) -> stem and block stages 0..3 (frozen, as
shipped in the ImageNet package) -> stages 4..6 (trained for copy detection) -> GeM (p = 3) over the
stride-32 map -> Linear(320 -> DIM) -> L2 normalisation. With `flip_invariant`, the pooled features
of the image and of its mirror image are averaged before the projection, so a horizontal flip gives
the same descriptor exactly (at twice the cost; the shipped `lvd_copy_v1` runs without: trained on
flipped views, it finds flips as well in one forward).

Only the trained parameters (stages 4..6, GeM exponent, projection) are saved (`save_trained`);
`load_trained` rebuilds the rest from the packaged ImageNet file, so the shipped file stays small.
BatchNorm statistics stay those of the packaged weights (all norms run in eval mode).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training import weights

#: Output dimension, trained stages (the rest is frozen) and the preprocessing of the packaged trunk
#: (TF EfficientNet-Lite: mean = std = 0.5).
DIM = 512
TRAINED_STAGES = (4, 5, 6)
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
#: The shipped trained parameters (`lvd_copy_v1`), installed with the package.
SHIPPED = Path(__file__).with_name("lvd_copy_v1.safetensors")


class GeM(nn.Module):
    """Generalised mean pooling: (mean x^p)^(1/p) over H, W, with a learned p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class CopyDescriptor(nn.Module):
    """Frozen early trunk, trained late stages, GeM, projection, L2: [B, 3, H, W] -> [B, DIM]."""

    def __init__(self, classifier: nn.Module, dim: int = DIM, flip_invariant: bool = True):
        super().__init__()
        first = min(TRAINED_STAGES)
        self.frozen = nn.Sequential(classifier.conv_stem, classifier.bn1, *classifier.blocks[:first])
        self.trained = nn.Sequential(*classifier.blocks[first:])
        channels = classifier.blocks[-1][-1].conv_pwl.out_channels
        self.pool = GeM()
        self.proj = nn.Linear(channels, dim)
        self.flip_invariant = flip_invariant
        self.num_features = dim
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "CopyDescriptor":
        """Norm layers keep the packaged statistics whatever the mode (small batches, one core)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """GeM-pooled stage-6 features [B, C] (before the projection)."""
        with torch.no_grad():
            h = self.frozen(x)
        return self.pool(self.trained(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_invariant:
            both = self.pooled(torch.cat([x, torch.flip(x, dims=[3])]))
            feats = 0.5 * (both[: len(x)] + both[len(x):])
        else:
            feats = self.pooled(x)
        return F.normalize(self.proj(feats.float()), dim=1)


def build(dim: int = DIM, flip_invariant: bool = True, seed: int = 0) -> CopyDescriptor:
    """A fresh descriptor on the packaged trunk; the projection initialised from `seed`."""
    torch.manual_seed(seed)
    return CopyDescriptor(weights.packaged_classifier(), dim, flip_invariant)


def trained_state(model: CopyDescriptor) -> dict[str, torch.Tensor]:
    """The parameters that training changes (no buffers: norm statistics stay the packaged ones)."""
    return {k: v.detach() for k, v in model.named_parameters() if not k.startswith("frozen.")}


def save_trained(model: CopyDescriptor, path: str | Path) -> None:
    """The trained parameters as float16 safetensors. One metadata key: safetensors writes its
    metadata map in no fixed order, and the same weights must give the same bytes."""
    from safetensors.torch import save_file

    state = {k: v.to(torch.float16).contiguous() for k, v in trained_state(model).items()}
    save_file(state, str(path), metadata={"format": "lvd-copydet/v1"})


def load_trained(path: str | Path, flip_invariant: bool = True) -> CopyDescriptor:
    """A descriptor with the packaged trunk and the trained parameters of `path`, in eval mode."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    if meta.get("format") != "lvd-copydet/v1":
        raise ValueError(f"{path} is not an lvd-copydet/v1 file")
    model = CopyDescriptor(weights.packaged_classifier(), int(state["proj.weight"].shape[0]), flip_invariant)
    missing = set(trained_state(model)) - set(state)
    if missing or set(state) - set(trained_state(model)):
        raise ValueError(f"{path}: parameters do not match the descriptor (missing {sorted(missing)[:3]})")
    model.load_state_dict(state, strict=False)
    return model.eval()
