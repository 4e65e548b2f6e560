"""The CNN detector batched in the main process (:mod:`dlibplus.device_pipeline`) against the per-worker path.

Real photos of several kinds (LFW, multi-face photos shrunk by ``max_side``, an RGBA png, a greyscale png, a
photo too small for the network) with unreadable files between them: the batched path must give the same
results, in the same order, with the same errors, and share the cache with the per-worker path.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dlibplus import data, device_pipeline, faces
from dlibplus.cli import main
from dlibplus.data import process_images
from dlibplus.encoders import DlibEncoder, TorchEncoder
from dlibplus.faces import FaceSettings

SETTINGS = FaceSettings(detector="cnn", upsample=1, max_side=400)  # the large photos shrunk: quick on a CPU


@pytest.fixture(scope="module")
def photos(faces_dir, tmp_path_factory):
    """Readable photos with three unreadable inputs between them (not an image, a truncated jpeg, a missing file)."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("inputs")
    multi = faces_dir / "face_recognition/_multi_or_unlabelled"
    lfw = faces_dir / "lfw_dev"
    jpeg = (lfw / "Aaron_Peirsol/Aaron_Peirsol_0002.jpg").read_bytes()
    (tmp / "notes.jpg").write_text("not a photo")
    (tmp / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 4])
    Image.open(lfw / "Abdullah_Gul/Abdullah_Gul_0001.jpg").crop((100, 100, 124, 124)).save(tmp / "tiny.png")
    return [lfw / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
            tmp / "notes.jpg",
            multi / "examples__knn_examples__test__obama_and_biden.jpg",  # 2000 x 1428, shrunk, several faces
            multi / "tests__test_images__32bit.png",  # RGBA
            tmp / "cut.jpg",
            faces_dir / "yale_faces/subject03/happy.png",  # greyscale
            tmp / "tiny.png",  # too small for the network: no face
            tmp / "missing.jpg",
            multi / "examples__two_people.jpg",
            lfw / "Abdullah_Gul/Abdullah_Gul_0001.jpg"]


def run_pipeline(photos, parent: bool, **options) -> list[data.ImageFaces]:
    options = {"want": "chips", "jobs": 2, "use_cache": False, **options}
    return process_images(photos, SETTINGS, progress=False, detect_in_parent=parent, **options)


@pytest.fixture(scope="module")
def per_worker(photos):
    """Today's path: each worker reads, detects, aligns one photo."""
    return run_pipeline(photos, parent=False)


def assert_same(got: list[data.ImageFaces], expected: list[data.ImageFaces], what: str = "chips") -> None:
    assert [r.path for r in got] == [r.path for r in expected]
    for g, e in zip(got, expected):
        assert g.error == e.error, g.path
        assert np.array_equal(g.boxes, e.boxes) and g.boxes.dtype == e.boxes.dtype, g.path
        a, b = getattr(g, what), getattr(e, what)
        assert (a is None) == (b is None), g.path
        if a is not None:
            assert a.dtype == b.dtype and np.array_equal(a, b), g.path


def test_reference_finds_faces_and_reports_bad_files(per_worker):
    """The comparison below means something: faces in several photos, several in one, errors for the bad files."""
    by_name = {r.path.name: r for r in per_worker}
    assert by_name["examples__knn_examples__test__obama_and_biden.jpg"].n_faces >= 2
    assert by_name["examples__two_people.jpg"].n_faces == 2 and by_name["tiny.png"].n_faces == 0
    assert by_name["Aaron_Peirsol_0001.jpg"].n_faces == 1 and by_name["happy.png"].n_faces == 1
    assert {name for name, r in by_name.items() if r.error} == {"notes.jpg", "cut.jpg", "missing.jpg"}
    assert sum(r.n_faces for r in per_worker) >= 6


def test_batched_in_parent_gives_the_per_worker_chips_in_order(photos, per_worker, monkeypatch):
    monkeypatch.setattr(device_pipeline, "DETECT_IMAGES", 2)  # several batches, failures between them
    calls = []
    real = device_pipeline.cnn_score_maps
    monkeypatch.setattr(device_pipeline, "cnn_score_maps", lambda images, up: calls.append(len(images)) or
                        real(images, up))
    assert_same(run_pipeline(photos, parent=True), per_worker)
    assert calls and max(calls) == 2 and sum(calls) == 7  # the 7 readable photos, batched, each once


def test_batched_in_parent_without_workers_and_by_pixels(photos, per_worker, monkeypatch):
    """A batch also closes once its photos hold ``DETECT_PIXELS`` pixels (large photos go fewer at a time)."""
    monkeypatch.setattr(device_pipeline, "DETECT_PIXELS", 100_000)  # LFW photos hold 62,500
    calls = []
    real = device_pipeline.cnn_score_maps
    monkeypatch.setattr(device_pipeline, "cnn_score_maps", lambda images, up: calls.append(len(images)) or
                        real(images, up))
    assert_same(run_pipeline(photos, parent=True, jobs=1), per_worker)
    assert calls == [2, 2, 3]  # 62,500 + 114,400 | 83,600 + 77,760 | 576 + 94,000 + 62,500 pixels


