"""Components and the representative rule."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.dedup.decisions import build_components, representatives, summarize


def _rows(items: list[tuple[str, str, int]]) -> pa.Table:
    return pa.table({
        "image_id": [i for i, _, _ in items], "source": [s for _, s, _ in items],
        "orig_width": [w for _, _, w in items], "orig_height": [100] * len(items),
    })


def test_representative_is_largest_then_smallest_id() -> None:
    labels = np.array([0, 0, 0, 3, 3])
    pixels = np.array([10, 30, 30, 5, 5])
    assert representatives(labels, pixels).tolist() == [1, 1, 1, 3, 3]


def test_reasons_exact_hash_near_and_eval() -> None:
    rows = _rows([
        ("a", "s/a1.jpg", 100), ("a", "s/a0.jpg", 100),  # exact copies of the largest
        ("b", "s/b.jpg", 50),  # hash duplicate of a
        ("c", "s/c.jpg", 60),  # near duplicate of b (embedding)
        ("d", "s/d.jpg", 80), ("e", "s/e.jpg", 90),  # d-e linked to an evaluation image
        ("f", "s/f.jpg", 70),  # alone
    ])
    uids = ["a", "b", "c", "d", "e", "f"]
    hash_edges = (np.array([0]), np.array([1]))
    near_edges = (np.array([1, 3]), np.array([2, 4]))
    eval_hit = np.array([False, False, False, True, False, False])
    t = build_components(rows, hash_edges, near_edges, eval_hit).to_pylist()
    by_source = {r["source"]: r for r in t}
    assert uids == sorted(uids)
    assert by_source["s/a0.jpg"]["keep"] and by_source["s/a0.jpg"]["reason"] == "kept"
    assert by_source["s/a1.jpg"]["reason"] == "exact-duplicate"
    assert by_source["s/b.jpg"]["reason"] == "hash-duplicate" and by_source["s/b.jpg"]["component"] == "a"
    assert by_source["s/c.jpg"]["reason"] == "near-duplicate" and not by_source["s/c.jpg"]["keep"]
    assert by_source["s/d.jpg"]["reason"] == by_source["s/e.jpg"]["reason"] == "eval-duplicate"
    assert not by_source["s/e.jpg"]["keep"]  # the whole component goes, not just d
    assert by_source["s/f.jpg"]["keep"]
    assert summarize(build_components(rows, hash_edges, near_edges, eval_hit)) == {
        "eval-duplicate": 2, "exact-duplicate": 1, "hash-duplicate": 1, "kept": 2, "near-duplicate": 1}


def test_row_order_does_not_change_decisions() -> None:
    items = [("a", "x", 10), ("b", "y", 10), ("c", "z", 20), ("a", "w", 10)]
    edges = (np.array([0, 1]), np.array([1, 2]))
    order = [("image_id", "ascending"), ("source", "ascending")]
    one = build_components(_rows(items), edges)
    two = build_components(_rows(items[::-1]), edges)
    assert one.num_rows == 4 and one.sort_by(order).equals(two.sort_by(order))
    assert one.column("image_id").to_pylist() == ["a", "b", "c", "a"]  # rows stay in pool order
