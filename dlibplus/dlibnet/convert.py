"""Pure conversions between a parsed dlib ``.dat`` (:class:`~.dat_io.DatNet`) and a
:class:`~.net.DlibResNet` state dict. This is the only code that knows dlib's layer order.

dlib's face network, input to output (dlib/examples/dnn_face_recognition_ex.cpp): stem ``con, affine, relu,
max_pool``; per residual block ``con, affine, relu, con, affine, [avg_pool], add_prev, relu``; head
``avg_pool`` (the whole map) and ``fc``. Variants dlib itself accepts are folded into that plan on
load: ``bn_con2`` (batch norm, g = gamma / sqrt(var + eps), b = beta - g * mean), disabled
``affine_2`` (identity), ``con_5/6`` without bias, and a convolution with a fused relu followed by a
disabled affine (what dlib's layer fusion writes). Saving always writes dlib's original layer
versions (``con_4``, ``affine_``, ``relu_``, ``fc_2``), which every dlib since 2017 loads.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import ModelFileError
from . import dat_io
from .dat_io import DatLayer, DatNet, Trailer
from .net import FACE_STAGES, INPUT_SIZE, Stage

_POOL_PARAMS = {  # (nr, nc, stride_y, stride_x, padding_y, padding_x)
    "max_pool": (3, 3, 2, 2, 0, 0),
    "avg_pool": (2, 2, 2, 2, 0, 0),
    "avg_pool_everything": (0, 0, 1, 1, 0, 0),
}
_POOL_FIELDS = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")


def layer_plan(stages: Sequence[Stage] = FACE_STAGES, stem_channels: int = 32,
               embedding_dim: int = 128) -> list[tuple[str, str | None, dict]]:
    """dlib's layer bodies, input to output: ``(kind, module name or None, expected settings)``.

    Settings: for ``con`` (filters, in_channels, size, stride), for pools their six numbers, for
    ``fc`` (inputs, outputs).
    """
    plan: list[tuple[str, str | None, dict]] = [
        ("con", "stem.conv", {"shape": (stem_channels, 3, 7, 7), "stride": 2}),
        ("affine", "stem.affine", {"channels": stem_channels}),
        ("relu", None, {}),
        ("max_pool", None, {"pool": _POOL_PARAMS["max_pool"]}),
    ]
    channels = stem_channels
    for stage in stages:
        for index in range(stage.blocks):
            down = stage.downsample and index == 0
            prefix = f"{stage.name}.{index}"
            plan += [
                ("con", f"{prefix}.conv1", {"shape": (stage.channels, channels, 3, 3), "stride": 2 if down else 1}),
                ("affine", f"{prefix}.affine1", {"channels": stage.channels}),
                ("relu", None, {}),
                ("con", f"{prefix}.conv2", {"shape": (stage.channels, stage.channels, 3, 3), "stride": 1}),
                ("affine", f"{prefix}.affine2", {"channels": stage.channels}),
            ]
            if down:
                plan.append(("avg_pool", None, {"pool": _POOL_PARAMS["avg_pool"]}))
            plan += [("add_prev", None, {}), ("relu", None, {})]
            channels = stage.channels
    plan += [("avg_pool", None, {"pool": _POOL_PARAMS["avg_pool_everything"]}),
             ("fc", "fc", {"inputs": channels, "outputs": embedding_dim})]
    return plan


def wrapper_versions(stages: Sequence[Stage] = FACE_STAGES) -> list[int]:
    """The wrapper version ints dlib writes for this network, from the output inwards."""
    versions = [2, 2]  # fc, avg_pool_everything
    for stage in reversed(stages):
        for index in reversed(range(stage.blocks)):
            down = stage.downsample and index == 0
            versions += [2, 2]  # relu, add_prev
            if down:
                versions += [2, 1, 1]  # avg_pool, skip1, tag2
            versions += [2, 2, 2, 2, 2, 1]  # affine, con, relu, affine, con, tag1
    return versions + [2, 2, 2, 3]  # max_pool, relu, affine, con (on the input layer)


# ---------------------------------------------------------------------------------------------
# .dat -> state dict

def dat_to_state_dict(net: DatNet, stages: Sequence[Stage] = FACE_STAGES,
                      stem_channels: int = 32, embedding_dim: int = 128) -> dict[str, torch.Tensor]:
    """The :class:`DlibResNet` state dict of a parsed dlib face network (float32 CPU tensors).

    Raises ModelFileError naming the layer and its byte offset when the file is a different network.
    """
    plan = layer_plan(stages, stem_channels, embedding_dim)

    def fail(index: int, message: str) -> ModelFileError:
        layer = net.layers[index]
        return ModelFileError(net.source, f"layer {index} ({layer.tag}) at byte {layer.offset}: {message}")

    if len(net.layers) != len(plan):
        raise ModelFileError(net.source, f"{len(net.layers)} layers, dlib's face ResNet has {len(plan)}; "
                                         "this is a different network")
    expected_wrappers = wrapper_versions(stages)
    if net.wrappers != expected_wrappers:
        size = max(len(net.wrappers), len(expected_wrappers))
        got, want = (w + [None] * (size - len(w)) for w in (net.wrappers, expected_wrappers))
        at = next(i for i in range(size) if got[i] != want[i])
        raise ModelFileError(net.source, f"layer wrapper {at} has version {got[at]}, expected {want[at]}; "
                                         "this is a different network")
    fields = net.input.fields
    if (fields["nr"], fields["nc"]) != (INPUT_SIZE, INPUT_SIZE):
        raise ModelFileError(net.source, f"input layer at byte {net.input.offset} takes "
                                         f"{fields['nr']}x{fields['nc']} images, expected {INPUT_SIZE}x{INPUT_SIZE}")

    state: dict[str, torch.Tensor] = {}
    for index, ((kind, module, expect), layer) in enumerate(zip(plan, net.layers)):
        got_kind = "affine" if layer.kind == "bn_con" else layer.kind
        if got_kind != kind:
            raise fail(index, f"expected a {kind} layer here")
        if kind in ("max_pool", "avg_pool"):
            got = tuple(layer.fields[f] for f in _POOL_FIELDS)
            if got != expect["pool"]:
                raise fail(index, f"pool settings {got}, expected {expect['pool']}")
        elif kind == "con":
            _check_con(layer, expect, lambda m: fail(index, m))
            arrays = layer.arrays()
            state[f"{module}.weight"] = _tensor(arrays["weight"])
            bias = arrays.get("bias", np.zeros(expect["shape"][0], np.float32))
            state[f"{module}.bias"] = _tensor(bias)
            if _fuses_relu(layer) and not _fused_relu_ok(net.layers, index, plan):
                raise fail(index, "a relu fused into this convolution cannot be represented here")
        elif kind == "affine":
            gamma, beta = _affine_params(layer, expect["channels"], lambda m: fail(index, m))
            state[f"{module}.weight"] = _tensor(gamma)
            state[f"{module}.bias"] = _tensor(beta)
        elif kind == "relu":
            if layer.fields.get("disabled", False) and not _fuses_relu(net.layers[index - 2]):
                raise fail(index, "a disabled relu without a fused relu before it cannot be represented here")
        elif kind == "fc":
            f = layer.fields
            if (f["num_inputs"], f["num_outputs"]) != (expect["inputs"], expect["outputs"]):
                raise fail(index, f"fc {f['num_inputs']} -> {f['num_outputs']}, expected "
                                  f"{expect['inputs']} -> {expect['outputs']}")
            if f["bias_mode"] != 1:
                raise fail(index, "fc has a bias; dlib's face network uses fc_no_bias")
            state["fc.weight"] = _tensor(layer.arrays()["weight"].T)
    state["means"] = torch.tensor(net.means, dtype=torch.float32)
    return state


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32).copy())


def _check_con(layer: DatLayer, expect: dict, fail) -> None:
    f = layer.fields
    shape = tuple(f["filters"])
    if shape != expect["shape"]:
        raise fail(f"filters {shape}, expected {expect['shape']}")
    stride = expect["stride"]
    padding = 0 if stride != 1 else shape[2] // 2
    got = (f["stride_y"], f["stride_x"], f["padding_y"], f["padding_x"])
    if got != (stride, stride, padding, padding):
        raise fail(f"stride/padding {got}, expected {(stride, stride, padding, padding)}")


def _affine_params(layer: DatLayer, channels: int, fail) -> tuple[np.ndarray, np.ndarray]:
    f = layer.fields
    if layer.kind == "affine" and f.get("disabled", False):
        return np.ones(channels, np.float32), np.zeros(channels, np.float32)
    if math.prod(f["gamma"]) != channels:
        raise fail(f"{math.prod(f['gamma'])} channels, expected {channels}")
    if layer.kind == "affine" and f["mode"] != 0:
        raise fail(f"affine mode {f['mode']}, expected 0 (per channel)")
    arrays = layer.arrays()
    if not arrays:
        raise fail("the layer holds no parameters")
    if layer.kind == "bn_con":  # dlib folds batch norm into affine_ on load, in float32
        eps = np.float32(f["eps"])
        gamma = arrays["gamma"] / np.sqrt(arrays["running_var"] + eps)
        beta = arrays["beta"] - gamma * arrays["running_mean"]
        return gamma.astype(np.float32), beta.astype(np.float32)
    return arrays["gamma"], arrays["beta"]


def _fuses_relu(layer: DatLayer) -> bool:
    """dlib applies a con's fused relu only together with its bias (``con_6``)."""
    f = layer.fields
    return layer.kind == "con" and f.get("use_relu", False) and f.get("use_bias", True)


