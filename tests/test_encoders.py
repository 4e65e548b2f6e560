"""dlibplus.encoders: TorchEncoder against dlib's compute_face_descriptor on real aligned faces."""
from __future__ import annotations

import subprocess
import sys

import dlib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, person_images
from dlibplus import encoders, models
from dlibplus.dlibnet import load_dat, save_dat
from dlibplus.encoders import DlibEncoder, FlipEncoder, TorchEncoder, load_encoder, split_flip, with_jitter
from dlibplus.errors import ModelFileError
from dlibplus.precision import float32_settings

TOL = 1e-5  # max |torch - dlib| per descriptor component
# Tight crops (whole image = face box), 212 faces of 59 people.
PARITY_SETS = (("kpop_idols15", 8), ("glint360k_celeb24", 3), ("five_celebrity", 2), ("dlib_johns", 2))


@pytest.fixture(scope="module")
def chips(faces_dir) -> np.ndarray:
    """Aligned 150x150 chips the way face_recognition makes them, with the whole image as the box."""
    predictor = models.shape_predictor("small")
    out = []
    for set_name, per_person in PARITY_SETS:
        for _, path in person_images(faces_dir, set_name, per_person):
            image = np.asarray(Image.open(path).convert("RGB"))
            h, w = image.shape[:2]
            shape = predictor(image, dlib.rectangle(0, 0, w, h))  # css (0, w, h, 0)
            out.append(dlib.get_face_chip(image, shape, 150, 0.25))
    return np.stack(out)


@pytest.fixture(scope="module")
def dlib_reference(chips) -> np.ndarray:
    """dlib itself: compute_face_descriptor on the chips (no jitter)."""
    net = models.face_recognition_model()
    return np.array([np.asarray(d) for d in net.compute_face_descriptor(list(chips))])


def test_parity_with_dlib_on_real_faces(chips, dlib_reference):
    assert len(chips) >= 200
    ours = TorchEncoder(device="cpu").encode(chips)
    assert ours.shape == (len(chips), 128) and ours.dtype == np.float64
    assert np.abs(ours - dlib_reference).max() <= TOL


def test_parity_of_the_model_in_train_mode(chips, dlib_reference):
    model = load_dat().train()
    with torch.no_grad():
        out = torch.cat([model(torch.from_numpy(chips[i:i + 64]).permute(0, 3, 1, 2).float())
                         for i in range(0, len(chips), 64)])
    assert model.training
    assert np.abs(out.double().numpy() - dlib_reference).max() <= TOL


def test_dlib_encoder_is_dlib(chips, dlib_reference):
    encoder = DlibEncoder()
    np.testing.assert_array_equal(encoder.encode(list(chips[:5])), dlib_reference[:5])
    assert encoder.encode([]).shape == (0, 128)


def test_dlib_encoder_reads_a_saved_model(chips, tmp_path):
    model = load_dat()
    with torch.no_grad():
        model.fc.weight.mul_(1.5)
    path = tmp_path / "model.dat"
    save_dat(model, path)
    theirs = DlibEncoder(path).encode(chips[:4])
    ours = TorchEncoder(model, device="cpu").encode(chips[:4])
    assert np.abs(theirs - ours).max() <= TOL
    assert load_encoder(tmp_path).identity["model_sha256"] == DlibEncoder(path).identity["model_sha256"]


def test_batching_and_input_forms(chips):
    encoder = TorchEncoder(device="cpu", batch_size=7, channels_last=False)
    batched = encoder.encode(chips[:20])
    assert np.abs(batched - TorchEncoder(device="cpu").encode(list(chips[:20]))).max() <= 1e-6
    assert encoder.encode([]).shape == (0, 128)
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode(chips[:2].astype(np.float32))
    with pytest.raises(ValueError, match=r"chip 1 has shape \(112, 112, 3\)"):
        encoder.encode([chips[0], np.zeros((112, 112, 3), np.uint8)])
    with pytest.raises(ValueError, match="shape"):
        encoder.encode(chips[0])


