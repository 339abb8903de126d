"""Image bytes -> fixed-size uint8 pixels, the CPU half of inference (runs in DataLoader workers).

The geometry mirrors timm's eval transform (resize the shorter side to floor(size / crop_pct),
centre-crop size x size) so that published weights see the input they were evaluated with.
Pixels stay uint8 until they reach the model's device: a quarter of the bytes to move, and the
float conversion and normalisation run where the compute is (see `embedder.inference`).

Per-item isolation (issue 14): `EncodedImages(..., checked=True)` turns an image Pillow cannot
read into black pixels plus its error (`item_guard.item_error`) instead of an exception that would
end the whole DataLoader; `embedder.inference.embed_checked` drops those rows and reports them.
"""
from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from curation.core.item_guard import item_error

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


class Preprocess:
    """Picklable decode + resize + centre-crop: bytes -> uint8 array [size, size, 3] (RGB, HWC).

    `crop=False`: no crop, the whole image with its shorter side at `input_size / crop_pct` (models
    such as SSCD take any size): arrays of varying shape, which `collate_uint8` keeps apart."""

    def __init__(self, input_size: int, crop_pct: float, interpolation: str, crop: bool = True):
        if interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {interpolation!r}; known: {sorted(_RESAMPLE)}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.size = int(input_size)
        self.scale_size = math.floor(self.size / crop_pct)  # timm's eval scale
        self.resample = _RESAMPLE[interpolation]
        self.crop = crop

    def image(self, img: Image.Image) -> np.ndarray:
        """Resize and crop a decoded image (any mode) to the model's input."""
        if img.mode != "RGB":  # (converting to its own mode would copy the image for nothing)
            img = img.convert("RGB")
        w, h = img.size
        # torchvision Resize(int) semantics: the shorter side becomes scale_size, aspect kept.
        if w <= h:
            ow, oh = self.scale_size, int(self.scale_size * h / w)
        else:
            ow, oh = int(self.scale_size * w / h), self.scale_size
        if not self.crop:
            if (ow, oh) != (w, h):
                img = img.resize((ow, oh), self.resample)
            return np.asarray(img, dtype=np.uint8)
        top = int(round((oh - self.size) / 2.0))
        left = int(round((ow - self.size) / 2.0))
        # Pillow resizes in two passes, horizontal then vertical, rounding to uint8 in between; run
        # as two calls, the vertical pass only covers the columns the crop keeps (~15 % less time
        # per image) and the bytes are the same as resize-then-crop's (tests/embedder).
        if ow != w:
            img = img.resize((ow, h), self.resample)
        img = img.crop((left, 0, left + self.size, h))
        if oh != h:
            img = img.resize((self.size, oh), self.resample)
        img = img.crop((0, top, self.size, top + self.size))
        return np.asarray(img, dtype=np.uint8)

    @property
    def draft_size(self) -> tuple[int, int]:
        """The size JPEG decoding may shrink to (see `__call__`)."""
        return (2 * self.scale_size, 2 * self.scale_size)

    def blank(self) -> np.ndarray:
        """Black pixels of the output shape (the stand-in for an image that cannot be decoded)."""
        return np.zeros((self.size, self.size, 3), dtype=np.uint8)

    def __call__(self, data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale while the result stays at least
        # twice the size needed: large photos decode several times faster, and the resize that
        # follows still does the final anti-aliasing, so the pixels barely move (images below
        # 4x the input side, like re-encoded pool images, decode in full and match timm exactly).
        img.draft("RGB", self.draft_size)
        return self.image(img)


class SharedDecode:
    """One decode of each image for several models (issue 17): bytes -> one uint8 array per
    `Preprocess`, each from the same decoded pixels, equal to what each `Preprocess` gives alone.

    Decoding is the costly half of preprocessing; resize and crop are cheap. A JPEG that a model's
    draft would shrink (`Preprocess.__call__`) is decoded once per distinct draft scale, so every
    model still sees exactly its own pixels; pool-sized images (no draft) decode once for all."""

    def __init__(self, preprocesses: Sequence[Preprocess]):
        if not preprocesses:
            raise ValueError("SharedDecode needs at least one Preprocess")
        self.preprocesses = list(preprocesses)

    def blank(self) -> tuple[np.ndarray, ...]:
        return tuple(pre.blank() for pre in self.preprocesses)

    def __call__(self, data: bytes) -> tuple[np.ndarray, ...]:
        decoded: dict[tuple, Image.Image] = {}
        out = []
        for pre in self.preprocesses:
            img = Image.open(io.BytesIO(data))  # header only: the pixels decode at load()
            img.draft("RGB", pre.draft_size)
            scale = (img.size, img.mode)  # what this model's draft makes of the image
            if scale not in decoded:
                img.load()
                decoded[scale] = img
            out.append(pre.image(decoded[scale]))
        return tuple(out)


class EncodedImages(Dataset):
    """Encoded images (JPEG/PNG/WebP bytes) as a map-style dataset of preprocessed pixels.

    `checked`: items are `(pixels, None)`, or `(black pixels, "Type: message")` for an image that
    cannot be decoded (batch them with `collate_checked`); otherwise such an image raises.
    """

    def __init__(self, images: Sequence[bytes], preprocess: Preprocess | SharedDecode, checked: bool = False):
        self.images = images
        self.preprocess = preprocess
        self.checked = checked

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Any:
        try:
            pixels = self.preprocess(self.images[index])
        except Exception as exc:  # item boundary: PIL raises many types for bad bytes
            if self.checked:
                return self.preprocess.blank(), item_error(exc)
            raise ValueError(f"image {index} cannot be decoded: {type(exc).__name__}: {exc}") from exc
        return (pixels, None) if self.checked else pixels


def collate_uint8(batch: list[np.ndarray]) -> torch.Tensor | list[torch.Tensor]:
    """Stack HWC arrays into a uint8 [B, 3, H, W] tensor that is channels-last in memory; arrays
    of several shapes (a model that does not crop) stay a list of [1, 3, H, W] tensors, which
    `embedder.inference.forward_pixels` batches by shape: padding would change what the model sees."""
    if len({a.shape for a in batch}) > 1:
        return [torch.from_numpy(a[None]).permute(0, 3, 1, 2) for a in batch]
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


def collate_checked(batch: list[tuple[np.ndarray, str | None]]
                    ) -> tuple[torch.Tensor | list[torch.Tensor], list[str | None]]:
    """`collate_uint8` of checked items, with each item's error (None when it decoded)."""
    return collate_uint8([pixels for pixels, _ in batch]), [error for _, error in batch]


def collate_shared(batch: list[tuple[tuple[np.ndarray, ...], str | None]]
                   ) -> tuple[tuple[torch.Tensor | list[torch.Tensor], ...], list[str | None]]:
    """Checked items of a `SharedDecode` -> (one uint8 batch per model, each item's error)."""
    per_model = zip(*(pixels for pixels, _ in batch))
    return tuple(collate_uint8(list(arrays)) for arrays in per_model), [error for _, error in batch]
