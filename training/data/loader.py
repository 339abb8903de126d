"""The training data pipeline: shard streams -> decode -> multi-crop -> block masks -> collated batches.

Each (rank, data-loader worker) is a *reader* that owns the streams `s` with `s % readers == reader`,
takes samples from them round-robin and yields whole collated batches, each tagged with the reader's
position after it. `DataState` keeps the positions of the batches the trainer actually consumed;
saved with a checkpoint, it restarts every stream where it stopped (see `training.data.shards`).

Randomness is keyed to data, not to processes: a sample's crops are seeded by its stream position,
a batch's masks by its first sample, so a resumed run draws the same crops and masks.

Homogeneous batches (DINOv3, `HomogeneousSpec`): on a seeded fraction of the steps every sample of
the batch, on every rank, comes from one `seed_dataset`, read by a second family of streams over
that dataset's rows only (their positions and cursors live in the same data state).
"""
from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from training.data.augment import CropSpec, MultiCropAugmentation
from training.data.collate import collate_multicrop
from training.data.masking import BlockMaskGenerator, batch_masks
from training.data.shards import ShardStream, StreamPosition, Unit, open_parquet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskSpec:
    ratio_range: tuple[float, float] = (0.1, 0.5)
    sample_probability: float = 0.5


@dataclass(frozen=True)
class HomogeneousSpec:
    """DINOv3's homogeneous batches: on a `fraction` of the steps (the same steps on every rank, drawn
    from the seed and the step index) the whole batch comes from the rows of one `seed_dataset`
    (`units`, read by their own streams); the other steps read the whole data set as usual."""

    dataset: str
    fraction: float
    units: tuple[Unit, ...]


def homogeneous_step(seed: int, step: int, fraction: float) -> bool:
    return fraction > 0 and random.Random(f"homogeneous/{seed}/{step}").random() < fraction


@dataclass
class DataState:
    """Positions of all streams and the round-robin cursor of each reader, as consumed by training."""

    num_streams: int
    streams: dict[int, list[int]] = field(default_factory=dict)  # stream -> [epoch, window, offset]
    cursors: dict[int, int] = field(default_factory=dict)  # reader -> samples taken
    layout: tuple[int, int] = (1, 1)  # (world size, workers) the cursors refer to

    def update(self, tag: dict[str, Any]) -> None:
        self.streams.update({int(k): list(v) for k, v in tag["streams"].items()})
        self.cursors.update({int(k): int(v) for k, v in tag["cursors"].items()})

    def merged(self, others: list["DataState"]) -> "DataState":
        out = DataState(self.num_streams, dict(self.streams), dict(self.cursors), self.layout)
        for other in others:
            out.streams.update(other.streams)
            out.cursors.update(other.cursors)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"num_streams": self.num_streams, "streams": {str(k): v for k, v in sorted(self.streams.items())},
                "cursors": {str(k): v for k, v in sorted(self.cursors.items())}, "layout": list(self.layout)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DataState":
        return cls(int(data["num_streams"]), {int(k): list(v) for k, v in data["streams"].items()},
                   {int(k): int(v) for k, v in data["cursors"].items()}, tuple(data["layout"]))


def decode_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


