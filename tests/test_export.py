"""ONNX export: the graph computes the torch replica's descriptors on real face chips, in onnxruntime
and in OpenCV's DNN module, carries its provenance, and keeps a fine-tuned model's calibration."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import person_images

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install dlibplus[onnx])")
pytest.importorskip("onnx", reason="onnx is not installed (pip install dlibplus[onnx])")

from dlibplus import dlibnet, models  # noqa: E402
from dlibplus._version import __version__  # noqa: E402
from dlibplus.cli.export import export as export_command  # noqa: E402
from dlibplus.encoders import TorchEncoder, load_encoder  # noqa: E402
from dlibplus.errors import ModelFileError  # noqa: E402
from dlibplus.export import export_onnx, read_metadata  # noqa: E402
from dlibplus.fileio import file_sha256  # noqa: E402

TOL = 1e-5  # the bound; measured here: ~3e-7 (onnxruntime), ~2e-7 (OpenCV)


@pytest.fixture(scope="module")
def chips(faces_dir) -> np.ndarray:
    """(n, 150, 150, 3) uint8: dlib_johns holds dlib's own aligned 150x150 chips of real photos."""
    pairs = person_images(faces_dir, "dlib_johns", per_person=3)
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for _, p in pairs])


@pytest.fixture(scope="module")
def reference(chips) -> np.ndarray:
    return TorchEncoder.from_dat(None, device="cpu").encode(chips)


@pytest.fixture(scope="module")
def dlib_onnx(tmp_path_factory):
    return export_onnx("dlib", tmp_path_factory.mktemp("onnx") / "dlib.onnx")


def run_ort(path, chips: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"chips": chips})
    return out


def test_onnxruntime_matches_torch_replica_any_batch(dlib_onnx, chips, reference):
    assert len(chips) >= 10
    out = run_ort(dlib_onnx, chips)
    assert out.dtype == np.float32 and out.shape == (len(chips), 128)
    assert np.abs(out - reference).max() <= TOL
    one = run_ort(dlib_onnx, chips[3:4])  # dynamic batch: 1 as well as n
    assert np.abs(one - reference[3:4]).max() <= TOL
    session = ort.InferenceSession(str(dlib_onnx), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [150, 150, 3] and isinstance(inp.shape[0], str)
    assert outp.shape[1:] == [128]


def test_opencv_dnn_loads_and_runs_it(dlib_onnx, chips, reference):
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromONNX(str(dlib_onnx))
    net.setInput(chips)
    out = net.forward()
    assert out.shape == (len(chips), 128)
    assert np.abs(out - reference).max() <= TOL  # measured: ~2e-7


def test_float_input(tmp_path, chips, reference):
    path = export_onnx("torch", tmp_path / "float.onnx", input="float", opset=13)
    out = run_ort(path, chips.astype(np.float32))
    assert np.abs(out - reference).max() <= TOL
    assert "float32" in read_metadata(path)["input"]


def test_metadata_names_model_and_version(dlib_onnx):
    meta = read_metadata(dlib_onnx)
    sha = file_sha256(models.model_path(models.FACE_RECOGNITION_MODEL))
    assert meta["dlibplus_version"] == __version__
    assert meta["model_sha256"] == sha == meta["base_model_sha256"]
    assert meta["flip"] == "false" and meta["source"] == "dlib"
    assert "metadata.json" not in meta


@pytest.fixture(scope="module")
def finetuned_dir(tmp_path_factory):
    """A folder shaped like `dlibplus finetune`'s output: dlib's network with its calibration scale
    folded into fc, plus a metadata.json."""
    folder = tmp_path_factory.mktemp("finetuned")
    model = dlibnet.load_dat()
    with __import__("torch").no_grad():
        model.fc.weight.mul_(1.75)
    dlibnet.save_dat(model, folder / "model.dat")
    base = models.model_path(models.FACE_RECOGNITION_MODEL)
    meta = {"format": "dlibplus-finetuned", "format_version": 1,
            "base_model": {"file": base.name, "sha256": file_sha256(base)}, "config": {}, "face_settings": {},
            "calibration": {"scale": 1.75, "far": 0.001}, "calibration_flip": {"scale": 1.2},
            "classes": ["a", "b"]}
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2))
    return folder


def test_finetuned_keeps_its_scale_and_metadata(tmp_path, finetuned_dir, chips, reference):
    path = export_onnx(finetuned_dir, tmp_path / "ft.onnx")
    out = run_ort(path, chips)
    expected = load_encoder(finetuned_dir, device="cpu").encode(chips)
    assert np.abs(out - expected).max() <= TOL
    np.testing.assert_allclose(out, 1.75 * reference, rtol=1e-4, atol=1e-5)  # the scale is in the graph
    meta = read_metadata(path)
    assert json.loads(meta["metadata.json"]) == json.loads((finetuned_dir / "metadata.json").read_text())
    assert meta["base_model_sha256"] == file_sha256(models.model_path(models.FACE_RECOGNITION_MODEL))
    assert meta["model_sha256"] == file_sha256(finetuned_dir / "model.dat") != meta["base_model_sha256"]
    assert float(meta["calibration_scale"]) == 1.75


def test_flip_with_its_calibration(tmp_path, finetuned_dir, chips):
    path = export_onnx(f"{finetuned_dir}+flip", tmp_path / "ft_flip.onnx")
    expected = load_encoder(f"{finetuned_dir}+flip", device="cpu").encode(chips)
    assert np.abs(run_ort(path, chips) - expected).max() <= TOL
    meta = read_metadata(path)
    assert meta["flip"] == "true" and float(meta["flip_scale"]) == 1.2


def test_bad_models_raise_model_file_error(tmp_path, faces_dir):
    photo = person_images(faces_dir, "dlib_johns", per_person=1)[0][1]
    bad_dat = tmp_path / "bad.dat"
    bad_dat.write_bytes(b"not a dlib network")
    for spec in (tmp_path / "missing.dat", photo, tmp_path, bad_dat):
        with pytest.raises(ModelFileError):
            export_onnx(spec, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.dat"]  # no temporary file left behind
    with pytest.raises(ValueError):
        export_onnx("dlib", tmp_path / "out.onnx", input="int8")


def test_cli_writes_onnx(tmp_path, chips, reference):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(export_command, ["dlib", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert np.abs(run_ort(out, chips[:2]) - reference[:2]).max() <= TOL


@pytest.mark.parametrize("model", ["missing", "photo", "garbage"])
def test_cli_bad_model_one_line_exit_2(tmp_path, faces_dir, model):
    path = {"missing": tmp_path / "nope.dat",
            "photo": person_images(faces_dir, "dlib_johns", per_person=1)[0][1],
            "garbage": tmp_path / "garbage.dat"}[model]
    if model == "garbage":
        path.write_bytes(b"\x00" * 100)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    result = CliRunner().invoke(export_command, [str(path), "-o", str(out)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and str(path) in lines[0]
    assert out.read_bytes() == b"previous"  # an existing output is left as it was


def test_cli_without_onnx_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as without the extra
    result = CliRunner().invoke(export_command, ["dlib", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install dlibplus[onnx]" in lines[0]
    assert not (tmp_path / "m.onnx").exists()
