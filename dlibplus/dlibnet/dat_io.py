"""Bytes <-> named numpy arrays for dlib's serialized networks (``.dat``); no torch here.

dlib writes a network as nested wrappers: the loss, then one version int per layer wrapper from the
output inwards, then the input layer, then every layer body with its wrapper trailer from the input
outwards (dlib/dnn/core.h: ``add_layer``/``add_loss_layer`` serialize; dlib/dnn/layers.h: each layer).
:func:`parse_dat` reads any such chain made of the layer kinds the face ResNet uses (also in their newer
versions) into a :class:`DatNet`;
:func:`dat_bytes` writes it back, byte for byte the same when nothing was changed. Which layer is
which in the face network is :mod:`dlibplus.dlibnet.convert`'s business, not this module's.

Errors in a file raise :class:`~dlibplus.errors.ModelFileError` naming the part being read and the
byte offset where it went wrong.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..errors import ModelFileError
from ..fileio import atomic_path

FLOAT_DIGITS = 24  # std::numeric_limits<float>::digits
DOUBLE_DIGITS = 53  # std::numeric_limits<double>::digits
_IS_INF, _IS_NINF, _IS_NAN = 32000, 32001, 32002  # float_details' special exponents

# Byte sizes of the C++ integer types dlib serializes here (LP64: long is 8 bytes).
_INT, _LONG, _INT16 = 4, 8, 2


class DatFormatError(Exception):
    """A malformed value at ``offset`` (None: the record's own start); :func:`parse_dat` turns it
    into a ModelFileError."""

    def __init__(self, offset: int | None, message: str):
        self.offset = offset
        self.message = message
        super().__init__(message if offset is None else f"{message} (byte {offset})")


# ---------------------------------------------------------------------------------------------
# Primitives

def float_details(value: float, digits: int) -> tuple[int, int]:
    """dlib's ``(mantissa, exponent)`` encoding of ``value`` (digits: 24 float, 53 double)."""
    if math.isnan(value):
        return 0, _IS_NAN
    if math.isinf(value):
        return 0, _IS_INF if value > 0 else _IS_NINF
    fraction, exponent = math.frexp(value)
    mantissa = int(fraction * (1 << digits))
    exponent -= digits
    for _ in range(8):  # shift off trailing zero bytes, as dlib does
        if mantissa & 0xFF:
            break
        mantissa >>= 8
        exponent += 8
    return mantissa, exponent


def float_from_details(mantissa: int, exponent: int) -> float:
    """The value a ``(mantissa, exponent)`` pair stands for."""
    if exponent >= _IS_NAN:
        return math.nan
    if exponent == _IS_NINF:
        return -math.inf
    if exponent == _IS_INF:
        return math.inf
    try:
        return math.ldexp(mantissa, exponent)
    except OverflowError:
        return math.copysign(math.inf, mantissa)


def pack_int(value: int) -> bytes:
    """dlib's variable-length integer: control byte (size | 0x80 if negative), then |value| LE."""
    magnitude = -value if value < 0 else value
    size = max(1, (magnitude.bit_length() + 7) // 8)
    return bytes([size | (0x80 if value < 0 else 0)]) + magnitude.to_bytes(size, "little")


class Reader:
    """Reads dlib primitives from a byte string; raises :class:`DatFormatError` with offsets."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n > self.left:
            raise DatFormatError(self.pos, f"file ends inside {what} ({n} bytes needed, {self.left} left)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self, what: str, size: int = _INT, signed: bool = True) -> int:
        """A C++ integer of ``size`` bytes; unsigned readers reject the sign bit, as dlib does."""
        start = self.pos
        control = self.take(1, what)[0]
        nbytes = control & (0x0F if signed else 0x8F)
        if nbytes == 0 or nbytes > size:
            kind = "signed" if signed else "unsigned"
            raise DatFormatError(start, f"{what}: control byte 0x{control:02x} is not a {size}-byte {kind} integer")
        value = int.from_bytes(self.take(nbytes, what), "little")
        return -value if signed and control & 0x80 else value

    def uint(self, what: str) -> int:
        return self.int(what, _LONG, signed=False)

    def long(self, what: str) -> int:
        return self.int(what, _LONG)

    def real(self, what: str) -> float:
        start = self.pos
        if self.left and self.data[self.pos] & 0x70:
            raise DatFormatError(start, f"{what}: dlib's old text float format is not supported")
        mantissa = self.int(f"{what} (mantissa)", 8)
        exponent = self.int(f"{what} (exponent)", _INT16)
        return float_from_details(mantissa, exponent)

    def bool(self, what: str) -> bool:
        start = self.pos
        byte = self.take(1, what)[0]
        if byte not in (0x30, 0x31):
            raise DatFormatError(start, f"{what}: 0x{byte:02x} is not a bool ('0' or '1')")
        return byte == 0x31

    def str(self, what: str) -> str:
        length = self.uint(f"{what} (length)")
        return bytes(self.take(length, what)).decode("latin-1")

    def dims(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        shape = tuple(self.long(f"{what} (shape)") for _ in range(4))
        if min(shape) < 0:
            raise DatFormatError(start, f"{what}: negative shape {shape}")
        return shape  # type: ignore[return-value]

    def tensor(self, what: str) -> np.ndarray:
        """A tensor: version 2, (n, k, nr, nc), then little-endian float32 data."""
        start = self.pos
        version = self.int(f"{what} (version)")
        if version != 2:
            raise DatFormatError(start, f"{what}: tensor version {version}, expected 2")
        shape = self.dims(what)
        count = math.prod(shape)
        raw = self.take(4 * count, f"{what} data ({count} floats)")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        """An alias_tensor: version 1, then (n, k, nr, nc); it holds no data."""
        start = self.pos
        version = self.int(f"{what} (version)")
        if version != 1:
            raise DatFormatError(start, f"{what}: alias tensor version {version}, expected 1")
        return self.dims(what)


class Writer:
    """Builds dlib's byte stream; the mirror of :class:`Reader`."""

    def __init__(self):
        self.out = bytearray()

    def int(self, value: int) -> None:
        self.out += pack_int(int(value))

    def real(self, value: float, digits: int) -> None:
        mantissa, exponent = float_details(float(value), digits)
        self.int(mantissa)
        self.int(exponent)

    def bool(self, value: bool) -> None:
        self.out += b"1" if value else b"0"

    def str(self, value: str) -> None:
        raw = value.encode("latin-1")
        self.int(len(raw))
        self.out += raw

    def tensor(self, array: np.ndarray) -> None:
        if array.ndim != 4:
            raise ValueError(f"a dlib tensor is 4-d (n, k, nr, nc), got shape {array.shape}")
        self.int(2)
        for d in array.shape:
            self.int(d)
        self.out += np.ascontiguousarray(array, dtype="<f4").tobytes()

    def alias(self, shape: tuple[int, ...]) -> None:
        self.int(1)
        for d in shape:
            self.int(d)


# ---------------------------------------------------------------------------------------------
# Layer records: each tag string maps to its fields, in file order, with their C++ types.

_CON = (("params", "tensor"), ("num_filters", "long"), ("nr", "long"), ("nc", "long"),
        ("stride_y", "int"), ("stride_x", "int"), ("padding_y", "int"), ("padding_x", "int"),
        ("filters", "alias"), ("biases", "alias"), ("lr_mult", "double"), ("wd_mult", "double"),
        ("bias_lr_mult", "double"), ("bias_wd_mult", "double"))
_AFFINE = (("params", "tensor"), ("gamma", "alias"), ("beta", "alias"), ("mode", "int"))
_POOL = (("nr", "long"), ("nc", "long"), ("stride_y", "int"), ("stride_x", "int"),
         ("padding_y", "int"), ("padding_x", "int"))
_FC = (("num_outputs", "uint"), ("num_inputs", "uint"), ("params", "tensor"), ("weights", "alias"),
       ("biases", "alias"), ("bias_mode", "int"), ("lr_mult", "double"), ("wd_mult", "double"),
       ("bias_lr_mult", "double"), ("bias_wd_mult", "double"))
_BN = (("params", "tensor"), ("gamma", "alias"), ("beta", "alias"), ("means", "tensor"),
       ("invstds", "tensor"), ("running_means", "tensor"), ("running_variances", "tensor"),
       ("num_updates", "uint"), ("running_stats_window_size", "uint"), ("lr_mult", "double"),
       ("wd_mult", "double"), ("bias_lr_mult", "double"), ("bias_wd_mult", "double"), ("eps", "double"))

# tag -> (kind, fields)
LAYER_TAGS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "con_4": ("con", _CON),
    "con_5": ("con", _CON + (("use_bias", "bool"),)),
    "con_6": ("con", _CON + (("use_bias", "bool"), ("use_relu", "bool"))),
    "affine_": ("affine", _AFFINE),
    "affine_2": ("affine", _AFFINE + (("disabled", "bool"),)),
    "bn_con2": ("bn_con", _BN),
    "relu_": ("relu", ()),
    "relu_2": ("relu", (("disabled", "bool"),)),
    "max_pool_2": ("max_pool", _POOL),
    "avg_pool_2": ("avg_pool", _POOL),
    "add_prev_": ("add_prev", ()),
    "fc_2": ("fc", _FC),
    "fc_3": ("fc", _FC + (("use_bias", "bool"),)),
}
_LAYER_SPECS = {tag: spec for tag, (_, spec) in LAYER_TAGS.items()}
LOSS_TAGS = {
    "loss_metric_": (),
    "loss_metric_2": (("margin", "float"), ("dist_thresh", "float")),
}
INPUT_TAGS = {
    "input_rgb_image_sized": (("avg_red", "float"), ("avg_green", "float"), ("avg_blue", "float"),
                              ("nr", "uint"), ("nc", "uint")),
}

# dlib's CNN object detectors (``loss_mmod`` over ``input_rgb_image_pyramid``, e.g.
# mmod_human_face_detector.dat). :func:`parse_dat` reads them only when asked (``loss_tags`` /
# ``input_tags``), so the face ResNet loader keeps rejecting them as "another network".
MMOD_LOSS_TAGS = {
    "loss_mmod_": (("options", "mmod_options"),),
}
_PYRAMID_MEANS = (("avg_red", "float"), ("avg_green", "float"), ("avg_blue", "float"))
PYRAMID_INPUT_TAGS = {
    # version 1 has no paddings: dlib then uses pyramid_padding=10, pyramid_outer_padding=11
    "input_rgb_image_pyramid": _PYRAMID_MEANS,
    "input_rgb_image_pyramid2": _PYRAMID_MEANS + (("pyramid_padding", "uint"), ("pyramid_outer_padding", "uint")),
}


@dataclasses.dataclass
class Trailer:
    """What dlib's ``add_layer`` wrapper writes after a layer body.

    ``flags``: this_layer_setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled.
    ``tensors``: x_grad, cached_output and params_grad (grad_final for the layer on the input); empty
    in a cleaned net. ``sample_expansion_factor`` is set only on the layer wrapping the input layer
    (wrapper version 3).
    """

    flags: tuple[bool, bool, bool]
    tensors: tuple[np.ndarray, np.ndarray, np.ndarray]
    sample_expansion_factor: int | None = None


@dataclasses.dataclass
class DatLayer:
    """One serialized record: a layer body (with its trailer), the loss or the input layer.

    ``fields`` holds every value of the body in file order: 4-d float32 arrays for tensors, 4-tuples
    for alias tensors, Python ints, floats and bools for the rest. ``offset`` is where the body's tag
    string starts in the file (-1 when built in memory).
    """

    kind: str
    tag: str
    fields: dict[str, Any]
    offset: int = -1
    trailer: Trailer | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The learned values by name, split out of dlib's flat ``params`` tensor.

        con: ``weight`` (F, C, kh, kw), ``bias`` (F,); affine: ``gamma``, ``beta`` (C,); bn_con also
        ``running_mean``, ``running_var`` (C,); fc: ``weight`` (num_inputs, num_outputs) as dlib
        stores it (x @ weight), ``bias`` (num_outputs,) when it has one. Disabled affines have none.
        """
        layout = _param_layout(self)
        if not layout:
            return {}
        flat = self.fields["params"].reshape(-1)
        out, start = {}, 0
        for name, shape in layout:
            size = math.prod(shape)
            out[name] = flat[start:start + size].reshape(shape)
            start += size
        if self.kind == "bn_con":
            out["running_mean"] = self.fields["running_means"].reshape(-1)
            out["running_var"] = self.fields["running_variances"].reshape(-1)
        return out

    def with_arrays(self, arrays: Mapping[str, np.ndarray]) -> "DatLayer":
        """A copy with the named arrays of :meth:`arrays` replaced (same names, same shapes)."""
        current = self.arrays()
        if set(arrays) != set(current):
            raise ValueError(f"{self.tag}: expected arrays {sorted(current)}, got {sorted(arrays)}")
        for name, value in arrays.items():
            if tuple(np.shape(value)) != current[name].shape:
                raise ValueError(f"{self.tag}.{name}: shape {np.shape(value)}, expected {current[name].shape}")
        fields = dict(self.fields)
        layout = _param_layout(self)
        if layout:
            flat = np.concatenate([np.asarray(arrays[n], np.float32).reshape(-1) for n, _ in layout])
            fields["params"] = flat.reshape(self.fields["params"].shape)
        if self.kind == "bn_con":
            for name, field in (("running_mean", "running_means"), ("running_var", "running_variances")):
                fields[field] = np.asarray(arrays[name], np.float32).reshape(self.fields[field].shape)
        return dataclasses.replace(self, fields=fields)


def _param_layout(layer: DatLayer) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the parts of ``params``, in storage order."""
    f = layer.fields
    if layer.kind == "con":
        layout = [("weight", tuple(f["filters"]))]
        if f.get("use_bias", True):
            layout.append(("bias", (f["num_filters"],)))
        return layout
    if layer.kind in ("affine", "bn_con"):
        if f["params"].size == 0:  # a disabled affine_ clears its params
            return []
        channels = math.prod(f["gamma"])
        return [("gamma", (channels,)), ("beta", (channels,))]
    if layer.kind == "fc":
        layout = [("weight", (f["num_inputs"], f["num_outputs"]))]
        if f["bias_mode"] == 0 and f.get("use_bias", True):
            layout.append(("bias", (f["num_outputs"],)))
        return layout
    return []


def _check_layer(layer: DatLayer) -> None:
    """Shape consistency inside one record; raises ValueError with the reason."""
    f = layer.fields
    if "params" in f:
        expected = sum(math.prod(shape) for _, shape in _param_layout(layer))
        if f["params"].size != expected:
            raise ValueError(f"params tensor holds {f['params'].size} values, its aliases need {expected}")
    if layer.kind == "con":
        if f["filters"][0] != f["num_filters"] or tuple(f["filters"][2:]) != (f["nr"], f["nc"]):
            raise ValueError(f"filter alias {f['filters']} does not match num_filters={f['num_filters']}, "
                             f"nr={f['nr']}, nc={f['nc']}")
        if f.get("use_bias", True) and math.prod(f["biases"]) != f["num_filters"]:
            raise ValueError(f"bias alias {f['biases']} does not match num_filters={f['num_filters']}")
    elif layer.kind in ("affine", "bn_con"):
        if f["gamma"] != f["beta"]:
            raise ValueError(f"gamma alias {f['gamma']} and beta alias {f['beta']} differ")
        if layer.kind == "bn_con":
            channels = math.prod(f["gamma"])
            for name in ("running_means", "running_variances"):
                if f[name].size != channels:
                    raise ValueError(f"{name} holds {f[name].size} values for {channels} channels")
    elif layer.kind == "fc":
        if f["weights"][:2] != (f["num_inputs"], f["num_outputs"]) or math.prod(f["weights"][2:]) != 1:
            raise ValueError(f"weight alias {f['weights']} does not match num_inputs={f['num_inputs']}, "
                             f"num_outputs={f['num_outputs']}")
        if f["bias_mode"] not in (0, 1):
            raise ValueError(f"unknown fc bias_mode {f['bias_mode']}")


def _read_fields(r: Reader, spec) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, kind in spec:
        what = name
        if kind == "tensor":
            fields[name] = r.tensor(what)
        elif kind == "alias":
            fields[name] = r.alias(what)
        elif kind == "int":
            fields[name] = r.int(what)
        elif kind == "long":
            fields[name] = r.long(what)
        elif kind == "uint":
            fields[name] = r.uint(what)
        elif kind in ("float", "double"):
            fields[name] = r.real(what)
        elif kind == "bool":
            fields[name] = r.bool(what)
        elif kind == "mmod_options":
            fields[name] = _read_mmod_options(r)
        else:  # pragma: no cover - the specs above are fixed
            raise AssertionError(kind)
    return fields


def _write_fields(w: Writer, spec, fields: Mapping[str, Any]) -> None:
    for name, kind in spec:
        value = fields[name]
        if kind == "tensor":
            w.tensor(value)
        elif kind == "alias":
            w.alias(value)
        elif kind in ("int", "long", "uint"):
            w.int(value)
        elif kind == "float":
            w.real(value, FLOAT_DIGITS)
        elif kind == "double":
            w.real(value, DOUBLE_DIGITS)
        elif kind == "bool":
            w.bool(value)
        elif kind == "mmod_options":
            _write_mmod_options(w, value)
        else:  # pragma: no cover
            raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------
# loss_mmod's options (dlib/dnn/loss.h, ``mmod_options`` versions 1-4)

def _read_mmod_options(r: Reader) -> dict[str, Any]:
    """``mmod_options`` as a dict: ``version``; ``detector_windows``, a list of dicts with
    ``version`` (None inside a version-1 record), ``width``, ``height`` (pixels, in the input
    tensor) and ``label``; the loss weights; ``overlaps_nms`` and ``overlaps_ignore`` as
    ``(iou_thresh, percent_covered_thresh)``; from version 3 ``assume_image_pyramid`` (0/1), from
    version 4 ``use_bounding_box_regression`` and ``bbr_lambda``. Absent fields get dlib's defaults.
    """
    start = r.pos
    version = r.int("mmod_options version")
    if not 1 <= version <= 4:
        raise DatFormatError(start, f"mmod_options version {version}, expected 1 to 4")
    if version == 1:
        windows = [{"version": None, "width": r.uint("detector window width"),
                    "height": r.uint("detector window height"), "label": ""}]
    else:
        windows = [_read_detector_window(r) for _ in range(r.uint("detector window count"))]
    opts: dict[str, Any] = {"version": version, "detector_windows": windows}
    for name in ("loss_per_false_alarm", "loss_per_missed_target", "truth_match_iou_threshold"):
        opts[name] = r.real(name)
    for name in ("overlaps_nms", "overlaps_ignore"):
        opts[name] = (r.real(f"{name} iou_thresh"), r.real(f"{name} percent_covered_thresh"))
    opts["assume_image_pyramid"] = r.take(1, "assume_image_pyramid")[0] if version >= 3 else 1
    if version >= 4:
        opts["use_bounding_box_regression"] = r.bool("use_bounding_box_regression")
        opts["bbr_lambda"] = r.real("bbr_lambda")
    else:
        opts["use_bounding_box_regression"], opts["bbr_lambda"] = False, 100.0
    return opts


def _read_detector_window(r: Reader) -> dict[str, Any]:
    start = r.pos
    version = r.int("detector window version")
    if version not in (1, 2):
        raise DatFormatError(start, f"detector window version {version}, expected 1 or 2")
    width, height = r.uint("detector window width"), r.uint("detector window height")
    label = r.str("detector window label") if version == 2 else ""
    return {"version": version, "width": width, "height": height, "label": label}


def _write_mmod_options(w: Writer, opts: Mapping[str, Any]) -> None:
    version = opts["version"]
    w.int(version)
    windows = opts["detector_windows"]
    if version == 1:
        if len(windows) != 1:
            raise ValueError(f"mmod_options version 1 holds one detector window, not {len(windows)}")
        w.int(windows[0]["width"])
        w.int(windows[0]["height"])
    else:
        w.int(len(windows))
        for window in windows:
            w.int(window["version"])
            w.int(window["width"])
            w.int(window["height"])
            if window["version"] == 2:
                w.str(window["label"])
    for name in ("loss_per_false_alarm", "loss_per_missed_target", "truth_match_iou_threshold"):
        w.real(opts[name], DOUBLE_DIGITS)
    for name in ("overlaps_nms", "overlaps_ignore"):
        for value in opts[name]:
            w.real(value, DOUBLE_DIGITS)
    if version >= 3:
        w.out.append(int(opts["assume_image_pyramid"]))
    if version >= 4:
        w.bool(opts["use_bounding_box_regression"])
        w.real(opts["bbr_lambda"], DOUBLE_DIGITS)


# ---------------------------------------------------------------------------------------------
# Whole networks

@dataclasses.dataclass
class DatNet:
    """A parsed dlib network: ``add_loss_layer<loss, chain of wrappers<input>>``.

    ``wrappers``: the wrapper version ints from the output inwards (2 = add_layer, 1 = tag or skip,
    3 = the add_layer on the input layer, always last). ``layers``: the bodies of the add_layer
    wrappers from the input outwards, one per wrapper that is not 1. ``source``: the file it was read
    from, for error messages.
    """

    loss: DatLayer
    wrappers: list[int]
    input: DatLayer
    layers: list[DatLayer]
    source: str = "<memory>"

    def named_arrays(self) -> dict[str, np.ndarray]:
        """Every learned array in input-to-output order, named ``"<index>_<kind>.<array>"``."""
        return {f"{name}.{key}": value for name, layer in self.named_layers()
                for key, value in layer.arrays().items()}

    def named_layers(self) -> Iterator[tuple[str, DatLayer]]:
        for index, layer in enumerate(self.layers):
            yield f"{index:03d}_{layer.kind}", layer

    @property
    def means(self) -> tuple[float, float, float]:
        """The input layer's per-channel means (R, G, B), subtracted from pixel values."""
        f = self.input.fields
        return f["avg_red"], f["avg_green"], f["avg_blue"]


def _error(source: str, where: str, exc: DatFormatError) -> ModelFileError:
    at = "" if exc.offset is None else f" at byte {exc.offset}"
    return ModelFileError(source, f"{where}: {exc.message}{at}")


def parse_dat(data: bytes, source: os.PathLike | str = "<bytes>", *,
              loss_tags: Mapping | None = None, input_tags: Mapping | None = None) -> DatNet:
    """Parse a whole dlib network file; raises ModelFileError naming the part and byte offset.

    ``loss_tags`` / ``input_tags``: the loss and input records accepted (default :data:`LOSS_TAGS`
    and :data:`INPUT_TAGS`, the face ResNet's; :data:`MMOD_LOSS_TAGS` and
    :data:`PYRAMID_INPUT_TAGS` for dlib's CNN detectors).
    """
    source = str(source)
    loss_tags = LOSS_TAGS if loss_tags is None else loss_tags
    input_tags = INPUT_TAGS if input_tags is None else input_tags
    r = Reader(data)
    where = "add_loss_layer"
    try:
        start = r.pos
        version = r.int("add_loss_layer version")
        if version != 1:
            raise DatFormatError(start, f"add_loss_layer version {version}, expected 1 "
                                        "(is this a dlib network file?)")
        where = "loss layer"
        loss = _read_record(r, loss_tags, "loss")
        wrappers: list[int] = []
        while not wrappers or wrappers[-1] != 3:
            where = f"layer wrapper {len(wrappers)}"
            start = r.pos
            version = r.int("wrapper version")
            if version not in (1, 2, 3):
                raise DatFormatError(start, f"wrapper version {version}, expected 1 (tag/skip), "
                                            "2 (add_layer) or 3 (add_layer on the input)")
            wrappers.append(version)
        where = "input layer"
        input_layer = _read_record(r, input_tags, "input")
        layers = []
        for index, version in enumerate(v for v in reversed(wrappers) if v != 1):
            where = f"layer {index}"
            offset = r.pos
            tag = _read_tag(r, LAYER_TAGS)
            where = f"layer {index} ({tag}) at byte {offset}"
            layer = _read_layer(r, tag, offset)
            layer.trailer = _read_trailer(r, version == 3)
            layers.append(layer)
        where = "end of network"
        if r.left:
            raise DatFormatError(r.pos, f"{r.left} unexpected bytes after the network")
    except DatFormatError as exc:
        raise _error(source, where, exc) from None
    return DatNet(loss, wrappers, input_layer, layers, source)


def _read_tag(r: Reader, tags) -> str:
    offset = r.pos
    tag = r.str("tag")
    if tag not in tags:
        raise DatFormatError(offset, f"unexpected tag {tag[:40]!r}, expected one of {', '.join(tags)}")
    return tag


def _read_record(r: Reader, tags, kind: str) -> DatLayer:
    offset = r.pos
    tag = _read_tag(r, tags)
    return DatLayer(kind, tag, _read_fields(r, tags[tag]), offset)


def _read_layer(r: Reader, tag: str, offset: int) -> DatLayer:
    kind, spec = LAYER_TAGS[tag]
    layer = DatLayer(kind, tag, _read_fields(r, spec), offset)
    try:
        _check_layer(layer)
    except ValueError as exc:
        raise DatFormatError(None, str(exc)) from None
    return layer


def _read_trailer(r: Reader, on_input: bool) -> Trailer:
    flags = tuple(r.bool("trailer flag") for _ in range(3))
    tensors = tuple(r.tensor("trailer tensor") for _ in range(3))
    factor = r.int("sample_expansion_factor") if on_input else None
    return Trailer(flags, tensors, factor)  # type: ignore[arg-type]


def read_dat(path: os.PathLike | str, *, loss_tags: Mapping | None = None,
             input_tags: Mapping | None = None) -> DatNet:
    """Read and parse a ``.dat`` file (see :func:`parse_dat`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelFileError(path, f"cannot read it ({exc.strerror or exc})") from exc
    return parse_dat(data, path, loss_tags=loss_tags, input_tags=input_tags)


def dat_bytes(net: DatNet) -> bytes:
    """Serialize a :class:`DatNet` the way dlib does."""
    bodies = [v for v in reversed(net.wrappers) if v != 1]
    if len(bodies) != len(net.layers) or not net.wrappers or net.wrappers[-1] != 3 or 3 in net.wrappers[:-1]:
        raise ValueError(f"{len(net.layers)} layers do not fit the wrapper list {net.wrappers}")
    w = Writer()
    w.int(1)
    _write_record(w, net.loss, {**LOSS_TAGS, **MMOD_LOSS_TAGS})
    for version in net.wrappers:
        w.int(version)
    _write_record(w, net.input, {**INPUT_TAGS, **PYRAMID_INPUT_TAGS})
    for version, layer in zip(bodies, net.layers):
        _write_record(w, layer, _LAYER_SPECS)
        trailer = layer.trailer
        if trailer is None:
            trailer = Trailer((True, True, False), (empty_tensor(),) * 3, 1 if version == 3 else None)
        for flag in trailer.flags:
            w.bool(flag)
        for tensor in trailer.tensors:
            w.tensor(tensor)
        if version == 3:
            w.int(1 if trailer.sample_expansion_factor is None else trailer.sample_expansion_factor)
    return bytes(w.out)


def _write_record(w: Writer, record: DatLayer, tags) -> None:
    if record.tag not in tags:
        raise ValueError(f"cannot write a record tagged {record.tag!r}")
    w.str(record.tag)
    _write_fields(w, tags[record.tag], record.fields)


def write_dat(net: DatNet, path: os.PathLike | str) -> None:
    """Write ``net`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    data = dat_bytes(net)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def empty_tensor() -> np.ndarray:
    """dlib's empty tensor, shape (0, 0, 0, 0)."""
    return np.zeros((0, 0, 0, 0), np.float32)
