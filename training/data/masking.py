"""iBOT block masking (BEiT-style) and the per-batch choice of which global crops are masked.

A mask is built from random rectangles until it covers the requested number of patches, as
DINOv2's `MaskingGenerator`: each rectangle's target area is drawn uniformly between 4 patches and
the number still to mask (capped at half the grid), so when fewer than 4 remain the area is drawn
between that remainder and 4; its aspect ratio is log-uniform in [0.3, 1/0.3]; a rectangle is kept
only if it adds between 1 and that remainder new patches (10 placement attempts). The random draws
are made in the official order, so `blocks()` gives the official generator's mask for the same
random state. Unlike DINOv2, which stops when ten attempts in a row fail and so may under-mask,
`__call__` then tops up with random single patches: every masked crop gets exactly the requested
count, which keeps the realised ratio inside the configured range.
"""
from __future__ import annotations

import math
import random

import numpy as np


class BlockMaskGenerator:
    """Boolean [h, w] masks made of rectangles."""

    def __init__(self, height: int, width: int, min_block: int = 4, min_aspect: float = 0.3, attempts: int = 10,
                 max_block: float | None = None) -> None:
        self.height, self.width = height, width
        self.min_block = min_block
        # DINOv2's collate builds its generator with max_num_patches = 0.5 * grid patches.
        self.max_block = 0.5 * height * width if max_block is None else max_block
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
        self.attempts = attempts

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def _add_block(self, mask: np.ndarray, budget: float, rng: random.Random) -> int:
        """Try to add one rectangle adding at most `budget` new patches; return how many were added.

        The target area is uniform between `min_block` and `budget` in either order (Python's
        `uniform(a, b)` with b < a draws from [b, a]): below 4 remaining patches it lies between
        the remainder and 4, as in DINOv2, rather than being pinned at 4.
        """
        for _ in range(self.attempts):
            area = rng.uniform(self.min_block, budget)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h < self.height and w < self.width:
                # (a zero side draws its position too, as the official generator does, and adds nothing)
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                new = h * w - int(mask[top : top + h, left : left + w].sum())
                if 0 < new <= budget:
                    mask[top : top + h, left : left + w] = True
                    return new
        return 0

    def blocks(self, count: int, rng: random.Random) -> np.ndarray:
        """The rectangles alone: DINOv2's mask for `count` patches, which may hold fewer."""
        count = min(max(count, 0), self.num_patches)
        mask = np.zeros((self.height, self.width), dtype=bool)
        covered = 0
        while covered < count:
            added = self._add_block(mask, min(count - covered, self.max_block), rng)
            if added == 0:
                break
            covered += added
        return mask

    def __call__(self, count: int, rng: random.Random) -> np.ndarray:
        """A mask with exactly `count` patches set (clipped to the grid)."""
        count = min(max(count, 0), self.num_patches)
        mask = self.blocks(count, rng)
        covered = int(mask.sum())
        if covered < count:
            free = np.flatnonzero(~mask.ravel())
            pick = rng.sample(list(free), count - covered)
            mask.ravel()[pick] = True
        return mask


def batch_masks(
    n_crops: int,
    generator: BlockMaskGenerator,
    ratio_range: tuple[float, float],
    sample_probability: float,
    rng: random.Random,
) -> np.ndarray:
    """Masks [n_crops, h*w] for the global crops of a batch.

    `int(n_crops * sample_probability)` crops are masked; their ratios are spread over
    `ratio_range` by stratification (crop i draws from the i-th of equal sub-intervals, as DINOv2
    does), the rest are unmasked, and the order is shuffled.
    """
    n_masked = int(n_crops * sample_probability)
    lo, hi = ratio_range
    edges = np.linspace(lo, hi, n_masked + 1)
    n = generator.num_patches
    masks = [generator(int(n * rng.uniform(edges[i], edges[i + 1])), rng).ravel() for i in range(n_masked)]
    masks += [np.zeros(n, dtype=bool) for _ in range(n_crops - n_masked)]
    rng.shuffle(masks)
    return np.stack(masks) if masks else np.zeros((0, n), dtype=bool)
