"""`dlibplus finetune` end to end on real photos: outputs dlib loads, swap-in, repeatability, resume, DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import link_people
from dlibplus.cli import main
from dlibplus.train_config import REGIMES

PEOPLE = ["Arin", "Chaeyong", "Chorong", "Dahyun", "Eunha"]
# Short runs that still exercise every part: two epochs, only the last stage and fc trainable.
FAST_ANY_FOLDS = ["--face-box", "whole", "--epochs", "2", "--freeze", "5", "--batch-people", "5",
                  "--batch-images", "4", "--jobs", "1"]
FAST = [*FAST_ANY_FOLDS, "--folds", "1"]  # one split: 8 photos per person would cross-fit by default
KEEP = ["--keep", "finetuned"]  # the fine-tuned weights whatever they measure: what these tests look at


@pytest.fixture(scope="module")
def people(tmp_path_factory, faces_dir):
    """5 kpop_idols15 people × 8 crops, as symlinks."""
    return link_people(tmp_path_factory.mktemp("people"), faces_dir, "kpop_idols15", PEOPLE, 8)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(people, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "model"
    res = run("finetune", people, "-o", out, *FAST, *KEEP)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_outputs_and_dlib_loads_the_dat(trained, people):
    import dlib

    from dlibplus.encoders import load_encoder
    from dlibplus.faces import FaceSettings
    from dlibplus.finetune_data import load_chipset

    out, log = trained
    for name in ("model.dat", "model.pt", "head.pt", "classes.json", "metadata.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.pt").exists()  # removed once the folder is complete
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["classes"] == PEOPLE == json.loads((out / "classes.json").read_text())
    assert len(meta["base_model"]["sha256"]) == 64 and len(meta["data"]["train_fingerprint"]) == 64
    assert meta["config"]["head"] == "arcface"
    assert meta["frozen_stages"] == ["stem"] + [f"layer{i}" for i in range(1, 5)]
    assert set(meta["validation"]) == {"dlib", "finetuned", "finetuned_flip", "better_than_dlib"}
    assert "kept: fine-tuned" in log and "with +flip" in log and "named right" in log
    assert "chose this network" not in log  # kept as asked, not chosen by the validation photos
    assert meta["selection"]["chosen"]["alpha"] == 1.0 and len(meta["selection"]["candidates"]) == 4
    assert meta["format_version"] == 2 and len(meta["data"]["files_sha256"]) == len(PEOPLE) * 8
    # the default regime, as an option: no measurement of dlib, the anchor regime's settings
    assert meta["regime"] == {"regime": "anchor", "chosen_by": "option"} and "dlib puts" not in log
    given = {"freeze": 5}  # FAST's --freeze wins over the regime's
    assert {k: meta["config"][k] for k in REGIMES["anchor"]} == {**REGIMES["anchor"], **given}
    # the fine-tuned weights differ from dlib's, and dlib itself computes what the torch encoder computes
    chips = load_chipset(people, FaceSettings(face_box="whole"), jobs=1, progress=False)[0].chips[:12]
    net = dlib.face_recognition_model_v1(str(out / "model.dat"))
    theirs = np.array([net.compute_face_descriptor(c) for c in chips])
    ours = load_encoder(out).encode(chips)
    original = load_encoder("torch").encode(chips)
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.abs(ours - original).max() > 1e-3
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["fc.weight"].shape == (128, 256)


def _best_balanced_accuracy(dist, same):
    """scikit-learn's ROC: the best (TPR + TNR) / 2 over every threshold."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(same, -dist)
    return float(((tpr + 1 - fpr) / 2).max())


def _validation_pairs(encoder, data, val_idx):
    """Each validation photo against every training photo and every other validation photo."""
    train_idx = np.setdiff1d(np.arange(len(data.labels)), val_idx)
    emb = encoder.encode(data.chips)
    dist, same = [], []
    for i, v in enumerate(val_idx):
        others = np.concatenate([train_idx, val_idx[i + 1:]])
        dist.append(np.linalg.norm(emb[others] - emb[v], axis=1))
        same.append(data.labels[others] == data.labels[v])
    return np.concatenate(dist), np.concatenate(same)


