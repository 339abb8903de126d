"""k-NN (DINO-weighted), linear probe and labelled-data loading."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curation.core.errors import UserError
from training.eval.evaluate import evaluate_model
from training.eval.knn import knn_accuracy, knn_predict
from training.eval.labeled import load_labeled
from training.eval.linear import linear_probe_accuracy
from training.export import IMAGENET_MEAN, IMAGENET_STD
from training.models import build_vit


def naive_knn(train, labels, query, n_classes, k, t):
    preds = []
    for q in query:
        sims = [float(np.dot(q, x) / (np.linalg.norm(q) * np.linalg.norm(x))) for x in train]
        top = sorted(range(len(train)), key=lambda i: -sims[i])[:k]
        votes = np.zeros(n_classes)
        for i in top:
            votes[labels[i]] += np.exp(sims[i] / t)
        preds.append(int(np.argmax(votes)))
    return preds


def test_knn_matches_naive_weighted_vote():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8))
    labels = rng.integers(0, 4, size=60)
    train = centers[labels] + rng.normal(size=(60, 8)) * 1.2
    q_labels = rng.integers(0, 4, size=25)
    query = centers[q_labels] + rng.normal(size=(25, 8)) * 1.2
    for k, t in ((20, 0.07), (5, 0.5), (100, 0.07)):
        got = knn_predict(torch.tensor(train), torch.tensor(labels), torch.tensor(query), 4, k, t, chunk=7)
        assert got.tolist() == naive_knn(train, labels, query, 4, k, t)
    acc = knn_accuracy(torch.tensor(train), torch.tensor(labels), torch.tensor(query), torch.tensor(q_labels), 4)
    assert 0.5 < acc <= 1.0


def test_linear_probe_separates_linear_classes():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 10))
    x = rng.normal(size=(300, 10))
    y = (x @ w.T).argmax(1)
    acc = linear_probe_accuracy(torch.tensor(x[:200]), torch.tensor(y[:200]), torch.tensor(x[200:]), torch.tensor(y[200:]))
    assert acc >= 0.9
    shuffled = rng.permutation(y[:200])
    chance = linear_probe_accuracy(torch.tensor(x[:200]), torch.tensor(shuffled), torch.tensor(x[200:]), torch.tensor(y[200:]))
    assert chance < 0.6


def test_labeled_folder_and_parquet_agree(labeled, tmp_path):
    train_dir, _ = labeled
    folder = load_labeled(train_dir)
    assert len(folder) == 72 and len(folder.classes) == 12 and np.bincount(folder.labels).tolist() == [6] * 12
    table = pa.table({"image": [p.read_bytes() for p in folder.items], "label": [folder.classes[i] for i in folder.labels]})
    pq.write_table(table, tmp_path / "train.parquet")
    parquet = load_labeled(tmp_path / "train.parquet")
    assert parquet.classes == folder.classes and parquet.labels.tolist() == folder.labels.tolist()
    with pytest.raises(UserError):
        load_labeled(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        load_labeled(tmp_path / "empty")
    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "nolabel.parquet")
    with pytest.raises(UserError, match="label"):
        load_labeled(tmp_path / "nolabel.parquet")


def test_evaluate_model_on_folders(labeled):
    torch.manual_seed(0)
    model = build_vit(img_size=48, patch_size=8, embed_dim=64, depth=2, num_heads=2, layerscale_init=0.1)
    info = {"img_size": 48, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    result = evaluate_model(model, info, labeled[0], labeled[1], linear=True)
    assert result["n_train"] == 72 and result["n_val"] == 48 and result["n_classes"] == 12
    assert 0.0 <= result["knn_top1"] <= 1.0 and 0.0 <= result["linear_top1"] <= 1.0
    # a random ViT is already better than chance (1/12) on these photo classes
    assert result["knn_top1"] > 2 / 12
