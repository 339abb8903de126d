"""Batch layout shared by the loader, the model and the tests.

Crops are stacked crop-major: `global_crops` is [n_global * B, 3, S, S] with all first views, then
all second views; `local_crops` likewise, and `gram_crops` (DINOv3's Gram-teacher views of the global
crops, when asked for). `masks` [n_global * B, N] bool marks iBOT-masked patches
of the global crops; `mask_indices` are the flat positions of those patches in
`patches.flatten(0, 1)` order.
"""
from __future__ import annotations

import numpy as np
import torch


def collate_multicrop(views: list[tuple[list[torch.Tensor], list[torch.Tensor]]], masks: np.ndarray) -> dict[str, torch.Tensor]:
    """Stack per-sample (globals, locals) crop lists and attach masks for the global crops."""
    n_global = len(views[0][0])
    n_local = len(views[0][1])
    global_crops = torch.stack([v[0][i] for i in range(n_global) for v in views])
    batch = {
        "global_crops": global_crops,
        "masks": torch.from_numpy(np.ascontiguousarray(masks)).bool(),
        "n_global": torch.tensor(n_global),
        "n_local": torch.tensor(n_local),
    }
    if n_local:
        batch["local_crops"] = torch.stack([v[1][i] for i in range(n_local) for v in views])
    if len(views[0]) > 2:  # Gram-teacher crops of the global crops, same layout
        batch["gram_crops"] = torch.stack([v[2][i] for i in range(n_global) for v in views])
    batch["mask_indices"] = batch["masks"].flatten().nonzero().flatten()
    return batch


def _part(t: torch.Tensor, n_crops: int, n_parts: int, part: int) -> torch.Tensor:
    per_crop = t.reshape(n_crops, -1, *t.shape[1:])
    size = per_crop.shape[1] // n_parts
    return per_crop[:, part * size : (part + 1) * size].reshape(-1, *t.shape[1:])


def slice_batch(batch: dict[str, torch.Tensor], n_parts: int, part: int) -> dict[str, torch.Tensor]:
    """The `part`-th of `n_parts` equal sub-batches (same images in every crop), e.g. one rank's share
    of a global batch."""
    n_global, n_local = int(batch["n_global"]), int(batch["n_local"])
    out = {
        "global_crops": _part(batch["global_crops"], n_global, n_parts, part),
        "masks": _part(batch["masks"], n_global, n_parts, part),
        "n_global": batch["n_global"],
        "n_local": batch["n_local"],
    }
    if "local_crops" in batch:
        out["local_crops"] = _part(batch["local_crops"], n_local, n_parts, part)
    if "gram_crops" in batch:
        out["gram_crops"] = _part(batch["gram_crops"], n_global, n_parts, part)
    out["mask_indices"] = out["masks"].flatten().nonzero().flatten()
    return out
