"""Score normalisation of the k-NN graph (`curation.dedup.knn.passes`) and how the dedup stages set it."""
from __future__ import annotations

import numpy as np

from curation.config import KnnConfig, RunConfig
from curation.dedup.knn import knn_edges, passes
from pipelines.stages.embedding import dedup_knn_config

SIMS = np.array([[0.9, 0.8, 0.7, 0.6],    # a dense neighbourhood: the 3rd neighbour is close
                 [0.9, 0.3, 0.2, 0.1],    # an isolated image with one near copy
                 [0.9, 0.5, -1.0, -1.0]], np.float32)
IDS = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, -1, -1]])


def test_off_is_a_plain_threshold():
    assert np.array_equal(passes(SIMS, IDS, 0.55, KnnConfig()), (SIMS > 0.55) & (IDS >= 0))


def test_dense_neighbourhoods_need_a_larger_margin():
    cfg = KnnConfig(background_rank=3, background_weight=1.0)
    keep = passes(SIMS, IDS, 0.25, cfg)
    # row 0: 0.9 - 0.7 = 0.2 fails; row 1: 0.9 - 0.2 = 0.7 passes, 0.3 - 0.2 fails;
    # row 2 has two neighbours: its background is the last one found (0.5), never a missing slot.
    assert keep.tolist() == [[False, False, False, False], [True, False, False, False], [True, False, False, False]]


def test_negative_background_never_lowers_the_bar():
    sims = np.array([[0.5, -0.2, -0.3]], np.float32)
    cfg = KnnConfig(background_rank=2, background_weight=1.0)
    assert passes(sims, np.array([[1, 2, 3]]), 0.45, cfg).tolist() == [[True, False, False]]


def test_normalised_graph_drops_edges_inside_dense_families():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    family = centre + 0.35 * rng.normal(size=(30, 64))  # look-alikes, close to one another
    loners = rng.normal(size=(30, 64))
    copies = loners[:10] + 0.15 * rng.normal(size=(10, 64))  # one near copy each
    x = np.concatenate([family, loners, copies]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    plain = knn_edges(x, k=16, threshold=0.8, cfg=KnnConfig())
    normed = knn_edges(x, k=16, threshold=0.5, cfg=KnnConfig(background_rank=4, background_weight=1.0))
    inside = lambda e: int(((e[0] < 30) & (e[1] < 30)).sum())  # noqa: E731
    pairs = lambda e: {(a, b) for a, b in zip(e[0].tolist(), e[1].tolist()) if a >= 30}  # noqa: E731
    copy_pairs = {(30 + i, 60 + i) for i in range(10)}
    assert inside(plain) > 0 and inside(normed) == 0
    assert copy_pairs <= pairs(normed)


def test_dedup_stages_use_the_models_calibration_unless_configured():
    cfg = RunConfig.model_validate({"dedup": {"model": "efficientnet_lite0_copy"}})  # the copy head
    assert (dedup_knn_config(cfg).background_rank, dedup_knn_config(cfg).background_weight) == (8, 0.75)
    default = RunConfig()  # the trained descriptor: plain cosine
    assert (dedup_knn_config(default).background_rank, dedup_knn_config(default).background_weight) == (0, 0.0)
    sscd = RunConfig.model_validate({"dedup": {"model": "/models/sscd.torchscript"}})
    assert (dedup_knn_config(sscd).background_rank, dedup_knn_config(sscd).background_weight) == (0, 0.0)
    own = RunConfig.model_validate({"dedup": {"background_rank": 4, "background_weight": 0.5}, "knn": {"nprobe": 7}})
    knn = dedup_knn_config(own)
    assert (knn.background_rank, knn.background_weight, knn.nprobe) == (4, 0.5, 7)
    assert own.knn.background_rank == 0  # the run's own knn section is not modified
