"""`lvd eval-knn`: k-NN (and optionally linear-probe) accuracy of a backbone on a labelled train / val pair."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from curation.core.errors import UserError
from training.eval.features import extract_features
from training.eval.knn import knn_accuracy
from training.eval.labeled import load_labeled
from training.eval.linear import linear_probe_accuracy


def evaluate_model(model: nn.Module, info: dict[str, Any], train: str | Path, val: str | Path, k: int = 20,
                   temperature: float = 0.07, linear: bool = False, img_size: int | None = None, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> dict[str, Any]:
    """Accuracies in [0, 1] plus the sizes involved."""
    train_set, val_set = load_labeled(train), load_labeled(val)
    if train_set.classes != val_set.classes:
        missing = sorted(set(val_set.classes) - set(train_set.classes))
        if missing:
            raise UserError(f"validation classes missing from the training set: {', '.join(missing[:5])}")
        index = {c: i for i, c in enumerate(train_set.classes)}
        val_set.labels = torch.as_tensor([index[val_set.classes[i]] for i in val_set.labels]).numpy()
    size = img_size or int(info["img_size"])
    feats = {name: extract_features(model, s.items, size, info["mean"], info["std"], batch_size, device)
             for name, s in (("train", train_set), ("val", val_set))}
    y_train, y_val = torch.as_tensor(train_set.labels), torch.as_tensor(val_set.labels)
    result: dict[str, Any] = {
        "knn_top1": knn_accuracy(feats["train"], y_train, feats["val"], y_val, len(train_set.classes), k, temperature),
        "k": k, "temperature": temperature, "img_size": size,
        "n_train": len(train_set), "n_val": len(val_set), "n_classes": len(train_set.classes),
    }
    if linear:
        result["linear_top1"] = linear_probe_accuracy(feats["train"], y_train, feats["val"], y_val)
    return result