def test_calibration_puts_tolerance_at_best_balanced_accuracy(trained, people):
    """0.6 sits where same/different decisions on the user's photos balance best (as 0.6 does for dlib on
    general faces), checked with scikit-learn's ROC on the written model's own encodings."""
    from dlibplus.data import split_per_person
    from dlibplus.encoders import load_encoder
    from dlibplus.faces import FaceSettings
    from dlibplus.finetune_data import load_chipset

    out, _ = trained
    meta = json.loads((out / "metadata.json").read_text())
    cal = meta["calibration"]
    assert cal["method"] == "balanced" and cal["scale"] == pytest.approx(0.6 / cal["threshold"])
    data = load_chipset(people, FaceSettings(face_box="whole"), jobs=1, progress=False)[0]
    _, val_idx = split_per_person(data.labels, 0.25, 0)  # the CLI's default validation split
    dist, same = _validation_pairs(load_encoder(out, device="cpu"), data, val_idx)
    at_06 = ((dist[same] <= 0.6).mean() + (dist[~same] > 0.6).mean()) / 2
    assert at_06 == pytest.approx(_best_balanced_accuracy(dist, same), abs=1e-9)
    # the cross-validated rates are real rates, and never better than the in-sample best
    assert 0 < cal["same_accepted"] <= 1 and 0 <= cal["different_accepted"] < 1
    assert cal["balanced_accuracy"] <= at_06 + 1e-9


def test_flip_output_is_calibrated_too(trained, people):
    """``DIR+flip`` averages each face with its mirror image; finetune calibrated that output as well, so
    0.6 is again the point of best balanced accuracy for it."""
    from dlibplus import metrics
    from dlibplus.data import split_per_person
    from dlibplus.encoders import FlipEncoder, load_encoder
    from dlibplus.faces import FaceSettings
    from dlibplus.finetune_data import load_chipset

    out, _ = trained
    meta = json.loads((out / "metadata.json").read_text())
    cal = meta["calibration_flip"]
    flip = load_encoder(f"{out}+flip", device="cpu")
    assert isinstance(flip, FlipEncoder) and flip.scale == pytest.approx(cal["scale"]) and flip.scale != 1.0
    data = load_chipset(people, FaceSettings(face_box="whole"), jobs=1, progress=False)[0]
    _, val_idx = split_per_person(data.labels, 0.25, 0)
    chips = data.chips[val_idx]
    plain = load_encoder(out, device="cpu")
    expected = cal["scale"] * (plain.encode(chips) + plain.encode(chips[:, :, ::-1].copy())) / 2
    assert np.abs(flip.encode(chips) - expected).max() < 1e-9
    dist, same = _validation_pairs(flip, data, val_idx)
    at_06 = ((dist[same] <= 0.6).mean() + (dist[~same] > 0.6).mean()) / 2
    assert at_06 == pytest.approx(_best_balanced_accuracy(dist, same), abs=1e-9)
    # the run's "with +flip" validation figure is what this encoder measures on the same split
    train_idx = np.setdiff1d(np.arange(len(data.labels)), val_idx)
    nearest, _ = metrics.nearest_identity(flip.encode(data.chips[train_idx]), data.labels[train_idx],
                                          flip.encode(chips))
    assert meta["validation"]["finetuned_flip"]["identification_1nn"] == pytest.approx(
        np.mean(nearest == data.labels[val_idx]))


def test_swap_in_everywhere(trained, people, tmp_path, faces_dir):
    import dlibplus

    out, _ = trained
    model = tmp_path / "knn.npz"
    res = run("train-knn", people, "-o", model, "--face-box", "whole", "--encoder", out, "-j", 1)
    assert res.exit_code == 0, res.output
    probe = sorted((faces_dir / "kpop_idols15" / "Dahyun").iterdir())[9]
    res = run("predict", model, probe, "-j", 1, "--json")
    row = json.loads(res.stdout)[0]
    assert row["name"] in PEOPLE + ["unknown"] and row["distance"] >= 0
    res = run("predict", out, probe, "--classifier", "head", "--json", "-j", 1)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["name"] in PEOPLE + ["unknown"]
    # the Python API: face_encodings with the fine-tuned encoder equals encoding its chip directly
    img = dlibplus.load_image_file(probe)
    box = [(0, img.shape[1], img.shape[0], 0)]
    enc = dlibplus.load_encoder(out)
    a = dlibplus.face_encodings(img, box, encoder=enc)[0]
    b = dlibplus.face_encodings(img, box, encoder=str(out))[0]
    assert a.shape == (128,) and np.abs(a - b).max() < 1e-9
    assert np.abs(a - np.array(dlibplus.face_encodings(img, box)[0])).max() > 1e-3


