"""dlibplus.metrics against scikit-learn, brute-force loops and cases worked out by hand; dlibplus.pairs_file
reads pairs files; dlibplus.jsonutil makes JSON; dlibplus.plots writes PNGs."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from dlibplus import metrics as M
from dlibplus import plots
from dlibplus.jsonutil import JSONFields, jsonable
from dlibplus.metrics import distances as metrics_distances
from dlibplus.pairs_file import PairsFileError, read_pairs, read_pairs_resolved

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _random_pairs(seed: int, m: int = 400, rounded: bool = True):
    rng = np.random.default_rng(seed)
    same = rng.random(m) < 0.3
    d = np.where(same, rng.normal(0.45, 0.1, m), rng.normal(0.75, 0.1, m))
    if rounded:
        d = np.round(d, 2)  # plenty of ties
    return np.abs(d), same


def _people(seed: int = 0, n_people: int = 12, per_person: int = 5, dim: int = 8, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim))
    labels = np.repeat([f"p{k:02d}" for k in range(n_people)], per_person)
    x = np.repeat(centres, per_person, axis=0) + spread * rng.normal(size=(labels.size, dim))
    return x, labels


# ---------------------------------------------------------------------------------------------------- pairs


def test_pair_distances_match_explicit_loop():
    x, labels = _people(n_people=7, per_person=4)
    d, same = M.pair_distances(x, labels)
    expect_d, expect_s = [], []
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            expect_d.append(np.linalg.norm(x[i] - x[j]))
            expect_s.append(labels[i] == labels[j])
    np.testing.assert_allclose(d, expect_d, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(same, expect_s)
    assert same.sum() == 7 * (4 * 3 // 2)


def test_pair_distances_blocked_equals_unblocked(monkeypatch):
    x, labels = _people(n_people=9, per_person=5)
    full = M.pair_distances(x, labels)
    monkeypatch.setattr(metrics_distances, "_BLOCK_ELEMENTS", 7)  # one or two rows per block
    blocked = M.pair_distances(x, labels)
    np.testing.assert_allclose(blocked[0], full[0], atol=1e-12)
    np.testing.assert_array_equal(blocked[1], full[1])


def test_pair_distances_edge_cases():
    d, s = M.pair_distances(np.zeros((1, 4)), ["a"])
    assert d.shape == (0,) and s.shape == (0,)
    with pytest.raises(ValueError):
        M.pair_distances(np.zeros((3, 4)), ["a", "b"])
    with pytest.raises(ValueError):
        M.pair_distances(np.full((2, 4), np.nan), ["a", "b"])


def test_paired_distances():
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    b = np.array([[3.0, 4.0], [1.0, 1.0]])
    np.testing.assert_allclose(M.paired_distances(a, b), [5.0, 0.0])


# ---------------------------------------------------------------------------------------------------- ROC


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("drop", [False, True])
def test_roc_matches_sklearn(seed, drop):
    d, same = _random_pairs(seed)
    roc = M.roc_curve_distances(d, same, drop_intermediate=drop)
    fpr, tpr, thr = skm.roc_curve(same, -d, drop_intermediate=drop)
    np.testing.assert_allclose(roc.far, fpr, atol=1e-12)
    np.testing.assert_allclose(roc.tar, tpr, atol=1e-12)
    assert roc.thresholds[0] == -np.inf and thr[0] == np.inf
    np.testing.assert_allclose(roc.thresholds[1:], -thr[1:], atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn(seed):
    d, same = _random_pairs(seed)
    assert M.auc(d, same) == pytest.approx(skm.roc_auc_score(same, -d), abs=1e-12)
    d, same = _random_pairs(seed, rounded=False)
    assert M.auc(d, same) == pytest.approx(skm.roc_auc_score(same, -d), abs=1e-12)


def test_accuracy_at_threshold_is_inclusive_and_matches_sklearn():
    d = np.array([0.6, 0.6, 0.59, 0.61, 0.2])
    same = np.array([True, False, True, False, False])
    # 0.6 counts as "same person", like face_recognition.compare_faces
    assert M.accuracy_at_threshold(d, same, 0.6) == pytest.approx(3 / 5)
    dr, sr = _random_pairs(3)
    assert M.accuracy_at_threshold(dr, sr, 0.6) == pytest.approx(skm.accuracy_score(sr, dr <= 0.6))
    tar, far = M.rates_at_threshold(d, same, 0.6)
    assert (tar, far) == (pytest.approx(1.0), pytest.approx(2 / 3))


def test_perfectly_separable():
    same_d = np.array([0.1, 0.2, 0.3, 0.35])
    diff_d = np.linspace(0.7, 1.5, 1000)
    d = np.r_[same_d, diff_d]
    same = np.r_[np.ones(4, bool), np.zeros(1000, bool)]
    assert M.auc(d, same) == 1.0
    rate, threshold = M.eer(d, same)
    assert rate == 0.0
    assert 0.35 <= threshold < 0.7
    results = M.tar_at_far(d, same, (1e-1, 1e-2, 1e-3))
    assert [r.tar for r in results] == [1.0, 1.0, 1.0]
    # the largest threshold within the FAR budget: 100, 10 and 1 of the 1000 different pairs accepted
    assert [r.threshold for r in results] == [diff_d[99], diff_d[9], diff_d[0]]
    assert M.accuracy_at_threshold(d, same, 0.6) == 1.0
    assert M.kfold_verification(d, same, folds=4, seed=0).mean == 1.0


# Worked by hand. Sorted: 0.2 S, 0.3 D, 0.4 S, 0.5 S, 0.6 D, 0.7 S, 0.8 D, 0.9 ... 1.5 D  (4 same, 10 different)
HAND_SAME = [0.2, 0.4, 0.5, 0.7]
HAND_DIFF = [0.3, 0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]


def _hand():
    d = np.array(HAND_SAME + HAND_DIFF)
    return d, np.r_[np.ones(4, bool), np.zeros(10, bool)]


def test_tar_at_far_by_hand():
    d, same = _hand()
    r20, r10, r01 = M.tar_at_far(d, same, (0.2, 0.1, 0.01))
    # FAR <= 0.2: at most 2 of 10 different pairs; accept <= 0.7 (0.3 and 0.6 are in): TAR 4/4
    assert (r20.tar, r20.threshold, r20.achieved_far) == (1.0, 0.7, 0.2)
    # FAR <= 0.1: one different pair; 0.6 would be the second, so accept <= 0.5: TAR 3/4
    assert (r10.tar, r10.threshold, r10.achieved_far) == (0.75, 0.5, 0.1)
    # FAR 0.01 needs >= 100 different pairs
    assert r01.tar is None and r01.threshold is None and not r01.measurable
    assert "100" in r01.reason and "10" in r01.reason
    assert r01.n_different == 10
    assert M.threshold_at_far(d, same, 0.1) == 0.5
    with pytest.raises(ValueError, match="100 different-person pairs"):
        M.threshold_at_far(d, same, 0.01)


def test_tar_at_far_when_nothing_can_be_accepted():
    same = np.r_[False, False, np.ones(5, bool), np.zeros(18, bool)]  # 20 different pairs
    d = np.r_[0.1, 0.2, np.linspace(0.5, 0.6, 5), np.linspace(0.7, 1.0, 18)]
    (r,) = M.tar_at_far(d, same, 0.05)  # budget: one different pair, the one at 0.1
    assert (r.tar, r.threshold, r.achieved_far) == (0.0, 0.1, 0.05)
    d[1] = 0.1  # two different pairs tie at 0.1: nothing at all can be accepted
    (r,) = M.tar_at_far(d, same, 0.05)
    assert r.tar == 0.0 and r.achieved_far == 0.0
    assert np.isfinite(r.threshold) and r.threshold < 0.1
    assert np.sum(d <= r.threshold) == 0


def test_far_measurability_boundary():
    # exactly 1/FAR different pairs is enough (1e-3 * 1000 is not exactly 1 in floating point)
    d = np.r_[np.full(5, 0.2), np.linspace(0.5, 1.5, 1000)]
    same = np.r_[np.ones(5, bool), np.zeros(1000, bool)]
    r3, r4 = M.tar_at_far(d, same, (1e-3, 1e-4))
    assert r3.measurable and r3.tar == 1.0
    assert not r4.measurable and "10000" in r4.reason
    d2, s2 = d[:-1], same[:-1]  # 999 different pairs
    assert not M.tar_at_far(d2, s2, 1e-3)[0].measurable


def test_tar_at_far_agrees_with_sklearn_roc():
    d, same = _random_pairs(5, m=3000, rounded=False)
    fpr, tpr, thr = skm.roc_curve(same, -d, drop_intermediate=False)
    for r in M.tar_at_far(d, same, (0.1, 0.01, 1e-3)):
        k = np.nonzero(fpr <= r.far)[0][-1]
        assert r.tar == pytest.approx(tpr[k])
        assert r.threshold == pytest.approx(-thr[k])


def test_eer_by_hand():
    d, same = _hand()
    # at 0.6: FAR 2/10, FRR 1/4; at 0.7: FAR 2/10, FRR 0 -> FAR = FRR = 0.2 at 0.6 + 0.2 * 0.1
    rate, threshold = M.eer(d, same)
    assert rate == pytest.approx(0.2)
    assert threshold == pytest.approx(0.62)


def test_eer_against_sklearn_curve():
    d, same = _random_pairs(7, m=5000, rounded=False)
    fpr, tpr, _ = skm.roc_curve(same, -d)
    rate, threshold = M.eer(d, same)
    k = np.argmin(np.abs(fpr - (1 - tpr)))
    assert rate == pytest.approx((fpr[k] + 1 - tpr[k]) / 2, abs=0.01)
    tar, far = M.rates_at_threshold(d, same, threshold)
    assert far == pytest.approx(1 - tar, abs=0.01)


def test_bad_inputs():
    with pytest.raises(ValueError, match="both"):
        M.auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError):
        M.auc([0.1, np.nan], [True, False])
    with pytest.raises(ValueError):
        M.tar_at_far([0.1, 0.2], [True, False], fars=0.0)
    with pytest.raises(ValueError):
        M.auc([0.1, 0.2], [2, 0])


# ---------------------------------------------------------------------------------------------------- k-fold


def test_kfold_by_hand():
    # Ten folds of two pairs (one same at 0.3, one different at 0.9), except fold 9: same 0.95, different 0.5.
    d = np.array([0.3, 0.9] * 9 + [0.95, 0.5])
    same = np.array([True, False] * 10)
    folds = np.repeat(np.arange(10), 2)
    result = M.kfold_verification(d, same, fold_ids=folds)
    # Training without fold 9: same {0.3}, different {0.9} -> threshold 0.6; fold 9 gets both wrong.
    # Training with fold 9: best is accepting <= 0.3 (17/18 right), next distance 0.5 -> threshold 0.4;
    # the test fold is then classified right.
    np.testing.assert_allclose(result.thresholds, [0.4] * 9 + [0.6])
    np.testing.assert_allclose(result.accuracies, [1.0] * 9 + [0.0])
    assert result.mean == pytest.approx(0.9)
    assert result.std == pytest.approx(0.3)
    assert result.folds == 10 and result.seed is None


def test_best_accuracy_threshold_against_brute_force():
    d, same = _random_pairs(11, m=300)
    threshold, acc = M.best_accuracy_threshold(d, same)
    grid = np.unique(np.r_[d, d - 1e-9])
    brute = max(np.mean((d <= t) == same) for t in grid)
    assert acc == pytest.approx(brute)
    assert np.mean((d <= threshold) == same) == pytest.approx(acc)


def test_kfold_seeded_split_is_stratified_and_deterministic():
    d, same = _random_pairs(4, m=600)
    ids = M.stratified_folds(same, 10, seed=3)
    for k in range(10):
        assert abs((same & (ids == k)).sum() - same.sum() / 10) <= 1
        assert abs((ids == k).sum() - 60) <= 1
    a = M.kfold_verification(d, same, folds=10, seed=3)
    b = M.kfold_verification(d, same, folds=10, seed=3)
    assert a == b and len(a.accuracies) == 10 and a.seed == 3
    assert 0.8 < a.mean <= 1.0
    # Each fold's threshold is a best one on the other folds (brute force over every cut), placed halfway
    # between two training distances (or at an end), and the fold's accuracy is measured at it
    for k in range(10):
        test = ids == k
        train_d, train_s = d[~test], same[~test]
        grid = np.unique(np.r_[train_d, train_d - 1e-9])
        best = max(np.mean((train_d <= t) == train_s) for t in grid)
        t = a.thresholds[k]
        assert np.mean((train_d <= t) == train_s) == pytest.approx(best)
        u = np.unique(train_d)
        i = np.searchsorted(u, t)
        assert t < u[0] or t == u[-1] or t == pytest.approx((u[i - 1] + u[i]) / 2)
        assert a.accuracies[k] == pytest.approx(np.mean((d[test] <= t) == same[test]))


# ---------------------------------------------------------------------------------------------------- pairs files


def test_read_lfw_pairs(tmp_path):
    text = "2\t2\nAlice\t1\t2\nBob\t3\t12\nAlice\t1\tBob\t2\nCarl\t4\tAlice\t3\n" \
           "Bob\t1\t2\nCarl\t1\t2\nAlice\t2\tCarl\t3\nBob\t1\tCarl\t2\n"
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    pairs = read_pairs(path, images_root=tmp_path / "lfw")
    assert len(pairs) == 8
    assert pairs.path1[0] == tmp_path / "lfw" / "Alice" / "Alice_0001.jpg"
    assert pairs.path2[1] == tmp_path / "lfw" / "Bob" / "Bob_0012.jpg"
    assert pairs.path2[3] == tmp_path / "lfw" / "Alice" / "Alice_0003.jpg"
    np.testing.assert_array_equal(pairs.same, [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(pairs.folds, [0, 0, 0, 0, 1, 1, 1, 1])
    assert read_pairs(path).path1[0] == tmp_path / "Alice" / "Alice_0001.jpg"


def test_read_lfw_pairs_errors(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("1\t2\nAlice\t1\t2\n")
    with pytest.raises(PairsFileError, match="announces"):
        read_pairs(path)
    path.write_text("1\t1\nAlice\t1\t2\nAlice\tx\tBob\t1\n")
    with pytest.raises(PairsFileError, match="line 3"):
        read_pairs(path)
    with pytest.raises(PairsFileError, match="missing.txt"):
        read_pairs(tmp_path / "missing.txt")


def test_read_csv_pairs(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("path1,path2,same\n# a comment\na/1.jpg,a/2.jpg,1\na/1.jpg,b/1.jpg,false\n/abs/x.jpg,b/2.jpg,yes\n")
    pairs = read_pairs(path)
    assert pairs.path1[0] == tmp_path / "a" / "1.jpg"
    assert str(pairs.path1[2]) == "/abs/x.jpg"
    np.testing.assert_array_equal(pairs.same, [True, False, True])
    assert pairs.folds is None
    path.write_text("a.jpg,b.jpg,1\nc.jpg,d.jpg,maybe\n")
    with pytest.raises(PairsFileError, match="line 2"):
        read_pairs(path)
    path.write_text("path1,path2,same\n")
    with pytest.raises(PairsFileError, match="no pairs"):
        read_pairs(path)


def test_read_pairs_resolved_prefers_the_root_where_the_images_are(tmp_path):
    people = tmp_path / "people"
    (people / "a").mkdir(parents=True)
    for name in ("1.jpg", "2.jpg"):
        (people / "a" / name).write_bytes(b"")
    listing = tmp_path / "lists" / "pairs.csv"
    listing.parent.mkdir()
    listing.write_text("a/1.jpg,a/2.jpg,1\n")
    assert read_pairs_resolved(listing, people).path1[0] == people / "a" / "1.jpg"
    (listing.parent / "a").mkdir()
    for name in ("1.jpg", "2.jpg"):
        (listing.parent / "a" / name).write_bytes(b"")
    assert read_pairs_resolved(listing, people).path1[0] == listing.parent / "a" / "1.jpg"  # the file's folder first


# ---------------------------------------------------------------------------------------------------- identification


def test_identification_against_sklearn():
    rng = np.random.default_rng(0)
    names = np.array(["ann", "bob", "cat", "dan", "eve"])
    true = names[rng.integers(0, 5, 200)]
    pred = np.where(rng.random(200) < 0.7, true, names[rng.integers(0, 5, 200)])
    assert M.identification_accuracy(true, pred) == pytest.approx(skm.accuracy_score(true, pred))
    np.testing.assert_array_equal(M.confusion_matrix(true, pred), skm.confusion_matrix(true, pred))
    order = ["eve", "ann", "dan", "cat", "bob"]
    np.testing.assert_array_equal(
        M.confusion_matrix(true, pred, order), skm.confusion_matrix(true, pred, labels=order)
    )
    with pytest.raises(ValueError, match="missing from classes"):
        M.confusion_matrix(true, pred, ["ann", "bob"])


def test_per_person_report():
    true = ["a", "a", "a", "a", "b", "b", "c", "c", "c"]
    pred = ["a", "b", "c", "b", "b", "b", "unknown", "c", "a"]
    rows = M.per_person_report(true, pred, ["a", "b", "c", "unknown"])
    assert [r.name for r in rows] == ["a", "c", "b"]  # worst first
    a, c, b = rows
    assert (a.n, a.correct, a.accuracy) == (4, 1, 0.25)
    assert a.confused_with == (("b", 2), ("c", 1))
    assert c.confused_with == (("a", 1), ("unknown", 1))
    assert b.accuracy == 1.0 and b.confused_with == ()
    report = M.identification_report(true, pred, ["a", "b", "c", "unknown"])
    assert report.accuracy == pytest.approx(4 / 9) and report.n_people == 3
    json.dumps(report.to_dict(), allow_nan=False)


def test_nearest_identity():
    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [0.9, 0.0]])
    labels = np.array(["a", "b", "b2"])
    pred, dist = M.nearest_identity(gallery, labels, np.array([[0.2, 0.0], [0.96, 0.0]]))
    assert list(pred) == ["a", "b"]
    np.testing.assert_allclose(dist, [0.2, 0.04], atol=1e-9)


# ---------------------------------------------------------------------------------------------------- open set


def test_open_set_by_hand():
    gallery = np.array([[0.0, 0.0], [1.0, 0.0]])
    gallery_labels = ["alice", "bob"]
    probes = np.array([
        [0.1, 0.0],   # alice, nearest alice at 0.1
        [0.6, 0.0],   # bob, nearest bob at 0.4
        [0.45, 0.0],  # bob, but nearest is alice (0.45): never a hit
        [0.0, 0.3],   # unknown, nearest alice at 0.3
        [5.0, 5.0],   # unknown, far from all
    ])
    probe_labels = ["alice", "bob", "bob", "zed", "yan"]
    known = [True, True, True, False, False]
    result = M.open_set_dir_far(gallery, gallery_labels, probes, probe_labels, known, thresholds=[0.2, 0.35, 0.5])
    np.testing.assert_allclose(result.dir, [1 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(result.far, [0.0, 0.5, 0.5])
    assert result.rank1 == pytest.approx(2 / 3)
    assert (result.n_known, result.n_unknown) == (3, 2)
    np.testing.assert_allclose(result.curve_thresholds, [0.1, 0.3, 0.4, math.hypot(4.0, 5.0)], atol=1e-9)
    np.testing.assert_allclose(result.curve_dir, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(result.curve_far, [0.0, 0.5, 0.5, 1.0])
    # known_mask defaults to "label enrolled in the gallery"
    default = M.open_set_dir_far(gallery, gallery_labels, probes, probe_labels, thresholds=0.35)
    np.testing.assert_allclose(default.dir, [1 / 3])
    np.testing.assert_allclose(default.far, [0.5])
    json.dumps(result.to_dict(), allow_nan=False)


def _open_set_data(seed: int = 0):
    """20 people of 6 images: 3 of each enrolled, except the first 8 people, strangers (48 unknown probes)."""
    x, labels = _people(seed=seed, n_people=20, per_person=6, spread=0.5)
    gallery = np.arange(labels.size) % 6 < 3
    strangers = np.isin(labels, np.unique(labels)[:8])
    gallery &= ~strangers
    probes = ~gallery
    return x[gallery], labels[gallery], x[probes], labels[probes], ~strangers[probes]


def test_open_set_from_nearest_equals_open_set_dir_far():
    g, gl, q, ql, known = _open_set_data()
    full = M.open_set_dir_far(g, gl, q, ql, known, thresholds=(0.5, 0.8, 1.1))
    pred, dist = M.nearest_identity(g, gl, q)
    reused = M.open_set_from_nearest(pred, dist, ql, known, thresholds=(0.5, 0.8, 1.1))
    for name in ("thresholds", "dir", "far", "curve_thresholds", "curve_dir", "curve_far"):
        np.testing.assert_array_equal(getattr(reused, name), getattr(full, name))
    assert (reused.rank1, reused.n_known, reused.n_unknown) == (full.rank1, full.n_known, full.n_unknown)


def test_dir_at_far_against_brute_force():
    g, gl, q, ql, known = _open_set_data()
    result = M.open_set_dir_far(g, gl, q, ql, known)
    # brute force: every probe's nearest gallery image by direct differences, every distance tried as threshold
    d = np.linalg.norm(q[:, None] - g[None], axis=2)
    nearest, dist = gl[d.argmin(axis=1)], d.min(axis=1)
    hit = known & (nearest == ql)
    n_unknown = int((~known).sum())
    for far, row in zip((0.2, 0.05, 0.01), M.dir_at_far(result, (0.2, 0.05, 0.01))):
        assert row.far == far
        if n_unknown * far < 1:
            assert row.dir is None and row.threshold is None and row.achieved_far is None
            assert f"needs at least {math.ceil(1 / far)} unknown probes, only {n_unknown}" in row.reason
            continue
        ok = [t for t in np.unique(dist) if np.mean(dist[~known] <= t) <= far]
        assert ok, "the data are meant to have an operating point"
        t = max(ok)
        assert row.reason is None and row.threshold == pytest.approx(t, abs=1e-9)
        assert row.dir == pytest.approx(np.sum(hit & (dist <= t)) / known.sum())
        assert row.achieved_far == pytest.approx(np.mean(dist[~known] <= t))
    # the two closest probes of all are strangers (both at distance 0, 50 strangers): a budget of 1.5 false
    # alarms cannot be met by any threshold -> accept nothing
    q2 = np.r_[q, g[:1], g[:1]]
    ql2, known2 = np.r_[ql, ["stranger", "stranger"]], np.r_[known, False, False]
    (row,) = M.dir_at_far(M.open_set_dir_far(g, gl, q2, ql2, known2), (0.03,))
    assert (row.dir, row.threshold, row.achieved_far, row.reason) == (0.0, None, 0.0, None)
    json.dumps([r.to_dict() for r in M.dir_at_far(result, (0.2, 0.01))], allow_nan=False)


# ---------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_identification_contains_true_difference_and_is_seeded():
    rng = np.random.default_rng(1)
    n_people, per = 300, 5
    true = np.repeat(np.arange(n_people), per)
    # Person-level difficulty makes the probes of one person correlated: the reason to resample people.
    p_a = np.clip(0.9 + rng.normal(0, 0.05, n_people), 0, 1)[true]
    pred_a = np.where(rng.random(true.size) < p_a, true, -1)
    pred_b = np.where(rng.random(true.size) < p_a - 0.1, true, -1)  # B is 0.1 worse in expectation
    result = M.bootstrap_identification_diff(true, pred_a, pred_b, n_boot=500, seed=7)
    assert result.estimate == pytest.approx(np.mean(pred_a == true) - np.mean(pred_b == true))
    assert result.low < 0.1 < result.high
    assert result.low > 0 and result.fraction_positive == 1.0
    assert result.n_valid == 500 and result.n_people == n_people
    assert M.bootstrap_identification_diff(true, pred_a, pred_b, n_boot=500, seed=7) == result
    other = M.bootstrap_identification_diff(true, pred_a, pred_b, n_boot=500, seed=8)
    assert (other.low, other.high) != (result.low, result.high)
    json.dumps(result.to_dict(), allow_nan=False)


def test_bootstrap_over_people_counts():
    seen = []
    result = M.bootstrap_over_people(lambda c: seen.append(c.copy()) or float(c[0]), 4, n_boot=50, seed=0)
    assert np.array_equal(seen[0], np.ones(4))
    assert all(c.sum() == 4 and c.shape == (4,) for c in seen[1:])
    assert result.estimate == 1.0 and 0 <= result.low <= result.high <= 4


def _brute_pairs(x, labels):
    """All pairs i < j by direct differences (not the Gram matrix): ``(distances, same)``."""
    labels = np.asarray(labels)
    i, j = np.triu_indices(len(x), 1)
    return np.linalg.norm(x[i] - x[j], axis=1), labels[i] == labels[j]


def _brute_tar(d, same, far):
    """TAR at the largest distance threshold whose FAR is <= far, trying every distance as the threshold;
    None when there are fewer than 1 / far different-person pairs."""
    diff = np.sort(d[~same])
    if diff.size * far < 1 - 1e-9:
        return None
    ts = np.unique(d)
    ok = ts[np.searchsorted(diff, ts, side="right") <= far * diff.size * (1 + 1e-9)]
    return float(np.mean(d[same] <= ok.max())) if ok.size else 0.0


def _explicit_resample_tar(x, labels, counts, far):
    """TAR@FAR recomputed from scratch on the resampled people (copies distinct, no pairs between copies)."""
    people = np.unique(labels)
    xs, copy_ids, person_ids = [], [], []
    copy = 0
    for p, c in zip(people, counts):
        for _ in range(int(c)):
            idx = np.nonzero(labels == p)[0]
            xs.append(x[idx])
            copy_ids += [copy] * idx.size
            person_ids += [p] * idx.size
            copy += 1
    xs = np.concatenate(xs)
    copy_ids, person_ids = np.array(copy_ids), np.array(person_ids)
    d, same = _brute_pairs(xs, copy_ids)
    _, person_same = _brute_pairs(xs, person_ids)
    keep = same | ~person_same
    return _brute_tar(d[keep], same[keep], far)


def test_weighted_tar_equals_explicit_resampling():
    x, labels = _people(seed=3, n_people=10, per_person=4, spread=0.6)
    _, codes = np.unique(labels, return_inverse=True)
    rng = np.random.default_rng(0)
    for far in (0.1, 0.02):
        full = M.WeightedTar(x, codes, 10, far)
        small = M.WeightedTar(x, codes, 10, far, keep=40)  # only the 40 smallest different pairs
        two_pass = M.WeightedTar(x, codes, 10, far)
        two_pass.head_factor, two_pass.head_slack = 0.0, 3  # always needs the second pass
        d, same = _brute_pairs(x, labels)
        assert full(np.ones(10)) == pytest.approx(_brute_tar(d, same, far), abs=1e-12)
        n_small_valid = 0
        for _ in range(6):
            counts = np.bincount(rng.integers(0, 10, 10), minlength=10)
            expect = _explicit_resample_tar(x, labels, counts, far)
            assert full(counts) == pytest.approx(expect)
            assert two_pass(counts) == pytest.approx(expect)
            got = small(counts)
            if not math.isnan(got):
                n_small_valid += 1
                assert got == pytest.approx(expect)
        if far == 0.02:  # budget ~14 of 720 different pairs: within the 40 kept
            assert n_small_valid == 6


def test_bootstrap_tar_at_far_diff():
    x, labels = _people(seed=5, n_people=40, per_person=4, dim=8, spread=0.5)
    rng = np.random.default_rng(9)
    noisy = x + 0.4 * rng.normal(size=x.shape)  # a worse encoder
    result = M.bootstrap_tar_at_far_diff(x, noisy, labels, far=0.01, n_boot=200, seed=1)
    d_a, same = _brute_pairs(x, labels)
    d_b, _ = _brute_pairs(noisy, labels)
    expect = _brute_tar(d_a, same, 0.01) - _brute_tar(d_b, same, 0.01)
    assert result.estimate == pytest.approx(expect)
    assert result.low <= result.estimate <= result.high
    assert result.low > 0
    assert M.bootstrap_tar_at_far_diff(x, noisy, labels, far=0.01, n_boot=200, seed=1) == result
    with pytest.raises(ValueError, match="cannot be measured"):
        M.bootstrap_tar_at_far_diff(x, noisy, labels, far=1e-5, n_boot=10)


def test_weighted_tar_reuses_given_distances_and_gives_the_same_bootstrap():
    x, labels = _people(seed=5, n_people=30, per_person=4, dim=8, spread=0.5)
    noisy = x + 0.4 * np.random.default_rng(9).normal(size=x.shape)
    d_x, _ = M.pair_distances(x, labels)
    d_noisy, _ = M.pair_distances(noisy, labels)
    computed = M.WeightedTar.from_labels(x, labels, 0.01)
    given = M.WeightedTar.from_labels(x, labels, 0.01, distances=d_x)
    for name in ("same_d", "same_p", "diff_d", "diff_i", "diff_j", "sizes"):
        np.testing.assert_array_equal(getattr(given, name), getattr(computed, name))
    # the given distances are used as they are, not recomputed
    shifted = M.WeightedTar.from_labels(x, labels, 0.01, distances=d_x + 1.0)
    np.testing.assert_allclose(shifted.same_d, computed.same_d + 1.0)
    expect = M.bootstrap_tar_at_far_diff(x, noisy, labels, far=0.01, n_boot=100, seed=2)
    base = M.WeightedTar.from_labels(noisy, labels, 0.01, distances=d_noisy)
    assert M.bootstrap_tar_diff(given, base, n_boot=100, seed=2) == expect
    with pytest.raises(ValueError, match="shape"):
        M.WeightedTar.from_labels(x, labels, 0.01, distances=d_x[:-1])
    with pytest.raises(ValueError, match="same images"):
        M.bootstrap_tar_diff(given, M.WeightedTar.from_labels(x, labels, 0.02), n_boot=10)


# ---------------------------------------------------------------------------------------------------- report


def test_verification_report_to_json():
    d, same = _random_pairs(2, m=3000, rounded=False)
    report = M.verification_report(d, same, name="dlib", max_curve_points=100)
    assert report.n_pairs == 3000 and report.n_same + report.n_different == 3000
    assert report.auc == pytest.approx(skm.roc_auc_score(same, -d))
    assert report.kfold is not None and len(report.kfold.accuracies) == 10
    assert [r.far for r in report.tar_at_far] == list(M.DEFAULT_FARS)
    assert report.tar_at_far[-1].tar is None  # ~2100 different pairs: 1e-4 is not measurable
    assert report.roc_far.size <= 100 and report.roc_far[0] == 0 and report.roc_far[-1] == 1
    assert np.all(np.diff(report.roc_far) >= 0) and np.all(np.diff(report.roc_tar) >= 0)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["name"] == "dlib"
    assert data["tar_at_far"][-1]["tar"] is None and "10000" in data["tar_at_far"][-1]["reason"]
    assert data["kfold"]["folds"] == 10
    small = M.verification_report([0.1, 0.9, 0.2], [True, False, False])
    assert small.kfold is None


def test_jsonable():
    @dataclasses.dataclass
    class Inner:
        value: float

    @dataclasses.dataclass
    class Outer(JSONFields):
        values: np.ndarray
        inner: Inner
        where: Path

    obj = {1: (np.float32(0.5), np.int64(3), np.bool_(True), float("nan"), -np.inf, None, "s"),
           "outer": Outer(np.array([[1.0, np.nan], [2.0, 3.0]]), Inner(np.float64(2.5)), Path("a/b"))}
    data = jsonable(obj)
    assert data == {"1": [0.5, 3, True, None, None, None, "s"],
                    "outer": {"values": [[1.0, None], [2.0, 3.0]], "inner": {"value": 2.5}, "where": "a/b"}}
    assert type(data["1"][1]) is int and type(data["1"][2]) is bool
    json.dumps(data, allow_nan=False)


def test_pair_distances_scale_smoke():
    """n = 1500 in blocks: m = 1.1M pairs, quick enough and checks block offsets at scale."""
    x, labels = _people(seed=0, n_people=300, per_person=5, dim=128, spread=0.2)
    d, same = M.pair_distances(x, labels)
    n = x.shape[0]
    assert d.size == n * (n - 1) // 2
    rng = np.random.default_rng(0)
    i, j = np.triu_indices(n, 1)
    for k in rng.integers(0, d.size, 50):
        assert d[k] == pytest.approx(np.linalg.norm(x[i[k]] - x[j[k]]), abs=1e-9)
        assert same[k] == (labels[i[k]] == labels[j[k]])


# ---------------------------------------------------------------------------------------------------- plots


def _assert_png(path, min_size=(200, 200)):
    assert path.is_file()
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_plots_write_pngs(tmp_path):
    d, same = _random_pairs(0, m=500, rounded=False)
    roc = M.roc_curve_distances(d, same)
    roc2 = M.roc_curve_distances(d * np.where(same, 0.8, 1.0), same)
    out = plots.plot_roc({"dlib": (roc.far, roc.tar), "fine-tuned": (roc2.far, roc2.tar)},
                         tmp_path / "roc.png", fars=(1e-2,))
    _assert_png(out)
    out = plots.plot_distance_histograms(d, same, 0.6, tmp_path / "sub" / "hist.png", title="dlib")
    _assert_png(out)
    names = np.array([f"person_{k}" for k in range(25)])
    rng = np.random.default_rng(0)
    true = names[rng.integers(0, 25, 400)]
    pred = np.where(rng.random(400) < 0.6, true, names[rng.integers(0, 25, 400)])
    matrix = M.confusion_matrix(true, pred, names)
    out = plots.plot_confusion(matrix, names, tmp_path / "confusion.png", worst_n=10)
    _assert_png(out)
    # overwriting is atomic and leaves a valid file
    _assert_png(plots.plot_distance_histograms(d, same, None, tmp_path / "sub" / "hist.png"))


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "chart.png"
    target.write_bytes(b"old")

    class Broken:
        def savefig(self, fh, format):
            fh.write(b"half a png")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        plots._save(Broken(), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]
