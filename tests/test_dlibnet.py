"""dlibplus.dlibnet: the .dat reader/writer, the conversion and DlibResNet, checked against dlib itself."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import subprocess
import sys

import dlib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, person_images
from dlibplus import models
from dlibplus.dlibnet import DlibResNet, convert, dat_io, load_dat, save_dat
from dlibplus.errors import ModelFileError

TOL = 1e-5  # max |torch - dlib| per descriptor component


@pytest.fixture(scope="module")
def dat_path():
    return models.model_path(models.FACE_RECOGNITION_MODEL)


@pytest.fixture(scope="module")
def dat_data(dat_path):
    return dat_path.read_bytes()


@pytest.fixture(scope="module")
def parsed(dat_path):
    return dat_io.read_dat(dat_path)


@pytest.fixture(scope="module")
def model():
    return load_dat()


@pytest.fixture(scope="module")
def chips(faces_dir):
    """24 aligned chips from two tight-crop sets (whole image as the face box)."""
    predictor = models.shape_predictor("small")
    out = []
    for set_name in ("kpop_idols15", "dlib_johns"):
        for _, path in person_images(faces_dir, set_name, per_person=1)[:12]:
            image = np.asarray(Image.open(path).convert("RGB"))
            h, w = image.shape[:2]
            shape = predictor(image, dlib.rectangle(0, 0, w, h))
            out.append(dlib.get_face_chip(image, shape, 150, 0.25))
    return np.stack(out)


def dlib_descriptors(dat_file, chips) -> np.ndarray:
    net = dlib.face_recognition_model_v1(str(dat_file))
    return np.array([np.asarray(d) for d in net.compute_face_descriptor(list(chips))])


def torch_descriptors(net: DlibResNet, chips) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
        return net(x).double().numpy()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Primitives

@pytest.mark.parametrize("value, encoded", [
    (0, "01 00"), (150, "01 96"), (256, "02 00 01"), (-4, "81 04"), (2**40 + 5, "06 05 00 00 00 00 01"),
])
def test_int_encoding(value, encoded):
    assert dat_io.pack_int(value).hex(" ") == encoded
    assert dat_io.Reader(bytes.fromhex(encoded)).int("x", 8) == value


def test_int_reader_rules():
    with pytest.raises(dat_io.DatFormatError, match="unsigned"):
        dat_io.Reader(bytes.fromhex("81 04")).uint("count")  # sign bit on an unsigned field
    with pytest.raises(dat_io.DatFormatError, match="4-byte"):
        dat_io.Reader(bytes.fromhex("05 00 00 00 00 01")).int("version")  # 5 bytes for an int
    with pytest.raises(dat_io.DatFormatError):
        dat_io.Reader(bytes.fromhex("00")).int("size zero")
    with pytest.raises(dat_io.DatFormatError, match="file ends"):
        dat_io.Reader(bytes.fromhex("02 01")).int("truncated")


@pytest.mark.parametrize("value, digits, encoded", [
    (1.0, 53, "01 10 81 04"),
    (0.0, 53, "01 00 01 0b"),
    (float(np.float32(0.04)), 24, "03 0a d7 a3 81 1c"),
    (float(np.float32(0.6)), 24, "03 9a 99 99 81 18"),
])
def test_float_encoding_matches_dlib(value, digits, encoded):
    w = dat_io.Writer()
    w.real(value, digits)
    assert w.out.hex(" ") == encoded
    assert dat_io.Reader(bytes(w.out)).real("x") == value


def test_float_round_trip_including_specials():
    rng = np.random.default_rng(0)
    values = [math.inf, -math.inf, -1.0, 1e-300, -2.5e300, 5e-324]
    values += list(rng.normal(size=50) * 10.0 ** rng.integers(-30, 30, 50))
    for value in values:
        cases = [(value, 53)] + ([(float(np.float32(value)), 24)] if abs(value) < 1e38 else [])
        for v, digits in cases:
            w = dat_io.Writer()
            w.real(v, digits)
            assert dat_io.Reader(bytes(w.out)).real("x") == v
    w = dat_io.Writer()
    w.real(math.nan, 53)
    assert w.out.hex(" ") == "01 00 02 02 7d"  # exponent 32002 = NaN
    assert math.isnan(dat_io.Reader(bytes(w.out)).real("x"))
    with pytest.raises(dat_io.DatFormatError, match="old text float"):
        dat_io.Reader(b"\x71").real("x")


def test_string_bool_tensor_alias():
    w = dat_io.Writer()
    w.str("con_4")
    w.bool(True)
    w.bool(False)
    w.tensor(dat_io.empty_tensor())
    w.tensor(np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1))
    w.alias((1, 32, 1, 1))
    data = bytes(w.out)
    assert data.startswith(b"\x01\x05con_410" + bytes.fromhex("01 02 01 00 01 00 01 00 01 00"))
    r = dat_io.Reader(data)
    assert r.str("s") == "con_4" and r.bool("b") is True and r.bool("b") is False
    assert r.tensor("t").shape == (0, 0, 0, 0)
    np.testing.assert_array_equal(r.tensor("t"), np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1))
    assert r.alias("a") == (1, 32, 1, 1) and r.left == 0
    with pytest.raises(dat_io.DatFormatError, match="not a bool"):
        dat_io.Reader(b"x").bool("flag")
    with pytest.raises(dat_io.DatFormatError, match="tensor version 3"):
        dat_io.Reader(bytes.fromhex("01 03")).tensor("t")


# ---------------------------------------------------------------------------------------------
# Whole files

def test_parse_matches_reference_layout(parsed):
    assert len(parsed.wrappers) == 130 and parsed.wrappers[-1] == 3
    assert len(parsed.layers) == 108
    counts = {kind: sum(layer.kind == kind for layer in parsed.layers)
              for kind in ("con", "affine", "relu", "add_prev", "avg_pool", "max_pool", "fc")}
    assert counts == {"con": 29, "affine": 29, "relu": 29, "add_prev": 14, "avg_pool": 5, "max_pool": 1, "fc": 1}
    assert sum(a.size for a in parsed.named_arrays().values()) == 5_614_592
    assert [round(m, 3) for m in parsed.means] == [122.782, 117.001, 104.298]
    assert parsed.layers[-1].arrays()["weight"].shape == (256, 128)
    assert parsed.wrappers == convert.wrapper_versions()


def test_write_reproduces_file_byte_for_byte(dat_data, parsed):
    assert sha256(dat_io.dat_bytes(parsed)) == sha256(dat_data)


def test_save_dat_of_unchanged_model_is_dlibs_file(model, dat_data, tmp_path):
    out = tmp_path / "model.dat"
    save_dat(model, out)
    assert sha256(out.read_bytes()) == sha256(dat_data)
    assert [p.name for p in tmp_path.iterdir()] == ["model.dat"]  # no temporary file left
    save_dat(copy.deepcopy(model).to(memory_format=torch.channels_last), out)
    assert sha256(out.read_bytes()) == sha256(dat_data)


@pytest.mark.parametrize("cut", [1, 0x11, 0x100, 0x14E + 40, 5_000_000, -3])
def test_truncated_file_is_rejected_with_offset(dat_data, cut):
    with pytest.raises(ModelFileError) as info:
        dat_io.parse_dat(dat_data[:cut], "cut.dat")
    message = str(info.value)
    assert "cut.dat" in message and "file ends" in message and "at byte" in message


def test_truncated_file_names_the_layer(dat_data, tmp_path):
    path = tmp_path / "cut.dat"
    path.write_bytes(dat_data[:len(dat_data) // 2])
    with pytest.raises(ModelFileError, match=r"layer \d+ \(con_4\).*at byte \d+"):
        load_dat(path)


def test_trailing_bytes_are_rejected(dat_data):
    with pytest.raises(ModelFileError, match="unexpected bytes after the network at byte 22466066"):
        dat_io.parse_dat(dat_data + b"\0\0", "long.dat")


def test_non_dlib_files_are_rejected(faces_dir, tmp_path):
    jpeg = next(p for _, p in person_images(faces_dir, "kpop_idols15", 1))
    with pytest.raises(ModelFileError, match="at byte 0"):
        load_dat(jpeg)
    with pytest.raises(ModelFileError, match="loss layer.*unexpected tag 'loss_mmod"):
        load_dat(models.model_path(models.CNN_DETECTOR))  # a dlib network, but another one
    with pytest.raises(ModelFileError):
        load_dat(models.model_path(models.POSE_5))  # a dlib file, but no network
    with pytest.raises(ModelFileError, match="cannot read"):
        load_dat(tmp_path / "missing.dat")


def test_wrong_shapes_are_rejected_naming_layer(parsed):
    layers = list(parsed.layers)
    con = layers[4]
    fields = dict(con.fields, num_filters=16, filters=(16, 32, 3, 3), biases=(1, 16, 1, 1),
                  params=con.fields["params"][:16 * 32 * 9 + 16])
    layers[4] = dataclasses.replace(con, fields=fields)
    data = dat_io.dat_bytes(dataclasses.replace(parsed, layers=layers))
    with pytest.raises(ModelFileError, match=rf"layer 4 \(con_4\) at byte {con.offset}: filters"):
        convert.dat_to_state_dict(dat_io.parse_dat(data, "small.dat"))
    # a params tensor that does not fit its aliases is caught while parsing
    fields = dict(con.fields, params=con.fields["params"][:-1])
    layers[4] = dataclasses.replace(con, fields=fields)
    message = rf"layer 4 \(con_4\) at byte {con.offset}: params tensor holds 9247 values, its aliases need 9248$"
    with pytest.raises(ModelFileError, match=message):
        dat_io.parse_dat(dat_io.dat_bytes(dataclasses.replace(parsed, layers=layers)), "bad.dat")


def _newer_versions(net: dat_io.DatNet) -> dat_io.DatNet:
    """The same weights with dlib's newer layer versions (con_6, affine_2, relu_2, fc_3)."""
    new = {"con": ("con_6", {"use_bias": True, "use_relu": False}), "affine": ("affine_2", {"disabled": False}),
           "relu": ("relu_2", {"disabled": False}), "fc": ("fc_3", {"use_bias": True})}
    layers = []
    for i, layer in enumerate(net.layers):
        tag, extra = new.get(layer.kind, (layer.tag, {}))
        if layer.kind == "con" and i % 2:
            tag, extra = "con_5", {"use_bias": True}
        layers.append(dataclasses.replace(layer, tag=tag, fields={**layer.fields, **extra}))
    return dataclasses.replace(net, layers=layers)


