"""DINOv2 multi-crop augmentation with an explicit random generator (so a sample's crops are a pure
function of its seed, which exact resume needs).

Per image: 2 global crops (RandomResizedCrop scale (0.32, 1), bicubic) and N local crops (scale
(0.05, 0.32)); each with horizontal flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8,
grayscale p 0.2; then Gaussian blur (sigma in [0.1, 2]) and, on the second global crop,
solarisation (threshold 128) with p 0.2. The blur is PIL's (an untruncated Gaussian approximated by
box filters) rather than torchvision's 9-tap kernel: ~50x cheaper on CPU for small crops, and
equal up to the 9-tap truncation that DINOv2's kernel applies at large sigma.

Blur probabilities. DINOv2's `GaussianBlur(p)` wrapper passes `1 - p` to `RandomApply`, so the
official code blurs the first global crop with probability 0 (intended 1.0), the second with 0.9
(intended 0.1) and local crops with 0.5. We default to the intended values of DINO/BYOL, which
make the two global views asymmetric as designed; `blur_as_official: true` reproduces the released
models' inverted behaviour.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode

INTENDED_BLUR = (1.0, 0.1, 0.5)  # first global, second global, local
OFFICIAL_BLUR = tuple(1.0 - p for p in INTENDED_BLUR[:2]) + (0.5,)


@dataclass(frozen=True)
class CropSpec:
    global_size: int = 224
    local_size: int = 98
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    n_global: int = 2
    n_local: int = 8
    blur_as_official: bool = False
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    gram_size: int = 0  # > 0: also a Gram-teacher crop of each global crop at this side (DINOv3)

    @property
    def blur_probabilities(self) -> tuple[float, float, float]:
        return OFFICIAL_BLUR if self.blur_as_official else INTENDED_BLUR


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], rng: random.Random,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a `scale` fraction of the area with aspect in `ratio`
    (torchvision's algorithm: 10 tries, then a centred crop with the aspect clamped)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def color_distort(img: Image.Image, rng: random.Random) -> Image.Image:
    """Colour jitter (random order of the four adjustments) with p 0.8, then grayscale with p 0.2."""
    if rng.random() < 0.8:
        ops = [
            lambda im: TF.adjust_brightness(im, rng.uniform(0.6, 1.4)),
            lambda im: TF.adjust_contrast(im, rng.uniform(0.6, 1.4)),
            lambda im: TF.adjust_saturation(im, rng.uniform(0.8, 1.2)),
            lambda im: TF.adjust_hue(im, rng.uniform(-0.1, 0.1)),
        ]
        rng.shuffle(ops)
        for op in ops:
            img = op(img)
    if rng.random() < 0.2:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    return img


class MultiCropAugmentation:
    """`aug(img, rng) -> (global_crops, local_crops)`: lists of normalised [3, S, S] float tensors."""

    def __init__(self, spec: CropSpec) -> None:
        self.spec = spec

    def _normalise(self, view: Image.Image) -> torch.Tensor:
        return TF.normalize(TF.to_tensor(view), self.spec.mean, self.spec.std)

    def _view(self, img: Image.Image, size: int, scale: tuple[float, float], blur_p: float, solarize_p: float,
              rng: random.Random, gram_size: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A distorted crop, and with `gram_size` the same crop (box and flip) at that side without
        colour, blur or solarisation: DINOv3's Gram-teacher view (`gram_teacher_no_distortions`).
        The Gram view draws no random numbers, so the other crops do not depend on it."""
        top, left, h, w = random_resized_crop_box(img.width, img.height, scale, rng)
        view = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC)
        gram = (TF.resized_crop(img, top, left, h, w, [gram_size, gram_size], interpolation=InterpolationMode.BICUBIC)
                if gram_size else None)
        if rng.random() < 0.5:
            view = TF.hflip(view)
            gram = TF.hflip(gram) if gram is not None else None
        view = color_distort(view, rng)
        if rng.random() < blur_p:
            view = view.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
        if rng.random() < solarize_p:
            view = TF.solarize(view, 128)
        return self._normalise(view), (self._normalise(gram) if gram is not None else None)

    def __call__(self, img: Image.Image, rng: random.Random) -> tuple[list[torch.Tensor], ...]:
        """(global crops, local crops), plus the Gram-teacher crops of the global ones when `gram_size`."""
        s = self.spec
        blur_g1, blur_g2, blur_local = s.blur_probabilities
        globals_, grams = [], []
        for i in range(s.n_global):
            # The first global view is the "blurred" one, the others get the light blur + solarisation.
            blur, solarize = (blur_g1, 0.0) if i == 0 else (blur_g2, 0.2)
            view, gram = self._view(img, s.global_size, s.global_scale, blur, solarize, rng, s.gram_size)
            globals_.append(view)
            grams.append(gram)
        locals_ = [self._view(img, s.local_size, s.local_scale, blur_local, 0.0, rng)[0] for _ in range(s.n_local)]
        return (globals_, locals_, grams) if s.gram_size else (globals_, locals_)
