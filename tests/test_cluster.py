"""Clustering real dlib encodings: chinese whispers against dlib's own, DBSCAN against scikit-learn's,
the neighbour graph against brute force, the scores against pair counting; the `cluster` command."""
from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.spatial.distance import cdist

from dlibplus.cluster import (METHODS, UNCLUSTERED, average_linkage, chinese_whispers, cluster_faces, dbscan,
                              neighbor_graph, pairwise_scores, relabel)

from conftest import person_images


@pytest.fixture(scope="module")
def labelled(faces_dir) -> tuple[np.ndarray, np.ndarray]:
    """dlib encodings (n, 128) float32 and person names: 12 tight crops of each of 24 people."""
    from dlibplus.cli.options import face_settings
    from dlibplus.data import process_images

    pairs = person_images(faces_dir, "glint360k_celeb24", per_person=12)
    results = process_images([p for _, p in pairs], face_settings("hog", 1, "small", "whole", 0), jobs=2,
                             progress=False)
    return np.concatenate([r.encodings for r in results]).astype(np.float32), np.array([p for p, _ in pairs])


def test_neighbor_graph_is_every_pair_within_the_threshold(labelled):
    X, _ = labelled
    g = neighbor_graph(X, 0.5, max_neighbors=len(X))
    d = cdist(X.astype(np.float64), X.astype(np.float64))
    expected = (d < 0.5) & ~np.eye(len(X), dtype=bool)
    assert np.array_equal(g.toarray() > 0, expected)
    np.testing.assert_allclose(g[expected].A1, d[expected], atol=1e-6)


def test_chinese_whispers_clusters_like_dlibs(labelled):
    """Same graph, same update rule: dlib's result is typical of ours over seeds (the order is random)."""
    import dlib

    X, people = labelled
    graph = neighbor_graph(X, 0.5, max_neighbors=len(X))
    ours = [pairwise_scores(people, chinese_whispers(graph=graph, threshold=0.5, weighting="dlib", seed=s))
            for s in range(8)]
    theirs = pairwise_scores(people, relabel(np.array(
        dlib.chinese_whispers_clustering([dlib.vector(x.astype(float)) for x in X], 0.5))))
    f = np.array([s.f_measure for s in ours])
    n = np.array([s.n_clusters for s in ours])
    print(f"F: dlib {theirs.f_measure:.3f}, ours {f.mean():.3f} ± {f.std():.3f}; clusters: dlib "
          f"{theirs.n_clusters}, ours {n.min()}-{n.max()}")
    assert f.min() - 0.02 <= theirs.f_measure <= f.max() + 0.02
    assert n.min() - 2 <= theirs.n_clusters <= n.max() + 2
    isolated = _isolated(X, 0.5)  # unclustered whatever the order
    assert all(isolated <= s.n_unclustered <= isolated + 5 for s in [*ours, theirs])


def _isolated(X: np.ndarray, threshold: float) -> int:
    """Faces with no other face closer than the threshold (a cluster of one whatever the order)."""
    d = cdist(X.astype(np.float64), X.astype(np.float64))
    np.fill_diagonal(d, np.inf)
    return int(np.sum(d.min(axis=1) >= threshold))


@pytest.mark.parametrize("method", METHODS)
def test_clustering_is_far_above_a_trivial_baseline(labelled, method):
    X, people = labelled
    labels = cluster_faces(X, method)
    scores = pairwise_scores(people, labels)
    one_cluster = pairwise_scores(people, np.zeros(len(X), int))
    print(f"{method}: {scores}; everything in one cluster: F {one_cluster.f_measure:.3f}")
    if method == "dbscan":  # its default eps (0.4, best on LFW photos) is low for these small crops
        assert scores.f_measure > 3 * one_cluster.f_measure and scores.precision > 0.95
        return
    assert scores.f_measure > 0.7 > 9 * one_cluster.f_measure
    assert scores.ari > 0.65
    assert 0.5 * scores.n_people <= scores.n_clusters <= 2.5 * scores.n_people
    assert np.array_equal(labels, cluster_faces(X, method))  # deterministic for a seed


