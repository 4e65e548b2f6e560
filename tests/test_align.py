"""dlibplus.align (and the chip placement in align_reference) against dlib itself on real photos: chips
with 0 differing pixels, same jitter."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import align_reference as align
from dlibplus import models

dlib = pytest.importorskip("dlib")

from conftest import person_images  # noqa: E402


# ----------------------------------------------------------------------------------------------
# helpers


def _load(path: Path, mode: str = "RGB") -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert(mode))


def _detect(img: np.ndarray, upsample: int = 0) -> list:
    """HOG boxes in full-resolution pixels; big photos are searched at <= 1000 px for speed."""
    step = 1
    while max(img.shape[:2]) // step > 1000:
        step *= 2
    small = np.ascontiguousarray(img[::step, ::step])
    return [
        dlib.rectangle(r.left() * step, r.top() * step, r.right() * step, r.bottom() * step)
        for r in models.hog_detector()(small, upsample)
    ]


def _shapes(img: np.ndarray, box) -> list:
    """The 5- and 68-point landmarks of one face."""
    return [models.shape_predictor("small")(img, box), models.shape_predictor("large")(img, box)]


def _moved(shape, fn):
    """A full_object_detection with every part (and the box corners) mapped by ``fn(x, y)``."""
    pts = [dlib.point(*fn(p.x, p.y)) for p in shape.parts()]
    r = shape.rect
    (x0, y0), (x1, y1) = fn(r.left(), r.top()), fn(r.right(), r.bottom())
    box = dlib.rectangle(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    return dlib.full_object_detection(box, pts)


def _depth(details: align.ChipDetails) -> int:
    """How many pyramid_down<2> levels dlib uses for this chip."""
    def down(r):
        return (r[0] / 2 - 1.25, r[1] / 2 - 0.75, r[2] / 2 - 1.25, r[3] / 2 - 0.75)

    def area(r):
        return (r[2] - r[0] + 1) * (r[3] - r[1] + 1)

    n, r = 0, down(details.rect)
    while area(r) > details.size:
        r, n = down(r), n + 1
    return n


def _n_diff(a: np.ndarray, b: np.ndarray) -> int:
    """Number of pixels (not channel values) that differ."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    ne = a != b
    return int((ne.any(axis=-1) if ne.ndim == 3 else ne).sum())


def _assert_same_chip(img: np.ndarray, shape, size: int = 150, padding: float = 0.25, what=""):
    ref = dlib.get_face_chip(img, shape, size, padding)
    ours = align.get_face_chip(img, align.landmarks_to_array(shape), size, padding)
    assert _n_diff(ours, ref) == 0, (
        f"{what}: {_n_diff(ours, ref)} pixels differ (max {np.abs(ours.astype(int) - ref).max()})"
    )
    return ours


# ----------------------------------------------------------------------------------------------
# fixtures: faces found once per module


@pytest.fixture(scope="module")
def big_faces(faces_dir):
    """(name, image, [shape5, shape68]) for deepface_tests photos over 1000 px wide."""
    out = []
    for person, path in person_images(faces_dir, "deepface_tests"):
        with Image.open(path) as im:
            if im.size[0] <= 1000:
                continue
        img = _load(path)
        for box in _detect(img)[:1]:
            out.append((f"{person}/{path.name}", img, _shapes(img, box)))
    assert len(out) >= 20
    return out


@pytest.fixture(scope="module")
def medium_face(faces_dir):
    img = _load(faces_dir / "face_recognition/obama/examples__obama-480p.jpg")
    return img, _shapes(img, _detect(img, 1)[0])


# ----------------------------------------------------------------------------------------------
# chip details


def test_details_match_dlib(big_faces):
    n = 0
    for name, _, shapes in big_faces:
        for shape in shapes:
            ref = dlib.get_face_chip_details(shape, 150, 0.25)
            ours = align.get_face_chip_details(align.landmarks_to_array(shape), 150, 0.25)
            rr = (ref.rect.left(), ref.rect.top(), ref.rect.right(), ref.rect.bottom())
            # dlib's own 2x2 SVD differs from LAPACK's in the last bits only
            np.testing.assert_allclose(ours.rect, rr, rtol=0, atol=1e-9, err_msg=name)
            assert abs(ours.angle - ref.angle) < 1e-12, name
            assert (ours.rows, ours.cols) == (ref.rows, ref.cols) == (150, 150)
            n += 1
    assert n >= 20


def test_details_accept_a_full_object_detection_and_reject_bad_landmarks(medium_face):
    _, (shape5, _) = medium_face
    assert align.get_face_chip_details(shape5) == align.get_face_chip_details(
        align.landmarks_to_array(shape5)
    )
    lm = align.landmarks_to_array(shape5)
    assert lm.dtype == np.int64 and lm.shape == (5, 2)
    with pytest.raises(ValueError, match="landmarks"):
        align.get_face_chip_details(np.zeros((7, 2)))
    with pytest.raises(ValueError, match="size"):
        align.get_face_chip_details(lm, size=0)