def _fused_relu_ok(layers: list[DatLayer], index: int, plan) -> bool:
    """A con with a fused relu is fine when an identity affine and then a relu position follow."""
    if index + 2 >= len(layers) or plan[index + 2][0] != "relu":
        return False
    affine = layers[index + 1]
    return affine.kind == "affine" and bool(affine.fields.get("disabled", False))


# ---------------------------------------------------------------------------------------------
# state dict -> .dat

def state_dict_to_dat(state_dict: Mapping[str, torch.Tensor], stages: Sequence[Stage] = FACE_STAGES,
                      loss_margin: float = 0.04, loss_dist_thresh: float = 0.6) -> DatNet:
    """A :class:`DatNet` dlib loads as ``face_recognition_model_v1``, holding these weights.

    It uses dlib's original layer versions and settings, so the state dict of the unmodified model
    gives back dlib's file byte for byte.
    """
    def array(name: str) -> np.ndarray:
        if name not in state_dict:
            raise KeyError(f"state dict has no {name!r}")
        return state_dict[name].detach().to("cpu", torch.float32).numpy()

    fc_weight = array("fc.weight")
    embedding_dim, fc_inputs = fc_weight.shape
    stem_channels = array("stem.conv.weight").shape[0]
    plan = layer_plan(stages, stem_channels, embedding_dim)
    layers = []
    for index, (kind, module, expect) in enumerate(plan):
        next_kind = plan[index + 1][0] if index + 1 < len(plan) else None
        # dlib marks a layer whose output the next (in-place) relu overwrites
        trailer = Trailer((True, True, next_kind == "relu"), (dat_io.empty_tensor(),) * 3,
                          1 if index == 0 else None)
        if kind == "con":
            layer = _con_layer(array(f"{module}.weight"), array(f"{module}.bias"), expect["stride"])
        elif kind == "affine":
            layer = _affine_layer(array(f"{module}.weight"), array(f"{module}.bias"))
        elif kind == "relu":
            layer = DatLayer("relu", "relu_", {})
        elif kind == "add_prev":
            layer = DatLayer("add_prev", "add_prev_", {})
        elif kind in ("max_pool", "avg_pool"):
            layer = DatLayer(kind, f"{kind}_2", dict(zip(_POOL_FIELDS, expect["pool"])))
        else:
            layer = _fc_layer(fc_weight)
        layer.trailer = trailer
        layers.append(layer)
    means = array("means").astype(np.float64)
    loss = DatLayer("loss", "loss_metric_2", {"margin": _f32(loss_margin), "dist_thresh": _f32(loss_dist_thresh)})
    input_layer = DatLayer("input", "input_rgb_image_sized", {
        "avg_red": _f32(means[0]), "avg_green": _f32(means[1]), "avg_blue": _f32(means[2]),
        "nr": INPUT_SIZE, "nc": INPUT_SIZE})
    return DatNet(loss, wrapper_versions(stages), input_layer, layers)


