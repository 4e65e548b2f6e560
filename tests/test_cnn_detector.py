"""TorchCnnDetector against dlib's own ``cnn_face_detection_model_v1``, on real photos of every set.

dlib's detections are computed once per module (its CNN is slow on a CPU, so the photos are small);
the torch detector runs one batched call per upsample level over all photos at once (mixed sizes:
padding and masking included). Rectangles must be identical, confidences within 1e-4.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import person_images
from dlibplus import models
from dlibplus.dlibnet import dat_io, mmod
from dlibplus.errors import ModelFileError

torch = pytest.importorskip("torch")
dlib = pytest.importorskip("dlib")

from dlibplus.cnn_detector import Detection, TorchCnnDetector, cnn_detector  # noqa: E402

CONFIDENCE_TOLERANCE = 1e-4
TWO_PEOPLE = "face_recognition/_multi_or_unlabelled/examples__two_people.jpg"

# id -> (set, file or None for the set's first photo, colour mode, region/scale, upsample levels)
CASES = {
    "face_recognition small face": ("face_recognition", "obama/examples__obama_small.jpg", "RGB", None, (0, 1)),
    "face_recognition two faces": ("face_recognition", "_multi_or_unlabelled/examples__knn_examples__test__kit_with_rose.jpg",
                                   "RGB", None, (0,)),
    "face_recognition RGBA png": ("face_recognition", "alex_lacamoire/examples__alex-lacamoire.png", "RGB", None, (0,)),
    "no face (photo crop)": ("face_recognition", "_multi_or_unlabelled/examples__two_people.jpg", "RGB",
                             (slice(400, None), slice(0, 300)), (0, 1)),
    "deepface large face": ("deepface_tests", "katy_perry/img46.jpg", "RGB", None, (0,)),
    "deepface photo scaled 0.4": ("deepface_tests", "george_clooney/img38.jpg", "RGB", 0.4, (0,)),
    "lfw greyscale": ("lfw_dev", None, "L", None, (0, 1)),
    "yale greyscale": ("yale_faces", None, "L", None, (0,)),
    "orl greyscale crop": ("orl_att", None, "L", None, (0, 1, 2)),
    "glint crop": ("glint360k_celeb24", None, "RGB", None, (0, 2)),
    "kpop crop": ("kpop_idols15", None, "RGB", None, (0, 1)),
    "five_celebrity crop": ("five_celebrity", None, "RGB", None, (0,)),
    "dlib_johns chip": ("dlib_johns", None, "RGB", None, (0,)),
}
RUNS = [(case, up) for case, spec in CASES.items() for up in spec[4]]


def load_case(faces_dir, case: str) -> np.ndarray:
    set_name, name, mode, region, _ = CASES[case]
    path = faces_dir / set_name / name if name else person_images(faces_dir, set_name, 1)[0][1]
    with Image.open(path) as im:
        im = im.convert(mode)
        if isinstance(region, float):
            im = im.resize((round(im.width * region), round(im.height * region)), Image.BILINEAR)
        image = np.asarray(im)
    return np.ascontiguousarray(image[region]) if isinstance(region, tuple) else image


def dlib_detections(detector, image: np.ndarray, upsample: int) -> list[tuple[tuple[int, int, int, int], float]]:
    return [((d.rect.top(), d.rect.right(), d.rect.bottom(), d.rect.left()), d.confidence)
            for d in detector(image, upsample)]


@pytest.fixture(scope="module")
def images(faces_dir) -> dict[str, np.ndarray]:
    return {case: load_case(faces_dir, case) for case in CASES}


@pytest.fixture(scope="module")
def dlib_results(images):
    detector = dlib.cnn_face_detection_model_v1(str(models.model_path(models.CNN_DETECTOR)))
    return {(case, up): dlib_detections(detector, images[case], up) for case, up in RUNS}


@pytest.fixture(scope="module")
def detector() -> TorchCnnDetector:
    return TorchCnnDetector(device="cpu")


@pytest.fixture(scope="module")
def torch_results(images, detector):
    """One batched call per upsample level over every photo run at that level."""
    results = {}
    for up in sorted({up for _, up in RUNS}):
        cases = [case for case, u in RUNS if u == up]
        for case, found in zip(cases, detector([images[case] for case in cases], up)):
            results[(case, up)] = found
    return results


@pytest.mark.parametrize("case,upsample", RUNS, ids=[f"{c} up{u}" for c, u in RUNS])
def test_detections_match_dlib(case, upsample, dlib_results, torch_results):
    ref, got = dlib_results[(case, upsample)], torch_results[(case, upsample)]
    assert [d.box for d in got] == [box for box, _ in ref]
    for det, (_, conf) in zip(got, ref):
        assert isinstance(det, Detection) and isinstance(det.confidence, float)
        assert abs(det.confidence - conf) <= CONFIDENCE_TOLERANCE


def test_the_photos_exercise_what_they_should(dlib_results):
    """The cases mean something: faces found in most, two in the two-face photo, none in the crop."""
    assert len(dlib_results[("face_recognition two faces", 0)]) == 2
    assert dlib_results[("no face (photo crop)", 0)] == dlib_results[("no face (photo crop)", 1)] == []
    with_faces = [key for key, found in dlib_results.items() if found]
    assert len(with_faces) >= len(dlib_results) - 6


def test_one_image_at_a_time_gives_the_batched_result(images, detector, torch_results):
    for case in ("face_recognition two faces", "lfw greyscale", "glint crop"):
        assert detector.detect(images[case], 0) == torch_results[(case, 0)]


def canvas_of(detector: TorchCnnDetector, image: np.ndarray, upsample: int) -> tuple[np.ndarray, list]:
    shape = image.shape[:2]
    for _ in range(upsample):
        shape = mmod.upsampled_size(*shape)
    rects, nr, nc = detector._layout(shape)
    canvas = torch.zeros((1, 3, nr, nc))
    detector._fill_pyramid(canvas, [image], upsample, rects)
    return canvas[0].numpy(), rects


@pytest.mark.parametrize("case,upsample", [("kpop crop", 0), ("kpop crop", 1), ("orl greyscale crop", 2)])
def test_tiled_pyramid_is_dlibs_resize_bit_for_bit(case, upsample, images, detector):
    """Both pyramid builders give the same tensor, and it is dlib's: the image upsampled by
    dlib.resize_image to pyramid_up's size, (pixel - mean) / 256, each level dlib.resize_image
    (float32) of the level before, zero elsewhere."""
    image = images[case]
    canvas, rects = canvas_of(detector, image, upsample)
    torch_built, _ = canvas_of(TorchCnnDetector(device="cpu", pyramid="torch"), image, upsample)
    assert detector.pyramid == "dlib" and np.array_equal(torch_built, canvas)
    up = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    for _ in range(upsample):
        up = dlib.resize_image(up, *mmod.upsampled_size(*up.shape[:2]))
    means = np.array(detector.net.means, np.float32).reshape(3, 1, 1)
    first = canvas[:, rects[0][1]:rects[0][3] + 1, rects[0][0]:rects[0][2] + 1]
    assert np.array_equal(first, (up.transpose(2, 0, 1).astype(np.float32) - means) / np.float32(256))
    for prev, rect in zip(rects, rects[1:]):
        src = canvas[:, prev[1]:prev[3] + 1, prev[0]:prev[2] + 1]
        want = np.stack([dlib.resize_image(np.ascontiguousarray(ch), rect[3] - rect[1] + 1, rect[2] - rect[0] + 1)
                         for ch in src])
        assert np.array_equal(canvas[:, rect[1]:rect[3] + 1, rect[0]:rect[2] + 1], want)
    outside = np.ones(canvas.shape[1:], bool)
    for left, top, right, bottom in rects:
        outside[top:bottom + 1, left:right + 1] = False
    assert not canvas[:, outside].any()


def test_torch_pyramid_path_matches_dlib(images, dlib_results):
    """The path CUDA takes (pyramid built with tensor ops), run on the CPU."""
    detector = TorchCnnDetector(device="cpu", pyramid="torch")
    for up in (0, 1):
        cases = [case for case, u in RUNS if u == up][:4]
        for case, got in zip(cases, detector([images[c] for c in cases], up)):
            ref = dlib_results[(case, up)]
            assert [d.box for d in got] == [box for box, _ in ref], case
            assert all(abs(d.confidence - c) <= CONFIDENCE_TOLERANCE for d, (_, c) in zip(got, ref))


def test_pyramid_layout_has_dlibs_shape():
    rects, nr, nc = mmod.tiled_pyramid_rects(250, 250)
    assert rects[0] == (11, 11, 260, 260) and nc == 250 + 22
    assert [r[3] - r[1] + 1 for r in rects[:4]] == [250, 208, 173, 144]  # floor(5/6 * h)
    assert all(r[2] == rects[0][2] for r in rects if r[0] != 11)  # second column right-aligned
    assert mmod.upsampled_size(250, 250) == (501, 502)
    assert mmod.tiled_pyramid_rects(3, 3) == ([], 0, 0)


def test_bad_inputs(detector):
    assert detector([], 1) == []
    assert detector([np.zeros((3, 3, 3), np.uint8)], 0) == [[]]  # too small: dlib itself fails here
    with pytest.raises(ValueError, match="uint8"):
        detector([np.zeros((50, 50, 3), np.float32)], 0)
    with pytest.raises(ValueError, match="greyscale"):
        detector([np.zeros((50, 50, 4), np.uint8)], 0)
    with pytest.raises(ValueError, match="upsample"):
        detector([np.zeros((50, 50), np.uint8)], -1)
    with pytest.raises(ValueError, match="precision"):
        TorchCnnDetector(precision="half")
    with pytest.raises(ValueError, match="pyramid"):
        TorchCnnDetector(pyramid="opencv")


def test_cached_loader_and_fast_mode_on_cpu(images):
    assert cnn_detector("cpu") is cnn_detector("cpu")
    fast = cnn_detector("cpu", "fast")
    assert fast is not cnn_detector("cpu") and fast.precision == "fast"
    image = images["lfw greyscale"]
    assert fast([image], 0) == cnn_detector("cpu")([image], 0)  # CPU "fast" is the float32 path


# ---------------------------------------------------------------------------------------------
# The .dat file

@pytest.fixture(scope="module")
def mmod_bytes() -> bytes:
    return models.model_path(models.CNN_DETECTOR).read_bytes()


def test_file_reads_and_writes_back_byte_for_byte(mmod_bytes):
    parsed = dat_io.parse_dat(mmod_bytes, loss_tags=dat_io.MMOD_LOSS_TAGS, input_tags=dat_io.PYRAMID_INPUT_TAGS)
    assert dat_io.dat_bytes(parsed) == mmod_bytes
    net = mmod.mmod_from_dat(parsed)
    assert [type(layer).__name__ for layer in net.layers] == ["Conv", "Affine", "Relu"] * 6 + ["Conv"]
    assert [c.stride for c in net.convs] == [(2, 2)] * 3 + [(1, 1)] * 4
    assert net.windows == (mmod.DetectorWindow(80, 80),)
    assert (net.pyramid_padding, net.pyramid_outer_padding) == (10, 11)


def test_truncated_corrupt_and_foreign_files_raise_model_file_error(mmod_bytes, faces_dir, tmp_path):
    cut = tmp_path / "cut.dat"
    cut.write_bytes(mmod_bytes[:len(mmod_bytes) // 2])
    with pytest.raises(ModelFileError, match=r"layer \d+ \(con_4\).*byte \d+"):
        TorchCnnDetector(cut, device="cpu")
    unknown = tmp_path / "unknown_layer.dat"
    unknown.write_bytes(mmod_bytes.replace(b"\x05relu_", b"\x05relu9", 1))
    with pytest.raises(ModelFileError, match=r"layer 2.*unexpected tag 'relu9'"):
        TorchCnnDetector(unknown, device="cpu")
    with pytest.raises(ModelFileError, match="loss layer.*unexpected tag 'loss_metric"):
        TorchCnnDetector(models.model_path(models.FACE_RECOGNITION_MODEL), device="cpu")
    with pytest.raises(ModelFileError, match="at byte 0"):
        TorchCnnDetector(faces_dir / TWO_PEOPLE, device="cpu")
    with pytest.raises(ModelFileError, match="cannot read"):
        TorchCnnDetector(tmp_path / "missing.dat", device="cpu")
    long = tmp_path / "long.dat"
    long.write_bytes(mmod_bytes + b"\0")
    with pytest.raises(ModelFileError, match="unexpected bytes after the network"):
        mmod.read_mmod(long)


def test_importing_does_not_import_torch():
    code = "import sys, dlibplus.cnn_detector, dlibplus.dlibnet.mmod; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_dlib_and_restores_tf32(images, dlib_results):
    conv = getattr(torch.backends.cudnn, "conv", None)
    before = conv.fp32_precision if conv is not None and hasattr(conv, "fp32_precision") \
        else torch.backends.cudnn.allow_tf32
    cuda = TorchCnnDetector(device="cuda")
    cases = [case for case, up in RUNS if up == 0]
    for case, got in zip(cases, cuda([images[c] for c in cases], 0)):
        ref = dlib_results[(case, 0)]
        assert [d.box for d in got] == [box for box, _ in ref]
        assert all(abs(d.confidence - c) <= CONFIDENCE_TOLERANCE for d, (_, c) in zip(got, ref))
    after = conv.fp32_precision if conv is not None and hasattr(conv, "fp32_precision") \
        else torch.backends.cudnn.allow_tf32
    assert after == before


def test_pipeline_and_api_detect_with_the_replica_as_dlib_does(faces_dir, tmp_path):
    """`--detector cnn` and face_locations(model="cnn") run the torch replica (in worker processes for the
    pipeline): the boxes are face_recognition's own, which come from dlib's CNN."""
    import os

    import face_recognition as fr

    import dlibplus
    from dlibplus.data import process_images
    from dlibplus.faces import FaceSettings

    photos = [faces_dir / "lfw_dev/Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
              faces_dir / "lfw_dev/Abdullah_Gul/Abdullah_Gul_0001.jpg"]
    expected = [fr.face_locations(fr.load_image_file(p), 0, model="cnn") for p in photos]
    results = process_images(photos, FaceSettings(detector="cnn", upsample=0), want="chips", jobs=2,
                             use_cache=False, progress=False)
    assert [sorted(map(tuple, r.boxes.tolist())) for r in results] == [sorted(e) for e in expected]
    assert dlibplus.face_locations(fr.load_image_file(photos[1]), 0, model="cnn") == expected[1]
    assert os.environ.get("OMP_NUM_THREADS") != "1"  # the workers' setting stays in the workers