def test_similarity_weighting_beats_dlibs_on_these_faces(labelled):
    X, people = labelled
    graph = neighbor_graph(X, 0.5)
    f = {w: np.mean([pairwise_scores(people, chinese_whispers(graph=graph, weighting=w, seed=s)).f_measure
                     for s in range(5)]) for w in ("dlib", "similarity")}
    print(f"chinese whispers at 0.5, mean F over 5 seeds: {f}")
    assert f["similarity"] > f["dlib"]


def test_average_linkage_is_scipys(labelled):
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    X, _ = labelled
    tree = linkage(pdist(X.astype(np.float64), "sqeuclidean"), "average")
    for t in (0.5, 0.55, 0.6):
        expected = relabel(fcluster(tree, t * t, "distance"))
        assert np.array_equal(average_linkage(X, t, max_neighbors=len(X)), expected)
        assert np.array_equal(average_linkage(X, t), expected)  # the default 100 neighbours suffice here


def test_dbscan_is_scikit_learns_on_the_full_distance_matrix(labelled):
    from sklearn.cluster import DBSCAN

    X, people = labelled
    for eps, min_samples in ((0.45, 2), (0.5, 4)):
        ours = dbscan(X, eps, min_samples=min_samples, max_neighbors=len(X))
        theirs = relabel(*_with_noise(DBSCAN(eps=eps, min_samples=min_samples).fit_predict(X.astype(np.float64))))
        assert np.array_equal(ours, theirs)
    assert pairwise_scores(people, dbscan(X, 0.45)).f_measure > 0.5


def _with_noise(raw):
    return raw, raw == -1


def test_relabel_orders_by_size_and_marks_singletons():
    labels = relabel(np.array([7, 3, 3, 9, 7, 7, 5]))
    assert labels.tolist() == [0, 1, 1, UNCLUSTERED, 0, 0, UNCLUSTERED]


def test_pairwise_scores_count_pairs():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    true = rng.integers(0, 6, 60)
    pred = np.where(rng.random(60) < 0.2, -1, (true + (rng.random(60) < 0.3)) % 6)
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(60), 2):
        together = pred[i] == pred[j] != -1
        same = true[i] == true[j]
        tp += together and same
        fp += together and not same
        fn += same and not together
    s = pairwise_scores(true, pred)
    assert s.precision == pytest.approx(tp / (tp + fp)) and s.recall == pytest.approx(tp / (tp + fn))
    assert s.f_measure == pytest.approx(2 * tp / (2 * tp + fp + fn))
    singletons_apart = np.where(pred == -1, 100 + np.arange(60), pred)
    assert s.ari == pytest.approx(adjusted_rand_score(true, singletons_apart))
    assert s.n_people == 6 and s.n_unclustered == int(np.sum(pred == -1))


# --- the command --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(faces_dir) -> list:
    """Whole LFW photos (faces detected) of three people, 4 each."""
    people = ["Colin_Powell", "Jean_Chretien", "Tony_Blair"]
    pairs = [pair for pair in person_images(faces_dir, "lfw_dev", per_person=4) if pair[0] in people]
    assert len(pairs) == 12
    return [p for _, p in pairs]


def run_cluster(args):
    from dlibplus.cli.cluster import cluster

    return CliRunner().invoke(cluster, [str(a) for a in args], catch_exceptions=False)


def test_cluster_command_writes_csv_and_folders(photos, tmp_path):
    import face_recognition

    out = tmp_path / "out"
    result = run_cluster([*photos, "-o", out, "--folders", "-j", "2"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "clusters.csv")))
    assert list(rows[0]) == ["path", "top", "right", "bottom", "left", "cluster"]
    # one row per face face_recognition finds (its HOG defaults are ours)
    expected = [(str(p), box) for p in photos
                for box in face_recognition.face_locations(face_recognition.load_image_file(p))]
    got = [(r["path"], tuple(int(r[c]) for c in ("top", "right", "bottom", "left"))) for r in rows]
    assert got == expected
    # the labelled (central) face of each photo: no cluster mixes two people
    person = {str(p): p.parent.name for p in photos}
    central = _central_clusters(rows)
    assert len(central) == 12
    for name in set(central.values()) - {"unclustered"}:
        assert len({person[path] for path, c in central.items() if c == name}) == 1
    # one JPEG crop per face, in its cluster's folder
    for name in {r["cluster"] for r in rows}:
        crops = sorted((out / name).iterdir())
        assert len(crops) == sum(r["cluster"] == name for r in rows)
        assert all(c.suffix == ".jpg" for c in crops)
    assert f"{len(rows)} faces in 12 images" in result.output
    # average linkage groups these three people exactly (the encodings now come from the cache)
    result = run_cluster([*photos, "-o", tmp_path / "avg", "--method", "average", "--threshold", "0.55"])
    assert result.exit_code == 0, result.output
    central = _central_clusters(list(csv.DictReader(open(tmp_path / "avg" / "clusters.csv"))))
    assert len(set(central.values())) == 3
    assert all(len({central[str(p)] for p in photos if p.parent.name == who}) == 1 for who in set(person.values()))
    # a second run into the same folder would mix with the first: refused before any work
    again = run_cluster([*photos, "-o", out, "--folders"])
    assert again.exit_code == 2 and "earlier run" in again.output


