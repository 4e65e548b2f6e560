"""The drop-in API against face_recognition 1.3.0 itself, on the shared photos."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dlibplus
from dlibplus.errors import ImageReadError, ModelFileError

fr = pytest.importorskip("face_recognition")

WHOLE_PHOTOS = [
    "face_recognition/obama/examples__obama-720p.jpg",
    "face_recognition/obama/tests__test_images__obama_partial_face.jpg",
    "face_recognition/biden/examples__biden.jpg",
    "face_recognition/_multi_or_unlabelled/examples__two_people.jpg",
    "face_recognition/_multi_or_unlabelled/tests__test_images__32bit.png",
    "lfw_dev/Aaron_Sorkin/Aaron_Sorkin_0001.jpg",
    "deepface_tests/angelina_jolie/img1.jpg",
]


@pytest.fixture(scope="module")
def photos(faces_dir):
    return {name: fr.load_image_file(str(faces_dir / name)) for name in WHOLE_PHOTOS}


def test_import_loads_nothing_heavy():
    code = "import sys, dlibplus; print(sorted(m for m in ('dlib','torch','sklearn','cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_exports_the_seven_names_with_same_signatures():
    import inspect

    for name in ("load_image_file", "face_locations", "batch_face_locations", "face_landmarks",
                 "face_encodings", "compare_faces", "face_distance"):
        ours = inspect.signature(getattr(dlibplus, name)).parameters
        theirs = inspect.signature(getattr(fr, name)).parameters
        for pname, param in theirs.items():
            assert pname in ours, (name, pname)
            assert ours[pname].default == param.default, (name, pname)
        assert list(ours)[: len(theirs)] == list(theirs), name


def test_load_image_file_matches(faces_dir):
    for name in WHOLE_PHOTOS + ["yale_faces/" + sorted(os.listdir(faces_dir / "yale_faces"))[0]]:
        path = faces_dir / name
        if path.is_dir():
            path = sorted(path.iterdir())[0]
        for mode in ("RGB", "L"):
            assert np.array_equal(dlibplus.load_image_file(str(path), mode), fr.load_image_file(str(path), mode))


@pytest.mark.parametrize("upsample", [0, 1])
def test_face_locations_match(photos, upsample):
    for name, img in photos.items():
        assert dlibplus.face_locations(img, upsample) == fr.face_locations(img, upsample), name


def test_cnn_locations_match(faces_dir):
    img = fr.load_image_file(str(faces_dir / "face_recognition/obama/examples__obama-240p.jpg"))
    assert dlibplus.face_locations(img, 0, model="cnn") == fr.face_locations(img, 0, model="cnn")
    assert dlibplus.batch_face_locations([img, img], 0) == fr.batch_face_locations([img, img], 0)


def test_batch_face_locations_of_mixed_sizes(faces_dir):
    """dlib's CNN takes one size per call (face_recognition raises its RuntimeError): each size is its own
    batch, results in input order, each equal to the image's own face_locations(model="cnn")."""
    kpop = sorted((faces_dir / "kpop_idols15" / "Arin").iterdir())[:2]  # 160x160 crops
    lfw = faces_dir / "lfw_dev/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"  # 250x250
    small_a, small_b, large = (fr.load_image_file(str(p)) for p in (*kpop, lfw))
    assert small_a.shape == small_b.shape != large.shape
    mixed = [small_a, large, small_b]
    with pytest.raises(RuntimeError):
        fr.batch_face_locations(mixed, 0)
    got = dlibplus.batch_face_locations(mixed, 0)
    assert got == [dlibplus.face_locations(img, 0, model="cnn") for img in mixed]
    assert all(len(boxes) == 1 for boxes in got)  # one face each: the comparison is not vacuous
    # same-size images: face_recognition's own answer
    assert dlibplus.batch_face_locations([small_a, small_b], 0) == fr.batch_face_locations([small_a, small_b], 0)
    assert dlibplus.batch_face_locations([], 0) == []


@pytest.mark.parametrize("model", ["large", "small"])
def test_face_landmarks_match(photos, model):
    for name, img in photos.items():
        assert dlibplus.face_landmarks(img, model=model) == fr.face_landmarks(img, model=model), name
    img = photos[WHOLE_PHOTOS[2]]
    boxes = fr.face_locations(img)
    assert dlibplus.face_landmarks(img, boxes, model) == fr.face_landmarks(img, boxes, model)


@pytest.mark.parametrize("model", ["small", "large"])
def test_face_encodings_match(photos, model):
    for name, img in photos.items():
        ours = dlibplus.face_encodings(img, model=model)
        theirs = fr.face_encodings(img, model=model)
        assert len(ours) == len(theirs), name
        for a, b in zip(ours, theirs):
            assert a.shape == (128,) and a.dtype == np.float64
            assert np.max(np.abs(a - b)) <= 1e-6, name


def test_face_encodings_known_locations_whole_crop(faces_dir):
    path = sorted((faces_dir / "kpop_idols15" / "Irene").iterdir())[0]
    img = fr.load_image_file(str(path))
    box = [(0, img.shape[1], img.shape[0], 0)]
    a = dlibplus.face_encodings(img, box)[0]
    b = fr.face_encodings(img, box)[0]
    assert np.max(np.abs(a - b)) <= 1e-6


