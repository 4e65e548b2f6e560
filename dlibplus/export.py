"""Export dlib's face network, or a fine-tuned one, as ONNX.

The ONNX graph takes aligned face chips, exactly what ``dlib.get_face_chip(image, shape, 150, 0.25)``
(and :func:`dlibplus.data.face_chips`) return, and gives dlib's 128-d descriptors:

- input ``chips``: (N, 150, 150, 3) RGB, NHWC; ``uint8`` pixels (default) or ``float32`` pixel
  values 0-255 (``input="float"``). The batch axis N is dynamic.
- output ``descriptors``: (N, 128) float32, the same numbers as
  :class:`~dlibplus.encoders.TorchEncoder` (to float rounding, ~1e-6): Euclidean distance <= 0.6
  means "same person", as in face_recognition.

The network is the torch replica (:class:`~dlibplus.dlibnet.DlibResNet`) with its affine layers folded
into the convolutions. A fine-tuned model's calibration is already folded into its ``model.dat`` (the
last layer's weights), so the graph keeps it; with ``+flip`` the graph also averages each chip with its
mirror image and applies the folder's flip calibration, as ``load_encoder("DIR+flip")`` does.

Provenance goes into the ONNX ``metadata_props`` (strings): ``dlibplus_version``, ``source``,
``model_sha256`` (of the ``.dat`` exported), ``base_model_sha256`` (of dlib's original network the
model was fine-tuned from; the same as ``model_sha256`` for dlib's own), ``input``, ``output``,
``flip``, ``flip_scale``, ``tolerance`` and, for a fine-tuned folder, ``metadata.json`` (the file's
contents, verbatim JSON) and ``calibration_scale``.

``onnx`` is needed to export (``pip install dlibplus[onnx]``, which also brings ``onnxruntime`` to run
the result); torch's own exporter writes the graph.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._version import __version__
from .encoders import (CHIP_SIZE, DESCRIPTOR_SIZE, FINETUNED_METADATA, FINETUNED_MODEL_NAME, file_sha256,
                       finetuned_flip_scale, split_flip)
from .errors import ModelFileError
from .fileio import atomic_path
from .optional import require

INPUT_NAME = "chips"
OUTPUT_NAME = "descriptors"
INPUT_KINDS = ("uint8", "float")
DEFAULT_OPSET = 17
MIN_OPSET = 11  # Pad with a tensor of pads, the oldest opset OpenCV's and most runtimes' readers need


def require_onnx():
    """The ``onnx`` module, or :class:`~dlibplus.optional.MissingDependencyError` saying how to install it."""
    return require("onnx", "onnx", "ONNX export")


@dataclass(frozen=True)
class ModelSource:
    """What an encoder spec points to.

    :ivar dat: the dlib ``.dat`` holding the weights.
    :ivar folder: the fine-tuned folder it came from, or ``None``.
    :ivar flip: whether the spec ends in ``+flip``.
    :ivar flip_scale: the flip calibration (1.0 without flip, or for dlib's own network).
    """

    spec: str
    dat: Path
    folder: Path | None
    flip: bool
    flip_scale: float


def resolve_model(spec: os.PathLike | str) -> ModelSource:
    """The ``.dat`` behind an encoder spec, following :func:`dlibplus.encoders.load_encoder`'s rules.

    ``"dlib"`` and ``"torch"`` are dlib's own network; a ``.dat`` file; a ``dlibplus finetune`` output
    folder; any of these followed by ``+flip``.

    :raises ModelFileError: a path that is missing or not a model.
    """
    from . import models

    base, flip = split_flip(str(spec))
    if base in ("dlib", "torch"):
        return ModelSource(str(spec), models.model_path(models.FACE_RECOGNITION_MODEL), None, flip, 1.0)
    path = Path(base)
    hint = f"a model is 'dlib', 'torch', a .dat file or a folder holding {FINETUNED_MODEL_NAME}"
    if path.is_dir():
        if not (path / FINETUNED_MODEL_NAME).is_file():
            raise ModelFileError(path, f"the folder holds no {FINETUNED_MODEL_NAME} "
                                       "(expected the output folder of `dlibplus finetune`)")
        scale = finetuned_flip_scale(path) if flip else 1.0
        return ModelSource(str(spec), path / FINETUNED_MODEL_NAME, path, flip, scale)
    if not path.exists():
        raise ModelFileError(path, f"no such file or folder; {hint}")
    if path.suffix.lower() != ".dat":
        raise ModelFileError(path, f"not a .dat file; {hint}")
    return ModelSource(str(spec), path, None, flip, 1.0)


def read_finetune_metadata(folder: Path) -> tuple[str | None, dict[str, Any]]:
    """``(text, parsed)`` of ``folder/metadata.json``; ``(None, {})`` when the folder has none.

    :raises ModelFileError: the file exists but is not a JSON object.
    """
    path = folder / FINETUNED_METADATA
    if not path.is_file():
        return None, {}
    try:
        text = path.read_text()
        meta = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(path, f"cannot be read as JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(path, "is not a JSON object")
    return text, meta


def _graph_module(source: ModelSource):
    """The torch module exported: chips (N, 150, 150, 3) in, (N, 128) float32 out."""
    import torch
    from torch import nn

    from . import dlibnet

    class ChipsToDescriptors(nn.Module):
        def __init__(self, net: nn.Module, flip: bool, flip_scale: float):
            super().__init__()
            self.net, self.flip, self.half_scale = net, flip, flip_scale / 2

        def forward(self, chips: torch.Tensor) -> torch.Tensor:
            x = chips.permute(0, 3, 1, 2).float()  # NHWC uint8/float -> NCHW float32
            if not self.flip:
                return self.net(x)
            both = self.net(torch.cat([x, x.flip(3)]))  # each chip and its mirror image, one pass
            n = chips.shape[0]
            return (both[:n] + both[n:]) * self.half_scale

    net = dlibnet.load_dat(source.dat).folded().eval().requires_grad_(False)
    return ChipsToDescriptors(net, source.flip, source.flip_scale).eval()


def _torch_export(module, float_input: bool, opset: int) -> bytes:
    """The ONNX bytes of ``module`` (TorchScript exporter: needs onnx, not onnxscript)."""
    import torch

    dtype = torch.float32 if float_input else torch.uint8
    example = torch.zeros((2, CHIP_SIZE, CHIP_SIZE, 3), dtype=dtype)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer chatter
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
    return buffer.getvalue()


def metadata_props(source: ModelSource, float_input: bool) -> dict[str, str]:
    """The ONNX ``metadata_props`` an export carries (all values strings; JSON where structured)."""
    sha = file_sha256(source.dat)
    props = {
        "dlibplus_version": __version__,
        "source": source.spec,
        "model_sha256": sha,
        "base_model_sha256": sha,
        "input": f"{INPUT_NAME}: (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) {'float32 0-255' if float_input else 'uint8'} "
                 "RGB NHWC, dlib.get_face_chip(image, shape, 150, 0.25)",
        "output": f"{OUTPUT_NAME}: (N, {DESCRIPTOR_SIZE}) float32",
        "flip": json.dumps(source.flip),
        "flip_scale": repr(source.flip_scale),
        "tolerance": "0.6",
    }
    if source.folder is not None:
        text, meta = read_finetune_metadata(source.folder)
        if text is not None:
            props[FINETUNED_METADATA] = text
            base = meta.get("base_model")
            if isinstance(base, dict) and isinstance(base.get("sha256"), str):
                props["base_model_sha256"] = base["sha256"]
            cal = meta.get("calibration")
            if isinstance(cal, dict) and isinstance(cal.get("scale"), (int, float)):
                props["calibration_scale"] = repr(float(cal["scale"]))
    return props


def export_onnx(spec: os.PathLike | str, output: os.PathLike | str, *, input: str = "uint8",
                opset: int = DEFAULT_OPSET) -> Path:
    """Write the network of an encoder spec as an ONNX file, atomically; returns ``output``.

    :param spec: ``"dlib"``/``"torch"`` (dlib's network), a ``.dat`` file or a ``dlibplus finetune``
        folder, optionally followed by ``+flip``.
    :param input: ``"uint8"`` (chips as pixels) or ``"float"`` (float32, values 0-255); NHWC either way.
    :param opset: ONNX opset (>= 11).
    :raises ModelFileError: ``spec`` is not a usable model.
    :raises ~dlibplus.optional.MissingDependencyError: ``onnx`` is not installed.
    :raises ValueError: bad ``input`` or ``opset``.
    """
    if input not in INPUT_KINDS:
        raise ValueError(f"input must be one of {INPUT_KINDS}, not {input!r}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, not {opset}")
    onnx = require_onnx()
    source = resolve_model(spec)
    output = Path(output)
    if output.is_dir():
        raise ModelFileError(output, "is a folder; give the .onnx file to write")
    if output.exists() and output.resolve() in {source.dat.resolve()}:
        raise ModelFileError(output, "is the model being exported; give another output file")
    float_input = input == "float"
    props = metadata_props(source, float_input)  # reads metadata.json first: a bad one fails early
    module = _graph_module(source)
    proto = onnx.load_from_string(_torch_export(module, float_input, opset))
    proto.producer_name, proto.producer_version = "dlibplus", __version__
    proto.doc_string = ("dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1), exported by "
                        "dlibplus: aligned 150x150 RGB face chips in, 128-d descriptors out.")
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    with atomic_path(output) as tmp:
        onnx.save(proto, str(tmp))
    return output


def read_metadata(path: os.PathLike | str) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    onnx = require_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
