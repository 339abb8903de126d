"""Retrieval modes on small synthetic embeddings with known answers."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from curation.core import schemas
from curation.retrieval.retrieve import RETRIEVAL, cluster_counts, merge_retrievals, nearest, retrieve_as_is, retrieve_cluster, retrieve_sample


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_schema_is_output_without_image() -> None:
    assert RETRIEVAL.names == [n for n in schemas.OUTPUT.names if n != "image"]
    assert all(RETRIEVAL.field(n).type == schemas.OUTPUT.field(n).type for n in RETRIEVAL.names)


def test_as_is_keeps_every_seed() -> None:
    t = retrieve_as_is("dtd", ["s1", "s2"])
    assert t.schema == RETRIEVAL
    assert t.column("image_id").to_pylist() == ["s1", "s2"]
    assert t.column("query_id").to_pylist() == ["s1", "s2"]
    assert set(t.column("mode").to_pylist()) == {"as_is"}
    assert json.loads(t.column("provenance")[0].as_py()) == [{"dataset": "dtd", "mode": "as_is", "query": "s1"}]


def test_sample_exact_neighbours_known_answer() -> None:
    pool = np.eye(8, dtype=np.float32)  # pool image p<i> is the basis vector e_i
    pool_ids = [f"p{i}" for i in range(8)]
    q = _unit(np.array([[3, 2, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 4, 0]], dtype=np.float32))
    t = retrieve_sample("in1k", ["qa", "qb"], q, pool_ids, pool, n=2)
    assert t.column("image_id").to_pylist() == ["p0", "p1", "p6", "p5"]
    assert t.column("query_id").to_pylist() == ["qa", "qa", "qb", "qb"]
    np.testing.assert_allclose(t.column("similarity").to_numpy(), [3 / 14**0.5, 2 / 14**0.5, 4 / 17**0.5, 1 / 17**0.5], rtol=1e-6)
    assert t.column("cluster").null_count == 4


def test_sample_matches_brute_force_with_float16_and_small_batches() -> None:
    rng = np.random.default_rng(0)
    pool = _unit(rng.standard_normal((500, 32))).astype(np.float16)
    queries = _unit(rng.standard_normal((50, 32))).astype(np.float16)
    sims, idx = nearest(queries, pool, n=4, batch_size=7)
    exact = queries.astype(np.float32) @ pool.astype(np.float32).T
    np.testing.assert_array_equal(idx, np.argsort(-exact, axis=1)[:, :4])
    np.testing.assert_allclose(sims, np.sort(exact, axis=1)[:, ::-1][:, :4], rtol=1e-5, atol=1e-6)
    # N larger than the pool: every pool image, never a -1 id.
    assert nearest(queries[:2], pool[:3], n=10)[1].shape == (2, 3)


def _cluster_case() -> tuple[np.ndarray, list[str], np.ndarray]:
    # Queries: 3 in cluster 0 (does NOT qualify), 4 in cluster 1 and 5 in cluster 2 (qualify).
    query_labels = np.array([0] * 3 + [1] * 4 + [2] * 5)
    pool_labels = np.array([0] * 10 + [1] * 30 + [2] * 5 + [3] * 8)
    pool_ids = [f"p{i:02d}" for i in range(len(pool_labels))]
    return query_labels, pool_ids, pool_labels


def test_cluster_threshold_is_strictly_more_than_three() -> None:
    q, ids, labels = _cluster_case()
    t = retrieve_cluster("cub", q, ids, labels, m=20, cap=1_000)
    stats = cluster_counts(q, labels, m=20, cap=1_000)
    got = t.column("cluster").to_pylist()
    assert 0 not in got  # three query images are not enough
    assert got.count(1) == 20 and got.count(2) == 5  # M from the big cluster, all of the small one
    assert stats == {"clusters": 2, "retrieved": 25, "kept": 25}
    assert set(t.column("image_id").to_pylist()) <= {ids[i] for i in np.flatnonzero(labels != 0)}
    assert len(set(t.column("image_id").to_pylist())) == 25
    # One query more in cluster 0 and it qualifies (4 > 3).
    t4 = retrieve_cluster("cub", np.append(q, 0), ids, labels, m=20, cap=1_000)
    assert cluster_counts(np.append(q, 0), labels, m=20, cap=1_000)["clusters"] == 3
    assert t4.column("cluster").to_pylist().count(0) == 10


def test_cluster_cap_and_seeded_determinism() -> None:
    q, ids, labels = _cluster_case()
    a = retrieve_cluster("cub", q, ids, labels, m=20, cap=22, seed=3)
    b = retrieve_cluster("cub", q, ids, labels, m=20, cap=22, seed=3)
    c = retrieve_cluster("cub", q, ids, labels, m=20, cap=22, seed=4)
    assert cluster_counts(q, labels, m=20, cap=22) == {"clusters": 2, "retrieved": 25, "kept": 22}
    assert a.num_rows == 22 and a.equals(b)
    assert a.column("image_id").to_pylist() != c.column("image_id").to_pylist()
    # A cluster's picks depend on (seed, cluster) only: dropping cluster 2's queries keeps cluster 1's.
    only1 = retrieve_cluster("cub", q[q != 2], ids, labels, m=20, cap=1_000, seed=3)
    both = retrieve_cluster("cub", q, ids, labels, m=20, cap=1_000, seed=3)
    pick1 = [i for i, cl in zip(both.column("image_id").to_pylist(), both.column("cluster").to_pylist()) if cl == 1]
    assert only1.column("image_id").to_pylist() == pick1


def test_cluster_similarity_from_pool_scores() -> None:
    q, ids, labels = _cluster_case()
    scores = np.linspace(0, 1, len(ids), dtype=np.float32)
    t = retrieve_cluster("cub", q, ids, labels, m=100, cap=100, pool_scores=scores)
    rows = [int(i[1:]) for i in t.column("image_id").to_pylist()]
    np.testing.assert_allclose(t.column("similarity").to_numpy(), scores[rows])


def test_collisions_counted_and_provenance_merged() -> None:
    pool = np.eye(4, dtype=np.float32)
    ids = ["p0", "p1", "p2", "p3"]
    q = _unit(np.array([[2, 1, 0, 0], [1, 2, 0, 0]], dtype=np.float32))  # both queries want p0 and p1
    a = retrieve_sample("in1k", ["qa", "qb"], q, ids, pool, n=2)
    b = retrieve_as_is("gldv2", ["p1", "g9"])
    merged, report = merge_retrievals([a, b])
    assert merged.column("image_id").to_pylist() == ["p0", "p1", "g9"]
    assert report["rows"] == 6 and report["unique_images"] == 3 and report["duplicate_rows"] == 3
    assert report["collided_images"] == 2  # p0 (twice in in1k), p1 (twice in in1k + gldv2)
    assert report["cross_dataset_images"] == 1  # p1
    assert report["per_dataset"]["in1k"] == {"rows": 4, "unique_images": 2, "collisions": 2}
    assert report["per_dataset"]["gldv2"] == {"rows": 2, "unique_images": 2, "collisions": 0}
    p1 = json.loads(merged.column("provenance")[1].as_py())
    assert p1 == [
        {"dataset": "in1k", "mode": "sample", "query": "qa"},
        {"dataset": "in1k", "mode": "sample", "query": "qb"},
        {"dataset": "gldv2", "mode": "as_is", "query": "p1"},
    ]
    assert merged.column("query_id").to_pylist()[1] == "qa"  # the first row wins the columns
    multi, same_report = merge_retrievals([a, b], keep_multiplicity=True)
    assert multi.num_rows == 6 and same_report == report
    assert all(len(json.loads(p)) == 3 for i, p in zip(multi.column("image_id").to_pylist(), multi.column("provenance").to_pylist()) if i == "p1")


def test_merge_of_nothing() -> None:
    table, report = merge_retrievals([])
    assert table.num_rows == 0 and table.schema == RETRIEVAL and report["rows"] == 0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        retrieve_sample("x", ["a"], np.zeros((2, 4), np.float32), ["p"], np.zeros((1, 4), np.float32), n=1)
    with pytest.raises(ValueError):
        retrieve_sample("x", ["a"], np.zeros((1, 4), np.float32), ["p"], np.zeros((1, 4), np.float32), n=0)
    assert retrieve_sample("x", [], np.zeros((0, 4), np.float32), ["p"], np.ones((1, 4), np.float32), n=2).num_rows == 0
    empty = retrieve_cluster("x", np.array([], dtype=np.int64), [], np.array([], dtype=np.int64), m=1, cap=1)
    assert isinstance(empty, pa.Table) and empty.num_rows == 0 and empty.schema == RETRIEVAL
