"""FaceKNN on real encodings: k choice, the predicted person's distance, pickle-free persistence."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from dlibplus.faces import FaceSettings
from dlibplus.recipe import Recipe
from dlibplus.errors import ModelFileError, NotFittedError
from dlibplus.knn import FaceKNN, choose_n_neighbors, prototype_loo_accuracy
from dlibplus.people import load_people


@pytest.fixture(scope="module")
def kpop(faces_dir):
    """dlib encodings of every kpop_idols15 crop (whole image as the box)."""
    people = load_people(faces_dir / "kpop_idols15", settings=FaceSettings(face_box="whole"), jobs=2,
                         progress=False)
    return people.encodings, people.labels


def _split(labels, seed=0):
    from dlibplus.data import split_per_person

    return split_per_person(labels, 0.5, seed)


def test_split_is_per_person_and_seeded(kpop):
    _, labels = kpop
    train, test = _split(labels)
    assert set(labels[train]) == set(labels[test]) == set(labels)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
    for person in set(labels):
        n = (labels == person).sum()
        assert abs((labels[test] == person).sum() - n / 2) <= 1
    assert np.array_equal(_split(labels)[1], test) and not np.array_equal(_split(labels, 1)[1], test)


def test_votes_match_scikit_learn(kpop):
    X, labels = kpop
    train, test = _split(labels)
    for k in (1, 3, 7):
        ours = FaceKNN(k, method="knn").fit(X[train], labels[train])
        ref = KNeighborsClassifier(n_neighbors=k, weights="distance", algorithm="ball_tree").fit(X[train], labels[train])
        _, _, people = ours.predict_with_distance(X[test])
        assert (people == ref.predict(X[test])).all()


def test_distance_and_unknown_concern_the_predicted_person(kpop):
    X, labels = kpop
    train, test = _split(labels)
    model = FaceKNN(5, method="knn").fit(X[train], labels[train])
    names, dist, people = model.predict_with_distance(X[test])
    for x, d, p, name in zip(X[test], dist, people, names):
        gallery = X[train][labels[train] == p]
        assert d == pytest.approx(np.linalg.norm(gallery - x, axis=1).min())
        assert (name == "unknown") == (d > 0.6)
    # with k = 5 the vote sometimes disagrees with the single nearest face: the example would then
    # report a distance to someone else; we never do
    nearest = np.linalg.norm(X[test][:, None] - X[train][None], axis=2).min(axis=1)
    assert (dist >= nearest - 1e-12).all()
    assert (model.predict(X[test], threshold=0.0) == "unknown").all()


def test_auto_k_beats_sqrt_when_people_have_few_photos(kpop):
    X, labels = kpop
    # two training photos per person: the situation where round(sqrt(n)) collapses
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.choice(np.flatnonzero(labels == p), 2, replace=False) for p in sorted(set(labels))])
    test = np.setdiff1d(np.arange(len(labels)), train)
    auto = FaceKNN("auto", method="knn").fit(X[train], labels[train])
    sqrt = FaceKNN("sqrt", method="knn").fit(X[train], labels[train])
    assert sqrt.k_ == round(np.sqrt(len(train)))
    acc = {m: np.mean(np.array(model.predict_with_distance(X[test])[2]) == labels[test])
           for m, model in (("auto", auto), ("sqrt", sqrt))}
    assert auto.k_ < sqrt.k_ and acc["auto"] > acc["sqrt"]


def test_loo_choice_on_hand_made_points():
    # two tight clusters of 3 and one stray "b" in the middle of cluster a: with k=1 every a's nearest
    # other point is the stray (3 a's wrong, and the stray itself); with k=3 the a's outvote it
    X = np.array([[0, 0], [0.1, 0], [0, 0.1], [0.05, 0.05], [5, 5], [5.1, 5], [5, 5.1]], float)
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    k, scores = choose_n_neighbors(X, y, candidates=(1, 3))
    assert scores[1] == pytest.approx(3 / 7) and scores[3] == pytest.approx(6 / 7) and k == 3


def test_save_load_roundtrip_and_no_pickle(kpop, tmp_path):
    X, labels = kpop
    recipe = Recipe("torch", FaceSettings(face_box="whole"), 1)
    model = FaceKNN(recipe=recipe).fit(X[:60], labels[:60])
    path = tmp_path / "m"
    model.save(path, info={"trained_on": "kpop"})
    loaded = FaceKNN.load(path)
    assert loaded.k_ == model.k_ and loaded.recipe == recipe and loaded.info_ == {"trained_on": "kpop"}
    assert isinstance(loaded.predict(X[60:]), np.ndarray)
    assert np.array_equal(loaded.predict(X[60:]), model.predict(X[60:]))
    # a pickle disguised as a model is refused, never executed
    evil = tmp_path / "evil.npz"
    evil.write_bytes(pickle.dumps({"encodings": X[:2]}))
    with pytest.raises(ModelFileError, match="evil.npz.*not an .npz") as err:
        FaceKNN.load(evil)
    assert "allow_pickle" not in str(err.value) and "unsafe" not in str(err.value)
    # random bytes and JSON: say what the file is not, never suggest loading it unsafely
    for name, content in (("noise.npz", np.random.default_rng(0).bytes(3000)), ("m.json", b'{"a": 1}')):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=f"{name}.*not an .npz") as err:
            FaceKNN.load(tmp_path / name)
        assert "pickle" not in str(err.value)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, encodings=np.array([{"a": 1}], dtype=object), labels=np.zeros(1), classes=np.zeros(1),
             metadata=np.array("{}"))
    with pytest.raises(ModelFileError, match="Python objects") as err:
        FaceKNN.load(pickled)
    assert "allow_pickle" not in str(err.value)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a dlibplus KNN model"):
        FaceKNN.load(other)
    with pytest.raises(NotFittedError):
        FaceKNN().predict(X[:1])


def test_estimator_contract(kpop):
    """scikit-learn's contract: fit takes data only and leaves the parameters as given; clone works."""
    from sklearn.base import clone

    X, labels = kpop
    model = FaceKNN("auto", "brute", 0.5)
    params = model.get_params()
    model.fit(X[:60], labels[:60])
    assert model.get_params() == params and model.n_neighbors == "auto" and model.k_ >= 1
    copy = clone(model)
    assert copy.get_params() == params and not hasattr(copy, "index_")
    with pytest.raises(ValueError, match="threshold"):
        FaceKNN(threshold=-1).fit(X[:60], labels[:60])


