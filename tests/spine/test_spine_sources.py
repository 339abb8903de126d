"""Input readers: folders, tar / WebDataset, tar-per-class, Parquet, path lists."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.sources.inputs import fingerprint, iter_source


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_folder_is_recursive_sorted_and_keeps_odd_extensions(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "b" / "c" / "x.jpg").write_bytes(b"1")
    (tmp_path / "a.dat").write_bytes(b"2")
    (tmp_path / "notes.txt").write_text("sidecar")
    items = list(iter_source(str(tmp_path)))
    assert [Path(i.source).name for i in items] == ["a.dat", "x.jpg"]


def test_imagefolder_labels(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "1.jpg").write_bytes(b"x")
    assert next(iter(iter_source(str(tmp_path), "imagefolder"))).meta == {"label": "cat"}


def test_webdataset_sidecars_become_meta(tmp_path: Path) -> None:
    _write_tar(tmp_path / "shard.tar", {"k1.jpg": b"img1", "k1.json": json.dumps({"url": "u"}).encode(), "k1.cls": b"7", "k2.png": b"img2"})
    items = list(iter_source(str(tmp_path / "shard.tar")))
    assert [(i.source.split("::")[1], i.data, i.meta) for i in items] == [
        ("k1.jpg", b"img1", {"url": "u", "label": "7"}), ("k2.png", b"img2", {})]


def test_broken_tar_is_one_error_item(tmp_path: Path) -> None:
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 10)
    items = list(iter_source(str(tmp_path / "bad.tar")))
    assert len(items) == 1 and items[0].error.startswith("bad-archive")


def test_tar_per_class(tmp_path: Path) -> None:
    _write_tar(tmp_path / "n01440764.tar", {"a.JPEG": b"1"})
    _write_tar(tmp_path / "n01443537.tar", {"b.JPEG": b"2"})
    assert [i.meta["label"] for i in iter_source(str(tmp_path), "tar-per-class")] == ["n01440764", "n01443537"]


def test_parquet_bytes_or_paths(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image": [b"a", None], "label": ["x", "y"]}), tmp_path / "b.parquet")
    items = list(iter_source(str(tmp_path / "b.parquet")))
    assert items[0].data == b"a" and items[0].meta == {"label": "x"} and items[1].error.startswith("empty")
    (tmp_path / "img.jpg").write_bytes(b"zz")
    pq.write_table(pa.table({"path": [str(tmp_path / "img.jpg")]}), tmp_path / "p.parquet")
    assert next(iter(iter_source(str(tmp_path / "p.parquet")))).data == b"zz"


def test_filelist_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "one.jpg").write_bytes(b"1")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'one.jpg'}\n# comment\n{tmp_path / 'gone.jpg'}\n")
    items = list(iter_source(str(tmp_path / "list.txt")))
    assert items[0].data == b"1" and items[1].data is None and items[1].error.startswith("unreadable")


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"1")
    before = fingerprint([str(tmp_path)])
    (tmp_path / "a.jpg").write_bytes(b"22")
    assert fingerprint([str(tmp_path)]) != before