def test_encodings_in_workers_and_torch_encodings_here_are_the_same(photos, per_worker):
    """dlib's encoder runs in the workers after alignment; the torch encoder here, batched over images."""
    dlib_encoded = run_pipeline(photos, parent=True, want="encodings", encoder=DlibEncoder())
    for got, ref in zip(dlib_encoded, per_worker):
        assert got.error == ref.error and np.array_equal(got.boxes, ref.boxes)
        if ref.error is None:
            assert got.chips is None and got.encodings.shape == (ref.n_faces, 128)
            assert np.array_equal(got.encodings, np.asarray(DlibEncoder().encode(ref.chips), np.float64)
                                  .reshape(ref.n_faces, 128))
    torch_encoder = TorchEncoder(device="cpu")
    expected = run_pipeline(photos, parent=False, want="encodings", encoder=torch_encoder)
    assert_same(run_pipeline(photos, parent=True, want="encodings", encoder=torch_encoder), expected, "encodings")


def test_each_path_reuses_the_cache_of_the_other(photos, tmp_path, monkeypatch):
    encoder = TorchEncoder(device="cpu")
    options = {"want": "encodings", "encoder": encoder, "use_cache": True}
    first = run_pipeline(photos, parent=True, cache_dir=tmp_path / "a", **options)
    second = run_pipeline(photos, parent=False, cache_dir=tmp_path / "b", **options)
    worker_calls = []
    real_worker = data._worker
    monkeypatch.setattr(data, "_worker", lambda task: worker_calls.append(task[0].name) or real_worker(task))
    assert_same(run_pipeline(photos, parent=False, jobs=1, cache_dir=tmp_path / "a", **options), first, "encodings")
    assert sorted(worker_calls) == ["cut.jpg", "notes.jpg"]  # errors are not cached: tried again
    detections = []
    monkeypatch.setattr(device_pipeline, "cnn_score_maps", lambda *a: detections.append(a) or [])
    assert_same(run_pipeline(photos, parent=True, jobs=1, cache_dir=tmp_path / "b", **options), second, "encodings")
    assert not detections
    assert_same(second, first, "encodings")
    assert [p.name for p in (tmp_path / "a").iterdir()] == [p.name for p in (tmp_path / "b").iterdir()]  # one key


def test_a_photo_the_detector_fails_on_gets_the_per_worker_error(faces_dir):
    """When a batch fails, each image is scored alone: only the failing one gets an error, the same text as
    the per-worker path's; the others' score maps give :func:`faces.detect`'s boxes."""
    from dlibplus.cnn_detector import detections
    from dlibplus.images import load_image_file

    good = faces_dir / "lfw_dev/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
    image = load_image_file(good)
    bad = image.astype(np.float32)  # no reader gives this: the detector refuses it
    batch = [device_pipeline.Decoded(good, image, 1.0, image.shape), device_pipeline.Decoded(good, bad, 1.0, bad.shape)]
    score_map, failed = device_pipeline._score(batch, 0)
    boxes = faces.cnn_boxes(image, detections(score_map))
    assert boxes == faces.detect(image, 0, "cnn") and len(boxes) == 1
    assert failed.error == data.guarded(good, faces.detect, bad, 0, "cnn").error
    assert failed.error.startswith("ValueError: image 0: expected (H, W, 3) RGB")


def test_who_detects_where(monkeypatch):
    cnn = FaceSettings(detector="cnn")
    assert not device_pipeline.uses_parent_detection(FaceSettings(detector="hog"), True)
    assert not device_pipeline.uses_parent_detection(FaceSettings(detector="cnn", face_box="whole"), True)
    assert device_pipeline.uses_parent_detection(cnn, True)
    assert not device_pipeline.uses_parent_detection(cnn, False)
    monkeypatch.setattr(faces, "CNN_DEVICE", "cpu")
    assert not device_pipeline.uses_parent_detection(cnn)
    monkeypatch.setattr(faces, "CNN_DEVICE", "cuda:0")
    assert device_pipeline.uses_parent_detection(cnn)
    monkeypatch.setattr(faces, "CNN_DEVICE", "auto")
    assert device_pipeline.uses_parent_detection(cnn) == torch.cuda.is_available()


def test_encode_detect_on_main_and_workers_write_the_same_file(photos, tmp_path):
    def encode(where: str):
        out = tmp_path / f"{where}.npz"
        args = ["encode", *map(str, photos[:4]), "-o", str(out), "--detector", "cnn", "--max-side", "400",
                "--encoder", "torch", "--detect-on", where, "-j", "2"]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 1, result.output  # notes.jpg could not be read
        with np.load(out) as z:
            return {k: z[k] for k in z.files}

    main_out, workers_out = encode("main"), encode("workers")
    assert main_out.keys() == workers_out.keys()
    for key in main_out:
        assert np.array_equal(main_out[key], workers_out[key]), key
    assert len(main_out["encodings"]) >= 3 and [os.path.basename(p) for p in main_out["failed_paths"]] == ["notes.jpg"]


def test_encode_refuses_detect_on_where_it_means_nothing(photos, tmp_path):
    for extra in (["--detector", "hog"], ["--detector", "cnn", "--face-box", "whole"],
                  ["--detector", "cnn", "--parquet", str(tmp_path / "shards")]):
        args = ["encode", str(photos[0]), "--detect-on", "main", *extra]
        if "--parquet" not in extra:
            args += ["-o", str(tmp_path / "x.npz")]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "--detect-on" in result.output, result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_detects_in_parent_by_default_with_the_cpu_workers_results(photos, per_worker, monkeypatch):
    used = []
    real = device_pipeline.parent_detection_stream
    monkeypatch.setattr(device_pipeline, "parent_detection_stream", lambda *a, **k: used.append(1) or real(*a, **k))
    got = process_images(photos, SETTINGS, want="chips", jobs=2, use_cache=False, progress=False)
    assert used
    assert_same(got, per_worker)