def test_prototype_and_svm_methods_name_faces_as_scikit_learn_does_and_keep_the_threshold(kpop, tmp_path):
    """--method prototype / svm: the person is scikit-learn's NearestCentroid / LinearSVC answer; the
    distance and "unknown" still concern the nearest photo of that person; both survive save/load."""
    from sklearn.neighbors import NearestCentroid
    from sklearn.svm import LinearSVC

    X, labels = kpop
    train, test = _split(labels)
    for method, ref in (("prototype", NearestCentroid()), ("svm", LinearSVC(C=1.0, max_iter=20000, random_state=0))):
        model = FaceKNN(method=method).fit(X[train], labels[train])
        names, dist, people = model.predict_with_distance(X[test])
        assert (people == ref.fit(X[train], labels[train]).predict(X[test])).all()
        for x, d, p in zip(X[test], dist, people):
            assert d == pytest.approx(np.linalg.norm(X[train][labels[train] == p] - x, axis=1).min())
        assert ((names == "unknown") == (dist > 0.6)).all()
        model.save(tmp_path / method)
        loaded = FaceKNN.load(tmp_path / method)
        assert loaded.method == method and np.array_equal(loaded.predict(X[test]), names)
    with pytest.raises(ValueError, match="method"):
        FaceKNN(method="forest").fit(X[train], labels[train])


def _lost_photo_distance(x, photos):
    """Brute force: the mean squared distance from x to the mean of each (n - 1)-subset of ``photos``."""
    n = len(photos)
    if n == 1:
        return float(((x - photos[0]) ** 2).sum())
    return float(np.mean([((x - np.delete(photos, i, axis=0).mean(axis=0)) ** 2).sum() for i in range(n)]))


def test_prototype_leave_one_out_is_the_fair_refit(kpop):
    """Each face left out in turn meets its own person's mean without it and every other person's mean
    with one photo dropped (averaged over which): recomputed here by brute force, subset by subset."""
    X, labels = kpop
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.choice(np.flatnonzero(labels == p), n, replace=False)
                           for p, n in zip(sorted(set(labels)), [1, 2, 3, 4, 5] * 3)])
    Xs, ys = X[rows], labels[rows]
    classes, y = np.unique(ys, return_inverse=True)
    right = 0
    for i, x in enumerate(Xs):
        d = [((x - np.delete(Xs, i, axis=0)[np.delete(y, i) == c].mean(axis=0)) ** 2).sum()
             if c == y[i] and (y == c).sum() > 1 else np.inf if c == y[i]
             else _lost_photo_distance(x, Xs[y == c]) for c in range(len(classes))]
        right += int(np.argmin(d) == y[i])
    assert prototype_loo_accuracy(Xs, y) == pytest.approx(right / len(Xs), abs=1e-12)
    assert 0 < right < len(Xs)


def test_auto_method_takes_the_means_where_they_name_more_and_the_vote_where_it_does(kpop, tmp_path):
    X, labels = kpop
    # two photos per person: the means of two photos name more kpop test photos than the nearest photo
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.choice(np.flatnonzero(labels == p), 2, replace=False) for p in sorted(set(labels))])
    test = np.setdiff1d(np.arange(len(labels)), train)
    auto = FaceKNN().fit(X[train], labels[train])
    assert auto.method == "auto" and auto.method_ == "prototype"
    assert auto.method_scores_["prototype"] >= auto.method_scores_["knn"]
    proto = FaceKNN(method="prototype").fit(X[train], labels[train])
    vote = FaceKNN(method="knn").fit(X[train], labels[train])
    assert np.array_equal(auto.predict(X[test]), proto.predict(X[test]))
    assert np.mean(auto.predict(X[test]) == labels[test]) > np.mean(vote.predict(X[test]) == labels[test])
    auto.save(tmp_path / "m")
    loaded = FaceKNN.load(tmp_path / "m")
    assert (loaded.method, loaded.method_) == ("auto", "prototype")
    assert loaded.method_scores_ == pytest.approx(auto.method_scores_)
    assert np.array_equal(loaded.predict(X[test]), auto.predict(X[test]))
    # a person photographed in two very different ways: their mean lies on someone else, the vote does not
    pts = np.array([[0, 0], [0, 0.1], [10, 0], [10, 0.1], [5, 0], [5, 0.1], [5.1, 0], [5, 0.2]], float)
    split = FaceKNN(1).fit(pts, ["a"] * 4 + ["b"] * 4)
    assert split.method_ == "knn" and split.method_scores_["knn"] > split.method_scores_["prototype"]
