"""GalleryIndex on real dlib encodings: exact search is scikit-learn's brute force, the IVF's recall is
measured and high, files round-trip memory-mapped, add() is building on the concatenation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from dlibplus import gallery as gallery_mod
from dlibplus.errors import ModelFileError
from dlibplus.gallery import FaissMissingError, GalleryIndex

from conftest import person_images

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def real(faces_dir) -> tuple[np.ndarray, np.ndarray]:
    """dlib encodings (n, 128) float32 and person labels of real photos: 12 images of each of 24 people
    (tight crops: the whole image is the face box)."""
    from dlibplus.data import process_images
    from dlibplus.cli.options import face_settings

    pairs = person_images(faces_dir, "glint360k_celeb24", per_person=12)
    results = process_images([p for _, p in pairs], face_settings("hog", 1, "small", "whole", 0), jobs=2,
                             progress=False)
    X = np.concatenate([r.encodings for r in results]).astype(np.float32)
    return X, np.array([person for person, _ in pairs])


def sklearn_knn(X: np.ndarray, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X.astype(np.float64))
    return nn.kneighbors(Q.astype(np.float64))


def assert_same_neighbours(D, I, gallery, queries, tol=1e-5):
    """Our top k (D, I) against scikit-learn's brute force: the same distances; the same ids where distances
    are not tied; a tied group holds the same ids, ours in id order; a tie cut by k keeps its smallest ids."""
    k = D.shape[1]
    d_ref, i_ref = sklearn_knn(gallery, queries, min(k + 8, len(gallery)))  # past k, to see ties cut by k
    np.testing.assert_allclose(D, d_ref[:, :k], atol=tol, rtol=0)
    for row in range(len(D)):
        # a tie group: reference distances that follow each other within tol
        group_of = np.concatenate([[0], np.cumsum(np.diff(d_ref[row]) > tol)])
        for group in np.unique(group_of[:k]):
            ours = I[row, np.flatnonzero(group_of[:k] == group)]
            tied = sorted(i_ref[row, group_of == group])
            assert list(ours) == tied[:len(ours)], (row, list(ours), tied)


def synthetic_gallery(X: np.ndarray, labels: np.ndarray, copies: int, seed: int = 0) -> np.ndarray:
    """Real encodings plus ``copies`` new faces per real one: each person's mean moved by a random real
    between-person offset (scaled 0.5), plus a real within-person residual drawn from anyone."""
    rng = np.random.default_rng(seed)
    people = np.unique(labels)
    means = np.stack([X[labels == p].mean(0) for p in people])
    residual = X - means[np.searchsorted(people, labels)]
    n_new = copies * len(X)
    centre = means[rng.integers(len(people), size=n_new)]
    offset = (means[rng.integers(len(people), size=n_new)] - means[rng.integers(len(people), size=n_new)]) * 0.5
    return np.concatenate([X, centre + offset + residual[rng.integers(len(X), size=n_new)]]).astype(np.float32)


def test_exact_search_is_sklearn_brute_force(real):
    X, _ = real
    gallery = np.concatenate([X[:200], X[[3, 3, 7]]])  # exact duplicates: ties
    queries = np.concatenate([X[200:], X[[3, 7, 50]]])
    index = GalleryIndex.build(gallery)
    assert index.kind == "exact" and index.info["recall_at_1"] == 1.0
    D, I = index.search(queries, 6)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (len(queries), 6)
    assert_same_neighbours(D, I, gallery, queries)
    # a query that is a gallery face: distance 0, its duplicates next, in id order
    assert list(I[-3, :3]) == [3, 200, 201] and np.all(D[-3, :3] == 0)
    # Euclidean, not squared
    np.testing.assert_allclose(D[0, 0], np.linalg.norm(gallery[I[0, 0]] - queries[0]), rtol=1e-6)


def test_numpy_fallback_gives_the_same_results(real, monkeypatch):
    X, _ = real
    D, I = GalleryIndex.build(X[:250]).search(X[250:], 4)
    monkeypatch.setattr(gallery_mod, "_faiss", lambda required_for=None: _no_faiss(required_for))
    assert not gallery_mod.faiss_available()
    D2, I2 = GalleryIndex.build(X[:250]).search(X[250:], 4)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_allclose(D, D2, atol=1e-7)


def _no_faiss(required_for):
    if required_for:
        raise FaissMissingError(required_for)
    return None


def test_without_faiss_approximate_says_how_to_install(real, monkeypatch):
    monkeypatch.setattr(gallery_mod, "_faiss", lambda required_for=None: _no_faiss(required_for))
    with pytest.raises(FaissMissingError, match=r"pip install dlibplus\[scale\]"):
        GalleryIndex.build(real[0], kind="ivf")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_is_measured_and_high_on_a_realistic_gallery(real, kind):
    X, labels = real
    gallery = synthetic_gallery(X, labels, copies=40)  # ~11.8k faces
    index = GalleryIndex.build(gallery, kind=kind, recall_sample=1000)
    info = index.info
    assert info["kind"] == kind and info["trained_on"] == len(gallery)
    if kind == "ivf":
        assert info["nlist"] >= 64 and 1 <= info["nprobe"] <= info["nlist"]
    else:
        assert info["hnsw_m"] == 32 and info["ef_search"] >= 32
    assert info["recall_at_1"] >= 0.99 and info["recall_queries"] == 1000
    # independent check with new faces as queries, against scikit-learn
    queries = synthetic_gallery(X, labels, copies=1, seed=1)[len(X):]
    _, I = index.search(queries, 1)
    _, i_ref = sklearn_knn(gallery, queries, 1)
    recall = float(np.mean(I[:, 0] == i_ref[:, 0]))
    print(f"{kind} {info}: held-out recall@1 {recall:.4f}")
    assert recall >= 0.99
    # exact=True on the same index is brute force
    D, I = index.search(queries[:50], 3, exact=True)
    assert_same_neighbours(D, I, gallery, queries[:50])


def test_auto_kind_follows_the_size(real):
    X, labels = real
    assert GalleryIndex.build(X, exact_max=len(X)).kind == "exact"
    assert GalleryIndex.build(synthetic_gallery(X, labels, 10), exact_max=len(X)).kind == "hnsw"


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_save_and_load_memory_mapped(real, tmp_path, kind):
    X, labels = real
    gallery = synthetic_gallery(X, labels, copies=10)
    index = GalleryIndex.build(gallery, kind=kind, recall_sample=500)
    D, I = index.search(X[:40], 5)
    index.save(tmp_path / "g")
    loaded = GalleryIndex.load(tmp_path / "g")
    assert isinstance(loaded.encodings, np.memmap) and loaded.encodings.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(loaded.encodings), gallery)
    D2, I2 = loaded.search(X[:40], 5)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_array_equal(D, D2)
    assert {k: v for k, v in loaded.info.items() if k != "build_seconds"} == \
        {k: v for k, v in index.info.items() if k != "build_seconds"}
    # no pickle anywhere: the encodings load with allow_pickle=False, the description is JSON
    meta = json.loads((tmp_path / "g" / "gallery.json").read_text())
    np.load(tmp_path / "g" / meta["files"]["encodings"], allow_pickle=False)
    # saving again replaces the files and removes the previous ones
    loaded.add(X[:5])
    loaded.save(tmp_path / "g")
    names = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "g").iterdir())
    assert names == (["encodings", "gallery.json"] if kind == "exact" else ["ann", "ann-rows", "encodings", "gallery.json"])
    assert len(GalleryIndex.load(tmp_path / "g")) == len(gallery) + 5


def test_add_equals_building_from_the_concatenation(real, tmp_path):
    X, _ = real
    A, B = X[:150], X[150:250]
    queries = X[250:]
    grown = GalleryIndex.build(A)
    ids = grown.add(B[:60])
    grown.add(B[60:])
    np.testing.assert_array_equal(ids, np.arange(150, 210))
    whole = GalleryIndex.build(np.concatenate([A, B]))
    for k in (1, 5):
        D, I = grown.search(queries, k)
        D2, I2 = whole.search(queries, k)
        np.testing.assert_array_equal(I, I2)
        np.testing.assert_array_equal(D, D2)
    # the same after a memory-mapped load: added rows live beside the mapped ones
    grown.save(tmp_path / "g")
    reopened = GalleryIndex.load(tmp_path / "g")
    reopened.add(queries[:10])
    D, I = reopened.search(queries[:10], 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(250, 260))
    assert np.all(D[:, 0] == 0)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_add_to_a_loaded_approximate_index(real, tmp_path, kind):
    X, labels = real
    gallery = synthetic_gallery(X, labels, copies=10)
    index = GalleryIndex.build(gallery[:-500], kind=kind, recall_sample=500)
    index.save(tmp_path / "g")
    reopened = GalleryIndex.load(tmp_path / "g")  # memory-mapped read-only: add() must not touch the file
    new = reopened.add(gallery[-500:])
    assert reopened.info["trained_on"] == len(gallery) - 500 and reopened.kind == kind
    D, I = reopened.search(gallery[-500:], 1)
    assert np.mean(I[:, 0] == new) >= 0.99  # each added face finds itself
    assert reopened.measure_recall(500) >= 0.98
    reopened.save(tmp_path / "g")
    assert len(GalleryIndex.load(tmp_path / "g")) == len(gallery)
    D, I = reopened.search(X[:30], 4, exact=True)
    assert_same_neighbours(D, I, gallery, X[:30])


def test_bad_files_are_named(real, tmp_path):
    with pytest.raises(ModelFileError, match="not a dlibplus gallery"):
        GalleryIndex.load(tmp_path)
    GalleryIndex.build(real[0]).save(tmp_path / "g")
    meta_path = tmp_path / "g" / "gallery.json"
    meta = json.loads(meta_path.read_text())
    enc = tmp_path / "g" / meta["files"]["encodings"]
    enc.write_bytes(enc.read_bytes()[:1000])  # truncated
    with pytest.raises(ModelFileError, match="encodings"):
        GalleryIndex.load(tmp_path / "g")
    meta_path.write_text(json.dumps({**meta, "format": "something else"}))
    with pytest.raises(ModelFileError, match="wrong format"):
        GalleryIndex.load(tmp_path / "g")


def test_inputs_are_checked(real):
    X, _ = real
    index = GalleryIndex.build(X[:5])
    D, I = index.search(X[5], 8)  # one vector; more neighbours than faces
    assert D.shape == (1, 8) and list(I[0, 5:]) == [-1, -1, -1] and np.all(np.isinf(D[0, 5:]))
    with pytest.raises(ValueError, match="columns"):
        index.search(X[:2, :64])
    with pytest.raises(ValueError, match="NaN"):
        GalleryIndex.build(np.full((3, 128), np.nan))
    with pytest.raises(ValueError, match="exact"):
        index.search(X[:2], exact=False)
