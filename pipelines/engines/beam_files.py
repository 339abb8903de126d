"""Scratch files of the Beam engine: local paths or gs://, through Beam's FileSystems (shared by the
engine, its global steps and its inference pipeline)."""
from __future__ import annotations

import io

import numpy as np


def write_blob(path: str, data: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(data)


def read_blob(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return f.read()


def copy_file(local: str, path: str, chunk: int = 64 << 20) -> None:
    """A local file copied to `path` (local or gs://) a chunk at a time."""
    from apache_beam.io.filesystems import FileSystems

    with open(local, "rb") as src, FileSystems.create(path) as dst:
        while block := src.read(chunk):
            dst.write(block)


def save_array(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    write_blob(path, buf.getvalue())