def _central_clusters(rows: list[dict]) -> dict[str, str]:
    """Cluster of each photo's labelled face: the one nearest the centre of the 250x250 LFW photo."""
    best: dict[str, tuple[float, str]] = {}
    for r in rows:
        cy = (int(r["top"]) + int(r["bottom"])) / 2
        cx = (int(r["left"]) + int(r["right"])) / 2
        d = (cy - 125) ** 2 + (cx - 125) ** 2
        if r["path"] not in best or d < best[r["path"]][0]:
            best[r["path"]] = (d, r["cluster"])
    return {path: c for path, (_, c) in best.items()}


def test_cluster_command_bad_input(photos, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cluster([empty, "-o", tmp_path / "out"])
    assert result.exit_code == 2 and "no image files" in result.output
    result = run_cluster([tmp_path / "missing.jpg", "-o", tmp_path / "out"])
    assert result.exit_code == 2 and "not found" in result.output
    (tmp_path / "file").write_text("x")
    result = run_cluster([photos[0], "-o", tmp_path / "file"])
    assert result.exit_code == 2
    # an input named like the output CSV is never written over
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "clusters.csv").write_text("mine")
    result = run_cluster([photos[0], tmp_path / "o2" / "clusters.csv", "-o", tmp_path / "o2"])
    assert result.exit_code == 2 and (tmp_path / "o2" / "clusters.csv").read_text() == "mine"


def test_cluster_command_skips_unreadable_files(photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = run_cluster([photos[0], photos[1], broken, "-o", tmp_path / "out", "-j", "1"])
    assert result.exit_code == 0, result.output
    assert f"skipped {broken}" in result.output
    rows = list(csv.DictReader(open(tmp_path / "out" / "clusters.csv")))
    assert {r["path"] for r in rows} == {str(photos[0]), str(photos[1])}
    only_broken = run_cluster([broken, "-o", tmp_path / "out2", "-j", "1"])
    assert only_broken.exit_code == 2 and "no readable image" in only_broken.output
    assert not (tmp_path / "out2").exists()


def test_cluster_command_with_a_model_folder_encoder_clusters_as_dlib_does(photos, tmp_path):
    """--encoder takes a fine-tuned folder; with dlib's own weights in it (the torch replica, 1e-6 from
    dlib) the clusters are dlib's, and a folder that holds no network is refused before any work."""
    import shutil

    from dlibplus import models

    folder = tmp_path / "mymodel"
    folder.mkdir()
    shutil.copy(models.model_path(models.FACE_RECOGNITION_MODEL), folder / "model.dat")
    dlib_out, torch_out = tmp_path / "dlib", tmp_path / "torch"
    assert run_cluster([*photos, "-o", dlib_out, "-j", "2"]).exit_code == 0
    result = run_cluster([*photos, "-o", torch_out, "--encoder", folder, "-j", "2"])
    assert result.exit_code == 0, result.output
    read = [list(csv.DictReader(open(out / "clusters.csv"))) for out in (dlib_out, torch_out)]
    assert read[0] == read[1]
    empty = tmp_path / "empty_model"
    empty.mkdir()
    result = run_cluster([*photos, "-o", tmp_path / "x", "--encoder", empty])
    assert result.exit_code == 2 and str(empty) in result.output
