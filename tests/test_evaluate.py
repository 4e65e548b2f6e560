"""evaluate: every number in metrics.json recomputed by hand on real photos (8 kpop_idols15 people).

The photos are linked (never copied) into temporary people folders. dlib and the torch replica are
evaluated side by side: the replica equals dlib to 1e-5, so every number must agree and every difference
CI must contain 0.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from conftest import person_images  # noqa: E402

from dlibplus import metrics  # noqa: E402
from dlibplus.data import FaceSettings, split_per_person  # noqa: E402
from dlibplus.errors import DataFolderError  # noqa: E402
from dlibplus.evaluate import encoder_name, evaluate_folder  # noqa: E402
from dlibplus.jitter_scale import estimate_scale, sample_rows  # noqa: E402
from dlibplus.knn import FaceKNN  # noqa: E402
from dlibplus.pairs_file import read_pairs  # noqa: E402
from dlibplus.people import load_people  # noqa: E402
from dlibplus.report import MANIFEST, console_table, write_report  # noqa: E402

WHOLE = FaceSettings(face_box="whole")
N_PEOPLE, PER_PERSON, N_BOOT = 8, 12, 200


def _link_people(root: Path, pairs: list[tuple[str, Path]]) -> Path:
    for person, path in pairs:
        (root / person).mkdir(parents=True, exist_ok=True)
        (root / person / path.name).symlink_to(path)
    return root


@pytest.fixture(scope="module")
def kpop_pairs(faces_dir):
    """``(person, path)`` of the first 8 people, first 12 images each."""
    people = sorted({p for p, _ in person_images(faces_dir, "kpop_idols15")})[:N_PEOPLE]
    return [(p, f) for p, f in person_images(faces_dir, "kpop_idols15", PER_PERSON) if p in people]


@pytest.fixture(scope="module")
def kpop8(tmp_path_factory, kpop_pairs):
    return _link_people(tmp_path_factory.mktemp("kpop8"), kpop_pairs)


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory, kpop8):
    """A CSV of 30 same and 30 different pairs, paths relative to the people folder (not the CSV's)."""
    rng = np.random.default_rng(3)
    files = {p.name: sorted(f.relative_to(kpop8).as_posix() for f in p.iterdir()) for p in kpop8.iterdir()}
    people = sorted(files)
    rows = []
    for k in range(30):
        p = people[k % len(people)]
        a, b = rng.choice(len(files[p]), 2, replace=False)
        rows.append((files[p][a], files[p][b], 1))
        p, q = rng.choice(people, 2, replace=False)
        rows.append((files[p][rng.integers(len(files[p]))], files[q][rng.integers(len(files[q]))], 0))
    path = tmp_path_factory.mktemp("pairs") / "pairs.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([("path1", "path2", "same")] + rows)
    return path


@pytest.fixture(scope="module")
def both(kpop8, pairs_csv, tmp_path_factory):
    """dlib and torch on the same 50/50 split, with the pairs file; report written."""
    result = evaluate_folder(kpop8, ["dlib", "torch"], settings=WHOLE, pairs_file=pairs_csv, jobs=2,
                             progress=False, n_boot=N_BOOT)
    out = tmp_path_factory.mktemp("report")
    files = write_report(result, out)
    return result, out, files, json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def dlib_people(kpop8):
    return load_people(kpop8, settings=WHOLE, jobs=2, progress=False)


def _all_pairs(x, labels):
    i, j = np.triu_indices(len(x), 1)
    return np.linalg.norm(x[i] - x[j], axis=1), labels[i] == labels[j]


def _kfold_mean(d, same, fold_ids):
    """LFW-protocol accuracy by brute force: per fold, try every cut between two training distances (and
    below all, and at the largest), keep the strictest of the most accurate, score the held-out fold."""
    accuracies = []
    for k in np.unique(fold_ids):
        test = fold_ids == k
        u = np.unique(d[~test])
        cuts = np.r_[np.nextafter(u[0], -np.inf), (u[:-1] + u[1:]) / 2, u[-1]]
        train_acc = [np.mean((d[~test] <= t) == same[~test]) for t in cuts]
        t = cuts[int(np.argmax(train_acc))]
        accuracies.append(np.mean((d[test] <= t) == same[test]))
    return float(np.mean(accuracies))


def test_knn_and_1nn_accuracy_equal_direct_computation(both, dlib_people):
    result, _, _, js = both
    X, y, paths = dlib_people.encodings, dlib_people.labels, dlib_people.paths
    gallery, probes = split_per_person(y, 0.5, 0)
    assert list(result.gallery_paths) == list(paths[gallery]) and list(result.probe_paths) == list(paths[probes])
    assert result.known.all() and not result.holdout_people

    model = FaceKNN().fit(X[gallery], y[gallery])
    _, _, predicted = model.predict_with_distance(X[probes])
    ident = js["results"]["dlib"]["identification"]
    assert ident["knn_accuracy"] == pytest.approx(np.mean(predicted == y[probes]), abs=1e-12)
    assert ident["knn_k"] == model.k_
    assert ident["knn_pred"] == predicted.tolist()

    d = np.linalg.norm(X[probes][:, None] - X[gallery][None], axis=2)
    nearest = y[gallery][d.argmin(axis=1)]
    assert ident["nn1_accuracy"] == pytest.approx(np.mean(nearest == y[probes]), abs=1e-12)

    rows = {r["name"]: r for r in ident["report"]["per_person"]}
    for person in set(y.tolist()):
        mine = y[probes] == person
        assert rows[person]["n"] == mine.sum()
        assert rows[person]["accuracy"] == pytest.approx(np.mean(predicted[mine] == person))
    cells = sum(c[2] for c in ident["confusion"]["cells"])
    assert cells == len(probes)


def test_verification_matches_sklearn_and_direct_rates(both, dlib_people):
    result, _, _, js = both
    X, y = dlib_people.encodings, dlib_people.labels
    _, probes = split_per_person(y, 0.5, 0)
    d, same = _all_pairs(X[probes], y[probes])
    v = js["results"]["dlib"]["verification"]
    assert v["n_pairs"] == len(d) and v["n_same"] == same.sum()
    assert v["auc"] == pytest.approx(roc_auc_score(same, -d), abs=1e-12)
    assert v["accuracy_at_threshold"] == pytest.approx(np.mean((d <= 0.6) == same), abs=1e-12)
    assert v["tar_at_threshold"] == pytest.approx(np.mean(d[same] <= 0.6), abs=1e-12)
    assert v["far_at_threshold"] == pytest.approx(np.mean(d[~same] <= 0.6), abs=1e-12)
    by_far = {t["far"]: t for t in v["tar_at_far"]}
    n_diff = int((~same).sum())
    for far, t in by_far.items():
        assert (t["tar"] is None) == (n_diff * far < 1), far  # not measurable exactly when too few pairs
        if t["tar"] is not None:  # the reported threshold is an operating point that gives that TAR
            assert np.mean(d[~same] <= t["threshold"]) <= far
            assert t["tar"] == pytest.approx(np.mean(d[same] <= t["threshold"]))
    assert v["kfold"]["folds"] == 10


def test_dlib_and_torch_give_the_same_numbers_and_differences_contain_zero(both):
    result, _, _, js = both
    a, b = js["results"]["dlib"], js["results"]["torch"]
    assert a["identification"]["knn_accuracy"] == b["identification"]["knn_accuracy"]
    assert a["identification"]["nn1_accuracy"] == b["identification"]["nn1_accuracy"]
    assert a["identification"]["knn_pred"] == b["identification"]["knn_pred"]
    assert a["verification"]["auc"] == pytest.approx(b["verification"]["auc"], abs=1e-3)
    assert a["verification"]["eer"] == pytest.approx(b["verification"]["eer"], abs=0.02)
    assert a["pairs"]["kfold"]["mean"] == pytest.approx(b["pairs"]["kfold"]["mean"], abs=0.02)
    metrics_compared = {c["metric"] for c in js["comparisons"]}
    assert metrics_compared == {"knn_accuracy", "nn1_accuracy", "tar_at_far"}
    for c in js["comparisons"]:
        assert c["encoder"] == "torch" and c["baseline"] == "dlib"
        assert c["ci"]["low"] <= 0 <= c["ci"]["high"], c
        assert c["difference"] == pytest.approx(c["value"] - c["baseline_value"], abs=1e-12)
        assert c["ci"]["n_boot"] == N_BOOT
    tar = next(c for c in result.comparisons if c.metric == "tar_at_far")
    # 1e-3 is not measurable on these few pairs: the smallest measurable FAR is used, and said so
    assert tar.far == 1e-2 and any("FAR 0.001 is not measurable" in n for n in result.notes)


def test_report_files(both):
    result, out, files, js = both
    for name in ("report.md", "metrics.json", "roc.png", "distances_dlib.png", "distances_torch.png",
                 "confusion_dlib.png", "confusion_torch.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
            im.verify()
    json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    md = (out / "report.md").read_text()
    assert "| metric | dlib | torch |" in md and "## Differences from dlib" in md and "## Per person" in md
    assert "TAR @ FAR 0.0001 not measurable" in md
    assert [p.name for p in out.glob(".*")] == [MANIFEST], "temporary files left behind"
    table = console_table(result)
    assert "dlib" in table and "torch" in table and "KNN accuracy" in table and "torch - dlib" in table


def test_pairs_csv_gives_a_10_fold_accuracy(both, pairs_csv, kpop8, dlib_people):
    result, _, _, js = both
    assert js["pairs_summary"]["pairs"] == 60 and js["pairs_summary"]["used"] == 60
    pairs = read_pairs(pairs_csv, kpop8)  # paths relative to the people folder
    enc = dict(zip(dlib_people.paths.tolist(), dlib_people.encodings))
    a = np.array([enc[str(p)] for p in pairs.path1])
    b = np.array([enc[str(p)] for p in pairs.path2])
    d = np.linalg.norm(a - b, axis=1)
    expected = _kfold_mean(d, pairs.same, metrics.stratified_folds(pairs.same, 10, seed=0))
    kfold = js["results"]["dlib"]["pairs"]["kfold"]
    assert kfold["folds"] == 10 and len(kfold["accuracies"]) == 10
    assert kfold["mean"] == pytest.approx(expected, abs=1e-12)
    assert js["results"]["dlib"]["pairs"]["auc"] == pytest.approx(roc_auc_score(pairs.same, -d), abs=1e-12)


def test_holdout_people_are_strangers_never_in_the_gallery(kpop8, dlib_people, tmp_path):
    result = evaluate_folder(kpop8, ["dlib"], settings=WHOLE, holdout_people=2, seed=1, jobs=2, progress=False,
                             n_boot=N_BOOT)
    held = result.holdout_people
    assert len(held) == 2 and not set(held) & set(result.gallery_labels.tolist())
    assert set(result.probe_labels[~result.known].tolist()) == set(held)
    assert not any(Path(p).parent.name in held for p in result.gallery_paths)
    # the same split as without holdout, minus the held-out people's gallery images
    X, y, paths = dlib_people.encodings, dlib_people.labels, dlib_people.paths
    gallery, probes = split_per_person(y, 0.5, 1)
    gallery = gallery[~np.isin(y[gallery], held)]
    assert list(result.gallery_paths) == list(paths[gallery]) and list(result.probe_paths) == list(paths[probes])

    # open set at 0.6 by hand: nearest gallery image, right person and within 0.6 / any stranger within 0.6
    d = np.linalg.norm(X[probes][:, None] - X[gallery][None], axis=2)
    nearest, dist = y[gallery][d.argmin(axis=1)], d.min(axis=1)
    known = ~np.isin(y[probes], held)
    ev = result.baseline
    k = list(ev.open_set.thresholds).index(0.6)
    assert ev.open_set.dir[k] == pytest.approx(np.mean((nearest == y[probes])[known] & (dist[known] <= 0.6)))
    assert ev.open_set.far[k] == pytest.approx(np.mean(dist[~known] <= 0.6))
    # one nearest-neighbour search serves both: 1-NN of the known probes is the same nearest image
    assert ev.nn1_pred.tolist() == nearest[known].tolist()
    np.testing.assert_allclose(ev.nn1_distance, dist[known], atol=1e-9)
    # DIR at each false-alarm rate: the largest threshold whose false alarms stay within the rate
    hit = known & (nearest == y[probes])
    for row in ev.dir_at_far:
        if (~known).sum() * row.far < 1:
            assert row.dir is None and row.reason
            continue
        t = max(t for t in np.r_[-1.0, np.unique(dist)] if np.mean(dist[~known] <= t) <= row.far)
        assert row.dir == pytest.approx(np.sum(hit & (dist <= t)) / known.sum())
    assert ev.identification.n_probes == known.sum() and ev.identification.n_people == N_PEOPLE - 2
    assert not result.comparisons  # one encoder: nothing to compare
    chart = write_report(result, tmp_path / "report")["open_set"]
    with Image.open(chart) as im:
        im.verify()

    with pytest.raises(DataFolderError, match="cannot hold out"):
        evaluate_folder(kpop8, ["dlib"], settings=WHOLE, holdout_people=N_PEOPLE - 1, jobs=2, progress=False)


def test_test_folder_gallery_is_the_folder_and_new_people_are_strangers(tmp_path, kpop_pairs, faces_dir):
    by_person: dict[str, list[Path]] = {}
    for person, path in kpop_pairs:
        by_person.setdefault(person, []).append(path)
    gallery = _link_people(tmp_path / "gallery", [(p, f) for p, fs in by_person.items() for f in fs[:6]])
    extra = next(p for p, _ in person_images(faces_dir, "kpop_idols15") if p not in by_person)
    extra_files = [(p, f) for p, f in person_images(faces_dir, "kpop_idols15", 4) if p == extra]
    test = _link_people(tmp_path / "test", [(p, f) for p, fs in by_person.items() for f in fs[6:]] + extra_files)
    result = evaluate_folder(gallery, ["dlib"], settings=WHOLE, test_folder=test, jobs=2, progress=False,
                             n_boot=N_BOOT)
    assert len(result.gallery_labels) == 6 * N_PEOPLE and result.test_fraction is None
    assert set(result.probe_labels[~result.known].tolist()) == {extra}
    assert (~result.known).sum() == 4 and result.baseline.open_set is not None
    assert result.baseline.identification.n_probes == sum(len(fs[6:]) for fs in by_person.values())
    assert any("not in the gallery" in n for n in result.notes)


def test_encoder_display_names(tmp_path):
    (tmp_path / "my_model").mkdir()
    assert encoder_name("dlib") == "dlib" and encoder_name("torch") == "torch"
    assert encoder_name(tmp_path / "my_model") == "my_model"
    assert encoder_name(str(tmp_path / "weights.dat")) == "weights.dat"
    assert encoder_name("dlib+flip") == "dlib+flip"
    assert encoder_name(str(tmp_path / "my_model") + "+flip") == "my_model+flip"


def _finetuned_folder(folder: Path, trained_on: list[Path] | None) -> Path:
    """A `dlibplus finetune` output folder holding dlib's own weights (what ``--keep auto`` hands back when
    nothing beats dlib), whose metadata lists ``trained_on`` as the photos of its run (``None``: a folder made
    before dlibplus recorded them)."""
    from dlibplus import model_folder, models
    from dlibplus.fileio import file_sha256

    folder.mkdir(parents=True)
    (folder / model_folder.MODEL_DAT).symlink_to(models.model_path(models.FACE_RECOGNITION_MODEL))
    data = {} if trained_on is None else {"files_sha256": sorted(file_sha256(p) for p in trained_on)}
    meta = model_folder.FinetunedMetadata(base_model={"file": models.FACE_RECOGNITION_MODEL}, config={},
                                          classes=["Arin"], face_settings={"face_box": "whole"},
                                          calibration={"scale": 1.0}, data=data)
    model_folder.write_metadata(folder, meta)
    return folder


def test_evaluating_on_the_fine_tuning_photos_warns_with_the_share(tmp_path, kpop_pairs):
    from click.testing import CliRunner

    from dlibplus.cli import main
    from dlibplus.evaluate import training_overlaps

    first3 = [(p, f) for p, f in kpop_pairs if p in ("Arin", "Eunha")
              and f.name in {q.name for q in sorted(f.parent.iterdir())[:3]}]
    people = _link_people(tmp_path / "people", first3)
    arin = sorted((people / "Arin").iterdir())
    on_arin = _finetuned_folder(tmp_path / "on_arin", arin)
    report = tmp_path / "report"
    res = CliRunner().invoke(main, ["evaluate", str(people), "--encoder", "dlib", "--encoder", str(on_arin),
                                    "--report", str(report), "--face-box", "whole", "-j", "1", "--n-boot", "20"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    warning = "on_arin was fine-tuned on 3 of the 6 evaluated photos (50%)"
    assert f"warning: {warning}" in res.output
    md = (report / "report.md").read_text()
    assert "## Warning" in md and warning in md
    js = json.loads((report / "metrics.json").read_text())
    assert js["training_overlap"] == [{"encoder": "on_arin", "photos_trained_on": 3, "photos_evaluated": 6,
                                       "share": 0.5}]
    assert js["warnings"] == [warning + ": its numbers overstate how it does on new photos; evaluate on photos "
                                        "it was not trained on"]
    # photos it never saw (by content, wherever they are): no overlap; dlib is never checked
    others = [f for p, f in kpop_pairs if p == "Dahyun"][:4]
    overlaps, notes = training_overlaps(["dlib", f"{on_arin}+flip"], ["dlib", "on_arin+flip"], others + arin[:1])
    assert [(o.encoder, o.n_overlap, o.n_evaluated) for o in overlaps] == [("on_arin+flip", 1, 5)] and not notes
    # a folder made before dlibplus recorded its photos cannot say: a note asks the user to make sure
    old = _finetuned_folder(tmp_path / "old_model", None)
    overlaps, notes = training_overlaps([str(old)], ["old_model"], arin)
    assert overlaps == [] and notes == ["old_model: its metadata does not list the photos it was fine-tuned on; "
                                        "make sure they are not the evaluated ones"]


def test_reusing_a_report_folder_removes_its_stale_charts_and_nothing_else(both, kpop8, tmp_path):
    import shutil

    _, out, _, _ = both
    folder = tmp_path / "report"
    shutil.copytree(out, folder)  # a dlib + torch report
    (folder / "notes.txt").write_text("mine")
    (folder / "my_chart.png").write_bytes(b"mine")
    dlib_only = evaluate_folder(kpop8, ["dlib"], settings=WHOLE, jobs=2, progress=False, n_boot=20)
    write_report(dlib_only, folder)
    assert not (folder / "distances_torch.png").exists() and not (folder / "confusion_torch.png").exists()
    assert (folder / "distances_dlib.png").is_file() and (folder / "roc.png").is_file()
    assert "torch" not in (folder / "report.md").read_text()
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "my_chart.png").read_bytes() == b"mine"
    assert sorted(json.loads((folder / MANIFEST).read_text())) == sorted(
        ["report.md", "metrics.json", "roc.png", "distances_dlib.png", "confusion_dlib.png"])


def test_report_folder_with_files_evaluate_did_not_write_is_refused_before_any_work(tmp_path, kpop8):
    from click.testing import CliRunner

    from dlibplus.cli import main

    mine = tmp_path / "docs"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    (mine / "roc.png").write_bytes(b"my chart")
    for folder, expected in ((mine, "docs/report.md exists and was not written by dlibplus evaluate"),
                             (mine / "report.md", "is a file"), (Path("/sys/dlibplus-report"), "not writable")):
        res = CliRunner().invoke(main, ["evaluate", str(tmp_path / "no_such_folder"), "--report", str(folder)],
                                 catch_exceptions=False)
        assert res.exit_code == 2 and expected in res.output and "Traceback" not in res.output, res.output
    assert (mine / "report.md").read_text() == "my notes" and (mine / "roc.png").read_bytes() == b"my chart"
    assert sorted(p.name for p in mine.iterdir()) == ["report.md", "roc.png"]


def test_bad_pairs_file_fails_before_any_encoding(tmp_path):
    from click.testing import CliRunner

    from dlibplus.cli import main

    bad = tmp_path / "pairs.csv"
    bad.write_text("a,b\n")
    for pairs, expected in ((bad, "bad pairs file"), (tmp_path / "missing.txt", "does not exist")):
        # the people folder does not even exist: the pairs file is read first
        res = CliRunner().invoke(main, ["evaluate", str(tmp_path / "no_such_folder"), "--report",
                                        str(tmp_path / "r"), "--pairs", str(pairs)], catch_exceptions=False)
        assert res.exit_code == 2 and expected in res.output and "Traceback" not in res.output, res.output


def test_jitters_adds_each_encoder_jittered_as_train_knn_would_encode(kpop8, tmp_path):
    """``jitters=3``: every encoder is measured plain and right after it jittered, on the same split, each
    jittered one compared with the baseline; its numbers are train-knn's on ``load_people(num_jitters=3)``."""
    result = evaluate_folder(kpop8, ["torch"], settings=WHOLE, jobs=2, progress=False, n_boot=N_BOOT, jitters=3)
    assert result.names == ["torch", "torch jitter3"]
    assert [e.num_jitters for e in result.encoders] == [1, 3]
    jittered = load_people(kpop8, settings=WHOLE, encoder="torch", num_jitters=3, jobs=2, progress=False)
    X, y = jittered.encodings, jittered.labels
    gallery, probes = split_per_person(y, 0.5, 0)
    assert list(result.probe_paths) == list(jittered.paths[probes])
    _, _, predicted = FaceKNN().fit(X[gallery], y[gallery]).predict_with_distance(X[probes])
    ev = result.encoders[1]
    assert ev.knn_pred.tolist() == predicted.tolist()
    plain = load_people(kpop8, settings=WHOLE, encoder="torch", jobs=2, progress=False).encodings
    assert np.abs(X - plain).max() > 1e-3  # the jitter moved the descriptors
    # scaled as train-knn would scale them with the gallery as its folder; the plain encoder is not scaled
    rows = gallery[sample_rows(y[gallery])]
    assert ev.jitter_scale == pytest.approx(estimate_scale(plain[rows], X[rows], y[rows])) and ev.jitter_scale > 1
    assert result.encoders[0].jitter_scale == 1.0
    known = np.isin(y[probes], y[gallery])
    to_person = [ev.jitter_scale * np.linalg.norm(X[gallery][y[gallery] == p] - x, axis=1).min()
                 for x, p in zip(X[probes][known], predicted[known])]
    assert ev.knn_distance == pytest.approx(to_person, abs=1e-5)  # distances are the scaled ones
    assert {(c.encoder, c.baseline) for c in result.comparisons} == {("torch jitter3", "torch")}
    files = write_report(result, tmp_path / "report")
    js = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert js["results"]["torch jitter3"]["num_jitters"] == 3 and js["results"]["torch"]["num_jitters"] == 1
    assert js["results"]["torch jitter3"]["jitter_scale"] == pytest.approx(ev.jitter_scale)
    assert f"jitter 3 scaled by {ev.jitter_scale:.3f}" in files["report"].read_text()
    with pytest.raises(ValueError, match="jitters"):
        evaluate_folder(kpop8, ["torch"], settings=WHOLE, progress=False, jitters=0)
