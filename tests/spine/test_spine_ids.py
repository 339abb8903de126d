"""Image ids as byte strings (curation/core/ids.py): same order and matches as the strings, a quarter of
the memory of numpy unicode."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curation.core.ids import as_ids, id_array, in_sorted
from curation.sources.images import image_id_of


def test_hex_ids_are_the_column_bytes() -> None:
    ids = [image_id_of(bytes([i])) for i in range(50)]
    column = pa.chunked_array([pa.array(ids[:20]), pa.array(ids[20:])])
    got = id_array(column)
    assert got.dtype == np.dtype("S32") and got.nbytes == 32 * 50
    assert list(got) == [i.encode() for i in ids]
    # A slice of an Arrow array starts at an offset of its buffers.
    assert list(id_array(pa.array(ids).slice(7, 5))) == [i.encode() for i in ids[7:12]]
    # Sorted, unique and searched exactly as the strings are.
    assert list(np.sort(got)) == [i.encode() for i in sorted(ids)]
    assert np.array_equal(np.argsort(got, kind="stable"), np.argsort(np.array(ids), kind="stable"))


def test_uneven_null_and_non_ascii_ids() -> None:
    column = pa.array(["b", None, "aa", "é", "a"])
    got = id_array(column)
    assert got.dtype == np.dtype("S2") and list(got) == [b"b", b"", b"aa", "é".encode(), b"a"]
    strings = ["b", "", "aa", "é", "a"]
    assert [strings[i] for i in np.argsort(got, kind="stable")] == sorted(strings)  # UTF-8 keeps code point order
    assert len(id_array(pa.array([], pa.string()))) == 0
    assert len(id_array(pa.chunked_array([], pa.string()))) == 0


def test_as_ids_and_membership() -> None:
    unicode = np.array(["c", "a", "é"])
    assert list(as_ids(unicode)) == [b"c", b"a", "é".encode()]
    once = as_ids(unicode)
    assert as_ids(once) is once and as_ids(["x"]).dtype.kind == "S"  # byte strings pass through, uncopied
    # The trap as_ids exists for: numpy compares unicode against bytes as never equal.
    assert not np.isin(unicode, as_ids(unicode)).any()
    pool = np.sort(as_ids([f"{i:04d}" for i in range(0, 100, 3)]))
    values = as_ids([f"{i:04d}" for i in range(100)])
    assert np.array_equal(in_sorted(values, pool), np.isin(values, pool))
    assert not in_sorted(values, pool[:0]).any()


@pytest.mark.parametrize("n", [1, 1000])
def test_arrow_takes_the_bytes_back_as_strings(n: int) -> None:
    ids = [image_id_of(str(i).encode()) for i in range(n)]
    assert pa.array(id_array(pa.array(ids)), pa.string()).to_pylist() == ids