def _fused(net: dat_io.DatNet) -> dat_io.DatNet:
    """What dlib's layer fusion writes: affine folded into con, relu fused, affine/relu disabled."""
    layers = list(net.layers)
    for i, layer in enumerate(layers):
        if layer.kind != "con":
            continue
        affine = layers[i + 1]
        a, c = affine.arrays(), layer.arrays()
        weight = c["weight"] * a["gamma"][:, None, None, None]
        bias = c["bias"] * a["gamma"] + a["beta"]
        relu_follows = layers[i + 2].kind == "relu"
        con = layer.with_arrays({"weight": weight, "bias": bias})
        layers[i] = dataclasses.replace(con, tag="con_6", fields={**con.fields, "use_bias": True,
                                                                  "use_relu": relu_follows})
        layers[i + 1] = dataclasses.replace(affine, tag="affine_2", fields={
            **affine.fields, "params": dat_io.empty_tensor(), "disabled": True})
        if relu_follows:
            layers[i + 2] = dataclasses.replace(layers[i + 2], tag="relu_2", fields={"disabled": True})
    return dataclasses.replace(net, layers=layers)


def _batch_norm(net: dat_io.DatNet) -> dat_io.DatNet:
    """Every affine_ replaced by the bn_con2 that dlib folds back into it on load."""
    rng = np.random.default_rng(1)
    layers = []
    for layer in net.layers:
        if layer.kind == "affine":
            a = layer.arrays()
            c = a["gamma"].size
            mean = rng.normal(size=c).astype(np.float32)
            var = rng.uniform(0.5, 2, size=c).astype(np.float32)
            eps = 1e-5
            gamma = (a["gamma"] * np.sqrt(var + np.float32(eps))).astype(np.float32)
            beta = (a["beta"] + a["gamma"] * mean).astype(np.float32)
            shape = (1, c, 1, 1)
            layer = dataclasses.replace(layer, kind="bn_con", tag="bn_con2", fields={
                "params": np.concatenate([gamma, beta]).reshape(-1, 1, 1, 1), "gamma": shape, "beta": shape,
                "means": dat_io.empty_tensor(), "invstds": dat_io.empty_tensor(),
                "running_means": mean.reshape(shape), "running_variances": var.reshape(shape),
                "num_updates": 100, "running_stats_window_size": 1000, "lr_mult": 1.0, "wd_mult": 0.0,
                "bias_lr_mult": 1.0, "bias_wd_mult": 0.0, "eps": eps})
        layers.append(layer)
    return dataclasses.replace(net, layers=layers)