CUDA = pytest.param("cuda", True, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


@pytest.mark.parametrize("device,channels_last", [("cpu", True), ("cpu", False), CUDA])
def test_frozen_features_finish_to_encode_bit_for_bit(chips, device, channels_last):
    """The first k stages' activations, kept, then the rest by other weights in those later stages
    (fine-tuning behind a --freeze): the descriptors are those encode gives, to the last bit, for every k."""
    base = load_dat()
    tuned = load_dat()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in tuned.layer3.parameters():
            p.add_(0.01 * torch.randn_like(p))
    kept = TorchEncoder(base, device=device, batch_size=16, channels_last=channels_last)
    encoder = TorchEncoder(tuned, device=device, batch_size=16, channels_last=channels_last)
    sample = chips[:40]
    plain = encoder.encode(sample)
    for stages in (1, 2, 3):  # layer3 differs: its activations come from the weights that run it
        features = kept.frozen_features(sample, stages)
        assert [len(f) for f in features] == [16, 16, 8]
        assert np.array_equal(encoder.encode_features(features, stages), plain)
    assert not np.array_equal(encoder.encode_features(kept.frozen_features(sample, 4), 4), plain)
    assert np.array_equal(kept.encode_features(kept.frozen_features(sample, 6), 6), kept.encode(sample))


def test_identity():
    dlib_id = DlibEncoder().identity
    torch_id = TorchEncoder(device="cpu").identity
    assert dlib_id["kind"] == "dlib" and torch_id["kind"] == "torch"
    original = encoders.file_sha256(models.model_path(models.FACE_RECOGNITION_MODEL))
    assert dlib_id["model_sha256"] == torch_id["model_sha256"] == original
    assert TorchEncoder(load_dat(), device="cpu").identity == torch_id  # same weights, same key
    changed = load_dat()
    with torch.no_grad():
        changed.fc.weight[0, 0] += 1
    assert TorchEncoder(changed, device="cpu").identity["model_sha256"] != original
    assert with_jitter(DlibEncoder(), 3).identity != dlib_id


def test_encoder_is_a_snapshot(chips):
    model = load_dat()
    encoder = TorchEncoder(model, device="cpu")
    before = encoder.encode(chips[:2])
    with torch.no_grad():
        model.fc.weight.zero_()
    np.testing.assert_array_equal(encoder.encode(chips[:2]), before)


def test_options_are_checked():
    with pytest.raises(ValueError, match="half=True needs a CUDA device"):
        TorchEncoder(device="cpu", half=True)
    with pytest.raises(ValueError, match="batch_size"):
        TorchEncoder(device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="'float16' needs a CUDA device"):
        TorchEncoder(device="cpu", precision="float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        TorchEncoder(device="cpu", precision="tf32")
    assert TorchEncoder(device="cpu").batch_size == encoders.CPU_BATCH_SIZE
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            TorchEncoder(device="cuda")
        assert TorchEncoder().device.type == "cpu"


@pytest.fixture
def tf32_on():
    """TF32 (and reduced-precision float32 matmuls) switched on globally, as PyTorch users often do;
    PyTorch's defaults back after the test."""
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    yield
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's defaults
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def test_exact_whatever_the_global_settings_and_they_are_restored(chips, dlib_reference, tf32_on):
    before = float32_settings()
    encoder = TorchEncoder(device="cpu")
    seen = []
    network = encoder._forward_fn
    encoder._forward_fn = lambda x: (seen.append(float32_settings()), network(x))[1]
    assert np.abs(encoder.encode(chips[:16]) - dlib_reference[:16]).max() <= TOL
    assert seen and all(v in ("ieee", "none", False, "highest") for v in seen[0].values() if v is not None)
    assert float32_settings() == before
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"

    def fail(x):
        raise RuntimeError("boom")

    encoder._forward_fn = fail
    with pytest.raises(RuntimeError, match="boom"):
        encoder.encode(chips[:2])
    assert float32_settings() == before


def test_fast_precision_on_cpu_is_bfloat16_autocast(chips, dlib_reference):
    fast = TorchEncoder(device="cpu", precision="fast")
    assert fast.precision == "bfloat16" and not fast.half
    out = fast.encode(chips[:8])
    error = np.abs(out - dlib_reference[:8])
    print(f"bfloat16 on CPU vs dlib: max |d| {error.max():.2e}, max L2 {np.linalg.norm(out - dlib_reference[:8], axis=1).max():.2e}")
    assert 1e-5 < error.max() <= 2e-2  # measured ~4e-3: really reduced precision, still close
    assert np.abs(TorchEncoder(device="cpu", precision="bfloat16").encode(chips[:2]) - out[:2]).max() == 0


def test_identity_differs_per_precision():
    exact = TorchEncoder(device="cpu").identity
    assert exact["settings"] == {"precision": "exact"}
    fast = TorchEncoder(device="cpu", precision="fast").identity
    assert fast != exact and fast == TorchEncoder(device="cpu", precision="bfloat16").identity
    compiled = TorchEncoder(device="cpu", compile=True)  # compiles on first use only
    assert compiled.identity != exact and compiled.identity["settings"]["compile"] is True
    assert fast["model_sha256"] == exact["model_sha256"]


def test_embed_takes_tensors(chips):
    encoder = TorchEncoder(device="cpu", batch_size=2)
    out = encoder.embed(torch.from_numpy(chips[:3]))
    assert out.dtype == torch.float32 and out.shape == (3, 128)
    assert np.array_equal(out.double().numpy(), encoder.encode(chips[:3]))
    with pytest.raises(ValueError, match="shape"):
        encoder.embed(torch.from_numpy(chips[:2]).permute(0, 3, 1, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32_and_half(chips, dlib_reference, tf32_on):
    """On CUDA with TF32 globally on: exact stays within 1e-5 of dlib; fast modes are reduced precision."""
    before = float32_settings()
    exact = TorchEncoder(device="cuda")
    assert exact.precision == "exact" and exact.batch_size >= 128
    assert np.abs(exact.encode(chips) - dlib_reference).max() <= TOL
    assert float32_settings() == before and torch.backends.cudnn.allow_tf32
    small_batches = TorchEncoder(device="cuda", batch_size=7).encode(chips)  # the copy/compute overlap
    assert np.abs(small_batches - dlib_reference).max() <= TOL
    on_gpu = exact.embed(torch.from_numpy(chips).cuda())
    assert on_gpu.device.type == "cuda" and np.abs(on_gpu.double().cpu().numpy() - dlib_reference).max() <= TOL
    half = TorchEncoder(device="cuda", half=True, batch_size=256)
    assert half.precision == "float16" and half.identity == TorchEncoder(device="cuda", precision="fast").identity
    assert np.abs(half.encode(chips) - dlib_reference).max() <= 2e-2
    bf16 = TorchEncoder(device="cuda", precision="bfloat16").encode(chips)
    assert np.abs(bf16 - dlib_reference).max() <= 3e-2
    assert float32_settings() == before


def test_load_encoder(tmp_path):
    assert isinstance(load_encoder("dlib"), DlibEncoder)
    encoder = load_encoder("torch", device="cpu", batch_size=8)
    assert isinstance(encoder, TorchEncoder) and encoder.batch_size == 8
    path = tmp_path / "tuned.dat"
    save_dat(load_dat(), path)
    assert isinstance(load_encoder(path), TorchEncoder)
    assert isinstance(load_encoder(str(path)), TorchEncoder)
    (tmp_path / "run").mkdir()
    with pytest.raises(ModelFileError, match="holds no model.dat"):
        load_encoder(tmp_path / "run")
    save_dat(load_dat(), tmp_path / "run" / "model.dat")
    assert load_encoder(tmp_path / "run").identity["model_sha256"] == encoder.identity["model_sha256"]
    with pytest.raises(ModelFileError, match="no such file"):
        load_encoder("dlibb")
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="not a .dat"):
        load_encoder(tmp_path / "weights.pt")
    (tmp_path / "bad.dat").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="bad.dat"):
        load_encoder(tmp_path / "bad.dat")
    with pytest.raises(ValueError):
        load_encoder(42)


def test_importing_encoders_does_not_import_torch():
    code = "import sys, dlibplus.encoders; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_flip_encoder_averages_dlib_on_the_mirror_image(chips, dlib_reference):
    net = models.face_recognition_model()
    mirrored = [np.ascontiguousarray(np.fliplr(c)) for c in chips[:6]]
    dlib_mirror = np.array([np.asarray(d) for d in net.compute_face_descriptor(mirrored)])
    expected = (dlib_reference[:6] + dlib_mirror) / 2
    flip = load_encoder("dlib+flip")
    assert isinstance(flip, FlipEncoder) and isinstance(flip.base, DlibEncoder)
    np.testing.assert_allclose(flip.encode(chips[:6]), expected, rtol=0, atol=1e-12)
    # the mirror changes the descriptor (faces are not symmetric), so flip is a different encoder
    assert np.abs(dlib_mirror - dlib_reference[:6]).max() > 1e-3
    assert flip.identity["settings"]["flip"] is True and flip.identity != DlibEncoder().identity
    torch_flip = load_encoder("torch+flip", device="cpu")
    assert np.abs(torch_flip.encode(chips[:6]) - expected).max() <= TOL
    assert flip.encode([]).shape == (0, 128)


def test_flip_suffix_parsing(tmp_path):
    assert split_flip("dlib+flip") == ("dlib", True) and split_flip("dlib") == ("dlib", False)
    assert split_flip(str(tmp_path / "model") + "+flip") == (str(tmp_path / "model"), True)
    odd = tmp_path / "weights+flip"  # an existing path that merely ends in the suffix is a path
    odd.mkdir()
    assert split_flip(str(odd)) == (str(odd), False)
    with pytest.raises(ModelFileError, match="no such file"):
        load_encoder(str(tmp_path / "missing") + "+flip")


def test_flip_on_a_folder_without_flip_calibration_warns(tmp_path):
    save_dat(load_dat(), tmp_path / "model.dat")  # a model folder with no metadata.json
    with pytest.warns(UserWarning, match="no flip calibration"):
        enc = load_encoder(f"{tmp_path}+flip", device="cpu")
    assert isinstance(enc, FlipEncoder) and enc.scale == 1.0


def test_jittered_encoding_depends_on_the_chip_alone(chips):
    """--jitters N with any encoder: a chip's encoding is the same whatever was encoded before it (the
    cache stores it under the chip's content), and equals dlib's own jitter on a freshly loaded model."""
    a, b = chips[0], chips[1]
    for base in (DlibEncoder(), TorchEncoder(device="cpu")):
        jittered = with_jitter(base, 3)
        alone = jittered.encode(a[None])[0]
        after_other = jittered.encode(np.stack([b, a]))[1]
        again = jittered.encode(a[None])[0]
        assert np.array_equal(alone, after_other) and np.array_equal(alone, again)
    fresh_dlib = models.new_face_recognition_model()  # dlib's random sequence from its start
    expected = np.asarray(fresh_dlib.compute_face_descriptor(a, 3))
    assert np.abs(with_jitter(DlibEncoder(), 3).encode(a[None])[0] - expected).max() <= 1e-6
    assert np.abs(with_jitter(TorchEncoder(device="cpu"), 3).encode(a[None])[0] - expected).max() <= TOL
    assert with_jitter(DlibEncoder(), 1).__class__ is DlibEncoder
