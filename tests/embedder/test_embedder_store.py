"""Embeddings <-> Parquet: exact round trips, sliced and chunked inputs, empty files."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core.schemas import EMBEDDINGS
from embedder.store import embeddings_table, file_metadata, read_embeddings, table_embeddings, write_embeddings


def _random(n: int, dim: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return [f"{seed:02d}-{i:05d}" for i in range(n)], emb.astype(np.float16)


def test_round_trip_is_exact_across_files(tmp_path):
    ids_a, emb_a = _random(300, 48, seed=1)
    ids_b, emb_b = _random(200, 48, seed=2)
    # Written in reverse name order: reading sorts by path, so part-00000 comes first.
    write_embeddings(tmp_path / "part-00001.parquet", ids_b, emb_b, {"lvd.embed.model": "m"})
    write_embeddings(tmp_path / "part-00000.parquet", ids_a, emb_a)
    ids, emb = read_embeddings(sorted(tmp_path.glob("part-*.parquet"), reverse=True))
    assert emb.dtype == np.float16 and emb.shape == (500, 48)
    assert list(ids) == ids_a + ids_b
    assert emb.tobytes() == np.concatenate([emb_a, emb_b]).tobytes()
    assert pq.read_schema(tmp_path / "part-00000.parquet").field("embedding").type == pa.list_(pa.float16())
    assert file_metadata(tmp_path / "part-00001.parquet") == {"lvd.embed.dim": "48", "lvd.embed.model": "m"}


def test_table_schema_and_sliced_chunked_input():
    ids, emb = _random(10, 4, seed=3)
    table = embeddings_table(pa.chunked_array([ids[:6], ids[6:]]), emb)
    assert table.schema.equals(EMBEDDINGS)
    # A slice of a chunked table: list offsets no longer start at 0 and there are two chunks.
    part = pa.concat_tables([table.slice(2, 3), table.slice(7, 2)])
    got_ids, got = table_embeddings(part)
    assert list(got_ids) == ids[2:5] + ids[7:9]
    assert np.array_equal(got, emb[[2, 3, 4, 7, 8]])


def test_empty_file_keeps_its_width(tmp_path):
    path = write_embeddings(tmp_path / "empty.parquet", [], np.empty((0, 1280), np.float16))
    ids, emb = read_embeddings(path)
    assert ids.shape == (0,) and emb.shape == (0, 1280) and emb.dtype == np.float16


def test_bad_inputs_are_refused(tmp_path):
    ids, emb = _random(3, 4, seed=4)
    with pytest.raises(ValueError, match="3 embedding rows"):
        embeddings_table(ids, emb[:2])
    ragged = pa.table({"image_id": ["a", "b"], "embedding": pa.array([[1.0, 0.0], [1.0]], pa.list_(pa.float16()))})
    with pytest.raises(ValueError, match="differing lengths"):
        table_embeddings(ragged)
    with pytest.raises(FileNotFoundError):
        read_embeddings([])
