"""The curated output shards: join, order, limits, index, checksums, determinism, readers, WebDataset."""
from __future__ import annotations

import hashlib
import json
import math
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from report_fixtures import MISSING_ID

from curation.config import OutputConfig
from curation.output.shards import METADATA, fetch_images, read_output, write_output


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _write(run, out: Path, **cfg) -> dict:
    return write_output(run.retrieved, run.sources(), out, OutputConfig(**cfg), run.recipe_rows)


def _payload(row: dict) -> int:
    """Independent restatement of the documented payload: image + UTF-8 strings + 12 fixed bytes."""
    strings = (row["image_id"], row["seed_dataset"], row["mode"], row["query_id"] or "", row["provenance"])
    return len(row["image"]) + sum(len(s.encode()) for s in strings) + 12


def _shard_rows(out: Path, index: dict) -> list[list[dict]]:
    return [pq.read_table(out / s["file"]).to_pylist() for s in index["shards"]]


def _sort_key(row: dict) -> tuple:
    return tuple((row[k] is None, row[k] or "") for k in ("seed_dataset", "mode", "query_id", "image_id"))


def test_index_counts_checksums_and_recipe(synthetic_run) -> None:
    out = synthetic_run.root / "output"
    index = json.loads((out / "_index.json").read_text())
    assert [s["rows"] for s in index["shards"]] == [5, 5, 2]  # 12 rows, shard_rows=5
    for entry in index["shards"] + index["webdataset"]:
        data = (out / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    for entry in index["shards"]:
        assert pq.ParquetFile(out / entry["file"]).metadata.num_rows == entry["rows"]
    assert index["totals"]["rows"] == 12 and index["totals"]["requested_rows"] == 13
    assert index["totals"]["bytes"] == sum((out / s["file"]).stat().st_size for s in index["shards"])
    assert index["totals"]["by_mode"] == {"as_is": 3, "cluster": 5, "sample": 4}
    assert index["missing"] == 1 and index["missing_examples"] == [MISSING_ID]
    assert [(r["mode"], r["planned"], r["got"]) for r in index["recipe"]] == [("as_is", 3, 3), ("sample", 4, 4), ("cluster", 6, 5)]
    assert not (out / "_spill").exists()


def test_rows_sorted_and_joined_with_their_bytes(synthetic_run) -> None:
    rows = read_output(synthetic_run.root / "output", images=True).to_pylist()
    assert rows == sorted(rows, key=_sort_key)
    expected = [r for r in synthetic_run.retrieved.to_pylist() if r["image_id"] != MISSING_ID]
    strip = lambda r: {k: v for k, v in r.items() if k != "image"}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, rows))) == sorted(map(json.dumps, expected))
    assert all(r["image"] == synthetic_run.images[r["image_id"]] for r in rows)
    assert read_output(synthetic_run.root / "output").schema == METADATA  # metadata only by default


def test_byte_limit_cuts_greedily(synthetic_run, tmp_path: Path) -> None:
    limit = 3_000  # about two images and their metadata
    index = _write(synthetic_run, tmp_path, shard_rows=100, shard_bytes=limit)
    shards = _shard_rows(tmp_path, index)
    assert len(shards) > 3
    for shard, following in zip(shards, shards[1:] + [None]):
        assert sum(map(_payload, shard)) <= limit
        if following:  # greedy: the next row would not have fitted
            assert sum(map(_payload, shard)) + _payload(following[0]) > limit
    assert [r["image_id"] for s in shards for r in s] == read_output(synthetic_run.root / "output").column("image_id").to_pylist()
    assert [s["payload_bytes"] for s in index["shards"]] == [sum(map(_payload, s)) for s in shards]


def test_row_larger_than_limit_gets_its_own_shard(synthetic_run, tmp_path: Path) -> None:
    index = _write(synthetic_run, tmp_path, shard_bytes=1)
    assert [s["rows"] for s in index["shards"]] == [1] * 12


def test_row_groups_follow_config(synthetic_run, tmp_path: Path) -> None:
    index = _write(synthetic_run, tmp_path, shard_rows=5, row_group_rows=2)
    groups = [pq.ParquetFile(tmp_path / s["file"]).metadata.num_row_groups for s in index["shards"]]
    assert groups == [math.ceil(s["rows"] / 2) for s in index["shards"]] == [3, 3, 1]


