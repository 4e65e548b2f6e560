"""train-knn models as folders: float32 encodings memory-mapped on load, atomic saves, growing with add(),
approximate search behind FaceKNN, old single-file models still read, damaged folders refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dlibplus import knn_store
from dlibplus.errors import ModelFileError
from dlibplus.faces import FaceSettings
from dlibplus.knn import FaceKNN, is_model
from dlibplus.people import load_people


@pytest.fixture(scope="module")
def kpop(faces_dir):
    """dlib encodings of every kpop_idols15 crop (whole image as the box), and the photos' digests."""
    people = load_people(faces_dir / "kpop_idols15", settings=FaceSettings(face_box="whole"), jobs=2,
                         progress=False)
    return people.encodings, people.labels, people.sources


def test_float32_storage_loses_nothing_of_dlibs_encodings_and_is_memory_mapped(kpop, tmp_path):
    """dlib's network computes in float32: its encodings survive float32 storage bit for bit."""
    X, labels, sources = kpop
    model = FaceKNN().fit(X, labels, sources=sources)
    assert np.array_equal(model.encodings_.astype(np.float64), X)
    model.save(tmp_path / "m")
    loaded = FaceKNN.load(tmp_path / "m")
    assert isinstance(loaded.encodings_, np.memmap) and loaded.encodings_.dtype == np.float32
    assert np.array_equal(loaded.encodings_, model.encodings_)
    assert np.array_equal(loaded.sources_, sources) and len(sources[0]) == 32
    names, dist, _ = model.predict_with_distance(X[::7])
    names2, dist2, _ = loaded.predict_with_distance(X[::7])
    assert np.array_equal(names, names2) and np.array_equal(dist, dist2)


def test_saving_again_replaces_the_parts_and_a_crash_leaves_a_folder_we_may_reuse(kpop, tmp_path):
    X, labels, _ = kpop
    folder = tmp_path / "m"
    FaceKNN(3, method="knn").fit(X[:100], labels[:100]).save(folder)
    first = sorted(p.name for p in folder.iterdir())
    FaceKNN(3, method="prototype").fit(X[:200], labels[:200]).save(folder)
    second = sorted(p.name for p in folder.iterdir())
    assert len(first) == 3 and len(second) == 4  # knn.json, gallery, labels (+ classifier): no stale parts
    assert not set(first) & set(second) - {"knn.json"}
    assert FaceKNN.load(folder).method == "prototype" and len(FaceKNN.load(folder).labels_) == 200
    # a save that died before its commit point leaves token parts and no knn.json: not a model, reusable
    crashed = tmp_path / "crashed"
    FaceKNN(3).fit(X[:50], labels[:50]).save(crashed)
    (crashed / "knn.json").unlink()
    assert not is_model(crashed) and knn_store.is_leftover_folder(crashed)
    (crashed / "holiday.jpg").write_bytes(b"x")
    assert not knn_store.is_leftover_folder(crashed)


