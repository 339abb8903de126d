"""Arrow schemas of the run directory (DESIGN §3): the contract between stages and engines.

`image_id` is the hex SHA-256 (first 32 characters) of the re-encoded image bytes, so it is
stable across runs, processes and engines. Component labels are image_ids (the representative's).
"""
from __future__ import annotations

import pyarrow as pa

IMAGE_ID = pa.string()

POOL = pa.schema(
    [
        ("image_id", IMAGE_ID),
        ("source", pa.string()),  # original path / URI / archive member / URL
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("orig_width", pa.int32()),
        ("orig_height", pa.int32()),
        ("orig_format", pa.string()),
        ("image", pa.binary()),  # re-encoded bytes
        ("meta", pa.string()),  # JSON: url, page_url, alt text, faces_blurred, ...
    ]
)

REJECTS = pa.schema(
    [
        ("source", pa.string()),
        ("reason", pa.string()),  # short machine-readable code, e.g. `truncated`, `too-small`
        ("message", pa.string()),  # human-readable detail
        ("stage", pa.string()),
    ]
)

HASHES = pa.schema(
    [
        ("image_id", IMAGE_ID),  # exact copies share it, so it is also the content hash
        ("phash", pa.uint64()),  # 64-bit perceptual hash (PCA or DCT), see curation.dedup.hashing
        ("valid", pa.bool_()),  # False for flat images: their hash says nothing
        ("pixels", pa.int64()),  # original width * height, for the representative rule
    ]
)

EMBEDDINGS = pa.schema(
    [
        ("image_id", IMAGE_ID),
        ("embedding", pa.list_(pa.float16())),  # L2-normalised
    ]
)

EDGES = pa.schema([("src", IMAGE_ID), ("dst", IMAGE_ID), ("sim", pa.float32())])
#: The k-NN graphs' edges and near misses: EDGES with the score the threshold was compared with
#: (the cosine itself unless the graph normalises it, `curation.dedup.knn_scores.scores`).
SCORED_EDGES = pa.schema([*EDGES, ("score", pa.float32())])

COMPONENTS = pa.schema(
    [
        ("image_id", IMAGE_ID),
        ("source", pa.string()),
        ("component", IMAGE_ID),  # image_id of the component's representative
        ("keep", pa.bool_()),
        # kept | exact-duplicate | hash-duplicate | near-duplicate | eval-duplicate
        ("reason", pa.string()),
    ]
)

OUTPUT = pa.schema(
    [
        ("image_id", IMAGE_ID),
        ("image", pa.binary()),
        ("seed_dataset", pa.string()),
        ("mode", pa.string()),  # as_is | sample | cluster | balanced
        ("query_id", pa.string()),
        ("cluster", pa.int64()),
        ("similarity", pa.float32()),
        ("provenance", pa.string()),  # JSON list of every (dataset, mode, query) that retrieved it
    ]
)


#: OUTPUT without the image bytes: retrieved rows before the shard writer joins the images.
RETRIEVAL = pa.schema([f for f in OUTPUT if f.name != "image"])


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