class MultiCropBatches(IterableDataset):
    """Infinite iterable of collated multi-crop batches for one rank (split further over its workers)."""

    def __init__(self, units: list[Unit], state: DataState, batch_size: int, crops: CropSpec, masks: MaskSpec,
                 patch_size: int, seed: int, rank: int, world_size: int, num_workers: int, buffer_size: int,
                 steps_done: int = 0, homogeneous: HomogeneousSpec | None = None) -> None:
        super().__init__()
        self.steps_done, self.homogeneous = steps_done, homogeneous
        self.units, self.state, self.batch_size = units, state, batch_size
        self.crops, self.masks, self.patch_size, self.seed = crops, masks, patch_size, seed
        # num_workers == 0 reads in the training process: one reader per rank, as with one worker.
        self.rank, self.world_size, self.workers = rank, world_size, num_workers
        self.num_workers = max(num_workers, 1)
        self.buffer_size = buffer_size
        # The DataLoader always starts with worker 0; rotating roles by the steps already taken makes
        # worker 0 play the reader whose batch comes next, so resumed batches match the original order.
        self.rotation = steps_done % self.num_workers

    @property
    def num_readers(self) -> int:
        return self.world_size * self.num_workers

    @staticmethod
    def _worker() -> int:
        info = get_worker_info()
        return info.id if info is not None else 0

    def _reader(self) -> int:
        return self.rank * self.num_workers + (self._worker() + self.rotation) % self.num_workers

    def _streams(self, reader: int, units: list[Unit], family: int, columns: tuple[str, ...]) -> list[ShardStream]:
        """This reader's streams over `units`; family 1 (homogeneous batches) keeps its positions under
        the keys V..2V-1 of the data state and shuffles with its own seed."""
        v = self.state.num_streams
        if v < self.num_readers:
            raise ValueError(f"{v} data streams cannot feed {self.num_readers} readers")
        streams = []
        for s in range(reader, v, self.num_readers):
            key = s + family * v
            pos = StreamPosition(*self.state.streams[key]) if key in self.state.streams else None
            streams.append(ShardStream(units, s, v, self.seed + family, self.buffer_size, columns, pos, state_id=key))
        return streams

    def __iter__(self) -> Iterator[dict[str, Any]]:
        open_parquet.cache_clear()  # never share file handles inherited from the parent process
        reader = self._reader()
        homog = self.homogeneous
        columns = ("image", "seed_dataset") if homog else ("image",)
        families = [self._streams(reader, self.units, 0, columns)]
        if homog:
            families.append(self._streams(reader, list(homog.units), 1, columns))
        same_layout = tuple(self.state.layout) == (self.world_size, self.num_workers)
        # Round-robin cursors: the reader's own key for the main streams, -(reader + 1) for the homogeneous ones.
        cursor_keys = [reader, -(reader + 1)][: len(families)]
        cursors = [self.state.cursors.get(k, 0) if same_layout else 0 for k in cursor_keys]
        # The DataLoader hands out worker w's k-th batch as step steps_done + k * workers + w.
        step = self.steps_done + self._worker()
        augment = MultiCropAugmentation(self.crops)
        grid = self.crops.global_size // self.patch_size
        size = self.crops.global_size
        # DINOv2's cap on one rectangle's area, in its own arithmetic: 0.5 * size // patch * size // patch.
        generator = BlockMaskGenerator(grid, grid, max_block=0.5 * size // self.patch_size * size // self.patch_size)
        while True:
            family = int(homog is not None and homogeneous_step(self.seed, step, homog.fraction))
            streams = families[family]
            views, datasets, first_key = [], [], None
            while len(views) < self.batch_size:
                stream = streams[cursors[family] % len(streams)]
                cursors[family] += 1
                row, pos = next(stream)
                key = f"{self.seed}/{stream.state_id}/{pos.epoch}/{pos.window}/{pos.offset}"
                first_key = first_key or key
                try:
                    img = decode_rgb(row["image"])
                except Exception as exc:  # a curated shard should hold no bad image; never stop training for one
                    log.warning("skipping undecodable image at %s: %s", key, exc)
                    continue
                views.append(augment(img, random.Random(key)))
                datasets.append(row.get("seed_dataset"))
            masks = batch_masks(self.crops.n_global * self.batch_size, generator, self.masks.ratio_range,
                                self.masks.sample_probability, random.Random("masks/" + first_key))
            batch = collate_multicrop(views, masks)
            batch["data_state"] = {"streams": {s.state_id: s.position.as_list() for f in families for s in f},
                                   "cursors": dict(zip(cursor_keys, cursors))}
            if homog:
                batch["homogeneous"] = torch.tensor(bool(family))
                batch["seed_datasets"] = datasets
            step += self.num_workers
            yield batch


def build_loader(dataset: MultiCropBatches, pin_memory: bool) -> DataLoader:
    """A DataLoader over `dataset`'s worker processes (none when `num_workers == 0`)."""
    workers = dataset.workers
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)
