"""The dlibplus command line on real photos and on bad input: exit codes, output formats, the cache."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dlibplus import data
from dlibplus.cli import main

PEOPLE = {  # lfw photos are small (250 px), so HOG detection is quick
    "Aaron_Peirsol": 3,
    "Abdullah_Gul": 3,
    "Adrien_Brody": 3,
}


@pytest.fixture()
def people_dir(tmp_path, faces_dir):
    """A people folder of symlinks to real photos, plus every kind of bad input beside them."""
    root = tmp_path / "people"
    for person, n in PEOPLE.items():
        (root / person).mkdir(parents=True)
        for src in sorted((faces_dir / "lfw_dev" / person).iterdir())[:n]:
            os.symlink(src, root / person / src.name.upper() if src.name.endswith("1.jpg") else root / person / src.name)
    bad = root / "Aaron_Peirsol"
    (bad / "notes.jpg").write_text("not a photo")
    data_bytes = (faces_dir / "lfw_dev/Aaron_Peirsol/Aaron_Peirsol_0004.jpg").read_bytes()
    (bad / "cut.jpg").write_bytes(data_bytes[: len(data_bytes) // 4])
    (bad / "readme.txt").write_text("ignored: not an image extension")
    # an RGBA png of a real face is used like any photo
    Image.open(faces_dir / "lfw_dev/Abdullah_Gul/Abdullah_Gul_0004.jpg").convert("RGBA").save(
        root / "Abdullah_Gul" / "rgba.png")
    # a person whose only photo has no face
    (root / "Nobody").mkdir()
    Image.new("RGB", (200, 200), (120, 130, 140)).save(root / "Nobody" / "wall.jpg")
    # a photo with two faces
    two = faces_dir / "face_recognition/_multi_or_unlabelled/examples__two_people.jpg"
    os.symlink(two, root / "Adrien_Brody" / "two.jpg")
    return root


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_train_knn_skips_and_reports_bad_input(people_dir, tmp_path):
    model, report = tmp_path / "m.npz", tmp_path / "report.json"
    res = run("train-knn", people_dir, "-o", model, "--report", report, "--jobs", 2)
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    skipped = {s["path"].split("/")[-1]: s["reason"] for p in rep["people"].values() for s in p["skipped"]}
    assert "not an image" in skipped["notes.jpg"]
    assert "truncated" in skipped["cut.jpg"]
    assert skipped["wall.jpg"] == "no face found"
    assert skipped["two.jpg"].startswith("2 faces")
    assert "readme.txt" not in skipped
    assert rep["people_without_usable_images"] == ["Nobody"]
    assert rep["people"]["Abdullah_Gul"]["used"] == 4  # the RGBA png counts
    assert "Nobody has no usable image" in res.output
    assert (model / "knn.json").is_file()
    assert "tip: your median person has 3 photos" in res.output and "--jitters 10" in res.output  # 3, 2 and 4


def test_train_knn_with_jitters_records_them_and_gives_no_tip(people_dir, tmp_path, faces_dir):
    """--jitters N is stored with the model with its scale and silences the jitter tip; the model's faces are the
    mean of N jittered copies (dlib's own jitter) times the scale, and predict (and --add) encode the same way: a
    training photo is at distance 0 from itself."""
    from dlibplus.encoders import DlibEncoder, with_jitter
    from dlibplus.faces import FaceSettings
    from dlibplus.knn import FaceKNN

    res = run("train-knn", people_dir, "-o", tmp_path / "j", "--jitters", 2, "-j", 1)
    assert res.exit_code == 0, res.output
    assert "tip:" not in res.output and "jitter 2: encodings scaled by" in res.output
    assert run("train-knn", people_dir, "-o", tmp_path / "p", "-j", 1).exit_code == 0
    jittered, plain = FaceKNN.load(tmp_path / "j"), FaceKNN.load(tmp_path / "p")
    assert jittered.recipe.num_jitters == 2 and plain.recipe.num_jitters == 1
    scale = jittered.recipe.jitter_scale
    assert 1.0 < scale < 1.2 and plain.recipe.jitter_scale == 1.0  # averaging pulls faces together
    assert jittered.encodings_.shape == plain.encodings_.shape
    assert 0 < np.abs(jittered.encodings_ - plain.encodings_).max() < 0.2
    photos = sorted((people_dir / "Adrien_Brody").glob("*_000*.jpg"))
    found = data.process_images(photos, FaceSettings(), want="chips", jobs=1, progress=False)
    photo, chip = next((p, r.chips) for p, r in zip(photos, found) if r.n_faces == 1)  # one is skipped: 2 faces
    expected = with_jitter(DlibEncoder(), 2).encode(chip)[0] * scale
    row = np.flatnonzero(jittered.classes_[jittered.labels_] == "Adrien_Brody")
    assert np.abs(jittered.encodings_[row] - expected).sum(axis=1).min() < 1e-4
    out = run("predict", tmp_path / "j", photo, "-j", 1, "--json")
    assert json.loads(out.stdout)[0]["distance"] < 1e-4, out.stdout  # unscaled it would be ~0.01 away
    newcomer = tmp_path / "more" / "Abel_Pacheco"
    newcomer.mkdir(parents=True)
    extra = sorted((faces_dir / "lfw_dev" / "Abel_Pacheco").iterdir())[0]
    os.symlink(extra, newcomer / extra.name)
    assert run("train-knn", tmp_path / "more", "-o", tmp_path / "j", "--add", "-j", 1).exit_code == 0
    out = run("predict", tmp_path / "j", newcomer / extra.name, "-j", 1, "--json")
    assert json.loads(out.stdout)[0]["name"] == "Abel_Pacheco" and json.loads(out.stdout)[0]["distance"] < 1e-4


def test_predict_csv_json_unknown_and_annotate(people_dir, tmp_path, faces_dir):
    model = tmp_path / "m.npz"
    assert run("train-knn", people_dir, "-o", model, "-j", 1).exit_code == 0
    probe = faces_dir / "lfw_dev/Adrien_Brody"
    probe_files = sorted(probe.iterdir())[3:5]
    wall = people_dir / "Nobody" / "wall.jpg"
    res = run("predict", model, *probe_files, wall, "-j", 1)
    assert res.exit_code == 0
    header, *lines = [line.split(",") for line in res.stdout.strip().splitlines()]
    assert header == ["path", "name", "top", "right", "bottom", "left", "distance", "error"]
    assert [line[1] for line in lines] == ["Adrien_Brody", "Adrien_Brody", "no_persons_found"]
    for line in lines[:2]:
        assert len(line) == 8 and all(v.lstrip("-").isdigit() for v in line[2:6]) and 0 <= float(line[6]) <= 0.6
    assert lines[2][2:] == [""] * 6
    strict = run("predict", model, probe_files[0], "--threshold", "0.01", "--json", "-j", 1)
    rows = json.loads(strict.stdout)
    assert rows[0]["name"] == "unknown" and rows[0]["distance"] > 0.01
    out = tmp_path / "annotated"
    res = run("predict", model, probe_files[0], "--annotate", out, "-j", 1)
    assert res.exit_code == 0
    assert Image.open(out / probe_files[0].name).size == Image.open(probe_files[0]).size


def test_second_run_only_encodes_new_photos(people_dir, tmp_path, faces_dir, monkeypatch):
    monkeypatch.setenv("DLIBPLUS_CACHE", str(tmp_path / "cache"))
    calls = []
    real = data._process_one
    monkeypatch.setattr(data, "_process_one", lambda *a: calls.append(a[0]) or real(*a))
    assert run("train-knn", people_dir, "-o", tmp_path / "a.npz", "-j", 1).exit_code == 0
    first = len(calls)
    assert first >= 12
    calls.clear()
    os.symlink(faces_dir / "lfw_dev/Aaron_Peirsol/Aaron_Peirsol_0004.jpg", people_dir / "Aaron_Peirsol" / "new.jpg")
    assert run("train-knn", people_dir, "-o", tmp_path / "b.npz", "-j", 1).exit_code == 0
    # the new photo plus the two unreadable files (errors are not cached, they are re-tried)
    assert sorted(p.name for p in calls) == ["cut.jpg", "new.jpg", "notes.jpg"]
    calls.clear()
    assert run("train-knn", people_dir, "-o", tmp_path / "c.npz", "-j", 1, "--upsample", 0).exit_code == 0
    assert len(calls) == first + 1  # new settings, new cache key


def test_train_knn_add_extends_the_model_without_encoding_it_again(people_dir, tmp_path, faces_dir, monkeypatch):
    from dlibplus.knn import FaceKNN

    monkeypatch.setenv("DLIBPLUS_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m"
    assert run("train-knn", people_dir, "-o", model, "-j", 1).exit_code == 0
    before = FaceKNN.load(model)
    more = tmp_path / "more"
    lfw = faces_dir / "lfw_dev"
    (more / "Al_Gore").mkdir(parents=True)
    for src in sorted((lfw / "Al_Gore").iterdir())[:3]:
        os.symlink(src, more / "Al_Gore" / src.name)
    (more / "Aaron_Peirsol").mkdir()
    os.symlink(lfw / "Aaron_Peirsol/Aaron_Peirsol_0004.jpg", more / "Aaron_Peirsol" / "new.jpg")
    # a photo the model holds already, under another name: skipped by its content
    os.symlink(sorted((lfw / "Abdullah_Gul").iterdir())[0], more / "Aaron_Peirsol" / "renamed.jpg")
    calls = []
    real = data._process_one
    monkeypatch.setattr(data, "_process_one", lambda *a: calls.append(a[0]) or real(*a))
    res = run("train-knn", more, "-o", model, "--add", "-j", 1)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in calls) == ["Al_Gore_0001.jpg", "Al_Gore_0002.jpg", "Al_Gore_0003.jpg", "new.jpg"]
    assert "1 photo already in the model" in res.output and "1 new person" in res.output
    after = FaceKNN.load(model)
    n = len(before.labels_)
    assert len(after.labels_) == n + 4 and set(after.classes_) == set(before.classes_) | {"Al_Gore"}
    assert np.array_equal(after.encodings_[:n], before.encodings_)
    assert np.array_equal(after.classes_[after.labels_[:n]], before.classes_[before.labels_])
    res = run("predict", model, lfw / "Al_Gore/Al_Gore_0004.jpg", "-j", 1)
    assert res.exit_code == 0 and res.stdout.splitlines()[1].split(",")[1] == "Al_Gore"
    # the same folder again: nothing to add, nothing encoded, the model untouched
    calls.clear()
    stamp = (model / "knn.json").read_bytes()
    res = run("train-knn", more, "-o", model, "--add", "-j", 1)
    assert res.exit_code == 0 and "nothing new to add" in res.output and not calls
    assert (model / "knn.json").read_bytes() == stamp
    # options that disagree with the model, or nothing to add to: one line, exit 2, before any work
    for args, expected in ((["--encoder", "torch"], "keeps the model's encoder"),
                           (["--upsample", "0"], "--upsample 0 differs"),
                           (["--method", "svm"], "--method svm differs")):
        res = run("train-knn", more, "-o", model, "--add", *args)
        assert res.exit_code == 2 and expected in res.output and not calls
    res = run("train-knn", more, "-o", tmp_path / "none", "--add")
    assert res.exit_code == 2 and "not a train-knn model folder" in res.output and "does not exist" in res.output


def test_a_people_folder_is_hashed_once(people_dir, tmp_path, monkeypatch):
    """load_people hashes each photo (for --add) and hands the hashes to the cache: no second read."""
    from dlibplus.people import load_people

    monkeypatch.setattr(data, "file_sha256", lambda p: pytest.fail(f"{p} hashed again"))
    people = load_people(people_dir, jobs=1, cache_dir=tmp_path / "cache", progress=False)
    assert len(people.labels) == len(people.sources) and all(len(s) == 32 for s in people.sources)


def test_train_knn_svm_with_one_person_is_one_clear_line(tmp_path, faces_dir):
    (tmp_path / "people" / "Al_Gore").mkdir(parents=True)
    os.symlink(faces_dir / "lfw_dev/Al_Gore/Al_Gore_0001.jpg", tmp_path / "people" / "Al_Gore" / "a.jpg")
    res = run("train-knn", tmp_path / "people", "-o", tmp_path / "m", "--method", "svm", "-j", 1)
    assert res.exit_code == 2 and "at least 2 people" in res.output and not (tmp_path / "m").exists()
    assert run("train-knn", tmp_path / "people", "-o", tmp_path / "m", "--method", "prototype", "-j", 1).exit_code == 0


def test_empty_missing_and_faceless_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run("train-knn", empty, "-o", tmp_path / "m.npz")
    assert res.exit_code == 2 and "no images found" in res.output
    res = run("train-knn", tmp_path / "nope", "-o", tmp_path / "m.npz")
    assert res.exit_code == 2 and "not found" in res.output
    (empty / "someone").mkdir()
    Image.new("RGB", (120, 120), (90, 90, 90)).save(empty / "someone" / "blank.png")
    res = run("train-knn", empty, "-o", tmp_path / "m.npz", "-j", 1)
    assert res.exit_code == 2 and "no usable face" in res.output
    assert not (tmp_path / "m.npz").exists()


def test_predict_rejects_foreign_model_files(tmp_path, faces_dir):
    photo = faces_dir / "lfw_dev/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
    bogus = tmp_path / "model.npz"
    bogus.write_text("hello")
    res = run("predict", bogus, photo)
    assert res.exit_code == 2 and "model.npz" in res.output and "Traceback" not in res.output
    res = run("predict", tmp_path / "absent.npz", photo)
    assert res.exit_code == 2 and "absent.npz" in res.output


def test_encode_writes_npz(tmp_path, faces_dir):
    out = tmp_path / "enc.npz"
    folder = faces_dir / "face_recognition/_multi_or_unlabelled"
    res = run("encode", folder / "examples__two_people.jpg", faces_dir / "lfw_dev/Aaron_Peirsol", "-o", out, "-j", 2)
    assert res.exit_code == 0, res.output
    with np.load(out, allow_pickle=False) as z:
        assert z["encodings"].shape == (6, 128) and z["encodings"].dtype == np.float32
        assert z["boxes"].shape == (6, 4) and len(z["paths"]) == 6
        assert z["paths"][0].endswith("two_people.jpg") and z["paths"][1].endswith("two_people.jpg")
    import face_recognition as fr

    img = fr.load_image_file(str(folder / "examples__two_people.jpg"))
    ref = np.array(fr.face_encodings(img))
    assert np.abs(np.sort(ref, axis=0) - np.sort(np.load(out)["encodings"][:2], axis=0)).max() < 1e-6


def test_huge_image_is_shrunk_and_bomb_skipped(tmp_path, faces_dir):
    root = tmp_path / "people"
    (root / "Aaron").mkdir(parents=True)
    src = Image.open(faces_dir / "lfw_dev/Aaron_Peirsol/Aaron_Peirsol_0001.jpg")
    src.resize((3000, 3000)).save(root / "Aaron" / "huge.jpg")  # 9 Mpx of one face
    Image.new("1", (20000, 20000)).save(root / "Aaron" / "bomb.png")
    report = tmp_path / "r.json"
    res = run("train-knn", root, "-o", tmp_path / "m.npz", "--max-side", "800", "--report", report, "-j", 1)
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())["people"]["Aaron"]
    assert rep["used"] == 1
    assert [s["path"].endswith("bomb.png") and "too large" in s["reason"] for s in rep["skipped"]] == [True]
    # boxes are reported in the original image's pixels, not the shrunk copy's
    res = run("predict", tmp_path / "m.npz", root / "Aaron" / "huge.jpg", "--json", "-j", 1)
    row = json.loads(res.stdout)[0]
    assert row["name"] == "Aaron" and row["right"] - row["left"] > 800


def test_train_knn_with_flip_records_it_and_predict_uses_it(people_dir, tmp_path, faces_dir):
    from dlibplus import api
    from dlibplus.encoders import load_encoder
    from dlibplus.knn import FaceKNN

    model = tmp_path / "flip.npz"
    res = run("train-knn", people_dir, "-o", model, "--encoder", "dlib+flip", "-j", 1)
    assert res.exit_code == 0 and "tip:" not in res.output  # jitter is not suggested on top of a flip
    knn = FaceKNN.load(model)
    assert knn.recipe.encoder == "dlib+flip"
    probe = sorted((faces_dir / "lfw_dev/Adrien_Brody").iterdir())[3]
    res = run("predict", model, probe, "--json", "-j", 1)
    row = json.loads(res.stdout)[0]
    assert row["name"] == "Adrien_Brody"
    image = api.load_image_file(probe)
    expected = api.face_encodings(image, encoder=load_encoder("dlib+flip"))[0]
    dist = np.linalg.norm(knn.encodings_ - expected, axis=1).min()
    # predict encoded the probe with the flip encoder the model records (distance rounded to 6 places)
    assert row["distance"] == pytest.approx(dist, abs=1e-6)
    plain = api.face_encodings(image)[0]
    assert abs(np.linalg.norm(knn.encodings_ - plain, axis=1).min() - dist) > 1e-4


def test_jittered_encoding_with_a_corrupt_face_model_names_the_file(tmp_path, faces_dir):
    """--jitters N loads a fresh network per image; a corrupt one must be reported as such, not turn
    into "every image was skipped"."""
    import subprocess
    import sys

    from dlibplus import models

    for name in (models.POSE_5, models.FACE_RECOGNITION_MODEL):
        src = models.model_path(name)
        content = src.read_bytes()
        (tmp_path / name).write_bytes(content if name == models.POSE_5 else content[:5000])
    people = tmp_path / "people" / "biden"
    people.mkdir(parents=True)
    os.symlink(faces_dir / "face_recognition/biden/examples__biden.jpg", people / "biden.jpg")
    env = dict(os.environ, DLIBPLUS_MODELS=str(tmp_path), DLIBPLUS_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "dlibplus.cli", "train-knn", str(tmp_path / "people"), "-o",
                           str(tmp_path / "m.npz"), "--jitters", "2", "-j", "1"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2 and "bad model file" in proc.stderr  # bad input: exit 2
    assert models.FACE_RECOGNITION_MODEL in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.npz").exists()


def test_encode_failures_show_in_exit_status_and_file(tmp_path, faces_dir):
    """`encode nonexist.jpg` wrote an empty .npz and exited 0; a corrupt photo among good ones vanished."""
    out = tmp_path / "enc.npz"
    res = run("encode", tmp_path / "nonexist.jpg", "-o", out, "-j", 1)
    assert res.exit_code == 1 and "none of the 1 inputs" in res.output and not out.exists()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    good = faces_dir / "lfw_dev/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
    res = run("encode", good, bad, "-o", out, "-j", 1)
    assert res.exit_code == 1 and "1 of 2 inputs could not be read" in res.output and "Traceback" not in res.output
    with np.load(out, allow_pickle=False) as z:
        assert z["encodings"].shape == (1, 128) and list(z["failed_paths"]) == [str(bad)]
        assert len(z["failed_reasons"][0]) > 0


def test_encode_fast_precision_is_explicit_and_close(tmp_path, faces_dir):
    """--precision fast (bfloat16 on CPU) is opt-in, refused for dlib's own encoder, and stays close to exact."""
    photo = faces_dir / "lfw_dev/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
    res = run("encode", photo, "-o", tmp_path / "x.npz", "--precision", "fast", "-j", 1)
    assert res.exit_code == 2 and "--precision" in res.output
    exact, fast = tmp_path / "exact.npz", tmp_path / "fast.npz"
    assert run("encode", photo, "-o", exact, "--encoder", "torch", "-j", 1).exit_code == 0
    assert run("encode", photo, "-o", fast, "--encoder", "torch", "--precision", "fast", "-j", 1).exit_code == 0
    a, b = np.load(exact)["encodings"], np.load(fast)["encodings"]
    assert a.shape == b.shape == (1, 128) and 0 < np.abs(a - b).max() < 0.03
