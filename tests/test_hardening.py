"""Every command against what users really do: bad options, broken files and folders, wrong models, odd
environments. Each answer is one clear line and the right exit status, before any long work; nothing is lost."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dlibplus.cli import main

KPOP = ("Arin", "Eunha")  # 160x160 tight crops: quick with --face-box whole
WHOLE = ["--face-box", "whole", "-j", "1"]


def run(*args, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


def one_line_error(res, exit_code: int = 2) -> str:
    """The error line of a command that failed as it should: the exit status, no traceback."""
    assert res.exit_code == exit_code, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def link_people(root: Path, faces_dir: Path, people=KPOP, n: int = 3, set_name: str = "kpop_idols15") -> Path:
    """``root/<person>/<image>``: symlinks to the first ``n`` photos of each person."""
    for person in people:
        (root / person).mkdir(parents=True, exist_ok=True)
        for src in sorted((faces_dir / set_name / person).iterdir())[:n]:
            os.symlink(src, root / person / src.name)
    return root


@pytest.fixture(scope="module")
def kpop(tmp_path_factory, faces_dir) -> Path:
    """2 people x 3 tight crops."""
    return link_people(tmp_path_factory.mktemp("kpop") / "people", faces_dir)


@pytest.fixture(scope="module")
def knn_model(kpop, tmp_path_factory) -> Path:
    """A train-knn model of :func:`kpop` (tight crops)."""
    model = tmp_path_factory.mktemp("knn") / "people"
    res = run("train-knn", kpop, "-o", model, *WHOLE)
    assert res.exit_code == 0, res.output
    return model


# --- the environment ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["file", "under_a_file", "unwritable"])
def test_cache_that_cannot_be_used_is_one_line_and_exit_2(where, kpop, tmp_path):
    a_file = tmp_path / "cache.txt"
    a_file.write_text("not a folder")
    cache = {"file": a_file, "under_a_file": a_file / "sub", "unwritable": Path("/sys/dlibplus-cache")}[where]
    if where == "unwritable" and os.access("/sys", os.W_OK) and _can_mkdir(cache):
        pytest.skip("/sys is writable here")
    model = tmp_path / "m.npz"
    line = one_line_error(run("train-knn", kpop, "-o", model, *WHOLE, env={"DLIBPLUS_CACHE": str(cache)}))
    assert str(cache) in line and "DLIBPLUS_CACHE" in line and "writable folder" in line
    assert not model.exists() and a_file.read_text() == "not a folder"
    # --no-cache does not need it
    res = run("train-knn", kpop, "-o", model, *WHOLE, "--no-cache", env={"DLIBPLUS_CACHE": str(cache)})
    assert res.exit_code == 0, res.output


def _can_mkdir(path: Path) -> bool:
    try:
        path.mkdir(parents=True)
    except OSError:
        return False
    path.rmdir()
    return True


# --- people folders ----------------------------------------------------------------------------------------

def test_empty_person_folder_is_named_and_one_person_is_singular(kpop, tmp_path):
    root = tmp_path / "people"
    shutil.copytree(kpop, root, symlinks=True)
    (root / "Nobody").mkdir()
    (root / "Nobody" / "notes.txt").write_text("no photo here")
    report = tmp_path / "report.json"
    res = run("train-knn", root, "-o", tmp_path / "m.npz", "--report", report, *WHOLE)
    assert res.exit_code == 0, res.output
    assert f"warning: Nobody has no image file in {root / 'Nobody'} and is left out" in res.output
    rep = json.loads(report.read_text())
    assert rep["people"]["Nobody"] == {"images": 0, "used": 0, "skipped": []}
    assert rep["people_without_usable_images"] == ["Nobody"] and rep["empty_person_folders"] == ["Nobody"]
    shutil.rmtree(root / "Eunha")
    res = run("train-knn", root, "-o", tmp_path / "m.npz", *WHOLE)
    assert res.exit_code == 0, res.output
    assert "3 faces of 1 person from 3 images" in res.output and "of 1 person," in res.output
    assert "1 people" not in res.output


def test_people_folder_that_is_a_file(tmp_path):
    a_file = tmp_path / "people.jpg"
    a_file.write_text("x")
    line = one_line_error(run("train-knn", a_file, "-o", tmp_path / "m.npz"))
    assert "is a file, not a people folder" in line


# --- models of the wrong kind ------------------------------------------------------------------------------

@pytest.fixture()
def interrupted(tmp_path) -> Path:
    """What an interrupted `dlibplus finetune -o DIR` leaves: a checkpoint, no model.dat yet."""
    folder = tmp_path / "unfinished"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"\0" * 64)
    return folder


def test_interrupted_finetune_folder_as_encoder_says_resume(interrupted, kpop, tmp_path):
    model = tmp_path / "m.npz"
    line = one_line_error(run("train-knn", kpop, "-o", model, *WHOLE, "--encoder", interrupted))
    assert str(interrupted) in line and "unfinished" in line and "--resume" in line
    assert not model.exists()
    line = one_line_error(run("evaluate", kpop, "--encoder", "dlib", "--encoder", interrupted, "--report",
                              tmp_path / "rep", *WHOLE))
    assert "unfinished" in line and "--resume" in line


def test_predict_head_on_the_wrong_kind_of_model(interrupted, knn_model, kpop, tmp_path):
    photo = next((kpop / KPOP[0]).iterdir())
    line = one_line_error(run("predict", interrupted, photo, "--classifier", "head", *WHOLE))
    assert str(interrupted) in line and "unfinished" in line and "--resume" in line
    line = one_line_error(run("predict", knn_model, photo, "--classifier", "head", *WHOLE))
    assert str(knn_model) in line and "train-knn model" in line and "without --classifier head" in line
    line = one_line_error(run("predict", tmp_path / "nowhere", photo, "--classifier", "head"))
    assert "not found" in line


# --- outputs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["--output", "--report"])
def test_train_knn_output_that_cannot_be_written_fails_before_encoding(option, kpop, tmp_path, monkeypatch):
    from dlibplus import data

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    calls = []
    monkeypatch.setattr(data, "_process_one", lambda *a: calls.append(a) or pytest.fail("encoded"))
    for bad, expected in ((a_file / "m.npz", f"{a_file} is a file"), (Path("/sys/dlibplus/m.npz"), "not writable")):
        args = ["-o", bad] if option == "--output" else ["-o", tmp_path / "m.npz", "--report", bad]
        line = one_line_error(run("train-knn", kpop, *args, *WHOLE, "--no-cache"))
        assert f"{option} {bad}" in line and expected in line
    assert not calls and a_file.read_text() == "x"


def test_models_folder_from_the_environment_is_named(kpop, tmp_path):
    line = one_line_error(run("train-knn", kpop, "-o", tmp_path / "m.npz", *WHOLE, "--no-cache",
                              env={"DLIBPLUS_MODELS": str(tmp_path)}))
    assert f"DLIBPLUS_MODELS is set to {tmp_path}" in line and "unset it" in line


# --- predict --annotate: nothing lost ------------------------------------------------------------------------

def _photos(root: Path, faces_dir: Path) -> dict[str, Path]:
    """``a/x.jpg`` and ``b/x.jpg``: two different photos of the same name (symlinks), and ``a/y.jpg``."""
    srcs = sorted((faces_dir / "kpop_idols15" / "Arin").iterdir())[:2] + \
        sorted((faces_dir / "kpop_idols15" / "Eunha").iterdir())[:1]
    files = {"a/x.jpg": srcs[0], "b/x.jpg": srcs[2], "a/y.jpg": srcs[1]}
    for rel, src in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, root / rel)
    return {rel: root / rel for rel in files}


def test_annotate_mirrors_sub_folders_and_reruns_over_its_own_copies(knn_model, tmp_path, faces_dir):
    photos = _photos(tmp_path / "photos", faces_dir)
    out = tmp_path / "annotated"
    res = run("predict", knn_model, tmp_path / "photos", "--annotate", out, *WHOLE)
    assert res.exit_code == 0, res.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert written == ["a/x.jpg", "a/y.jpg", "b/x.jpg"]
    for rel, src in photos.items():
        with Image.open(out / rel) as a, Image.open(src) as b:
            assert a.size == b.size
    assert not np.array_equal(np.asarray(Image.open(out / "a/x.jpg")), np.asarray(Image.open(out / "b/x.jpg")))
    # a second run replaces its own copies; the copies inside the photos are not taken for inputs
    inside = tmp_path / "photos" / "annotated"
    for _ in range(2):
        res = run("predict", knn_model, tmp_path / "photos", "--annotate", inside, *WHOLE)
        assert res.exit_code == 0, res.output
        assert sorted(line.split(",")[0] for line in res.stdout.splitlines()[1:]) == sorted(map(str, photos.values()))
    assert sorted(p.relative_to(inside).as_posix() for p in inside.rglob("*.jpg")) == written


def test_annotate_never_writes_among_the_photos_nor_over_foreign_files(knn_model, tmp_path, faces_dir):
    photos = _photos(tmp_path / "photos", faces_dir)
    before = {rel: os.readlink(p) for rel, p in photos.items()}
    for out, inputs in ((tmp_path / "photos", [tmp_path / "photos"]),  # the exact overwrite of the issue
                        (tmp_path / "photos" / "a", [tmp_path / "photos" / "a"]),
                        (tmp_path / "photos", [photos["a/x.jpg"], photos["a/y.jpg"]])):  # would land in photos/
        line = one_line_error(run("predict", knn_model, *inputs, "--annotate", out, *WHOLE))
        assert "holds the input photo" in line and "outside" in line
    assert {rel: os.readlink(p) for rel, p in photos.items()} == before
    assert sorted(p.relative_to(tmp_path / "photos").as_posix() for p in (tmp_path / "photos").rglob("*")) == \
        ["a", "a/x.jpg", "a/y.jpg", "b", "b/x.jpg"]
    # a file the user put in the output folder is never replaced
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "x.jpg").write_bytes(b"the user's own file")
    line = one_line_error(run("predict", knn_model, tmp_path / "photos", "--annotate", out, *WHOLE))
    assert "a/x.jpg exists and was not written by dlibplus" in line
    assert (out / "a" / "x.jpg").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in out.rglob("*")) == ["a", "x.jpg"]
    # an output folder that cannot be created
    line = one_line_error(run("predict", knn_model, photos["a/x.jpg"], "--annotate", photos["a/x.jpg"].parent /
                              "x.jpg" / "sub", *WHOLE))
    assert "is a file" in line


# --- bad options: exit 2 before any work ---------------------------------------------------------------------

@pytest.mark.parametrize("command, args, expected", [
    ("finetune", ["--val-fraction", "1.5"], "--val-fraction"),
    ("finetune", ["--val-fraction", "0"], "--val-fraction"),
    ("finetune", ["--margin", "-3"], "margin"),
    ("finetune", ["--device", "gpu"], "--device"),
    ("finetune", ["--lr", "-1"], "--lr"),
    ("finetune", ["--head-lr", "0"], "--head-lr"),
    ("finetune", ["--head", "sphereface", "--margin", "1.5"], "whole number"),
    ("train-knn", ["--n-neighbors", "0"], "--n-neighbors"),
    ("train-knn", ["--n-neighbors", "three"], "--n-neighbors"),
    ("train-knn", ["--threshold", "-1"], "--threshold"),
    ("predict", ["--threshold", "-1"], "--threshold"),
    ("predict", ["--jobs", "-1"], "--jobs"),
    ("evaluate", ["--test-fraction", "1"], "--test-fraction"),
    ("evaluate", ["--n-boot", "0"], "--n-boot"),
])
def test_bad_options_exit_2_before_any_work(command, args, expected, kpop, knn_model, tmp_path, monkeypatch):
    from dlibplus import data

    monkeypatch.setattr(data, "_process_one", lambda *a: pytest.fail("started working"))
    where = {"finetune": ["-o", tmp_path / "ft"], "train-knn": ["-o", tmp_path / "m.npz"],
             "evaluate": ["--report", tmp_path / "rep"]}
    positional = [knn_model, kpop] if command == "predict" else [kpop]
    no_cache = ["--no-cache"] if command in ("train-knn", "predict") else []
    line = one_line_error(run(command, *positional, *where.get(command, []), *WHOLE, *no_cache, *args))
    assert expected in line
    assert not (tmp_path / "ft").exists() and not (tmp_path / "m.npz").exists() and not (tmp_path / "rep").exists()


# --- predict: no silent wrong answer ---------------------------------------------------------------------------

LFW_PHOTO = "lfw_dev/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"  # an ordinary 250x250 photo


def test_tight_crop_model_on_ordinary_photos_says_so_and_face_settings_can_be_overridden(knn_model, faces_dir):
    photo = faces_dir / LFW_PHOTO
    res = run("predict", knn_model, photo, "--json", "-j", "1")
    assert res.exit_code == 0, res.output
    assert "trained on tight face crops" in res.stderr and "--face-box detect" in res.stderr
    whole = json.loads(res.stdout)[0]
    assert (whole["top"], whole["right"], whole["bottom"], whole["left"]) == (0, 250, 250, 0)
    res = run("predict", knn_model, photo, "--json", "-j", "1", "--face-box", "detect", "--upsample", "0",
              "--max-side", "200")
    assert res.exit_code == 0, res.output
    assert "tight face crops" not in res.stderr
    detected = json.loads(res.stdout)[0]
    assert 0 < detected["left"] < detected["right"] < 250 and 0 < detected["top"] < detected["bottom"] < 250


def test_predict_with_another_encoder_than_the_models_is_refused(knn_model, faces_dir):
    line = one_line_error(run("predict", knn_model, faces_dir / LFW_PHOTO, "--encoder", "dlib+flip", *WHOLE))
    assert "trained with encoder dlib" in line and "retrain" in line


def test_unreadable_inputs_show_in_every_output_and_the_exit_status(knn_model, kpop, tmp_path):
    good = next((kpop / KPOP[0]).iterdir())
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")
    missing = tmp_path / "missing.jpg"
    res = run("predict", knn_model, good, broken, missing, *WHOLE)
    assert res.exit_code == 1 and "2 of 3 inputs could not be read" in res.stderr
    rows = list(csv_rows(res.stdout))
    assert [(r["path"], r["name"]) for r in rows] == [(str(good), KPOP[0]), (str(broken), "error"),
                                                      (str(missing), "error")]
    assert rows[0]["error"] == "" and rows[1]["error"] and "No such file" in rows[2]["error"]
    res = run("predict", knn_model, good, broken, missing, "--json", *WHOLE)
    assert res.exit_code == 1
    assert [r["name"] for r in json.loads(res.stdout)] == [KPOP[0], "error", "error"]


def csv_rows(text: str):
    import csv
    import io

    return csv.DictReader(io.StringIO(text))


def test_knn_model_travels_with_its_encoder_and_notices_a_replaced_one(kpop, tmp_path, faces_dir):
    from dlibplus import models

    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(models.model_path(models.FACE_RECOGNITION_MODEL), folder / "net.dat")
    res = run("train-knn", kpop, "-o", folder / "people.npz", "--encoder", folder / "net.dat", *WHOLE)
    assert res.exit_code == 0, res.output
    moved = tmp_path / "moved"
    folder.rename(moved)
    photo = next((kpop / KPOP[1]).iterdir())
    res = run("predict", moved / "people.npz", photo, "--json", *WHOLE)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["name"] == KPOP[1]
    data = (moved / "net.dat").read_bytes()
    (moved / "net.dat").write_bytes(data[:-8] + bytes(8))  # another network in its place
    line = one_line_error(run("predict", moved / "people.npz", photo, *WHOLE))
    assert "net.dat is not the model it was trained with" in line
    (moved / "net.dat").unlink()
    line = one_line_error(run("predict", moved / "people.npz", photo, *WHOLE))
    assert "net.dat is missing" in line


# --- help ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train-knn", "predict", "encode", "finetune", "evaluate"])
def test_help_reads_well(command):
    import click

    res = run(command, "--help")
    assert res.exit_code == 0 and "Traceback" not in res.output
    cmd = main.commands[command]
    options = [p for p in cmd.params if isinstance(p, click.Option)]
    assert [p.name for p in options if not (p.help or "").strip()] == []  # every option says what it does
    jobs = next(p for p in options if p.name == "jobs")
    assert "0: all cores" in jobs.help and jobs.default == 0
    assert cmd.help and cmd.help.strip().splitlines()[0].endswith(".")


# --- the fresh pass: what else broken input did --------------------------------------------------------------

def test_broken_link_to_a_photo_is_reported_not_silently_left_out(kpop, knn_model, tmp_path):
    root = tmp_path / "people"
    shutil.copytree(kpop, root, symlinks=True)
    os.symlink(tmp_path / "moved_away.jpg", root / KPOP[0] / "gone.jpg")
    report = tmp_path / "report.json"
    res = run("train-knn", root, "-o", tmp_path / "m.npz", "--report", report, *WHOLE)
    assert res.exit_code == 0, res.output
    skipped = json.loads(report.read_text())["people"][KPOP[0]]["skipped"]
    assert [(Path(s["path"]).name, "No such file" in s["reason"]) for s in skipped] == [("gone.jpg", True)]
    res = run("predict", knn_model, root / KPOP[0], *WHOLE)
    assert res.exit_code == 1 and [r["name"] for r in csv_rows(res.stdout)].count("error") == 1


def test_predict_points_out_a_folder_without_images(knn_model, kpop, tmp_path):
    empty = tmp_path / "holiday"
    empty.mkdir()
    res = run("predict", knn_model, kpop / KPOP[0], empty, *WHOLE)
    assert res.exit_code == 0 and f"warning: no image file in {empty}" in res.stderr


def test_train_knn_never_replaces_a_file_it_did_not_write(kpop, knn_model, tmp_path):
    photo = tmp_path / "photo.jpg"
    shutil.copy(next((kpop / KPOP[0]).iterdir()), photo)
    before = photo.read_bytes()
    line = one_line_error(run("train-knn", kpop, "-o", photo, *WHOLE))
    assert "exists and is not a train-knn model" in line and photo.read_bytes() == before
    line = one_line_error(run("train-knn", kpop, "-o", tmp_path / "m.npz", "--report", photo, *WHOLE))
    assert "exists and is not a train-knn report" in line and photo.read_bytes() == before
    # its own model and report are replaced as before
    model, report = tmp_path / "m", tmp_path / "r.json"
    shutil.copytree(knn_model, model)
    for _ in range(2):
        assert run("train-knn", kpop, "-o", model, "--report", report, *WHOLE).exit_code == 0
    # a folder that is not a model is left alone, and so is a single-file model of an older dlibplus
    (tmp_path / "album").mkdir()
    shutil.copy(photo, tmp_path / "album" / "photo.jpg")
    line = one_line_error(run("train-knn", kpop, "-o", tmp_path / "album", *WHOLE))
    assert "exists and is not a train-knn model" in line
    old = tmp_path / "old.npz"
    np.savez(old, encodings=np.zeros((1, 128)), labels=np.zeros(1, np.int32), classes=np.array(["a"]),
             metadata=np.array('{"format": "dlibplus-knn", "format_version": 2}'))
    line = one_line_error(run("train-knn", kpop, "-o", old, *WHOLE))
    assert "single-file model of an older dlibplus" in line and "new name" in line and old.is_file()


def test_knn_model_with_encodings_of_the_wrong_size_is_refused(knn_model, tmp_path):
    from dlibplus.gallery import GalleryIndex

    bad = tmp_path / "half"
    shutil.copytree(knn_model, bad)
    meta = json.loads((bad / "knn.json").read_text())
    gallery = GalleryIndex.load(bad / meta["files"]["gallery"])
    GalleryIndex.build(np.asarray(gallery.encodings)[:, :64]).save(bad / meta["files"]["gallery"])
    line = one_line_error(run("predict", bad, tmp_path, *WHOLE))
    assert "half" in line and "not 128-d face encodings" in line


def test_knn_model_whose_encoder_folder_lost_its_network(tmp_path):
    from dlibplus import models
    from dlibplus.errors import ModelFileError
    from dlibplus.knn import FaceKNN
    from dlibplus.recipe import Recipe

    encoder = tmp_path / "mymodel"
    encoder.mkdir()
    shutil.copy(models.model_path(models.FACE_RECOGNITION_MODEL), encoder / "model.dat")
    X = np.random.default_rng(0).normal(size=(4, 128)) * 0.1
    FaceKNN(recipe=Recipe(str(encoder))).fit(X, ["a", "a", "b", "b"]).save(tmp_path / "m.npz")
    assert FaceKNN.load(tmp_path / "m.npz").recipe.encoder == str(encoder.resolve())
    (encoder / "model.dat").unlink()  # `finetune -o mymodel --overwrite`, interrupted
    (encoder / "checkpoint.pt").write_bytes(b"\0")
    with pytest.raises(ModelFileError, match="unfinished `dlibplus finetune` run .* --resume"):
        FaceKNN.load(tmp_path / "m.npz")
    (encoder / "checkpoint.pt").unlink()
    with pytest.raises(ModelFileError, match="holds no model.dat any more"):
        FaceKNN.load(tmp_path / "m.npz")


def test_evaluate_refuses_its_folder_as_test_folder_and_notes_identical_probes(kpop, tmp_path):
    line = one_line_error(run("evaluate", kpop, "--test-folder", kpop, "--report", tmp_path / "r", *WHOLE))
    assert "is the people folder itself" in line
    copy = tmp_path / "same_photos"
    shutil.copytree(kpop, copy, symlinks=True)  # other paths, the very same photos
    res = run("evaluate", kpop, "--test-folder", copy, "--report", tmp_path / "r", "--n-boot", "10", *WHOLE)
    assert res.exit_code == 0, res.output
    assert "6 of 6 known probes have an identical photo in the gallery" in res.stderr


def test_evaluate_report_inside_the_people_folder_is_refused(kpop, tmp_path):
    for report in (kpop, kpop / "report", kpop / KPOP[0]):
        line = one_line_error(run("evaluate", kpop, "--report", report, *WHOLE))
        assert "inside the people folder" in line
    assert not (kpop / "report").exists() and not list(kpop.glob("*.png"))


def test_damaged_fine_tuned_folder_for_head_never_suggests_unsafe_loading(tmp_path, kpop):
    import torch

    from dlibplus import model_folder, models

    folder = tmp_path / "mymodel"
    folder.mkdir()
    os.symlink(models.model_path(models.FACE_RECOGNITION_MODEL), folder / "model.dat")
    meta = model_folder.FinetunedMetadata(base_model={}, config={}, classes=list(KPOP),
                                          face_settings={"face_box": "whole"}, calibration={"scale": 1.0},
                                          head_open_set={"cosine_threshold": 0.3})
    model_folder.write_metadata(folder, meta)
    (folder / "classes.json").write_text(json.dumps(list(KPOP)))
    photo = next((kpop / KPOP[0]).iterdir())
    for content, expected in ((b"garbage", "not a head saved by `dlibplus finetune`, or damaged"),
                              (None, "missing its name, options or weights")):
        if content is None:
            torch.save(torch.zeros(3), folder / "head.pt")
        else:
            (folder / "head.pt").write_bytes(content)
        line = one_line_error(run("predict", folder, photo, "--classifier", "head", *WHOLE))
        assert "head.pt" in line and expected in line and "weights_only" not in line
    meta.face_settings = {"detector": "xyz"}
    model_folder.write_metadata(folder, meta)
    torch.save({"name": "arcface", "options": {}, "state": {}, "embedding_mean": torch.zeros(128)},
               folder / "head.pt")
    line = one_line_error(run("predict", folder, photo, "--classifier", "head", *WHOLE))
    assert "head.pt" in line and "does not match classes.json or is damaged" in line
    from dlibplus.heads import create_head

    head = create_head("arcface", len(KPOP))
    torch.save({"name": "arcface", "options": {}, "state": head.state_dict(), "embedding_mean": torch.zeros(128)},
               folder / "head.pt")
    line = one_line_error(run("predict", folder, photo, "--classifier", "head", *WHOLE))
    assert f"{folder / 'metadata.json'}:" in line and "xyz" in line


def test_evaluate_of_one_person_says_person(kpop, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(kpop / KPOP[0], one / KPOP[0], symlinks=True)
    res = run("evaluate", one, "--report", tmp_path / "r", "--n-boot", "10", *WHOLE)
    assert res.exit_code == 0, res.output
    assert "gallery 1 image of 1 person;" in res.stdout and "1 people" not in res.output
    assert "gallery 1 image of 1 person;" in (tmp_path / "r" / "report.md").read_text()


def test_finetune_output_that_cannot_be_written_and_val_folder_equal_to_folder_fail_first(kpop, tmp_path,
                                                                                         monkeypatch):
    """Both used to be found only after the photos were aligned (the first after the whole training)."""
    from dlibplus import data

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    monkeypatch.setattr(data, "_process_one", lambda *a: pytest.fail("aligned photos before failing"))
    line = one_line_error(run("finetune", kpop, "-o", a_file / "model", *WHOLE))
    assert "--output" in line and "is a file" in line
    monkeypatch.undo()
    line = one_line_error(run("finetune", kpop, "-o", tmp_path / "model", "--val-folder", kpop, *WHOLE))
    assert "--val-folder" in line and "training folder" in line and not (tmp_path / "model").exists()