def test_newer_layer_versions_load_to_the_same_net(parsed, model, tmp_path, chips):
    newer = dat_io.dat_bytes(_newer_versions(parsed))
    reparsed = dat_io.parse_dat(newer, "newer.dat")
    assert {layer.tag for layer in reparsed.layers} >= {"con_5", "con_6", "affine_2", "relu_2", "fc_3"}
    state = convert.dat_to_state_dict(reparsed)
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), name
    path = tmp_path / "newer.dat"
    path.write_bytes(newer)
    original = dlib_descriptors(models.model_path(models.FACE_RECOGNITION_MODEL), chips[:4])
    np.testing.assert_array_equal(dlib_descriptors(path, chips[:4]), original)  # dlib reads it the same


@pytest.mark.parametrize("variant", [_fused, _batch_norm])
def test_fused_and_batch_norm_files_match_dlib(variant, parsed, tmp_path, chips):
    path = tmp_path / "variant.dat"
    dat_io.write_dat(variant(parsed), path)
    net = load_dat(path)
    expected = dlib_descriptors(path, chips[:8])  # dlib's own reading of the same file
    assert np.abs(torch_descriptors(net, chips[:8]) - expected).max() <= TOL


def test_perturbed_weights_round_trip_through_dlib(model, tmp_path, chips):
    perturbed = load_dat()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=generator))
    path = tmp_path / "perturbed.dat"
    save_dat(perturbed, path)
    reloaded = load_dat(path)
    for name, value in perturbed.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name
    ours = torch_descriptors(perturbed, chips)
    theirs = dlib_descriptors(path, chips)
    assert np.abs(ours - theirs).max() <= TOL
    assert np.abs(ours - torch_descriptors(model, chips)).max() > 1e-3  # the change is real


