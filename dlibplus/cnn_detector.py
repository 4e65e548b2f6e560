"""dlib's CNN face detector (MMOD, ``mmod_human_face_detector.dat``) in PyTorch, batched, exact.

:class:`TorchCnnDetector` returns what ``dlib.cnn_face_detection_model_v1(path)(image, upsample)``
returns: the same rectangles and the same confidences (float32 network, ~1e-6 apart), on CPU or
CUDA, many images per forward pass. What it reproduces of dlib (v20, see
:mod:`dlibplus.dlibnet.mmod` for the geometry):

- the Python binding's upsampling: ``upsample`` times ``pyramid_up`` (bilinear, output
  (2 H + 1, 2 W + 2)) of the RGB image, with dlib's uint8 truncation; greyscale images are
  copied into all three channels first;
- ``input_rgb_image_pyramid<pyramid_down<6>>``: (pixel - mean) / 256 placed in a zeroed tiled
  image, every further level a 5/6 bilinear resize of the one before, bit for bit dlib's
  (SIMD) float arithmetic: built by dlib's own ``resize_image`` on a CPU, by tensor ops that
  replay its arithmetic on CUDA;
- the network (convolutions, affine, ReLU) in float32, TF32 off on CUDA for its own work;
- ``loss_mmod``'s to_label and the mapping of each rectangle back to the input image.

Batching: images are grouped by size, their tiled pyramids padded to a common size per forward pass
(the padding is masked before every zero-padded convolution, so it changes no score). A call is two
steps that may run in different processes: :meth:`TorchCnnDetector.score_maps` (the network, on the
device) and :func:`detections` (dlib's ``to_label`` of one image's small :class:`ScoreMap`, numpy only;
:mod:`dlibplus.device_pipeline` runs it in worker processes). Importing this module does not import
torch; building a detector does.

    >>> from dlibplus.cnn_detector import cnn_detector
    >>> dets = cnn_detector()([image], upsample=1)[0]   # image: (H, W, 3) uint8 RGB
    >>> [(d.box, d.confidence) for d in dets]            # box: (top, right, bottom, left)
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import numpy as np

from .dlibnet import mmod

if TYPE_CHECKING:
    import torch

PRECISIONS = ("exact", "fast")
PYRAMID_BUILDERS = ("auto", "dlib", "torch")
DEFAULT_BATCH_PIXELS = 1 << 24  # tiled-pyramid pixels per forward pass (about 1 GB of activations)
MAX_PADDING = 1.25  # a batch's padded pixels over its images' own: more, and a new batch starts


class Detection(NamedTuple):
    """One face: ``box`` (top, right, bottom, left) int pixels of the input image, exactly dlib's
    ``mmod_rectangle.rect`` (it may reach outside the image: face_recognition clips it later);
    ``confidence``: the network's float32 score as a float (dlib's ``.confidence``)."""

    box: tuple[int, int, int, int]
    confidence: float


class ScoreMap(NamedTuple):
    """The network's output for one image, before dlib's ``to_label``: ``scores`` (K, h, w) float32 (one
    channel per detector window, cut to the image's own tiled pyramid), the tiled pyramid's level
    rectangles ``rects`` ((left, top, right, bottom) each) and the image's ``upsample``. About 1/64 of
    the tiled pyramid's pixels: small enough to send to another process."""

    scores: np.ndarray
    rects: tuple[mmod.Rect, ...]
    upsample: int


def detections(score_map: ScoreMap | None, net: mmod.MmodNet | None = None) -> list[Detection]:
    """dlib's detections of one image from its :class:`ScoreMap` (``None``: an image too small for the
    network, no faces), best first: candidates, window mapping and non-maximum suppression
    (:func:`dlibplus.dlibnet.mmod.to_label`), then the boxes mapped back through the upsampling.
    ``net``: the detector that scored it (default: the default ``.dat``, read once per process)."""
    if score_map is None:
        return []
    net = net if net is not None else _default_net()
    return _to_detections(mmod.to_label(net, score_map.scores, score_map.rects), score_map.upsample)


@functools.lru_cache(maxsize=1)
def _default_net() -> mmod.MmodNet:
    return mmod.read_mmod(None)


class TorchCnnDetector:
    """dlib's MMOD face detector on PyTorch.

    ``path``: the detector ``.dat`` (default ``mmod_human_face_detector.dat`` from
    face_recognition_models); a missing, corrupt or foreign file raises
    :class:`~dlibplus.errors.ModelFileError`. ``device``: ``"auto"`` (CUDA when available),
    ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. ``precision``: ``"exact"`` (float32, TF32 off: dlib's
    rectangles, confidences ~1e-6 from dlib's) or ``"fast"`` (on CUDA the network runs under
    float16 autocast: confidences move by ~1e-2, so a face near the 0 threshold or a box near the
    suppression rule may differ; on CPU it is the float32 path, since bfloat16 autocast measured
    3-4x slower than float32 on an AVX2 CPU). The image pyramid is float32 and exact in both.
    ``batch_pixels``: tiled-pyramid pixels per forward pass (an image larger than that goes alone).
    ``pyramid``: who builds the upsampled images and the tiled pyramid, bit-identically either
    way: ``"dlib"`` (dlib's own ``resize_image``, C++ SIMD: the fastest on a CPU), ``"torch"``
    (tensor ops on the detector's device) or ``"auto"`` (dlib on CPU, torch on CUDA).
    """

    def __init__(self, path: os.PathLike | str | None = None, device: str = "auto",
                 precision: str = "exact", batch_pixels: int = DEFAULT_BATCH_PIXELS,
                 pyramid: str = "auto"):
        import torch

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if pyramid not in PYRAMID_BUILDERS:
            raise ValueError(f"pyramid must be one of {PYRAMID_BUILDERS}, not {pyramid!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
        self.precision = precision
        self.pyramid = ("dlib" if self.device.type == "cpu" else "torch") if pyramid == "auto" else pyramid
        self.batch_pixels = int(batch_pixels)
        self.net = mmod.read_mmod(path)
        self._layers = _torch_layers(self.net, self.device)
        self._means = torch.tensor(self.net.means, dtype=torch.float32, device=self.device).view(3, 1, 1)

    def __repr__(self) -> str:
        return (f"TorchCnnDetector(source={self.net.source!r}, device={str(self.device)!r}, "
                f"precision={self.precision!r}, pyramid={self.pyramid!r})")

    def __call__(self, images: Sequence[np.ndarray], upsample: int = 0) -> list[list[Detection]]:
        """Faces in each image, best first, as dlib's ``cnn_face_detection_model_v1`` finds them.

        ``images``: (H, W, 3) RGB or (H, W) greyscale uint8 arrays, any sizes. ``upsample``: how
        many times each image is doubled first (face_recognition's
        ``number_of_times_to_upsample``: the 80x80 detector window finds faces down to about
        80 px at 0, 40 px at 1, 20 px at 2). Returns one
        list of :class:`Detection` per image, in input order.
        """
        return [detections(found, self.net) for found in self.score_maps(images, upsample)]

    def score_maps(self, images: Sequence[np.ndarray], upsample: int = 0) -> list[ScoreMap | None]:
        """The network's part of :meth:`__call__`: each image's :class:`ScoreMap` (``None`` for an image
        too small for the network), in input order; :func:`detections` of each gives its faces (on this
        process or another: a score map is small)."""
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, not {upsample}")
        arrays = [_check_image(image, index) for index, image in enumerate(images)]
        results: list[ScoreMap | None] = [None for _ in arrays]
        # too small for the network (no score map; dlib fails on these): no faces
        todo = [i for i, a in enumerate(arrays) if self._runs_on(_upsampled_shape(a.shape[:2], upsample))]
        sizes = [arrays[i].shape for i in todo]  # equal shapes: equal pyramids, kept together
        for batch in _batches(sizes, upsample, self.net, self.batch_pixels):
            indices = [todo[i] for i in batch]
            for index, found in zip(indices, self._score_batch([arrays[i] for i in indices], upsample)):
                results[index] = found
        return results

    def detect(self, image: np.ndarray, upsample: int = 0) -> list[Detection]:
        """The faces in one image (see :meth:`__call__`)."""
        return self([image], upsample)[0]

    # -- one forward pass ----------------------------------------------------------------------

    def _score_batch(self, arrays: list[np.ndarray], upsample: int) -> list[ScoreMap]:
        """Score maps of images given with equal shapes next to each other (see :func:`_batches`)."""
        import torch

        shapes = [_upsampled_shape(a.shape[:2], upsample) for a in arrays]
        layouts = [self._layout(shape) for shape in shapes]
        with torch.inference_mode():
            height = max(nr for _, nr, _ in layouts)
            width = max(nc for _, _, nc in layouts)
            batch = torch.zeros((len(arrays), 3, height, width), dtype=torch.float32, device=self.device)
            start = 0
            while start < len(arrays):  # one run of equally shaped images at a time
                stop = start + 1
                while stop < len(arrays) and arrays[stop].shape == arrays[start].shape:
                    stop += 1
                rects, nr, nc = layouts[start]
                self._fill_pyramid(batch[start:stop, :, :nr, :nc], arrays[start:stop], upsample, rects)
                start = stop
            canvas_shapes = [(nr, nc) for _, nr, nc in layouts]
            scores = self._scores(batch, canvas_shapes).cpu().numpy()
        out = []
        for (rects, nr, nc), score in zip(layouts, scores):
            rows, cols = self.net.output_size(nr, nc)
            out.append(ScoreMap(np.ascontiguousarray(score[:, :rows, :cols]), tuple(rects), upsample))
        return out

    def _runs_on(self, shape: tuple[int, int]) -> bool:
        """Whether an image of ``shape`` (after upsampling) gives a non-empty score map."""
        rects, nr, nc = self._layout(shape)
        rows, cols = self.net.output_size(nr, nc)
        return bool(rects) and rows > 0 and cols > 0

    def _layout(self, shape: tuple[int, int]) -> tuple[list[mmod.Rect], int, int]:
        """(rects, NR, NC) of the tiled pyramid of an image of ``shape`` (after upsampling)."""
        return _layout(self.net, *shape)

    def _fill_pyramid(self, canvas: "torch.Tensor", arrays: list[np.ndarray], upsample: int,
                      rects: list[mmod.Rect]) -> None:
        """Write dlib's ``input_rgb_image_pyramid`` tensor of equally shaped images into ``canvas``
        (B, 3, NR, NC), which is zero: the image upsampled ``upsample`` times, (pixel - mean) / 256
        at ``rects[0]``, then each level a bilinear resize of the one before."""
        import torch

        if not rects:
            return
        if self.pyramid == "dlib":
            means = np.array(self.net.means, np.float32)
            if canvas.device.type == "cpu":
                _fill_pyramid_dlib(canvas.numpy(), arrays, upsample, rects, means)
            else:  # built in host memory, then copied over
                host = np.zeros(tuple(canvas.shape), np.float32)
                _fill_pyramid_dlib(host, arrays, upsample, rects, means)
                canvas.copy_(torch.from_numpy(host))
        else:
            self._fill_pyramid_torch(canvas, arrays, upsample, rects)

    def _fill_pyramid_torch(self, canvas: "torch.Tensor", arrays: list[np.ndarray], upsample: int,
                            rects: list[mmod.Rect]) -> None:
        """:meth:`_fill_pyramid` with tensor ops on the canvas's device (:func:`_resize`)."""
        import torch

        images = torch.from_numpy(np.stack(arrays)).to(self.device)
        if images.dim() == 3:  # greyscale: dlib copies it into R, G and B
            images = images.unsqueeze(-1).expand(*images.shape, 3)
        images = images.permute(0, 3, 1, 2).to(torch.float32)  # (B, 3, H, W), values 0..255

        def level(rect: mmod.Rect) -> "torch.Tensor":
            return canvas[:, :, rect[1]:rect[3] + 1, rect[0]:rect[2] + 1]

        first = level(rects[0])
        for step in range(upsample):  # the last one straight into the pyramid
            images = _resize(images, *mmod.upsampled_size(*images.shape[-2:]), rgb8=True,
                             out=first if step == upsample - 1 else None)
        if upsample:
            first.sub_(self._means).div_(256.0)  # float32 (x - mean), then an exact / 256
        else:
            torch.sub(images, self._means, out=first).div_(256.0)
        for prev, rect in zip(rects, rects[1:]):
            _resize(level(prev), rect[3] - rect[1] + 1, rect[2] - rect[0] + 1, rgb8=False, out=level(rect))

    def _scores(self, batch: "torch.Tensor", shapes: list[tuple[int, int]]) -> "torch.Tensor":
        """(B, K, h, w) float32 scores of a padded batch (B, 3, H, W) of tiled pyramids whose own
        sizes are ``shapes``: zero padding outside each one's valid region, as dlib's convolutions see."""
        import torch
        import torch.nn.functional as F

        mixed = len(set(shapes)) > 1
        valid = [list(s) for s in shapes]
        with self._math_mode():
            x = batch.contiguous(memory_format=torch.channels_last)
            for kind, spec, tensors in self._layers:
                if kind == "conv":
                    if mixed and max(spec.padding) > 0:
                        _mask_outside(x, valid)
                    x = F.conv2d(x, *tensors, stride=spec.stride, padding=spec.padding)
                    valid = [_conv_size(spec, *v) for v in valid]
                elif kind == "affine":
                    x = x * tensors[0] + tensors[1]
                else:
                    x = F.relu_(x)
            return x.float()

    @contextlib.contextmanager
    def _math_mode(self) -> Iterator[None]:
        """CUDA: float32 with TF32 off (``exact``; the global flags are restored after) or float16
        autocast (``fast``). CPU: float32."""
        import torch

        if self.precision == "fast" and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                yield
        elif self.device.type == "cuda":
            with _no_tf32():
                yield
        else:
            yield


@functools.lru_cache(maxsize=None)
def _cached_detector(path: str | None, device: str, precision: str) -> TorchCnnDetector:
    return TorchCnnDetector(path, device=device, precision=precision)


def cnn_detector(device: str = "auto", precision: str = "exact",
                 path: os.PathLike | str | None = None) -> TorchCnnDetector:
    """A :class:`TorchCnnDetector`, built once per (path, device, precision) and cached."""
    return _cached_detector(None if path is None else str(path), device, precision)


# ---------------------------------------------------------------------------------------------
# Inputs, batching, results

def _check_image(image: np.ndarray, index: int) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"image {index}: expected (H, W, 3) RGB or (H, W) greyscale uint8 pixels, "
                         f"got shape {array.shape} dtype {array.dtype} (dlib: 'Unsupported image type')")
    return array


def _upsampled_shape(shape: Sequence[int], upsample: int) -> tuple[int, int]:
    nr, nc = int(shape[0]), int(shape[1])
    for _ in range(upsample):
        nr, nc = mmod.upsampled_size(nr, nc)
    return nr, nc


def _batches(sizes: list[tuple[int, ...]], upsample: int, net: mmod.MmodNet, budget: int) -> list[list[int]]:
    """Image indices grouped for forward passes: sorted by tiled-pyramid size (equal image sizes
    adjacent); a group's padded pixels stay within ``budget`` (a larger image goes alone) and
    within ``MAX_PADDING`` times its images' own pixels."""
    canvas = {size: _layout(net, *_upsampled_shape(size[:2], upsample))[1:] for size in set(sizes)}
    order = sorted(range(len(sizes)), key=lambda i: (canvas[sizes[i]], sizes[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    height = width = own = 0
    for index in order:
        h, w = canvas[sizes[index]]
        new_h, new_w = max(height, h), max(width, w)
        padded = (len(current) + 1) * new_h * new_w
        if current and (padded > budget or padded > MAX_PADDING * (own + h * w)):
            batches.append(current)
            current, new_h, new_w, own = [], h, w, 0
        current.append(index)
        height, width, own = new_h, new_w, own + h * w
    if current:
        batches.append(current)
    return batches


def _fill_pyramid_dlib(canvas: np.ndarray, arrays: list[np.ndarray], upsample: int,
                       rects: list[mmod.Rect], means: np.ndarray) -> None:
    """:meth:`TorchCnnDetector._fill_pyramid` on the CPU with dlib's own ``resize_image``: the RGB
    uint8 version for ``pyramid_up``, the float32 version for each level, one channel at a time."""
    import dlib

    sizes = [(r[3] - r[1] + 1, r[2] - r[0] + 1) for r in rects]
    for slot, array in zip(canvas, arrays):
        image = np.ascontiguousarray(array if array.ndim == 3 else np.repeat(array[:, :, None], 3, axis=2))
        for _ in range(upsample):
            image = dlib.resize_image(image, *mmod.upsampled_size(*image.shape[:2]))
        for plane, channel, mean in zip(slot, np.moveaxis(image, 2, 0), means):
            level = (channel.astype(np.float32) - mean) / np.float32(256.0)  # float32, as dlib
            plane[rects[0][1]:rects[0][3] + 1, rects[0][0]:rects[0][2] + 1] = level
            for rect, (rows, cols) in zip(rects[1:], sizes[1:]):
                level = dlib.resize_image(level, rows, cols)
                plane[rect[1]:rect[3] + 1, rect[0]:rect[2] + 1] = level


def _layout(net: mmod.MmodNet, nr: int, nc: int) -> tuple[list[mmod.Rect], int, int]:
    return _cached_layout(nr, nc, net.pyramid_n, net.pyramid_padding, net.pyramid_outer_padding)


@functools.lru_cache(maxsize=4096)
def _cached_layout(nr: int, nc: int, n: int, padding: int, outer: int) -> tuple[list[mmod.Rect], int, int]:
    return mmod.tiled_pyramid_rects(nr, nc, n, padding, outer)


def _to_detections(found: list[tuple[mmod.Rect, float]], upsample: int) -> list[Detection]:
    if not found:
        return []
    boxes = mmod.rects_down(np.array([rect for rect, _ in found]), upsample)
    return [Detection((int(t), int(r), int(b), int(l)), conf)
            for (l, t, r, b), (_, conf) in zip(boxes, found)]


# ---------------------------------------------------------------------------------------------
# The network

def _torch_layers(net: mmod.MmodNet, device: "torch.device") -> list[tuple]:
    """The network as steps on ``device``, float32: ``("conv", Conv, (weight, bias))`` with an
    affine layer that follows a convolution folded into it (weight * gamma, bias * gamma + beta:
    the same function, rounded differently at the 1e-7 level), ``("affine", Affine, (gamma, beta))``
    as (1, C, 1, 1) for any other, ``("relu", Relu, ())``."""
    import torch

    def t(array: np.ndarray, shape=None) -> "torch.Tensor":
        tensor = torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(device)
        return tensor if shape is None else tensor.view(shape)

    steps: list[tuple] = []
    for spec in net.layers:
        if isinstance(spec, mmod.Affine) and steps and steps[-1][0] == "conv":
            conv = steps[-1][1]
            weight = conv.weight * spec.gamma[:, None, None, None]
            bias = conv.bias * spec.gamma + spec.beta
            folded = mmod.Conv(weight.astype(np.float32), bias.astype(np.float32), conv.stride, conv.padding)
            steps[-1] = ("conv", folded, ())
        elif isinstance(spec, mmod.Conv):
            steps.append(("conv", spec, ()))
        elif isinstance(spec, mmod.Affine):
            steps.append(("affine", spec, (t(spec.gamma, (1, -1, 1, 1)), t(spec.beta, (1, -1, 1, 1)))))
        else:
            steps.append(("relu", spec, ()))
    return [(kind, spec, _conv_tensors(spec, device) if kind == "conv" else tensors)
            for kind, spec, tensors in steps]


def _conv_tensors(conv: mmod.Conv, device: "torch.device") -> tuple["torch.Tensor", "torch.Tensor"]:
    """(weight, bias) on ``device``, the weight channels-last (oneDNN's fast layout on CPU)."""
    import torch

    weight = torch.from_numpy(np.ascontiguousarray(conv.weight)).to(device)
    return weight.contiguous(memory_format=torch.channels_last), torch.from_numpy(conv.bias.copy()).to(device)


def _conv_size(conv: mmod.Conv, nr: int, nc: int) -> list[int]:
    kh, kw = conv.weight.shape[2:]
    return [1 + (nr + 2 * conv.padding[0] - kh) // conv.stride[0],
            1 + (nc + 2 * conv.padding[1] - kw) // conv.stride[1]]


def _mask_outside(x: "torch.Tensor", valid: list[list[int]]) -> None:
    """Zero each sample outside its own (rows, cols), in place: what a zero-padded convolution
    sees in dlib, where the tensor ends there."""
    for sample, (rows, cols) in zip(x, valid):
        sample[:, max(rows, 0):, :] = 0
        sample[:, :, max(cols, 0):] = 0


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full float32 convolutions and matmuls on CUDA for the block; the global settings are restored."""
    import torch

    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):  # torch >= 2.9
        saved = (cudnn_conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        cudnn_conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            cudnn_conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
    else:
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------------------------------------
# dlib's bilinear resize, bit for bit

class _ResizePlan(NamedTuple):
    """Where each output pixel of dlib's ``resize_image`` reads and with which weights.

    Rows: ``top``, ``bottom`` (oh,) int64; ``tb`` (oh,) float64 fraction. Columns handled by dlib's
    4-wide SIMD loop: ``left`` (n,) int64 (right = left + 1) and ``lr`` (n,) float32 fraction, from
    float32 running sums as dlib's loop computes them. The remaining columns (dlib's scalar tail):
    ``tail_left``, ``tail_right`` int64 and ``tail_lr`` float64.
    """

    top: np.ndarray
    bottom: np.ndarray
    tb: np.ndarray
    left: np.ndarray
    lr: np.ndarray
    tail_left: np.ndarray
    tail_right: np.ndarray
    tail_lr: np.ndarray


@functools.lru_cache(maxsize=4096)
def _resize_plan(ih: int, iw: int, oh: int, ow: int) -> _ResizePlan:
    """dlib's ``resize_image`` (bilinear, ``interpolation.h``) index/weight tables for a
    (ih, iw) -> (oh, ow) resize: y and x step by (in - 1) / (out - 1) from 0."""
    y_scale = (ih - 1) / max(oh - 1, 1)
    ys = _running_sums(np.array([-y_scale]), y_scale, oh)[:, 0]
    top = np.floor(ys).astype(np.int64)
    x_scale = (iw - 1) / max(ow - 1, 1)
    left, lr, done = _simd_columns(iw, ow, x_scale)
    tail_x = _running_sums(np.array([-x_scale + done * x_scale]), x_scale, ow - done)[:, 0]
    tail_left = np.floor(tail_x).astype(np.int64)
    return _ResizePlan(top, np.minimum(top + 1, ih - 1), ys - top, left, lr,
                       tail_left, np.minimum(tail_left + 1, iw - 1), tail_x - tail_left)


def _simd_columns(iw: int, ow: int, x_scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The columns dlib's SIMD loop computes: four float32 lanes starting at
    (-4 + k) * x_scale, each step adding float32(4 * x_scale), truncated to ``left``; the loop
    stops at the first group whose last lane would read past the input. Returns (left, lr, count)."""
    x = -4 * x_scale
    lanes = np.array([x, x + x_scale, x + 2 * x_scale, x + 3 * x_scale], np.float64).astype(np.float32)
    groups = math.ceil(ow / 4) + 1
    sums = _running_sums(lanes, np.float32(4 * x_scale), groups)  # as the SIMD registers hold them
    left = sums.astype(np.int64)  # truncation toward zero (_mm_cvttps_epi32); x >= 0 here
    stop = np.nonzero(left[:, 3] + 1 >= iw)[0]
    count = 4 * int(stop[0]) if stop.size else 4 * groups
    count = min(count, ow)
    flat_left = left.reshape(-1)[:count]
    return flat_left, (sums.reshape(-1)[:count] - flat_left.astype(np.float32)), count


def _running_sums(start: np.ndarray, step, count: int) -> np.ndarray:
    """(count, len(start)): start + step, + step again, ..., each addition rounded in
    ``start``'s dtype, as a C loop ``x += step`` does (``np.cumsum`` accumulates sequentially)."""
    terms = np.empty((count + 1, start.size), start.dtype)
    terms[0] = start
    terms[1:] = step
    return np.cumsum(terms, axis=0, dtype=start.dtype)[1:]


@functools.lru_cache(maxsize=4096)
def _device_plan(ih: int, iw: int, oh: int, ow: int, device: str) -> dict:
    """:func:`_resize_plan` as tensors on ``device``, with dlib's float32 weights precomputed."""
    import torch

    plan = _resize_plan(ih, iw, oh, ow)
    f32 = np.float32
    tb = plan.tb.astype(f32)
    inv_tb = (1 - plan.tb).astype(f32)
    inv_lr = (f32(1) - plan.lr).astype(f32)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return {
        "top": t(plan.top), "bottom": t(plan.bottom),
        "left": t(plan.left), "right": t(plan.left + 1),
        # dlib's SIMD weights: float32 products of float32 row and column fractions
        "w_tl": t(np.outer(inv_tb, inv_lr)), "w_tr": t(np.outer(inv_tb, plan.lr)),
        "w_bl": t(np.outer(tb, inv_lr)), "w_br": t(np.outer(tb, plan.lr)),
        "tail_left": t(plan.tail_left), "tail_right": t(plan.tail_right),
        "tail_lr64": t(plan.tail_lr), "tail_lr32": t(plan.tail_lr.astype(f32)),
        "tb64": t(plan.tb).view(-1, 1), "n_simd": len(plan.left),
    }


def _resize(src: "torch.Tensor", oh: int, ow: int, rgb8: bool,
            out: "torch.Tensor | None" = None) -> "torch.Tensor":
    """dlib's bilinear ``resize_image`` of (..., ih, iw) float32 images to (..., oh, ow).

    ``rgb8``: the source holds uint8 values and the result is truncated to integers as dlib's
    ``rgb_pixel`` version does (``pyramid_up``); else dlib's float version (the tiled pyramid).
    ``out``: where to write the result (a view into the tiled pyramid), else a new tensor. Every
    product and sum is one float32 operation in dlib's order, so the result is dlib's bit for bit.
    """
    import torch

    ih, iw = src.shape[-2:]
    plan = _device_plan(ih, iw, oh, ow, str(src.device))
    if out is None:
        out = src.new_empty((*src.shape[:-2], oh, ow))
    rows_top = src.index_select(-2, plan["top"])
    rows_bottom = src.index_select(-2, plan["bottom"])
    n = plan["n_simd"]
    if n:
        left = plan["left"].expand(*rows_top.shape[:-1], n)
        right = plan["right"].expand(*rows_top.shape[:-1], n)
        value = torch.gather(rows_top, -1, left).mul_(plan["w_tl"])
        term = torch.gather(rows_top, -1, right).mul_(plan["w_tr"])
        value.add_(term)
        value.add_(torch.gather(rows_bottom, -1, left, out=term).mul_(plan["w_bl"]))
        value.add_(torch.gather(rows_bottom, -1, right, out=term).mul_(plan["w_br"]))
        if rgb8:
            torch.trunc(value, out=out[..., :n])
        else:
            out[..., :n] = value
    if n < ow:
        out[..., n:] = _resize_tail(rows_top, rows_bottom, plan, rgb8)
    return out


def _columns(rows: "torch.Tensor", index: "torch.Tensor") -> "torch.Tensor":
    """``rows[..., index]`` (gather is the fastest last-axis pick on CPU)."""
    import torch

    return torch.gather(rows, -1, index.expand(*rows.shape[:-1], index.numel()))


def _resize_tail(rows_top: "torch.Tensor", rows_bottom: "torch.Tensor", plan: dict, rgb8: bool) -> "torch.Tensor":
    """dlib's scalar loop for the last columns: double arithmetic (uint8 version, truncated) or
    float32 horizontal blends mixed with double row weights (float version)."""
    import torch

    left, right, tb = plan["tail_left"], plan["tail_right"], plan["tb64"]
    tl, tr = _columns(rows_top, left), _columns(rows_top, right)
    bl, br = _columns(rows_bottom, left), _columns(rows_bottom, right)
    if rgb8:
        lr = plan["tail_lr64"]
        tl, tr, bl, br = (v.double() for v in (tl, tr, bl, br))
        value = (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br)
        return torch.trunc(value).float()
    lr = plan["tail_lr32"]
    upper = ((1 - lr) * tl + lr * tr).double()
    lower = ((1 - lr) * bl + lr * br).double()
    return ((1 - tb) * upper + tb * lower).float()