# ----------------------------------------------------------------------------------------------
# chips: 0 differing pixels


def test_large_photos_use_the_pyramid_and_match(big_faces):
    depths = []
    for name, img, shapes in big_faces:
        for shape in shapes:
            _assert_same_chip(img, shape, what=name)
            depths.append(_depth(align.get_face_chip_details(align.landmarks_to_array(shape))))
    assert max(depths) >= 3 and sum(d >= 1 for d in depths) >= 10, depths


def test_other_sizes_and_paddings_match(medium_face, big_faces):
    img, shapes = medium_face
    name, big, big_shapes = big_faces[0]
    for size, padding in ((200, 0.2), (151, 0.3), (112, 0.0), (64, 0.25)):
        for shape in shapes:
            _assert_same_chip(img, shape, size, padding, what=f"obama {size}/{padding}")
        _assert_same_chip(big, big_shapes[0], size, padding, what=f"{name} {size}/{padding}")


def test_small_faces_match(faces_dir):
    n = 0
    for person, path in person_images(faces_dir, "lfw_dev", per_person=1)[:400:10]:
        img = _load(path)
        for box in _detect(img, 1)[:1]:
            for shape in _shapes(img, box):
                _assert_same_chip(img, shape, what=f"lfw {path.name}")
                n += 1
    assert n >= 70


def test_grey_images_match(faces_dir):
    n = 0
    for person, path in person_images(faces_dir, "yale_faces", per_person=1):
        grey = _load(path, "L")
        assert grey.ndim == 2
        for box in _detect(grey, 1)[:1]:
            for shape in _shapes(grey, box):
                chip = _assert_same_chip(grey, shape, what=f"yale {path.name}")
                assert chip.shape == (150, 150)
                n += 1
    assert n >= 20


def test_rotated_photos_match(big_faces, medium_face):
    """Faces turned by 20 degrees (PIL) and by 90/180/270 degrees (np.rot90)."""
    img, _ = medium_face
    for degrees in (20, -25):
        rot = np.asarray(Image.fromarray(img).rotate(degrees, Image.BILINEAR, expand=True))
        boxes = _detect(rot, 1)
        assert boxes, f"no face after turning by {degrees} degrees"
        for shape in _shapes(rot, boxes[0]):
            details = align.get_face_chip_details(align.landmarks_to_array(shape))
            assert abs(math.degrees(details.angle)) > 10
            _assert_same_chip(rot, shape, what=f"rotated {degrees}")

    for name, big, shapes in big_faces[:3]:
        h, w = big.shape[:2]
        for k in (1, 2, 3):
            turned = np.ascontiguousarray(np.rot90(big, k))
            # np.rot90 turns counter-clockwise: (x, y) -> (y, w-1-x) for one quarter turn
            maps = {
                1: lambda x, y: (y, w - 1 - x),
                2: lambda x, y: (w - 1 - x, h - 1 - y),
                3: lambda x, y: (h - 1 - y, x),
            }
            for shape in shapes:
                _assert_same_chip(turned, _moved(shape, maps[k]), what=f"{name} rot90 x{k}")


def test_faces_cut_by_the_border_match(big_faces, medium_face):
    cases = [("obama", *medium_face)] + big_faces[:4]
    for name, img, shapes in cases:
        pts = align.landmarks_to_array(shapes[0])
        cx, cy = (int(v) for v in pts.mean(axis=0))
        h, w = img.shape[:2]
        crops = {
            "left": (0, cx, h, w),          # face cut through the middle, vertically
            "top-left": (cy - 10, cx - 20, h, w),
            "bottom-right": (0, 0, cy + 15, cx + 30),
        }
        for where, (y0, x0, y1, x1) in crops.items():
            part = np.ascontiguousarray(img[y0:y1, x0:x1])
            for shape in shapes:
                moved = _moved(shape, lambda x, y: (x - x0, y - y0))
                chip = _assert_same_chip(part, moved, what=f"{name} cut {where}")
                assert (chip == 0).all(axis=-1).mean() > 0.1  # a black band where the image ends


def test_multi_face_photos_share_one_pyramid_like_dlib(faces_dir):
    n_faces = 0
    for path in sorted((faces_dir / "face_recognition/_multi_or_unlabelled").glob("*.jpg")):
        img = _load(path)
        boxes = _detect(img, 1)
        assert len(boxes) >= 2, path.name
        for k in (0, 1):
            shapes = dlib.full_object_detections()
            for box in boxes:
                shapes.append(_shapes(img, box)[k])
            refs = dlib.get_face_chips(img, shapes, 150, 0.25)
            ours = align.get_face_chips(img, [align.landmarks_to_array(s) for s in shapes])
            assert len(ours) == len(refs) == len(boxes)
            for i, (a, b) in enumerate(zip(ours, refs)):
                assert _n_diff(a, b) == 0, f"{path.name} face {i}"
            n_faces += len(boxes)
    assert n_faces >= 8