def test_architecture(model):
    assert sum(p.numel() for p in model.parameters()) == 5_614_592
    assert model.stage_names == ("stem", "layer1", "layer2", "layer3", "layer4", "layer5", "fc")
    assert model.stem.conv.padding == (0, 0) and model.layer2[0].conv1.padding == (0, 0)
    assert model.layer1[0].conv1.padding == (1, 1)
    x = torch.rand(2, 3, 150, 150) * 255
    with torch.no_grad():
        assert model(x).shape == (2, 128)


def test_train_mode_and_memory_format_do_not_change_output(chips):
    net = load_dat()
    x = torch.from_numpy(chips[:4]).permute(0, 3, 1, 2).float().contiguous()
    with torch.no_grad():
        eval_out = net.eval()(x)
        train_out = net.train()(x)
        cl_out = net.eval().to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        folded = net.folded()(x)
    assert torch.equal(eval_out, train_out)
    assert (cl_out - eval_out).abs().max() < 1e-5
    assert (folded - eval_out).abs().max() < 1e-5


def test_half_keeps_the_means_in_float32():
    net = load_dat().half()
    assert net.means.dtype == torch.float32 and net.stem.conv.weight.dtype == torch.float16
    assert net.means.tolist() == pytest.approx([122.782, 117.001, 104.298], abs=1e-4)


def test_freeze():
    net = load_dat()
    assert net.freeze(2) == ["stem", "layer1"]
    trainable = {name.split(".")[0] for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4", "layer5", "fc"}
    assert net.freeze(["fc", "stem"]) == ["fc", "stem"]
    assert not net.fc.weight.requires_grad and net.layer1[0].conv1.weight.requires_grad
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    net.freeze(6)  # everything but fc
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()
    net(torch.rand(2, 3, 150, 150) * 255).pow(2).sum().backward()
    optimizer.step()
    changed = {name.split(".")[0] for name, p in net.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"fc"}
    net.freeze(0)
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="unknown stage"):
        net.freeze(["layer9"])
    with pytest.raises(ValueError):
        net.freeze(8)


def test_dat_io_and_package_do_not_import_torch():
    code = ("import sys, dlibplus, dlibplus.dlibnet.dat_io, dlibplus.dlibnet; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
