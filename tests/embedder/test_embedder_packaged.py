"""The packaged CPU default: real ImageNet weights, real photos, embeddings with the right geometry.

Forwards are shared through module fixtures: CPU time is the scarce thing on the test machine.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from curation.core.schemas import EMBEDDINGS
from embedder.inference import embed_bytes, embed_table, normalise, preprocess_for
from embedder.models import packaged_classifier
from embedder.preprocess import collate_uint8

CATS = [281, 282, 283, 284, 285]  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
MISSILE = 657
N_COPIES = 3


@pytest.fixture(scope="module")
def images(photos, encode) -> list[bytes]:
    """Three near copies of the cat photo, then four unrelated photos."""
    cat = photos["chelsea"]
    h, w = cat.shape[:2]
    copies = [
        encode(cat, quality=95),
        encode(cat, quality=40),  # heavy re-encode
        encode(cat[h // 10 : h - h // 10, w // 10 : w - w // 10]),  # 20 % crop
    ]
    return copies + [encode(photos[k]) for k in ("coffee", "astronaut", "rocket", "motorcycle")]


@pytest.fixture(scope="module")
def embedded(lite0, images) -> np.ndarray:
    return embed_bytes(lite0, images, batch_size=4)


@pytest.fixture(scope="module")
def classified(lite0, images) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre-logits features, class probabilities) of the classifier on images 0 and 3-5."""
    pre = preprocess_for(lite0)
    x = normalise(lite0, collate_uint8([pre(images[i]) for i in (0, 3, 4, 5)]))
    classifier = packaged_classifier()
    with torch.inference_mode():
        feats = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        probs = classifier.get_classifier()(feats).softmax(dim=1)
    return feats, probs


def test_packaged_weights_classify_bundled_photos(classified):
    _, probs = classified
    top3 = probs.topk(3, dim=1).indices.tolist()
    # Chelsea: top-1 is a cat class (measured: tiger cat, 282) and so are the top-3, >= 80 % mass.
    assert top3[0][0] in CATS and set(top3[0]) <= set(CATS)
    assert float(probs[0, CATS].sum()) > 0.8
    assert top3[1][0] == ESPRESSO  # coffee
    assert top3[3][0] == MISSILE  # rocket


def test_embedding_is_the_pooled_pre_classifier_feature(lite0, embedded, classified):
    feats, _ = classified
    ref = torch.nn.functional.normalize(feats, dim=1).numpy()
    assert lite0.embed_dim == 1280 and embedded.shape == (7, 1280)
    np.testing.assert_allclose(embedded[[0, 3, 4, 5]].astype(np.float32), ref, atol=2e-3)


def test_embeddings_are_unit_norm_float16(embedded):
    assert embedded.dtype == np.float16
    norms = np.linalg.norm(embedded.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


def test_same_input_gives_the_same_bytes(lite0, images, embedded):
    again = embed_bytes(lite0, images[:4], batch_size=4)
    assert again.tobytes() == embedded[:4].tobytes()
    # Decoding in a worker process and another batch split give the same vectors.
    in_worker = embed_bytes(lite0, images[:2], batch_size=2, num_workers=1)
    assert np.abs(in_worker.astype(np.float32) - embedded[:2].astype(np.float32)).max() < 1e-3


def test_near_copies_are_closer_than_different_photos(embedded):
    emb = embedded.astype(np.float32)
    sim = emb @ emb.T
    copies = sim[:N_COPIES, :N_COPIES][np.triu_indices(N_COPIES, 1)]
    rest = np.ones_like(sim, dtype=bool)
    rest[:N_COPIES, :N_COPIES] = False
    np.fill_diagonal(rest, False)
    assert copies.min() > 0.9  # measured 0.96-0.98
    assert sim[rest].max() < 0.4  # measured <= 0.2
    assert copies.min() > sim[rest].max() + 0.5


def test_embed_table_keeps_ids_and_row_order(lite0, images):
    pool = pa.table({"image_id": ["b", "a", "c"], "source": ["x", "y", "z"],
                     "image": [images[3], images[0], images[3]]})
    out = embed_table(pool, lite0, batch_size=2)
    assert out.schema.equals(EMBEDDINGS)
    assert out.column("image_id").to_pylist() == ["b", "a", "c"]
    vectors = np.array(out.column("embedding").to_pylist(), dtype=np.float32)
    assert vectors.shape == (3, 1280)
    assert np.abs(vectors[0] - vectors[2]).max() < 1e-3 and (vectors[0] @ vectors[1]) < 0.4
    with pytest.raises(ValueError, match="image_id"):
        embed_table(pool.drop_columns(["image_id"]), lite0)


def test_undecodable_bytes_name_their_index(lite0, images):
    with pytest.raises(ValueError, match="image 1 cannot be decoded"):
        embed_bytes(lite0, [images[3], b"not an image"])