def test_seeded_cpu_run_repeats_and_resume_matches(people, tmp_path, monkeypatch):
    from dlibplus import augment

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run("finetune", people, "-o", a, *FAST, *KEEP).exit_code == 0
    assert run("finetune", people, "-o", b, *FAST, *KEEP).exit_code == 0
    wa, wb = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    real = augment.augment_batch

    def interrupt_in_second_epoch(chips, seed, epoch, step, slots):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(chips, seed, epoch, step, slots)

    monkeypatch.setattr(augment, "augment_batch", interrupt_in_second_epoch)
    res = run("finetune", people, "-o", c, *FAST, *KEEP)
    assert res.exit_code == 130 and "--resume" in res.output
    assert (c / "checkpoint.pt").is_file() and not (c / "model.dat").exists()
    monkeypatch.setattr(augment, "augment_batch", real)
    # the same command without --resume would start over and lose the run: refused before any work
    res = run("finetune", people, "-o", c, *FAST, *KEEP)
    assert res.exit_code == 2 and "--resume" in res.output and "checkpoint" in res.output
    res = run("finetune", people, "-o", c, *FAST, *KEEP, "--resume")
    assert res.exit_code == 0, res.output
    wc = torch.load(c / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    # a finished model is not replaced unless asked
    res = run("finetune", people, "-o", c, *FAST, *KEEP)
    assert res.exit_code == 2 and "--overwrite" in res.output


@pytest.mark.parametrize("extra, port", [([], 29531), (["--regime", "auto"], 29532)],
                         ids=["default-anchor", "auto-distill"])
def test_ddp_two_processes_match_one(people, tmp_path, extra, port):
    """Two gloo processes under torchrun train the weights one process does (auto's distill regime too,
    which mixes half of each batch: the mixed faces are decided on the global batch)."""
    one, two = tmp_path / "one", tmp_path / "two"
    res = run("finetune", people, "-o", one, *FAST, *KEEP, *extra)
    assert res.exit_code == 0, res.output
    meta = json.loads((one / "metadata.json").read_text())
    auto = "auto" in extra
    # kpop idols: dlib puts most of their different-person pairs within 0.6, so auto trains the distill regime
    assert meta["regime"]["regime"] == meta["config"]["regime"] == ("distill" if auto else "anchor")
    assert (meta["regime"]["chosen_by"] == "auto") == ("--regime distill" in res.output) == auto
    if auto:
        assert meta["regime"]["dlib_different_pairs_within_0.6"] > 0.5
        assert {k: meta["config"][k] for k in REGIMES["distill"]} == {**REGIMES["distill"], "freeze": 5}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "dlibplus.cli", "finetune", str(people), "-o", str(two), *FAST, *KEEP, *extra, "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((two / "metadata.json").read_text())
    assert meta["world_size"] == 2
    w1, w2 = torch.load(one / "model.pt", weights_only=True), torch.load(two / "model.pt", weights_only=True)
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5


def test_too_few_people_or_photos(tmp_path, faces_dir):
    root = tmp_path / "one_person"
    (root / "Arin").mkdir(parents=True)
    (root / "Eunha").mkdir(parents=True)
    for src in sorted((faces_dir / "kpop_idols15" / "Arin").iterdir())[:4]:
        os.symlink(src, root / "Arin" / src.name)
    src = sorted((faces_dir / "kpop_idols15" / "Eunha").iterdir())[0]
    os.symlink(src, root / "Eunha" / src.name)
    res = run("finetune", root, "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 2 and "at least 2 people" in res.output
    assert not (tmp_path / "out" / "model.dat").exists()


def test_head_open_set_threshold_by_hand():
    from dlibplus.calibration import head_open_set_threshold

    class FixedCosines(torch.nn.Module):
        """A head whose cosines are given: rows are faces, columns people."""

        def __init__(self, cos):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.cos = torch.tensor(cos)

        def predict(self, emb):
            return self.cos

    cos = [[0.9, 0.5, 0.1],   # person 0: best wrong cosine 0.5
           [0.7, 0.8, 0.2],   # person 1: 0.7
           [0.3, 0.6, 0.95],  # person 2: 0.6
           [0.2, 0.4, 0.35]]  # person 0, weakly: 0.4
    y = np.array([0, 1, 2, 0])
    emb = np.zeros((4, 128))
    # FAR 0.25 of 4 faces: one impostor may pass, so the threshold sits just above the second highest (0.6)
    r = head_open_set_threshold(FixedCosines(cos), emb, y, 0.25)
    assert r["cosine_threshold"] == pytest.approx(0.6) and r["cosine_threshold"] > 0.6
    assert r["validation_false_alarm_rate"] == 0.25 and r["validation_accept_rate"] == 0.75
    # FAR 1e-3 with 4 faces: no impostor passes
    r = head_open_set_threshold(FixedCosines(cos), emb, y, 1e-3)
    assert r["cosine_threshold"] > 0.7 and r["validation_false_alarm_rate"] == 0.0


def test_cli_lp_ft_and_affine_only_reach_the_written_model(people, tmp_path):
    """--head-epochs, --train-only, --distill, --triplet-margin and --calibration through the command: the settings
    are recorded, and the written network differs from dlib's only in the unfrozen stage's affine layers (its
    convolutions and every frozen stage are dlib's to the bit; fc is dlib's times the calibration's scale)."""
    from dlibplus import dlibnet
    from dlibplus.models import FACE_RECOGNITION_MODEL, model_path

    out = tmp_path / "model"
    res = run("finetune", people, "-o", out, *FAST, *KEEP, "--epochs", "3", "--head-epochs", "1",
              "--train-only", "affine", "--lr", "5e-3", "--anchor", "10", "--distill", "0.5",
              "--triplet-margin", "0.4", "--calibration", "equal-error")
    assert res.exit_code == 0, res.output
    assert "the head alone for the first 1 epochs" in res.output and "only the affine layers train" in res.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["config"]["head_epochs"] == 1 and meta["config"]["train_only"] == "affine"
    assert meta["config"]["distill"] == 0.5 and meta["config"]["triplet_margin"] == 0.4
    assert meta["config"]["anchor"] == 10 and meta["config"]["triplet"] == REGIMES["anchor"]["triplet"]
    assert meta["config"]["calibration"] == meta["calibration"]["method"] == "equal_error"
    assert meta["best_epoch"] != 1  # the head-only epoch (still dlib's network) is never the one kept
    ours = torch.load(out / "model.pt", weights_only=True)
    dlib = dlibnet.load_dat(model_path(FACE_RECOGNITION_MODEL)).state_dict()
    changed = {k for k, v in ours.items() if not torch.equal(v, dlib[k])} - {"fc.weight"}
    assert changed and all(k.startswith("layer5.") and ".affine" in k for k in changed), changed
    ratio = ours["fc.weight"] / dlib["fc.weight"]  # fc only carries the calibration's scale
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-5)
    assert run("finetune", people, "-o", tmp_path / "bad", *FAST, "--epochs", "2", "--head-epochs", "2").exit_code == 2
    assert run("finetune", people, "-o", tmp_path / "bad", *FAST, "--distill", "-1").exit_code == 2
    assert run("finetune", people, "-o", tmp_path / "bad", *FAST, "--triplet-margin", "-1").exit_code == 2
    assert run("finetune", people, "-o", tmp_path / "bad", *FAST, "--regime", "loose").exit_code == 2
    assert run("finetune", people, "-o", tmp_path / "bad", *FAST, "--distill-share", "0").exit_code == 2
    assert run("finetune", people, "-o", tmp_path / "bad", *FAST, "--calibration", "median").exit_code == 2
    assert not (tmp_path / "bad").exists()


def test_cross_fit_validates_every_photo_and_trains_on_all(people, tmp_path):
    """--folds 2: two runs each judged on the half of every person's photos it did not see, one choice and
    calibration over all 40 photos, then a network trained on every photo; dlib computes what it computes."""
    import dlib

    from dlibplus.encoders import load_encoder
    from dlibplus.faces import FaceSettings
    from dlibplus.finetune_data import load_chipset

    out = tmp_path / "model"
    res = run("finetune", people, "-o", out, *FAST, *KEEP, "--folds", "2")
    assert res.exit_code == 0, res.output
    threads = torch.get_num_threads() // 2  # with 2 threads or more the folds train side by side (dlibplus.folds)
    if threads:
        assert "folds 1-2 of 2 side by side" in res.output
        assert "fine-tuning on 20 / 20 photos, validating on 20 / 20" in res.output
    else:
        assert "fold 1/2: fine-tuning on 20 photos, validating on 20" in res.output and "fold 2/2" in res.output
    assert "cross-fitted over 2 folds" in res.output
    meta = json.loads((out / "metadata.json").read_text())
    cf = meta["cross_fit"]
    assert cf["threads_per_fold"] == threads and cf["fold_seconds"] > 0
    assert cf["folds"] == 2 and cf["n_validated"] == len(PEOPLE) * 8 and len(cf["best_epochs"]) == 2
    assert cf["epochs"] == max(1, round(float(np.median(cf["best_epochs"])))) == len(meta["history"])
    for best, history in zip(cf["best_epochs"], cf["fold_histories"]):  # each fold's epochs, replayable
        assert [row["epoch"] for row in history] == list(range(1, len(history) + 1)) and best <= len(history)
        assert history[best - 1]["identification_1nn"] == max(row["identification_1nn"] for row in history)
    assert meta["data"]["n_train"] == len(PEOPLE) * 8 and meta["config"]["folds"] == 2
    cal = meta["calibration"]  # the folds' raw thresholds, each fit on its own fold; the scale from their median
    assert len(cal["fold_thresholds"]) == 2 and cal["scale"] == pytest.approx(0.6 / np.median(cal["fold_thresholds"]))
    assert cal["n_same_pairs"] > 0 and 0 < cal["same_accepted"] <= 1 and 0 <= cal["different_accepted"] < 1
    assert meta["selection"]["chosen"]["alpha"] == 1.0
    chips = load_chipset(people, FaceSettings(face_box="whole"), jobs=1, progress=False)[0].chips[:8]
    dat = dlib.face_recognition_model_v1(str(out / "model.dat"))
    theirs = np.array([dat.compute_face_descriptor(c) for c in chips])
    ours = load_encoder(out).encode(chips)
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.abs(ours - load_encoder("torch").encode(chips)).max() > 1e-3


def test_cross_fit_soup_hands_back_the_mean_of_the_folds(people, tmp_path):
    """crossfit_network="soup": no run on every photo; the folder holds the mean of the two folds' best weights,
    interpolated and scaled as the folds chose (recomputed here from the folds themselves), and dlib reads it."""
    import dlib

    from dlibplus import dlibnet
    from dlibplus.crossfit import cross_validate, soup
    from dlibplus.distributed import Dist
    from dlibplus.encoders import load_encoder
    from dlibplus.faces import FaceSettings
    from dlibplus.finetune import finetune, seed_run
    from dlibplus.finetune_data import prepare_finetune_data
    from dlibplus.finish import summary_lines
    from dlibplus.models import FACE_RECOGNITION_MODEL, model_path
    from dlibplus.selection import interpolate
    from dlibplus.train_config import FinetuneConfig

    data = prepare_finetune_data(people, FaceSettings(face_box="whole"), jobs=1, progress=False)
    config = FinetuneConfig(epochs=2, freeze=5, people_per_batch=5, images_per_person=4, folds=2, keep="finetuned",
                            device="cpu", crossfit_network="soup")
    out = tmp_path / "soup"
    result = finetune(data, out, config, progress=False, echo=lambda m: None)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["cross_fit"]["network"] == "soup" and meta["cross_fit"]["epochs"] == 0 and meta["history"] == []
    assert meta["config"]["crossfit_network"] == "soup" and result.selection.chosen.alpha == 1.0
    assert "mean of the folds' best weights" in "\n".join(summary_lines(result))

    seed_run(config, torch.device("cpu"))  # as finetune() starts the run
    photos = data.pooled()
    cf = cross_validate(photos, config, torch.device("cpu"), Dist(), progress=False, say=lambda m: None)
    base = dlibnet.load_dat(model_path(FACE_RECOGNITION_MODEL)).state_dict()
    expected = interpolate(base, soup(cf.fold_states), 1.0)
    ours = torch.load(out / "model.pt", weights_only=True)
    scale = meta["calibration"]["scale"]
    assert scale == pytest.approx(cf.selection.chosen.point.scale)
    for key, value in expected.items():
        want = value * scale if key == "fc.weight" else value
        assert torch.allclose(ours[key].float(), want.float(), rtol=1e-6, atol=1e-8), key
    key = "layer5.0.conv1.weight"  # the folds trained apart, so their mean is neither of them
    assert not torch.allclose(cf.fold_states[0][key], cf.fold_states[1][key])
    assert not torch.allclose(ours[key], cf.fold_states[0][key]) and not torch.allclose(ours[key], base[key])
    chips = photos.chips[:8]
    dat = dlib.face_recognition_model_v1(str(out / "model.dat"))
    theirs = np.array([dat.compute_face_descriptor(c) for c in chips])
    assert np.abs(load_encoder(out).encode(chips) - theirs).max() <= 1e-5


@pytest.mark.parametrize("extra", [["--folds", "-1"], ["--folds", "2", "--resume"],
                                   ["--folds", "2", "--val-folder", "."]])
def test_cross_fit_refuses_what_it_cannot_do(people, tmp_path, extra):
    res = run("finetune", people, "-o", tmp_path / "out", *FAST, *extra)
    assert res.exit_code == 2 and "--folds" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_auto_cross_fits_a_small_folder_only(tmp_path, faces_dir):
    """Without --folds, 3 photos per person cross-fit (recorded as 2 folds); a median above SMALL_FOLDER
    trains once."""
    from dlibplus.train_config import SMALL_FOLDER

    small, large = tmp_path / "small", tmp_path / "large"
    for person in PEOPLE:
        (small / person).mkdir(parents=True)
        (large / person).mkdir(parents=True)
        photos = sorted((faces_dir / "kpop_idols15" / person).iterdir())
        for src in photos[:3]:
            os.symlink(src, small / person / src.name)
        for src in photos[:SMALL_FOLDER + 1]:
            os.symlink(src, large / person / src.name)
    assert np.median([len(list((large / p).iterdir())) for p in PEOPLE]) > SMALL_FOLDER
    res = run("finetune", small, "-o", tmp_path / "a", *FAST_ANY_FOLDS, *KEEP)
    assert res.exit_code == 0, res.output
    assert "cross-fitting over 2 folds" in res.output and "--folds 1" in res.output
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta["config"]["folds"] == 2 and meta["cross_fit"]["n_validated"] == len(PEOPLE) * 3
    res = run("finetune", large, "-o", tmp_path / "b", *FAST_ANY_FOLDS, *KEEP, "--epochs", "1")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["config"]["folds"] == 1 and not meta["cross_fit"] and "cross-fitting" not in res.output


def test_train_knn_jitter_tip_gives_the_figures_of_the_network_a_folder_holds(trained, people, tmp_path):
    """With few photos per person train-knn suggests jitter with the figures measured on the network the model
    holds: dlib's for a folder whose run kept dlib's own network (it encodes as dlib), the fine-tuned ones'
    otherwise; none with a test-time flip (already an average of two views)."""
    import shutil

    from dlibplus import model_folder

    out, _ = trained
    few = tmp_path / "few"  # 3 photos a person: the tip's range
    for person in PEOPLE:
        (few / person).mkdir(parents=True)
        for src in sorted((people / person).iterdir())[:3]:
            os.symlink(os.readlink(src), few / person / src.name)
    kept_dlib = tmp_path / "kept-dlib"
    shutil.copytree(out, kept_dlib)
    meta = model_folder.read_metadata(kept_dlib)
    assert not meta.holds_dlib  # --keep finetuned
    # what a run that nothing beat dlib in records (finish.py: the chosen candidate at alpha 0)
    meta.selection = {**meta.selection, "chosen": {**meta.selection["chosen"], "name": "dlib", "alpha": 0.0}}
    model_folder.write_metadata(kept_dlib, meta)
    assert model_folder.read_metadata(kept_dlib).holds_dlib

    res = run("train-knn", few, "--encoder", kept_dlib, "-o", tmp_path / "a", "--face-box", "whole", "-j", 1)
    assert res.exit_code == 0 and "tip: your median person has 3 photos" in res.output
    assert "--jitters 10" in res.output and "1.7x dlib's plain time" in res.output
    res = run("train-knn", few, "--encoder", out, "-o", tmp_path / "b", "--face-box", "whole", "-j", 1)
    assert res.exit_code == 0 and "--jitters 10" in res.output and "with fine-tuned networks" in res.output
    res = run("train-knn", few, "--encoder", f"{out}+flip", "-o", tmp_path / "c", "--face-box", "whole", "-j", 1)
    assert res.exit_code == 0 and "tip:" not in res.output
