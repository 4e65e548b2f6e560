"""dlib's CNN object detectors (MMOD, e.g. ``mmod_human_face_detector.dat``): the file and its geometry.

No torch here. :func:`read_mmod` turns a dlib ``loss_mmod<... input_rgb_image_pyramid<pyramid_down<6>>>``
network into a :class:`MmodNet`: its layer chain (convolutions with stride and padding, affine
layers, ReLUs; ``bn_con`` layers are folded into affine ones exactly as dlib does on load) and its
``loss_mmod`` options (detector windows, non-maximum suppression rule). The rest of this module is
the non-network half of dlib's detector, in dlib's own double/integer arithmetic:

- :func:`tiled_pyramid_rects`: where each pyramid level sits in the tiled input image
  (``compute_tiled_image_pyramid_details`` in ``image_pyramid.h``);
- :func:`upsampled_size` and :func:`rects_down`: ``pyramid_up`` / ``rect_down`` of
  ``pyramid_down<2>``, as dlib's Python binding applies them for ``upsample_num_times``;
- :func:`to_label`: ``loss_mmod_::to_label``: every output position scoring above the threshold
  becomes a window, mapped back through the tiled pyramid to the image, then greedy non-maximum
  suppression in descending score order.

Rectangles are ``(left, top, right, bottom)`` integer tuples with inclusive corners, as dlib's
``rectangle``. Sources: davisking/dlib v20.0.1 ``dlib/dnn/{loss,input,layers,visitors}.h``,
``dlib/image_transforms/{image_pyramid,interpolation}.h``, ``dlib/geometry/{rectangle,drectangle}.h``,
``dlib/image_processing/box_overlap_testing.h``, ``tools/python/src/cnn_face_detector.cpp``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence, Union

import numpy as np

from ..errors import ModelFileError
from . import dat_io

Rect = tuple[int, int, int, int]  # (left, top, right, bottom), inclusive, as dlib::rectangle

PYRAMID_N = 6  # input_rgb_image_pyramid<pyramid_down<6>>: not in the file, part of dlib's C++ type
_U64 = 1 << 64


# ---------------------------------------------------------------------------------------------
# The network description

@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution: ``weight`` (F, C, kh, kw) float32 cross-correlation filters, ``bias`` (F,)
    float32; ``stride`` and ``padding`` as (y, x) in pixels (zero padding)."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]

    def map_output_to_input(self, p: np.ndarray) -> np.ndarray:
        """dlib's ``con_::map_output_to_input`` for points ``p`` (..., 2) as (x, y) float64."""
        kh, kw = self.weight.shape[2:]
        scale = np.array([self.stride[1], self.stride[0]], np.float64)
        shift = np.array([kw // 2 - self.padding[1], kh // 2 - self.padding[0]], np.float64)
        return p * scale + shift


@dataclasses.dataclass(frozen=True)
class Affine:
    """``out = gamma[c] * x + beta[c]``; ``gamma``, ``beta`` (C,) float32."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclasses.dataclass(frozen=True)
class Relu:
    """``max(0, x)``."""


Layer = Union[Conv, Affine, Relu]


@dataclasses.dataclass(frozen=True)
class DetectorWindow:
    """One detector window of ``loss_mmod``: its size in input-tensor pixels and its label."""

    width: int
    height: int
    label: str = ""


@dataclasses.dataclass(frozen=True)
class MmodNet:
    """A dlib MMOD detector, input to output.

    ``means``: (R, G, B) float32 values subtracted from pixels before dividing by 256.
    ``pyramid_padding`` / ``pyramid_outer_padding``: pixels between and around the tiled pyramid
    levels. ``pyramid_n``: the levels shrink by (N-1)/N (6: 5/6). ``windows``: one per output
    channel. ``overlaps_nms``: (iou_thresh, percent_covered_thresh) of the suppression test.
    ``source``: the file, for messages.
    """

    layers: tuple[Layer, ...]
    means: tuple[float, float, float]
    windows: tuple[DetectorWindow, ...]
    overlaps_nms: tuple[float, float]
    pyramid_padding: int = 10
    pyramid_outer_padding: int = 11
    pyramid_n: int = PYRAMID_N
    source: str = "<memory>"

    @property
    def convs(self) -> list[Conv]:
        return [layer for layer in self.layers if isinstance(layer, Conv)]

    def output_to_input(self, xy: np.ndarray) -> np.ndarray:
        """Output-tensor positions (..., 2) as (x, y) -> input-tensor positions, float64
        (``output_tensor_to_input_tensor``: each convolution's mapping, from the output inwards)."""
        p = np.asarray(xy, np.float64)
        for conv in reversed(self.convs):
            p = conv.map_output_to_input(p)
        return p

    def output_size(self, nr: int, nc: int) -> tuple[int, int]:
        """The (rows, cols) of the score map for an (nr, nc) input tensor."""
        for conv in self.convs:
            kh, kw = conv.weight.shape[2:]
            nr = 1 + (nr + 2 * conv.padding[0] - kh) // conv.stride[0]
            nc = 1 + (nc + 2 * conv.padding[1] - kw) // conv.stride[1]
        return nr, nc


def read_mmod(path: os.PathLike | str | None = None) -> MmodNet:
    """The MMOD detector in a dlib ``.dat`` file (default: ``mmod_human_face_detector.dat``).

    Raises :class:`~dlibplus.errors.ModelFileError` naming the part (and byte offset) for a missing,
    truncated, corrupt or foreign file, or a layer kind this detector does not run.
    """
    if path is None:
        from .. import models

        path = models.model_path(models.CNN_DETECTOR)
    parsed = dat_io.read_dat(path, loss_tags=dat_io.MMOD_LOSS_TAGS, input_tags=dat_io.PYRAMID_INPUT_TAGS)
    return mmod_from_dat(parsed)


def mmod_from_dat(net: dat_io.DatNet) -> MmodNet:
    """:class:`MmodNet` of a parsed detector file (see :func:`read_mmod`)."""
    if 1 in net.wrappers:
        raise ModelFileError(net.source, "the network has tag/skip layers; an MMOD detector is a plain "
                                         "chain of con, affine/bn_con and relu layers")
    layers = tuple(layer for index, body in enumerate(net.layers)
                   if (layer := _layer(net, index, body)) is not None)
    opts = net.loss.fields["options"]
    if opts["use_bounding_box_regression"]:
        raise ModelFileError(net.source, "loss_mmod with bounding box regression is not supported")
    windows = tuple(DetectorWindow(w["width"], w["height"], w["label"]) for w in opts["detector_windows"])
    fields = net.input.fields
    mmod = MmodNet(layers=layers,
                   means=(fields["avg_red"], fields["avg_green"], fields["avg_blue"]),
                   windows=windows,
                   overlaps_nms=tuple(opts["overlaps_nms"]),  # type: ignore[arg-type]
                   pyramid_padding=fields.get("pyramid_padding", 10),
                   pyramid_outer_padding=fields.get("pyramid_outer_padding", 11),
                   source=net.source)
    _check_chain(mmod)
    return mmod


def _layer(net: dat_io.DatNet, index: int, body: dat_io.DatLayer) -> Layer | None:
    """One file layer as a :class:`Layer` (None: a disabled one, an identity)."""
    def fail(message: str) -> ModelFileError:
        return ModelFileError(net.source, f"layer {index} ({body.tag}) at byte {body.offset}: {message}")

    f = body.fields
    if f.get("disabled", False):
        return None
    if body.kind == "con":
        if f.get("use_relu", False):
            raise fail("a convolution with a fused relu is not supported")
        arrays = body.arrays()
        bias = arrays.get("bias", np.zeros(f["num_filters"], np.float32))
        return Conv(arrays["weight"].copy(), bias.copy(), (f["stride_y"], f["stride_x"]),
                    (f["padding_y"], f["padding_x"]))
    if body.kind in ("affine", "bn_con"):
        if body.kind == "affine" and f["mode"] != 0:
            raise fail(f"affine mode {f['mode']} (fc); an MMOD detector uses per-channel (conv) mode")
        arrays = body.arrays()
        if body.kind == "affine":
            return Affine(arrays["gamma"].copy(), arrays["beta"].copy())
        return _fold_bn(arrays, f["eps"])
    if body.kind == "relu":
        return Relu()
    raise fail(f"a {body.kind} layer; an MMOD detector here is a chain of con, affine/bn_con and relu")


def _fold_bn(arrays: dict[str, np.ndarray], eps: float) -> Affine:
    """dlib's ``affine_(const bn_&)``, in its float32 arithmetic:
    g = gamma / sqrt(running_var + eps), b = beta - g * running_mean."""
    g = arrays["gamma"] / np.sqrt(arrays["running_var"] + np.float32(eps))
    b = arrays["beta"] - g * arrays["running_mean"]
    return Affine(g.astype(np.float32), b.astype(np.float32))


def _check_chain(net: MmodNet) -> None:
    """Channel counts agree along the chain, and the last convolution gives one score per window."""
    channels = 3
    for layer in net.layers:
        if isinstance(layer, Conv):
            if layer.weight.shape[1] != channels:
                raise ModelFileError(net.source, f"a convolution takes {layer.weight.shape[1]} channels, "
                                                 f"the layer before gives {channels}")
            channels = layer.weight.shape[0]
        elif isinstance(layer, Affine) and layer.gamma.size != channels:
            raise ModelFileError(net.source, f"an affine layer has {layer.gamma.size} channels, "
                                             f"the layer before gives {channels}")
    if not net.layers or not isinstance(net.layers[-1], Conv):
        raise ModelFileError(net.source, "the last layer is not a convolution")
    if channels != len(net.windows) or not net.windows:
        raise ModelFileError(net.source, f"the network gives {channels} score channels for "
                                         f"{len(net.windows)} detector windows")


# ---------------------------------------------------------------------------------------------
# Image pyramid geometry

def pyramid_down_size(nr: int, nc: int, n: int = PYRAMID_N) -> tuple[int, int]:
    """Size of the next level of ``pyramid_down<n>`` (n > 2): floor(((n-1)/n) * size)."""
    rate = (n - 1.0) / n
    return math.floor(rate * nr), math.floor(rate * nc)


def tiled_pyramid_rects(nr: int, nc: int, n: int = PYRAMID_N, padding: int = 10,
                        outer_padding: int = 11) -> tuple[list[Rect], int, int]:
    """Where dlib's ``input_image_pyramid`` puts each level of an (nr, nc) image.

    Returns ``(rects, NR, NC)``: level i occupies ``rects[i]`` (left, top, right, bottom) of an
    NR x NC tensor, level 0 being the image itself at (outer_padding, outer_padding). The first
    levels go down the left column; the rest, once they fit, go up a second column at the right.
    Emulates ``compute_tiled_image_pyramid_details``, its unsigned arithmetic included. An image
    too small to lay out (a few pixels high: dlib then reads past its list and fails) gives
    ``([], 0, 0)``.
    """
    if nr * nc == 0:
        return [], 0, 0
    sizes = [(nr, nc)]  # (height, width)
    while True:
        nr, nc = pyramid_down_size(nr, nc, n)
        if nr * nc == 0 or nr < 5:
            break
        sizes.append((nr, nc))
    h0, w0 = sizes[0]
    total_height = sum(h + padding for h, _ in sizes) - 2 * padding
    height, prev_width = 0, 0
    for h, w in sizes:
        fits_beside = w <= (w0 - prev_width - padding) % _U64
        half_done = ((height - h0) % _U64) * 2 % _U64 >= (total_height - h0) % _U64
        if fits_beside and half_done:
            break
        height += h + padding
        prev_width = w
    height -= padding
    rects: list[Rect] = []
    y = outer_padding
    while y < height + outer_padding and len(rects) < len(sizes):
        h, w = sizes[len(rects)]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
    if not rects:  # too small an image (dlib itself fails on these)
        return [], 0, 0
    y -= padding
    while len(rects) < len(sizes):
        h, w = sizes[len(rects)]
        right, bottom = outer_padding + w0 - 1, y - 1
        rect = (right - (w - 1), bottom - (h - 1), right, bottom)
        if _intersects(rects[0], rect):
            break
        rects.append(rect)
        y -= h + padding
    return rects, height + 2 * outer_padding, w0 + 2 * outer_padding


def _intersects(a: Rect, b: Rect) -> bool:
    return max(a[0], b[0]) <= min(a[2], b[2]) and max(a[1], b[1]) <= min(a[3], b[3])


def upsampled_size(nr: int, nc: int) -> tuple[int, int]:
    """Size of ``pyramid_up(img, pyramid_down<2>)`` of an (nr, nc) image: the image rectangle's
    corners mapped by ``point_up`` (p + (1.25, 0.75)) * 2, rounded; (2 nr + 1, 2 nc + 2)."""
    if nr * nc == 0:
        return 0, 0
    right = _lround((nc - 1 + 1.25) * 2)
    bottom = _lround((nr - 1 + 0.75) * 2)
    return int(bottom) + 1, int(right) + 1


def _lround(x):
    """C's lround (halves away from zero), element-wise, as float64."""
    x = np.asarray(x, np.float64)
    whole = np.trunc(x)
    return whole + np.where(np.abs(x - whole) >= 0.5, np.sign(x), 0.0)


def rects_down(rects: np.ndarray, levels: int) -> np.ndarray:
    """``pyramid_down<2>::rect_down(rect, levels)`` then rounding to a rectangle: maps (N, 4)
    (left, top, right, bottom) rectangles of an image upsampled ``levels`` times back to it."""
    p = np.asarray(rects, np.float64).reshape(-1, 2, 2)
    for _ in range(levels):
        p = p / 2.0 - np.array([1.25, 0.75])
    return _lround(p.reshape(-1, 4)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# loss_mmod's to_label

def to_label(net: MmodNet, scores: np.ndarray, rects: Sequence[Rect], threshold: float = 0.0
             ) -> list[tuple[Rect, float]]:
    """dlib's detections from one image's score map.

    ``scores``: (K, h, w) float32 network output (K detector windows); ``rects``: the image's tiled
    pyramid (:func:`tiled_pyramid_rects`). Every position scoring above ``threshold`` becomes the
    window of its channel centred on the position's input-tensor point, mapped to image pixels by
    its nearest pyramid level; then, best score first, a window is kept unless it overlaps a kept
    one (:func:`overlaps_nms`). Returns ``[((left, top, right, bottom), confidence), ...]`` best
    first, confidences as float64 of the float32 scores.
    """
    ks, ys, xs = np.nonzero(scores > threshold)
    if ks.size == 0:
        return []
    conf = scores[ks, ys, xs].astype(np.float64)
    centre = net.output_to_input(np.stack([xs, ys], axis=1).astype(np.float64))
    size = np.array([[net.windows[k].width - 1.0, net.windows[k].height - 1.0] for k in ks])
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)  # centered_drect
    boxes = _lround(tensor_to_image(boxes, rects, net.pyramid_n)).astype(np.int64)
    order = np.argsort(-conf, kind="stable")  # dlib sorts by descending confidence
    kept: list[int] = []
    for i in order:
        if not any(overlaps_nms(boxes[j], boxes[i], net.overlaps_nms) for j in kept):
            kept.append(int(i))
    return [(tuple(int(v) for v in boxes[i]), float(conf[i])) for i in kept]  # type: ignore[misc]


def tensor_to_image(boxes: np.ndarray, rects: Sequence[Rect], n: int = PYRAMID_N) -> np.ndarray:
    """``tiled_pyramid_to_image``: (N, 4) float64 boxes in the tiled tensor -> image pixels.

    Each box belongs to the level whose rectangle contains its centre (rounded to a point), or
    else is nearest to it; it is shifted to that level's origin and scaled up through
    ``pyramid_down<n>::point_up`` (p * n/(n-1) + 0.3) once per level.
    """
    boxes = np.asarray(boxes, np.float64)
    level = _nearest_rect(rects, _round_point((boxes[:, :2] + boxes[:, 2:]) / 2.0))
    origin = np.asarray(rects, np.float64)[level][:, :2]
    p = boxes.reshape(-1, 2, 2) - origin[:, None, :]
    ratio = n / (n - 1.0)
    for step in range(1, int(level.max(initial=0)) + 1):
        up = level >= step
        p[up] = p[up] * ratio + 0.3
    return p.reshape(-1, 4)


def _round_point(p: np.ndarray) -> np.ndarray:
    """dlib's dpoint -> point conversion: floor(v + 0.5)."""
    return np.floor(p + 0.5)


def _nearest_rect(rects: Sequence[Rect], points: np.ndarray) -> np.ndarray:
    """``nearest_rect``: the first rectangle containing each point, else the (first) nearest."""
    r = np.asarray(rects, np.float64)[None]  # (1, L, 4)
    x, y = points[:, 0:1], points[:, 1:2]  # (N, 1)
    inside = (x >= r[..., 0]) & (x <= r[..., 2]) & (y >= r[..., 1]) & (y <= r[..., 3])
    dx = np.clip(x, r[..., 0], r[..., 2]) - x
    dy = np.clip(y, r[..., 1], r[..., 3]) - y
    dist = np.sqrt(dx * dx + dy * dy)
    return np.where(inside.any(axis=1), inside.argmax(axis=1), dist.argmin(axis=1))


def overlaps_nms(a: Sequence[int], b: Sequence[int], thresholds: tuple[float, float]) -> bool:
    """dlib's ``test_box_overlap(iou_thresh, percent_covered_thresh)(a, b)`` on integer rectangles.

    Note dlib's "union" is the area of the bounding box of both rectangles, not of their union.
    """
    iou_thresh, covered_thresh = thresholds
    inner = _area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    if inner == 0:
        return False
    outer = _area(min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
    return (inner / outer > iou_thresh or inner / _area(*a) > covered_thresh
            or inner / _area(*b) > covered_thresh)


def _area(left: int, top: int, right: int, bottom: int) -> int:
    if left > right or top > bottom:
        return 0
    return (right - left + 1) * (bottom - top + 1)
