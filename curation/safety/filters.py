"""The safety pass of a decode task: NSFW filter, then face blurring, on pixels decoded once.

The reference (pre-issue-17) path ran the two filters one after the other, each decoding every
pool image again from its bytes; here each image is decoded once, the NSFW model scores it, and
the face detector sees only the images the NSFW filter kept. OpenCV's pool is held to
`safety.threads` for the pass (the engines run one task per core). Rejects are the same rows the
reference writes: an image that cannot be decoded is rejected by the first filter that is on
(stage `nsfw`, else `faces`) with reason `model-error` or `timeout`.
"""
from __future__ import annotations

import pyarrow as pa

from curation.config import RunConfig
from curation.core import schemas
from curation.safety import faces, nsfw, runtime
from curation.sources.images import Reject, rejects_table


def _reference(pool: pa.Table, cfg: RunConfig, run_nsfw: bool, run_blur: bool) -> tuple[pa.Table, pa.Table]:
    rejects = [schemas.empty(schemas.REJECTS)]
    if run_nsfw:
        pool, more = nsfw.nsfw_filter(pool, cfg)
        rejects.append(more)
    if run_blur:
        pool, more = faces.face_filter(pool, cfg)
        rejects.append(more)
    return pool, pa.concat_tables(rejects)


def safety_filter(pool: pa.Table, cfg: RunConfig, run_nsfw: bool, run_blur: bool) -> tuple[pa.Table, pa.Table]:
    """POOL rows -> (kept rows, NSFW-scored and face-blurred as configured; REJECTS rows of stages
    `nsfw` and `faces`)."""
    if not (run_nsfw or run_blur) or pool.num_rows == 0:
        return pool, schemas.empty(schemas.REJECTS)
    if cfg.safety.reference:
        return _reference(pool, cfg, run_nsfw, run_blur)
    timeout_s = cfg.safety.timeout_s
    rejects = [schemas.empty(schemas.REJECTS)]
    with runtime.single_threaded_cv2(cfg.safety.threads):
        decoded, failed = runtime.decode_all(pool.column("image").to_pylist(), timeout_s)
        if failed:
            stage, failure = ("nsfw", nsfw._failure) if run_nsfw else ("faces", faces._failure)
            sources = pool.column("source").to_pylist()
            rejects.append(rejects_table([Reject(sources[i], *failure(exc, timeout_s)) for i, exc in sorted(failed.items())], stage))
            pool = pool.filter(pa.array([p is not None for p in decoded]))
        pixels = [p for p in decoded if p is not None]
        if run_nsfw:
            pool, more, keep = nsfw.nsfw_split(pool, cfg, pixels)
            rejects.append(more)
            pixels = [p for p, k in zip(pixels, keep) if k]
        if run_blur:
            pool, more = faces.face_filter(pool, cfg, pixels)
            rejects.append(more)
    return pool, pa.concat_tables(rejects)