def test_rerun_in_dirty_dir_gives_identical_bytes(synthetic_run, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _write(synthetic_run, out, shard_rows=2, webdataset=True)
    assert len(first["shards"]) == 6
    _write(synthetic_run, out, shard_rows=5, webdataset=True)  # fewer shards: stale ones must go
    assert _files(out) == _files(synthetic_run.root / "output")
    assert sorted(_files(out)) == ["_index.json"] + [f"_webdataset/part-0000{i}.tar" for i in range(3)] + [
        f"part-0000{i}.parquet" for i in range(3)]
    _write(synthetic_run, out, shard_rows=5)  # tars switched off: none may linger
    assert not list(out.rglob("*.tar"))


def test_readable_by_duckdb_and_hf_datasets(synthetic_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import duckdb

    out = synthetic_run.root / "output"
    glob = str(out / "*.parquet")
    assert duckdb.sql(f"select count(*) from '{glob}'").fetchall()[0][0] == 12
    assert pq.read_table(out).num_rows == 12  # directory discovery skips _index.json and _webdataset/
    by_mode = dict(duckdb.sql(f"select mode, count(*) from '{glob}' group by mode order by mode").fetchall())
    assert by_mode == {"as_is": 3, "cluster": 5, "sample": 4}
    total_image_bytes = duckdb.sql(f"select sum(octet_length(image)) from '{glob}'").fetchall()[0][0]
    assert total_image_bytes == sum(len(synthetic_run.images[i]) for i in read_output(out).column("image_id").to_pylist())

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=sorted(map(str, out.glob("*.parquet"))), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 12
    assert ds.column_names == ["image_id", "image", "seed_dataset", "mode", "query_id", "cluster", "similarity", "provenance"]
    first = ds[0]
    assert first["image"] == synthetic_run.images[first["image_id"]]


def test_webdataset_tars(synthetic_run) -> None:
    from curation.sources.inputs import iter_source

    out = synthetic_run.root / "output"
    parquet_rows = read_output(out, images=True).to_pylist()
    samples = []
    for tar_path in sorted(out.glob("_webdataset/part-*.tar")):
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
            names = [m.name for m in members]
            assert names[0::2] == [n.replace(".json", ".jpg") for n in names[1::2]]
            for img, meta in zip(members[0::2], members[1::2]):
                samples.append((img.name, tar.extractfile(img).read(), json.loads(tar.extractfile(meta).read())))
    assert len(samples) == len(parquet_rows) == 12
    for position, ((name, data, meta), row) in enumerate(zip(samples, parquet_rows)):
        assert name == f"{position:09d}_{row['image_id']}.jpg" and data == row["image"]
        assert meta == {**{k: v for k, v in row.items() if k != "image"}, "provenance": json.loads(row["provenance"])}
    # The project's own WebDataset reader takes them back as input, sidecars as metadata.
    items = [i for p in sorted(out.glob("_webdataset/part-*.tar")) for i in iter_source(str(p))]
    assert [(i.data, i.meta["image_id"]) for i in items] == [(r["image"], r["image_id"]) for r in parquet_rows]


def test_nothing_found_is_not_a_crash(synthetic_run, tmp_path: Path) -> None:
    import duckdb

    retrieved = synthetic_run.retrieved.set_column(0, "image_id", pa.array([f"{i:032x}" for i in range(13)]))
    index = write_output(retrieved, synthetic_run.sources(), tmp_path, OutputConfig(), synthetic_run.recipe_rows)
    assert index["missing"] == 13 and index["totals"]["rows"] == 0
    assert [r["got"] for r in index["recipe"]] == [0, 0, 0]
    assert duckdb.sql(f"select count(*) from '{tmp_path}/*.parquet'").fetchall()[0][0] == 0
    assert read_output(tmp_path).num_rows == 0
    empty = write_output(METADATA.empty_table(), [], tmp_path / "empty", OutputConfig())
    assert empty["totals"]["rows"] == 0 and len(empty["shards"]) == 1


def test_fetch_images_stops_reading_once_everything_is_found(synthetic_run, tmp_path: Path) -> None:
    first = synthetic_run.root / "pool" / "part-00000.parquet"
    ids = pq.read_table(first, columns=["image_id"]).column(0).to_pylist()[:3]
    absent = tmp_path / "does-not-exist.parquet"
    got = fetch_images(ids, [first, absent])  # all found in the first file: the second is never opened
    assert got == {i: synthetic_run.images[i] for i in ids}
    with pytest.raises(FileNotFoundError):
        fetch_images(ids + [MISSING_ID], [first, absent])  # one still missing: it must look further