def test_a_faces_chip_depends_on_the_other_faces_in_the_call(big_faces):
    """A big face and a small one in one call: the small face is cut from the big face's pyramid."""
    name, img, (shape5, _) = big_faces[0]
    big = align.get_face_chip_details(align.landmarks_to_array(shape5))
    assert _depth(big) >= 1
    differs = []
    for shift in (0, 1):  # one of the two puts the second face's own pyramid grid off by one pixel
        l, t = big.rect[0] + 50 + shift, big.rect[1] + 50 + shift
        other = align.ChipDetails((l, t, l + 350.0, t + 350.0), 0.3, 150, 150)  # depth 1
        together = align.extract_image_chips(img, [big, other])
        alone = align.extract_image_chips(img, [other])[0]
        ref = dlib.extract_image_chips(img, [_dlib_details(big), _dlib_details(other)])
        assert _n_diff(together[0], ref[0]) == 0 and _n_diff(together[1], ref[1]) == 0
        assert _n_diff(alone, dlib.extract_image_chip(img, _dlib_details(other))) == 0
        differs.append(_n_diff(together[1], alone))
    assert max(differs) > 1000, differs


def _dlib_details(d: align.ChipDetails):
    return dlib.chip_details(dlib.drectangle(*d.rect), dlib.chip_dims(d.rows, d.cols), d.angle)


def test_extract_any_chip_details_like_dlib(medium_face, big_faces):
    """Rectangles that are not faces: the angle 0 fast path, non-square chips, far outside.

    (With angle exactly 0 and a scaled rectangle, sample points can fall exactly on pixels, where
    dlib's SVD-based affine solve rounds differently: see the note in ``extract_image_chips``.
    Faces and jitter never have angle exactly 0, so those cases are left out here.)
    """
    img, _ = medium_face
    grey = np.ascontiguousarray(img[..., 1])
    _, big, _ = big_faces[0]
    h, w = img.shape[:2]
    cases = [
        align.ChipDetails((10.0, 20.0, 159.0, 169.0), 0.0, 150, 150),      # plain copy
        align.ChipDetails((-40.0, -30.0, 109.0, 119.0), 0.0, 150, 150),    # plain copy, outside
        align.ChipDetails((10.2, 20.3, 159.2, 169.3), 0.0, 150, 150),      # angle 0, resampled
        align.ChipDetails((100.37, 50.21, 420.93, 300.58), 0.01, 80, 120),  # non-square
        align.ChipDetails((0.0, 0.0, w - 1.0, h - 1.0), -0.7, 150, 150),   # whole image, pyramid
        align.ChipDetails((w - 60.0, h - 50.0, w + 200.0, h + 210.0), 2.5, 150, 150),  # mostly out
        align.ChipDetails((-500.0, -500.0, -100.0, -100.0), 0.1, 150, 150),  # entirely outside
        align.ChipDetails((200.0, 100.0, 204.0, 104.0), 0.2, 40, 40),      # tiny, upsampled
    ]
    for image in (img, grey):
        for d in cases:
            ref = dlib.extract_image_chip(image, _dlib_details(d))
            ours = align.extract_image_chips(image, [d])[0]
            assert _n_diff(ours, ref) == 0, (d, image.ndim)
        refs = dlib.extract_image_chips(image, [_dlib_details(d) for d in cases])
        ours = align.extract_image_chips(image, cases)
        assert all(_n_diff(a, b) == 0 for a, b in zip(ours, refs))
    huge = align.ChipDetails((5.5, 7.25, big.shape[1] - 3.0, big.shape[0] - 9.0), 0.05, 150, 150)
    assert _depth(huge) >= 3
    assert _n_diff(align.extract_image_chips(big, [huge])[0],
                   dlib.extract_image_chip(big, _dlib_details(huge))) == 0


def test_pyramid_level_is_dlibs_pyramid_down(medium_face):
    img, _ = medium_face
    pyr = dlib.pyramid_down(2)
    for h, w in ((480, 640), (101, 77), (9, 9), (8, 50), (50, 8)):
        for image in (img[:h, :w], np.ascontiguousarray(img[:h, :w, 2])):
            image = np.ascontiguousarray(image)
            ours, ref = align._pyramid_down(image), pyr(image)
            assert ours.shape[:2] == ref.shape[:2] and (ours.size == 0 or _n_diff(ours, ref) == 0)


