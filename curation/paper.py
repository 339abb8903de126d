"""The numbers of the DINOv2 paper (Oquab et al. 2023, §3 and App. A), in one place; at the end, those
of two related papers (Vo et al. 2024, DINOv3) that the `balanced` mode and the `lvd1689m` recipe use.

Every default elsewhere that comes from the paper points here; recipes and configs may override
them, but nothing else restates them.
"""
from __future__ import annotations

#: Self-deduplication: k nearest neighbours by cosine similarity, edges kept above this (SSCD).
SELF_DEDUP_K = 64
SELF_DEDUP_THRESHOLD = 0.6
#: Relative deduplication against evaluation sets (train and test splits).
RELATIVE_DEDUP_THRESHOLD = 0.45
#: Retrieval, `sample` mode: N nearest pool images per query image.
SAMPLE_N_DEFAULT = 4
SAMPLE_N_IMAGENET1K = 32
#: Retrieval, `cluster` mode: k-means of the pool, clusters with MORE than this many query images
#: contribute M images each; each dataset is capped.
KMEANS_CLUSTERS = 100_000
CLUSTER_MIN_QUERIES = 3
CLUSTER_M = 10_000
CLUSTER_CAP = 1_000_000
#: Query sets larger than this use `sample` rather than `cluster` retrieval.
LARGE_QUERY_SET = 1_000_000
#: LVD-142M final size (Table 15, sum of the Final column).
LVD142M_TOTAL = 142_109_386
#: Pool sizes along the funnel (§3).
POOL_UNIQUE = 1_200_000_000
POOL_AFTER_SELF_DEDUP = 1_100_000_000
POOL_AFTER_RELATIVE_DEDUP = 744_000_000
#: Compute of the original run: 20 nodes x 8 V100-32GB, under two days.
PAPER_GPUS = 160
PAPER_HOURS = 48.0
#: ViT-H/16 forward cost at 224 px, GFLOP per image (retrieval embedder).
VIT_H16_GFLOP = 254.0

# --- Related papers: seedless balanced curation (named configurations of `clustering.balanced`) ---
#: Vo et al. 2024 (facebookresearch/ssl-data-curation `4levels_web_based_images.yaml`): hierarchical
#: k-means of 743M web images, bottom level first: 10M leaves as 100k clusters split in 100, then
#: 500k / 50k / 10k clusters of the centroids below; resampling steps and sample sizes per level.
VO_WEB_POOL = 743_000_000
VO_WEB_CLUSTERS = (100_000, 500_000, 50_000, 10_000)
VO_WEB_SPLITS = (100, 1, 1, 1)
VO_WEB_RESAMPLING_STEPS = (1, 10, 10, 10)
VO_WEB_SAMPLE_SIZES = (1, 10, 5, 3)
VO_KMEANS_NITER = 50
#: DINOv3 (Siméoni et al. 2025, §3.1): ~17B moderated web images; hierarchical k-means on DINOv2
#: embeddings, 5 levels of 200M / 8M / 800k / 100k / 25k clusters, then Vo et al.'s balanced
#: sampling, giving the clustering part LVD-1689M (1,689M images).
DINOV3_POOL = 17_000_000_000
DINOV3_LEVELS = (200_000_000, 8_000_000, 800_000, 100_000, 25_000)
DINOV3_CLUSTERED = 1_689_000_000
#: DINOv3's ablation (Table 1, 200k iterations; IN-1k k-NN, IN-1k linear, ObjectNet, iNat21, Paris).
DINOV3_TABLE1 = {
    "raw": (80.1, 84.8, 70.3, 70.1, 63.3),
    "clustering": (79.4, 85.4, 72.3, 81.3, 85.2),
    "retrieval": (84.0, 86.7, 70.7, 86.0, 82.7),
    "mix": (84.6, 87.2, 72.8, 87.0, 85.9),
}
#: DINOv3 training: a whole batch of ImageNet-1k on this fraction of steps (homogeneous batches).
DINOV3_HOMOGENEOUS_IN1K = 0.10
