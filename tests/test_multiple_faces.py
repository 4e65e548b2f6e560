"""`--multiple-faces largest`: a training photo with several faces gives its clearly largest face, as
face_recognition finds it, and photos whose faces are of about one size are still skipped."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from dlibplus.cli import main

# lfw_dev photos with 2 faces (HOG, upsample 1): the largest box's area over the next one's
SEVERAL = {"Adrien_Brody/Adrien_Brody_0002.jpg": 2.45, "Costas_Simitis/Costas_Simitis_0001.jpg": 2.0,
           "Costas_Simitis/Costas_Simitis_0004.jpg": 8.92, "Antonio_Banderas/Antonio_Banderas_0005.jpg": 1.01}


@pytest.fixture(scope="module")
def people(tmp_path_factory, faces_dir):
    """3 lfw_dev people, 4–5 photos each, one or two of each person's with two faces, as symlinks."""
    root = tmp_path_factory.mktemp("several")
    for person in ("Adrien_Brody", "Costas_Simitis", "Antonio_Banderas"):
        (root / person).mkdir()
        for src in sorted((faces_dir / "lfw_dev" / person).iterdir())[:5]:
            os.symlink(src, root / person / src.name)
    return root


def test_largest_face_is_the_one_face_recognition_finds_largest(people):
    import face_recognition

    from dlibplus.people import CLEARLY_LARGER, load_people

    skip = load_people(people, jobs=1, progress=False)
    largest = load_people(people, jobs=1, progress=False, multiple_faces="largest")
    skipped = {os.path.relpath(p, people) for person in skip.skipped.values() for p, _ in person}
    assert set(SEVERAL) <= skipped
    used = {os.path.relpath(p, people) for p in largest.largest_of_several}
    clear = {k for k, ratio in SEVERAL.items() if ratio >= CLEARLY_LARGER}
    assert used == clear and len(largest.labels) == len(skip.labels) + len(clear)
    still = dict(largest.skipped["Antonio_Banderas"])
    banderas = str(people / "Antonio_Banderas/Antonio_Banderas_0005.jpg")
    assert still[banderas] == "2 faces found, none clearly the largest"
    for name in clear:  # the oracle: face_recognition's own boxes and encoding of the largest one
        image = face_recognition.load_image_file(people / name)
        boxes = face_recognition.face_locations(image)
        assert len(boxes) == 2
        big = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        theirs = face_recognition.face_encodings(image, [big])[0]
        row = int(np.flatnonzero(largest.paths == str(people / name))[0])
        assert tuple(largest.boxes[row]) == big
        assert np.abs(largest.encodings[row] - theirs).max() < 1e-6


def test_train_knn_says_what_it_did_with_several_faces(people, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train-knn", str(people), "-o", str(tmp_path / "a"), "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert "2 faces found (need exactly one; --multiple-faces largest takes the largest)" in res.output
    report = tmp_path / "r.json"
    res = runner.invoke(main, ["train-knn", str(people), "-o", str(tmp_path / "b"), "--jobs", "1",
                               "--multiple-faces", "largest", "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert "3 images with several faces gave their largest" in res.output
    assert "none clearly the largest" in res.output
    listed = json.loads(report.read_text())["largest_of_several_faces"]
    assert sorted(os.path.relpath(p, people) for p in listed) == sorted(k for k, r in SEVERAL.items() if r >= 1.5)
    res = runner.invoke(main, ["train-knn", str(people), "-o", str(tmp_path / "c"), "--multiple-faces", "all"])
    assert res.exit_code == 2 and "--multiple-faces" in res.output


def test_evaluate_takes_the_largest_face_too(people):
    from dlibplus.evaluate import evaluate_folder

    skip = evaluate_folder(people, ["dlib"], jobs=1, progress=False, n_boot=10)
    largest = evaluate_folder(people, ["dlib"], jobs=1, progress=False, n_boot=10, multiple_faces="largest")
    reports = {name: r.to_dict()["images"]["reports"]["folder"] for name, r in (("skip", skip), ("largest", largest))}
    assert [len(reports[k]["largest_of_several_faces"]) for k in ("skip", "largest")] == [0, 3]
    assert reports["largest"]["used"] == reports["skip"]["used"] + 3


def test_finetune_records_the_photos_that_gave_their_largest_face(people, tmp_path):
    out = tmp_path / "ft"
    res = CliRunner().invoke(main, ["finetune", str(people), "-o", str(out), "--epochs", "1", "--freeze", "5",
                                    "--folds", "1", "--jobs", "1", "--multiple-faces", "largest"])
    assert res.exit_code == 0, res.output
    assert "3 images with several faces gave their largest face" in res.output
    data = json.loads((out / "metadata.json").read_text())["data"]
    assert data["multiple_faces"] == "largest"
    assert sorted(os.path.relpath(p, people) for p in data["largest_of_several_faces"]) == sorted(
        k for k, r in SEVERAL.items() if r >= 1.5)


def test_the_library_train_takes_the_largest_face_too(people):
    from dlibplus.knn import train

    assert len(train(people, multiple_faces="largest").labels_) == len(train(people).labels_) + 3
