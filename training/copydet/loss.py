"""The SSCD objective: InfoNCE between the two views of each instance, every other view in the
batch a negative, plus a KoLeo (entropy) term that spreads the descriptors over the sphere."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses.koleo import koleo_loss

#: Softmax temperature of InfoNCE and weight of the KoLeo term (SSCD: 0.05; entropy weight tuned here).
TEMPERATURE = 0.05
KOLEO_WEIGHT = 1.0


def info_nce(z: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """`z` [2N, D] L2-normalised, rows i and N + i two views of one instance: the mean over rows of
    the cross-entropy of finding the other view among the 2N - 1 other rows."""
    n = z.shape[0] // 2
    sims = z @ z.t() / temperature
    sims.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sims, target)


def copy_loss(z: torch.Tensor, temperature: float = TEMPERATURE, koleo_weight: float = KOLEO_WEIGHT) -> tuple[torch.Tensor, dict[str, float]]:
    """InfoNCE + koleo_weight x KoLeo (on each half of the batch: one view per instance, so that a
    view's nearest neighbour is not its own pair); returns the loss and its parts."""
    n = z.shape[0] // 2
    nce = info_nce(z, temperature)
    kol = 0.5 * (koleo_loss(z[:n]) + koleo_loss(z[n:]))
    loss = nce + koleo_weight * kol
    return loss, {"loss": float(loss.detach()), "infonce": float(nce.detach()), "koleo": float(kol.detach())}