def test_rejects_images_it_cannot_handle():
    d = align.ChipDetails((0.0, 0.0, 9.0, 9.0), 0.1, 5, 5)
    for bad in (np.zeros((20, 20, 3), np.float32), np.zeros((20, 20, 4), np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            align.extract_image_chips(bad, [d])
    with pytest.raises(ValueError, match="empty"):
        empty = align.ChipDetails((5.0, 5.0, 1.0, 1.0), 0.0, 5, 5)
        align.extract_image_chips(np.zeros((20, 20), np.uint8), [empty])


def test_extract_is_fast_on_a_large_photo(faces_dir):
    img = _load(faces_dir / "deepface_tests/scarlett_johansson/img49.jpg")  # 4352 x 2903
    box = _detect(img)[0]
    lm = align.landmarks_to_array(models.shape_predictor("small")(img, box))
    align.get_face_chip(img, lm)  # warm up
    t = time.perf_counter()
    align.get_face_chip(img, lm)
    face_s = time.perf_counter() - t
    whole = align.ChipDetails((0.0, 0.0, img.shape[1] - 1.0, img.shape[0] - 1.0), 0.2, 150, 150)
    t = time.perf_counter()
    align.extract_image_chips(img, [whole])
    whole_s = time.perf_counter() - t
    # measured on a shared 2-core machine: 10-30 ms and 0.15-0.4 s (dlib: 9 ms and 90 ms);
    # the bounds leave room for a busy machine
    assert face_s < 0.5 and whole_s < 2.0, (face_s, whole_s)


# ----------------------------------------------------------------------------------------------
# jitter


def test_dlib_rand_is_mt19937_primed_by_10000_outputs():
    # the C++ standard's check value: the 10,000th output of a default mt19937 is 4123659995
    assert align.DlibRand(discard=9999).random_uint32() == 4123659995
    a, b = align.DlibRand(), align.DlibRand.from_seed_string("")
    assert [a.random_uint32() for _ in range(3)] == [b.random_uint32() for _ in range(3)]
    x = [align.DlibRand().get_random_double() for _ in range(2)]
    assert x[0] == x[1] and 0 <= x[0] < 1
    assert align.DlibRand(seed=7).get_random_double() != x[0]
    assert align.DlibRand.from_seed_string("abc").random_uint32() == align.DlibRand(
        (97 * 37 + 98) * 37 + 99).random_uint32()


def test_jitter_matches_dlib_jitter_image_pixel_for_pixel(medium_face, tmp_path):
    """dlib.jitter_image's own generator starts fresh in a new process, as DlibRand() does."""
    img, (shape5, _) = medium_face
    chip = align.get_face_chip(img, align.landmarks_to_array(shape5))
    np.save(tmp_path / "chip.npy", chip)
    code = (
        "import sys, numpy as np, dlib; c = np.load(sys.argv[1]);"
        "np.save(sys.argv[2], np.stack(dlib.jitter_image(c, 6)))"
    )
    args = [str(tmp_path / "chip.npy"), str(tmp_path / "ref.npy")]
    subprocess.run([sys.executable, "-c", code, *args], check=True, timeout=60)
    refs = np.load(tmp_path / "ref.npy")
    ours = align.jitter_chips(chip, 6, align.DlibRand())
    assert [_n_diff(a, b) for a, b in zip(ours, refs)] == [0] * 6
    assert any(_n_diff(a, chip) > 0 for a in ours)
    grey = align.jitter_image(np.ascontiguousarray(chip[..., 0]), align.DlibRand())
    assert grey.shape == (150, 150)
    with pytest.raises(ValueError, match="square"):
        align.jitter_image(np.zeros((150, 140, 3), np.uint8), align.DlibRand())


def test_jittered_descriptors_match_dlib_across_two_calls(medium_face):
    """compute_face_descriptor(num_jitters=4) twice on one fresh model vs dlib's net on ours."""
    img, (shape5, _) = medium_face
    fresh = dlib.face_recognition_model_v1(str(models.model_path(models.FACE_RECOGNITION_MODEL)))
    first = np.array(fresh.compute_face_descriptor(img, shape5, 4))
    second = np.array(fresh.compute_face_descriptor(img, shape5, 4))
    assert np.abs(first - second).max() > 1e-3  # the generator moved on

    chip = align.get_face_chip(img, align.landmarks_to_array(shape5))
    rng = align.DlibRand()  # one per model object, kept across calls
    jitters = align.jitter_chips(chip, 4, rng) + align.jitter_chips(chip, 4, rng)
    net = models.face_recognition_model()
    desc = np.array(net.compute_face_descriptor(jitters), dtype=np.float32)  # no jitter: 150x150
    ours_first = desc[:4].sum(axis=0) / np.float32(4)
    ours_second = desc[4:].sum(axis=0) / np.float32(4)
    assert np.abs(ours_first - first).max() <= 1e-5
    assert np.abs(ours_second - second).max() <= 1e-5
