"""Video: a short clip the test builds from real photos (face_recognition's obama and biden), a FaceKNN
trained on other photos of a few people, and predict_video checked against the still-image pipeline on
the very frames the clip decodes to."""
from __future__ import annotations

import math

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from dlibplus import api  # noqa: E402
from dlibplus.data import process_images  # noqa: E402
from dlibplus.faces import FaceSettings  # noqa: E402
from dlibplus.images import load_image_file  # noqa: E402
from dlibplus.knn import FaceKNN  # noqa: E402
from dlibplus.recipe import Recipe  # noqa: E402
from dlibplus.video import (VideoError, annotated_path, is_video_file, predict_video, read_frames,  # noqa: E402
                            video_info)

FPS = 10.0
SIZE = (480, 360)  # width, height
# (person folder, file) of the clip's scenes, 5 frames each; none of them is a training photo
SCENES = [("obama", "examples__knn_examples__test__obama1.jpg"), ("biden", "examples__biden.jpg"),
          ("obama", "examples__obama-480p.jpg"), ("biden", "examples__biden.jpg")]
TRAIN = {"obama": ["examples__knn_examples__train__obama__obama.jpg", "examples__knn_examples__train__obama__obama2.jpg"],
         "biden": ["examples__knn_examples__train__biden__biden2.jpg"],
         "kit_harington": ["examples__knn_examples__train__kit_harington__john1.jpeg",
                           "examples__knn_examples__train__kit_harington__john2.jpeg"],
         "rose_leslie": ["examples__knn_examples__train__rose_leslie__img1.jpg",
                         "examples__knn_examples__train__rose_leslie__img2.jpg"]}


def letterbox(rgb: np.ndarray) -> np.ndarray:
    """The photo scaled to fit SIZE, centred on black, as BGR."""
    w, h = SIZE
    scale = min(w / rgb.shape[1], h / rgb.shape[0])
    small = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return np.ascontiguousarray(out[:, :, ::-1])