def test_add_gives_the_model_a_fit_on_everything_would(kpop):
    """Adding people (and photos of known people) to a model equals fitting on all of them at once."""
    X, labels, sources = kpop
    people = sorted(set(labels))
    first = np.isin(labels, people[:10]) & (np.arange(len(labels)) % 3 != 0)
    rest = ~first
    for method in ("knn", "prototype"):
        grown = FaceKNN(5, method=method).fit(X[first], labels[first], sources=sources[first])
        grown.add(X[rest], labels[rest], sources=sources[rest])
        order = np.concatenate([np.flatnonzero(first), np.flatnonzero(rest)])
        whole = FaceKNN(5, method=method).fit(X[order], labels[order])
        assert np.array_equal(grown.classes_, whole.classes_)
        assert np.array_equal(grown.classes_[grown.labels_], labels[order])
        assert np.array_equal(grown.sources_, sources[order])
        a, b = grown.predict_with_distance(X), whole.predict_with_distance(X)
        assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_approximate_search_behind_the_classifier(kpop, tmp_path):
    """algorithm="hnsw": the same people as exact search on (nearly) every face, its recall recorded,
    and it survives save/load; scikit-learn's names mean exact search."""
    X, labels, _ = kpop
    rng = np.random.default_rng(0)
    test = rng.random(len(X)) < 0.3
    exact = FaceKNN(3).fit(X[~test], labels[~test])
    approx = FaceKNN(3, algorithm="hnsw").fit(X[~test], labels[~test])
    info = approx.index_.info
    assert info["kind"] == "hnsw" and 0.9 <= info["recall_at_1"] <= 1 and info["recall_queries"] > 0
    agree = np.mean(exact.predict(X[test]) == approx.predict(X[test]))
    assert agree >= 0.97
    # the distance to the predicted person is exact whatever the index
    _, dist, people = approx.predict_with_distance(X[test])
    for x, d, p in zip(X[test][:20], dist[:20], people[:20]):
        assert d == pytest.approx(np.linalg.norm(X[~test][labels[~test] == p] - x, axis=1).min())
    approx.save(tmp_path / "h")
    loaded = FaceKNN.load(tmp_path / "h")
    assert loaded.index_.kind == "hnsw" and np.array_equal(loaded.predict(X[test]), approx.predict(X[test]))
    assert FaceKNN(3, algorithm="ball_tree").fit(X[:50], labels[:50]).index_.kind == "exact"
    with pytest.raises(ValueError, match="algorithm"):
        FaceKNN(algorithm="lsh").fit(X[:50], labels[:50])


def test_single_file_models_of_older_dlibplus_still_load(kpop, tmp_path):
    """Format 2 (.npz: float64 encodings, JSON metadata) loads and predicts as a fresh fit does."""
    X, labels, _ = kpop
    classes, y = np.unique(labels[:120], return_inverse=True)
    meta = {"format": "dlibplus-knn", "format_version": 2, "n_neighbors": 3, "n_neighbors_rule": "3",
            "algorithm": "ball_tree", "method": "knn", "threshold": 0.6, "encoder": "dlib",
            "face_settings": {"face_box": "whole"}, "num_jitters": 1, "info": {"n_images": 120}}
    old = tmp_path / "old.npz"
    np.savez(old, encodings=X[:120], labels=y.astype(np.int32), classes=classes, metadata=np.array(json.dumps(meta)))
    assert is_model(old) and knn_store.is_legacy_model_file(old)
    loaded = FaceKNN.load(old)
    assert loaded.k_ == 3 and loaded.n_neighbors == 3 and loaded.info_ == {"n_images": 120}
    assert (loaded.method, loaded.method_) == ("knn", "knn")  # what it was trained as
    assert loaded.recipe.jitter_scale == 1.0  # written before the jitter scale existed: encodings as they were
    fresh = FaceKNN(3, method="knn").fit(X[:120], labels[:120])
    assert np.array_equal(loaded.predict(X[120:]), fresh.predict(X[120:]))


def test_damaged_or_foreign_model_folders_are_refused(kpop, tmp_path):
    X, labels, _ = kpop
    folder = tmp_path / "m"
    FaceKNN(3).fit(X[:80], labels[:80]).save(folder)
    meta = json.loads((folder / "knn.json").read_text())
    labels_file = folder / meta["files"]["labels"]
    # labels that hold Python objects: never unpickled
    saved = labels_file.read_bytes()
    np.save(labels_file, np.array([{"a": 1}] * 80, dtype=object), allow_pickle=True)
    with pytest.raises(ModelFileError, match="Python objects"):
        FaceKNN.load(folder)
    labels_file.write_bytes(saved)
    # parts that disagree on the number of faces
    np.save(labels_file, np.zeros(79, np.int32))
    with pytest.raises(ModelFileError, match="disagree"):
        FaceKNN.load(folder)
    labels_file.unlink()
    with pytest.raises(ModelFileError, match="missing"):
        FaceKNN.load(folder)
    (folder / "knn.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ModelFileError, match="newer dlibplus"):
        FaceKNN.load(folder)
    (folder / "knn.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="knn.json"):
        FaceKNN.load(folder)
    with pytest.raises(ModelFileError, match="without knn.json"):
        FaceKNN.load(tmp_path)
