"""Image ids held in memory: numpy byte strings, not numpy unicode.

The driver of a global stage holds the sorted ids of the whole pool (1.2B for LVD-142M). An
image_id is 32 hex characters (`curation.sources.images.image_id_of`); numpy's unicode dtype stores 4
bytes per character (128 B per id, 150 GB at 1.2B), its byte-string dtype one (32 B per id). Byte
strings sort, compare, `np.unique` and `np.searchsorted` exactly as the strings do (UTF-8 keeps
code point order), and Arrow takes them back as a string column: `pa.array(ids, pa.string())`.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def id_array(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow string column as `S<w>` byte strings (w: its longest value; nulls become b"").

    When every value has the same length (image ids do), the column's data buffer already is that
    array: it is copied once, without a Python object per id.
    """
    binary = pc.cast(ids, pa.binary())
    if isinstance(binary, pa.ChunkedArray):
        binary = binary.combine_chunks() if binary.num_chunks else pa.array([], pa.binary())
    n = len(binary)
    if n == 0:
        return np.empty(0, dtype="S1")
    lengths = pc.binary_length(binary)
    width = max(int(pc.max(lengths).as_py() or 0), 1)
    if binary.null_count == 0 and int(pc.min(lengths).as_py()) == width:
        offsets = np.frombuffer(binary.buffers()[1], dtype=np.int32, count=n + 1, offset=4 * binary.offset)
        return np.frombuffer(binary.buffers()[2], dtype=f"S{width}", count=n, offset=int(offsets[0])).copy()
    values = binary.to_numpy(zero_copy_only=False)
    return np.array([b"" if v is None else v for v in values], dtype=f"S{width}")


def as_ids(values: np.ndarray | list[str] | list[bytes]) -> np.ndarray:
    """Ids from numpy unicode, a list of str or byte strings, as byte strings (what `id_array`
    gives): compare ids only in this form (`np.isin` of unicode against bytes is all False)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        return arr
    if arr.size == 0:
        return np.empty(arr.shape, dtype="S1")
    return np.char.encode(arr.astype(str), "utf-8")


def _search(values: np.ndarray, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(insertion position, found) of each value in a sorted array, by binary search."""
    pos = np.searchsorted(sorted_ids, values).astype(np.int64)
    if len(sorted_ids) == 0:
        return pos, np.zeros(len(values), dtype=bool)
    return pos, sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == values


def in_sorted(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """`np.isin(values, sorted_ids)` for a sorted `sorted_ids`, by binary search: 8 bytes per value
    of scratch where `np.isin` sorts a concatenated copy of both (the whole pool, twice)."""
    return _search(values, sorted_ids)[1]


def positions(values: np.ndarray, sorted_ids: np.ndarray, what: str = "value") -> np.ndarray:
    """The index of each value in a sorted array of ids (int64); a ValueError naming `what` when
    one is missing."""
    pos, found = _search(values, sorted_ids)
    if not found.all():
        raise ValueError(f"{what} refers to an image_id that is not in the pool")
    return pos


def first_occurrences(ids: np.ndarray, counts: bool = False) -> tuple[np.ndarray, ...]:
    """(sorted unique ids, index of each one's first occurrence[, occurrences of each]): what
    `np.unique(return_index=True[, return_counts=True])` gives, with a stable sort (so "first"
    is the earliest row). `ids` is SORTED IN PLACE: over the whole pool's ids, the driver then
    holds one full-size copy beside the result instead of two."""
    order = np.argsort(ids, kind="stable")
    ids[:] = ids[order]
    new = np.ones(len(ids), dtype=bool)
    new[1:] = ids[1:] != ids[:-1]
    uids, first = ids[new], order[new]
    del order
    if not counts:
        return uids, first
    return uids, first, np.diff(np.append(np.flatnonzero(new), len(new))).astype(np.int64)