@pytest.fixture(scope="module")
def clip(faces_dir, tmp_path_factory):
    """A 20-frame mp4v clip at 10 fps; returns (path, the person shown in each frame)."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    assert writer.isOpened()
    truth = []
    for person, name in SCENES:
        frame = letterbox(load_image_file(faces_dir / "face_recognition" / person / name))
        for _ in range(5):
            writer.write(frame)
            truth.append(person)
    writer.release()
    return path, truth


@pytest.fixture(scope="module")
def knn(faces_dir) -> FaceKNN:
    paths, labels = [], []
    for person, names in TRAIN.items():
        paths += [faces_dir / "face_recognition" / person / n for n in names]
        labels += [person] * len(names)
    results = process_images(paths, FaceSettings(), jobs=1, progress=False, use_cache=False)
    assert all(r.n_faces == 1 for r in results)
    return FaceKNN(1, recipe=Recipe("dlib", FaceSettings(), 1)).fit(np.concatenate([r.encodings for r in results]),
                                                                    labels)


def reference_rows(video, model, every: int, encoder=None):
    """The still-image path on each decoded frame: face_locations, face_encodings, predict_with_distance."""
    rows = []
    for index, bgr, _ in read_frames(video, every):
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        boxes = api.face_locations(rgb)
        if not boxes:
            continue
        encs = api.face_encodings(rgb, boxes, encoder=encoder)
        names, dist, _ = model.predict_with_distance(np.array(encs))
        rows += [(index, n, tuple(b), d) for n, b, d in zip(names, boxes, dist)]
    return rows


def test_every_frame_named_as_the_still_pipeline_does(clip, knn):
    video, truth = clip
    rows = list(predict_video(video, knn))
    assert [r.frame for r in rows] == list(range(20))  # one face in every frame
    assert [r.name for r in rows] == truth
    for r in rows:
        assert r.time == pytest.approx(r.frame / FPS) and r.path == str(video)
        assert r.distance < 0.6 and r.person == r.name
    ref = reference_rows(video, knn, 1)
    assert [(r.frame, r.name, r.box) for r in rows] == [(i, n, b) for i, n, b, _ in ref]
    np.testing.assert_allclose([r.distance for r in rows], [d for *_, d in ref], atol=1e-9)
    d = rows[0].to_dict()
    assert list(d) == ["path", "frame", "time", "name", "top", "right", "bottom", "left", "distance"]


def test_every_samples_frames(clip, knn):
    video, truth = clip
    rows = list(predict_video(video, knn, every=3))
    assert [r.frame for r in rows] == [0, 3, 6, 9, 12, 15, 18]
    assert [r.name for r in rows] == [truth[i] for i in range(0, 20, 3)]
    assert [r.time for r in rows] == pytest.approx([i / FPS for i in range(0, 20, 3)])


def test_torch_encoder_and_threshold(clip, knn):
    video, truth = clip
    rows = list(predict_video(video, knn, every=7, encoder="torch"))
    ref = reference_rows(video, knn, 7, encoder="torch")
    assert [(r.frame, r.name) for r in rows] == [(i, n) for i, n, _, _ in ref] and [r.frame for r in rows] == [0, 7, 14]
    np.testing.assert_allclose([r.distance for r in rows], [d for *_, d in ref], atol=1e-6)
    strict = list(predict_video(video, knn, every=7, threshold=0.01))
    assert {r.name for r in strict} == {"unknown"} and [r.person for r in strict] == [truth[i] for i in (0, 7, 14)]


def test_annotated_copy(clip, knn, tmp_path):
    video, _ = clip
    out = tmp_path / "annotated.avi"
    rows = list(predict_video(video, knn, every=4, annotate_to=out))
    assert [r.frame for r in rows] == [0, 4, 8, 12, 16]
    info = video_info(out)
    assert (info.frame_count, info.width, info.height, info.fps) == (20, *SIZE, FPS)
    originals = [f for _, f, _ in read_frames(video)]
    drawn = [f for _, f, _ in read_frames(out)]
    assert len(drawn) == 20
    top, right, bottom, left = rows[0].box
    box_edge = (slice(top, bottom), left)  # the left edge of the first face's box
    assert np.abs(drawn[1][box_edge].astype(int) - originals[1][box_edge]).mean() > 40  # boxes are drawn
    assert [p.name for p in tmp_path.iterdir()] == ["annotated.avi"]  # no temporary file left

    folder = tmp_path / "out"
    folder.mkdir()
    list(predict_video(video, knn, every=10, annotate_to=folder))
    assert video_info(folder / "clip.mp4").frame_count == 20


def test_never_over_the_input(clip, knn):
    video, _ = clip
    before = video.read_bytes()
    with pytest.raises(VideoError, match="input video"):
        list(predict_video(video, knn, annotate_to=video))
    with pytest.raises(VideoError, match="input video"):
        annotated_path(video, video.parent)
    assert video.read_bytes() == before


def test_unreadable_videos(tmp_path, knn):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    for path in (bad, tmp_path / "missing.mp4"):
        with pytest.raises(VideoError) as info:
            list(predict_video(path, knn))
        assert str(path) in str(info.value)


def test_no_face_frames_give_no_rows(tmp_path, knn):
    path = tmp_path / "dark.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    assert list(predict_video(path, knn)) == []
    assert math.isclose(video_info(path).fps, 5.0)


def test_is_video_file(tmp_path):
    assert is_video_file("a/b.MP4") and is_video_file("clip.avi") and is_video_file(tmp_path / "x.mov")
    assert not is_video_file("photo.jpg") and not is_video_file("noext")
    folder = tmp_path / "weird.mp4"
    folder.mkdir()
    assert not is_video_file(folder)


def test_predict_command_routes_videos(clip, knn, faces_dir, tmp_path):
    """`dlibplus predict MODEL clip.mp4 photo.jpg --every 5 --annotate DIR`: the photo's rows, then one row per
    face per sampled frame with frame and time; an annotated video beside the annotated photo."""
    import csv
    import io

    from click.testing import CliRunner

    from dlibplus.cli import main

    import os

    video, truth = clip
    model = tmp_path / "m.npz"
    knn.save(model)
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = inputs / "obama.jpg"
    os.symlink(faces_dir / "face_recognition/obama/examples__obama-480p.jpg", photo)
    os.symlink(clip[0], inputs / "clip.mp4")
    video = inputs / "clip.mp4"
    out = tmp_path / "annotated"
    res = CliRunner().invoke(main, ["predict", str(model), str(photo), str(video), "--every", "5", "--annotate",
                                    str(out), "-j", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(rows[0]) == ["path", "name", "top", "right", "bottom", "left", "distance", "error", "frame", "time"]
    assert rows[0]["name"] == "obama" and rows[0]["frame"] == ""
    video_rows = [r for r in rows if r["path"] == str(video)]
    assert [int(r["frame"]) for r in video_rows] == [0, 5, 10, 15]
    assert [r["name"] for r in video_rows] == [truth[f] for f in (0, 5, 10, 15)]
    assert float(video_rows[1]["time"]) == pytest.approx(5 / FPS)
    assert (out / video.name).is_file() and (out / photo.name).is_file()
    assert video_info(out / video.name).frame_count == len(truth)