def _f32(value: float) -> float:
    return float(np.float32(value))


_MULTS = {"lr_mult": 1.0, "wd_mult": 1.0, "bias_lr_mult": 1.0, "bias_wd_mult": 0.0}  # dlib's defaults


def _con_layer(weight: np.ndarray, bias: np.ndarray, stride: int) -> DatLayer:
    filters, _, nr, nc = weight.shape
    padding = 0 if stride != 1 else nr // 2
    params = np.concatenate([weight.reshape(-1), bias.reshape(-1)]).reshape(-1, 1, 1, 1)
    return DatLayer("con", "con_4", {
        "params": params, "num_filters": filters, "nr": nr, "nc": nc, "stride_y": stride,
        "stride_x": stride, "padding_y": padding, "padding_x": padding,
        "filters": tuple(weight.shape), "biases": (1, filters, 1, 1), **_MULTS})


def _affine_layer(gamma: np.ndarray, beta: np.ndarray) -> DatLayer:
    channels = gamma.size
    params = np.concatenate([gamma.reshape(-1), beta.reshape(-1)]).reshape(-1, 1, 1, 1)
    return DatLayer("affine", "affine_", {"params": params, "gamma": (1, channels, 1, 1),
                                          "beta": (1, channels, 1, 1), "mode": 0})


def _fc_layer(weight: np.ndarray) -> DatLayer:
    outputs, inputs = weight.shape
    params = np.ascontiguousarray(weight.T).reshape(inputs, outputs, 1, 1)
    return DatLayer("fc", "fc_2", {
        "num_outputs": outputs, "num_inputs": inputs, "params": params,
        "weights": (inputs, outputs, 1, 1), "biases": (0, 0, 0, 0), "bias_mode": 1, **_MULTS})
