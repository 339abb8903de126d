"""Seed registry: the curated datasets of DINOv2 Table 15 by short name and what each *is* (task,
split, expected size, the retrieval mode the paper used). Where each lives is `curation.retrieval.seeds`'s
concern; recipes read this registry for their defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from curation import paper

Mode = Literal["as_is", "sample", "cluster"]
#: The layouts a seed may come in (curation.sources.inputs reads them all).
SEED_FORMATS = ("imagefolder", "tar-per-class", "webdataset", "parquet", "filelist")


@dataclass(frozen=True)
class SeedInfo:
    """One registered seed dataset. `images` is Table 15's count (None: not known in advance)."""

    name: str
    title: str
    task: str
    split: str
    images: Optional[int]
    retrieval: Mode  # the mode the paper used for it (imagenet22k and gldv2 use as_is AND sample)
    n: Optional[int] = None  # `sample` N when it differs from the run's default


def _seed(name: str, title: str, task: str, split: str, images: Optional[int], retrieval: Mode, n: Optional[int] = None) -> SeedInfo:
    return SeedInfo(name, title, task, split, images, retrieval, n)


#: Table 15 of the paper, one entry per dataset (image counts are the paper's), plus the demo world.
REGISTRY: dict[str, SeedInfo] = {
    s.name: s
    for s in [
        _seed("imagenet22k", "ImageNet-22k", "classification", "-", 14_197_086, "sample"),
        _seed("imagenet1k", "ImageNet-1k", "classification", "train", 1_281_167, "sample", paper.SAMPLE_N_IMAGENET1K),
        _seed("caltech101", "Caltech 101", "fine-grained", "train", 3_030, "cluster"),
        _seed("cub200", "CUB-200-2011", "fine-grained", "train", 5_994, "cluster"),
        _seed("dtd", "DTD", "fine-grained", "train1", 1_880, "cluster"),
        _seed("fgvc_aircraft", "FGVC-Aircraft", "fine-grained", "train", 3_334, "cluster"),
        _seed("flowers102", "Flowers-102", "fine-grained", "train", 1_020, "cluster"),
        _seed("food101", "Food-101", "fine-grained", "train", 75_750, "cluster"),
        _seed("oxford_pets", "Oxford-IIIT Pet", "fine-grained", "trainval", 3_680, "cluster"),
        _seed("stanford_cars", "Stanford Cars", "fine-grained", "train", 8_144, "cluster"),
        _seed("sun397", "SUN397", "fine-grained", "train1", 19_850, "cluster"),
        _seed("voc2007", "Pascal VOC 2007", "fine-grained", "train", 2_501, "cluster"),
        _seed("ade20k", "ADE20K", "segmentation", "train", 20_210, "cluster"),
        _seed("cityscapes", "Cityscapes", "segmentation", "train", 2_975, "cluster"),
        _seed("voc2012_seg", "Pascal VOC 2012 (seg.)", "segmentation", "trainaug", 1_464, "cluster"),
        _seed("mapillary_sls", "Mapillary SLS", "depth", "train", 1_434_262, "as_is"),
        _seed("kitti", "KITTI", "depth", "train (Eigen)", 23_158, "cluster"),
        _seed("nyu_depth_v2", "NYU Depth V2", "depth", "train", 24_231, "cluster"),
        _seed("sun_rgbd", "SUN RGB-D", "depth", "train", 4_829, "cluster"),
        _seed("gldv2", "Google Landmarks v2", "retrieval", "train (clean)", 1_580_470, "sample"),
        _seed("amstertime_new", "AmsterTime", "retrieval", "new", 1_231, "cluster"),
        _seed("amstertime_old", "AmsterTime", "retrieval", "old", 1_231, "cluster"),
        _seed("met", "Met", "retrieval", "train", 397_121, "cluster"),
        _seed("roxford", "Revisiting Oxford", "retrieval", "base", 4_993, "cluster"),
        _seed("rparis", "Revisiting Paris", "retrieval", "base", 6_322, "cluster"),
        # The demo world (curation.demo.world) writes these as ImageFolders; sizes depend on it.
        _seed("demo_objects", "Demo objects", "demo", "-", None, "as_is"),
        _seed("demo_textures", "Demo textures", "demo", "-", None, "sample"),
        _seed("demo_scenes", "Demo scenes", "demo", "-", None, "cluster"),
    ]
}