def test_compare_and_distance_match(photos):
    encs = [e for img in photos.values() for e in fr.face_encodings(img)]
    probe = encs[0]
    assert np.allclose(dlibplus.face_distance(encs, probe), fr.face_distance(np.array(encs), probe))
    for tol in (0.6, 0.4):
        assert dlibplus.compare_faces(encs, probe, tol) == fr.compare_faces(np.array(encs), probe, tol)
    assert dlibplus.face_distance([], probe).shape == (0,)
    assert dlibplus.compare_faces([], probe) == []


def test_bad_model_names_raise():
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="hog"):
        dlibplus.face_locations(img, model="fast")
    with pytest.raises(ValueError, match="small"):
        dlibplus.face_landmarks(img, model="medium")
    with pytest.raises(ValueError, match="small"):
        dlibplus.face_encodings(img, model="medium")


def test_missing_models_raise_clear_error(tmp_path):
    code = ("import dlibplus, numpy as np\n"
            "from dlibplus.errors import ModelFileError\n"
            "try:\n"
            "    dlibplus.face_encodings(np.zeros((60,60,3),np.uint8), [(0,60,60,0)])\n"
            "except ModelFileError as e:\n"
            "    print('ERR', e)\n")
    env = dict(os.environ, DLIBPLUS_MODELS=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    assert out.startswith("ERR") and str(tmp_path) in out and "not found" in out


def test_corrupt_model_file_raises(tmp_path, monkeypatch):
    from dlibplus import models

    (tmp_path / models.POSE_5).write_bytes(b"not a dlib model at all" * 10)
    monkeypatch.setenv("DLIBPLUS_MODELS", str(tmp_path))
    models.shape_predictor.cache_clear()
    try:
        with pytest.raises(ModelFileError, match=models.POSE_5):
            models.shape_predictor("small")
    finally:
        models.shape_predictor.cache_clear()


# --- load_image_file on awkward inputs ------------------------------------------------------------

def _save(tmp_path, name, im, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def test_rgba_palette_grey_16bit_cmyk(tmp_path, faces_dir):
    base = Image.open(faces_dir / "face_recognition/biden/examples__biden.jpg").convert("RGB")
    rgb = np.array(base)
    # transparent pixels become white, opaque ones keep their colour
    rgba = base.convert("RGBA")
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:10] = 0
    rgba.putalpha(Image.fromarray(alpha))
    got = dlibplus.load_image_file(_save(tmp_path, "a.png", rgba))
    assert got.shape == rgb.shape and got.dtype == np.uint8
    assert (got[:10] == 255).all() and np.array_equal(got[10:], rgb[10:])
    # palette and greyscale: same as face_recognition
    for name, im in (("p.png", base.convert("P")), ("l.png", base.convert("L"))):
        path = _save(tmp_path, name, im)
        assert np.array_equal(dlibplus.load_image_file(path), fr.load_image_file(str(path)))
    # 16-bit greyscale is scaled, not clipped to white
    grey16 = (np.array(base.convert("L")).astype(np.uint16) * 257)
    path = _save(tmp_path, "g16.png", Image.fromarray(grey16))
    got = dlibplus.load_image_file(path)
    assert np.array_equal(got[..., 0], np.array(base.convert("L")))
    assert fr.load_image_file(str(path)).mean() > got.mean() + 50  # the original washes it out
    # CMYK jpeg decodes to an RGB image close to the original
    path = _save(tmp_path, "c.jpg", base.convert("CMYK"), quality=95)
    got = dlibplus.load_image_file(path)
    assert got.shape == rgb.shape and np.abs(got.astype(int) - rgb).mean() < 8


def test_exif_orientation_applied(tmp_path, faces_dir):
    base = Image.open(faces_dir / "face_recognition/biden/examples__biden.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    base.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    upright = dlibplus.load_image_file(path)
    raw = dlibplus.load_image_file(path, exif_transpose=False)
    assert upright.shape[:2] == (base.height, base.width)
    assert raw.shape[:2] == (base.width, base.height)
    assert len(dlibplus.face_locations(upright)) == 1


def test_unreadable_files_name_the_file(tmp_path, faces_dir):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo")
    with pytest.raises(ImageReadError, match="notes.jpg"):
        dlibplus.load_image_file(text)
    data = (faces_dir / "face_recognition/biden/examples__biden.jpg").read_bytes()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="cut.jpg.*truncated"):
        dlibplus.load_image_file(truncated)
    with pytest.raises(ImageReadError, match="missing.jpg"):
        dlibplus.load_image_file(tmp_path / "missing.jpg")
    # file objects work too
    assert dlibplus.load_image_file(io.BytesIO(data)).shape[2] == 3


def test_huge_images(tmp_path):
    # a decompression bomb (400 Mpx) is refused with the file named, before it eats the memory
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    with pytest.raises(ImageReadError, match="bomb.png.*too large"):
        dlibplus.load_image_file(bomb)
    # a big but legitimate photo loads
    big = tmp_path / "big.png"
    Image.new("RGB", (6000, 4000), (90, 120, 150)).save(big)
    assert dlibplus.load_image_file(big).shape == (4000, 6000, 3)
