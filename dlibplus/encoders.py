"""Face encoders: aligned 150x150 RGB chips in, 128-d descriptors out.

Every encoder has ``encode(chips) -> np.ndarray`` of shape (n, 128), float64, and an ``identity``
dict (``kind``, ``model_sha256``, ``settings``) that changes whenever the descriptors could; other
modules use it as a cache key.

- :class:`DlibEncoder`: dlib's own ``compute_face_descriptor`` (any dlib-loadable ``.dat``).
- :class:`TorchEncoder`: the PyTorch replica (:class:`~dlibplus.dlibnet.DlibResNet`), batched, on
  CUDA when there is one; it matches dlib to ~1e-6 per component.
- :class:`JitterEncoder`: dlib's jitter around any encoder, each chip's random sequence started afresh,
  so a chip's descriptor never depends on what was encoded before it (``with_jitter(encoder, n)``).
- :class:`FlipEncoder`: test-time flip around any encoder (the mean descriptor of a chip and of its
  mirror image); a spec ending in ``+flip`` (``"dlib+flip"``, ``"mymodel/+flip"``) gives one.
- :func:`load_encoder`: ``"dlib"``, ``"torch"``, a ``.dat`` file or a folder holding ``model.dat``.

Chips are what ``dlib.get_face_chip(image, shape, 150, 0.25)`` returns: uint8, RGB, (150, 150, 3).
torch is imported only when a :class:`TorchEncoder` is built.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, Union

import numpy as np

from . import fileio, model_folder, models
from .errors import ModelFileError
from .faces import CHIP_SIZE
from .recipe import FLIP_SUFFIX, split_flip

if TYPE_CHECKING:
    import torch

    from .dlibnet import DlibResNet

DESCRIPTOR_SIZE = 128
FINETUNED_MODEL_NAME = model_folder.MODEL_DAT  # what ``dlibplus finetune --output DIR`` writes into DIR
FINETUNED_METADATA = model_folder.METADATA

Chips = Union[np.ndarray, Sequence[np.ndarray]]


class Encoder(Protocol):
    """What every encoder offers."""

    def encode(self, chips: Chips) -> np.ndarray:
        """(n, 128) float64 descriptors of n aligned chips."""

    @property
    def identity(self) -> dict[str, Any]:
        """``{"kind", "model_sha256", "settings"}``: equal identities give equal descriptors."""


def as_chips(chips: Chips) -> np.ndarray:
    """Validate chips into one contiguous uint8 array (n, 150, 150, 3); raises ValueError."""
    if isinstance(chips, np.ndarray):
        array = chips
    else:
        items = list(chips)
        if not items:
            return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        for index, item in enumerate(items):
            shape = np.shape(item)
            if shape != (CHIP_SIZE, CHIP_SIZE, 3):
                raise ValueError(f"chip {index} has shape {shape}; chips are {CHIP_SIZE}x{CHIP_SIZE} RGB, "
                                 f"shape ({CHIP_SIZE}, {CHIP_SIZE}, 3)")
        array = np.stack([np.asarray(item) for item in items])
    if array.ndim != 4 or array.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"chips must have shape (n, {CHIP_SIZE}, {CHIP_SIZE}, 3), got {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"chips must be uint8 RGB pixels, got dtype {array.dtype}")
    return np.ascontiguousarray(array)


file_sha256 = fileio.cached_file_sha256  # model files are hashed for every encoder made: remembered


class DlibEncoder:
    """dlib's ``face_recognition_model_v1.compute_face_descriptor`` on aligned chips, without jitter
    (wrap it in :class:`JitterEncoder` for that).

    ``dat_path``: a dlib face-recognition ``.dat`` (default dlib's own; a fine-tuned one saved by
    :func:`dlibplus.dlibnet.save_dat` works too). The dlib model loads on first use, so the object is
    cheap to make and to send to worker processes (``in_workers``: the pipeline runs it there, one
    image per call, since dlib's network uses one core).
    """

    in_workers = True

    def __init__(self, dat_path: os.PathLike | str | None = None):
        self.dat_path = Path(dat_path) if dat_path is not None else models.model_path(models.FACE_RECOGNITION_MODEL)
        if not self.dat_path.is_file():
            raise ModelFileError(self.dat_path, "file not found")
        self._model = None

    def __getstate__(self) -> dict:
        return {"dat_path": self.dat_path, "_model": None}  # a dlib model does not pickle; reload there

    def _net(self):
        if self._model is None:
            if dat_path_is_default(self.dat_path):
                self._model = models.face_recognition_model()
            else:
                import dlib

                try:
                    self._model = dlib.face_recognition_model_v1(str(self.dat_path))
                except RuntimeError as exc:
                    raise ModelFileError(self.dat_path, f"dlib could not load it ({exc})") from exc
        return self._model

    def encode(self, chips: Chips) -> np.ndarray:
        """(n, 128) float64 descriptors of uint8 RGB chips (n, 150, 150, 3)."""
        array = as_chips(chips)
        if not len(array):
            return np.zeros((0, DESCRIPTOR_SIZE))
        descriptors = self._net().compute_face_descriptor(list(array), 1)
        return np.array([np.asarray(d) for d in descriptors], dtype=np.float64)

    @property
    def identity(self) -> dict[str, Any]:
        return {"kind": "dlib", "model_sha256": file_sha256(self.dat_path), "settings": {}}

    def __repr__(self) -> str:
        return f"DlibEncoder(dat_path={str(self.dat_path)!r})"


def dat_path_is_default(path: os.PathLike | str) -> bool:
    try:
        return Path(path).resolve() == models.model_path(models.FACE_RECOGNITION_MODEL).resolve()
    except ModelFileError:
        return False


CPU_BATCH_SIZE = 128  # chips per forward pass on the CPU: 1.3-1.5x the faces/s of 64 on 2 busy cores, ~200 MB
CUDA_MAX_BATCH_SIZE = 2048
_CUDA_BYTES_PER_CHIP = 8 << 20  # generous activation memory per chip in flight (float32, inference)
_CUDA_CHUNK = 1 << 16  # chips whose descriptors stay on the GPU before one copy back


def default_batch_size(device: "torch.device | str") -> int:
    """Chips per forward pass for ``device``: :data:`CPU_BATCH_SIZE` off CUDA; on CUDA the largest
    power of two from 128 to :data:`CUDA_MAX_BATCH_SIZE` that leaves the GPU's memory ~8 MiB per chip
    (2048 on a 24 GiB or larger GPU, 1024 on 8-16 GiB)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    total = torch.cuda.get_device_properties(device).total_memory
    size = 128
    while size < CUDA_MAX_BATCH_SIZE and (2 * size) * _CUDA_BYTES_PER_CHIP <= total:
        size *= 2
    return size


class TorchEncoder:
    """The PyTorch replica of dlib's network, batched.

    ``model``: a :class:`~dlibplus.dlibnet.DlibResNet` (default: dlib's original weights). The
    encoder keeps its own inference copy (affines folded into the convolutions), so later changes
    to ``model`` do not reach it. ``device``: ``"auto"`` (CUDA when available), ``"cpu"``,
    ``"cuda"`` or ``"cuda:N"``. ``batch_size``: chips per forward pass (default
    :func:`default_batch_size` of the device). ``channels_last``: NHWC memory format, faster on CPU
    and on tensor cores.

    ``precision`` (:data:`dlibplus.precision.PRECISIONS`): ``"exact"`` (default) is float32 with TF32
    and reduced-precision matmuls off for the encoder's own work, whatever the global settings (they
    are restored after each call): dlib's descriptors to ~1e-6 per component on CPU and CUDA.
    ``"fast"`` is float16 on CUDA and bfloat16 autocast on the CPU (slow there unless the CPU has
    bfloat16 instructions); ``"float16"`` (float16 weights and activations, CUDA only) and
    ``"bfloat16"`` (bfloat16 autocast) name one. Reduced precisions move descriptors by ~1e-3 to
    1e-2 (measured by ``benchmarks/device_check.py``, with the share of pairs whose decision at
    distance 0.6 flips). ``half=True`` is the older spelling of ``precision="float16"``.
    ``compile``: run the network through ``torch.compile`` (static shapes: the last batch is padded).

    On CUDA, chips go to the GPU as uint8 through pinned host buffers while the previous batch runs
    (a copy stream), and become float32 there; descriptors are float32 until :meth:`encode` returns
    them as float64.
    """

    def __init__(self, model: "DlibResNet | None" = None, device: str = "auto", batch_size: int | None = None,
                 half: bool = False, channels_last: bool = True, *, precision: str = "exact",
                 compile: bool = False, _model_sha256: str | None = None):
        import torch

        from . import dlibnet
        from .precision import resolve_precision

        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
        if half:
            if self.device.type != "cuda":
                raise ValueError("half=True needs a CUDA device; on CPU use float32 (half=False)")
            if precision not in ("exact", "float16"):
                raise ValueError(f"half=True means precision='float16'; it contradicts precision={precision!r}")
            precision = "float16"
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size or default_batch_size(self.device)
        self.channels_last = channels_last
        self.compiled = bool(compile)
        if model is None:
            path = models.model_path(models.FACE_RECOGNITION_MODEL)
            model = dlibnet.load_dat(path)
            self._model_sha256 = file_sha256(path)
        else:
            self._model_sha256 = _model_sha256 or _weights_sha256(model)
        net = model.folded().eval().requires_grad_(False)
        net = net.to(self.device, torch.float16 if self.precision == "float16" else torch.float32)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self._net = net
        self._forward_fn = net  # the compiled module replaces it on first use (importing dynamo is slow)
        self._cuda_state: _CudaStaging | None = None

    @property
    def half(self) -> bool:
        """Whether the weights and activations are float16 (``precision == "float16"``)."""
        return self.precision == "float16"

    @classmethod
    def from_dat(cls, path: os.PathLike | str | None = None, **options) -> "TorchEncoder":
        """A TorchEncoder of the weights in a dlib ``.dat`` (default dlib's own); options as for ``__init__``."""
        from . import dlibnet

        path = Path(path) if path is not None else models.model_path(models.FACE_RECOGNITION_MODEL)
        return cls(dlibnet.load_dat(path), _model_sha256=file_sha256(path), **options)

    def _math_mode(self):
        from .precision import math_mode

        return math_mode(self.precision, self.device)

    def _forward(self, chips: "torch.Tensor") -> "torch.Tensor":
        """(m, 128) float32 descriptors of uint8 (m, 150, 150, 3) chips on the encoder's device (one
        batch; call under inference mode and :meth:`_math_mode`)."""
        import torch

        m = len(chips)
        if self.compiled and self._forward_fn is self._net:
            self._forward_fn = torch.compile(self._net, dynamic=False)
        if self.compiled and m < self.batch_size:  # static shapes: no recompilation for a short last batch
            chips = torch.cat([chips, chips.new_zeros((self.batch_size - m, *chips.shape[1:]))])
        return self._forward_fn(self._layout(chips))[:m].float()

    def _layout(self, chips: "torch.Tensor") -> "torch.Tensor":
        """(m, 3, 150, 150) view of (m, 150, 150, 3) chips in the network's memory format."""
        x = chips.permute(0, 3, 1, 2)  # NHWC memory: already channels_last; the network makes it float
        return x if self.channels_last else x.contiguous()

    def encode(self, chips: Chips) -> np.ndarray:
        """(n, 128) float64 descriptors of uint8 RGB chips (n, 150, 150, 3)."""
        import torch

        array = as_chips(chips)
        out = np.zeros((len(array), DESCRIPTOR_SIZE))
        if not len(array):
            return out
        with torch.inference_mode(), self._math_mode():
            if self.device.type == "cuda":
                for start in range(0, len(array), _CUDA_CHUNK):
                    part = array[start:start + _CUDA_CHUNK]
                    out[start:start + len(part)] = self._encode_cuda(part).cpu().numpy()
            else:
                for start in range(0, len(array), self.batch_size):
                    batch = torch.from_numpy(array[start:start + self.batch_size]).to(self.device)
                    out[start:start + len(batch)] = self._forward(batch).cpu().numpy()
        return out

    def _encode_cuda(self, array: np.ndarray) -> "torch.Tensor":
        """(n, 128) float32 descriptors on the GPU of uint8 chips (n, 150, 150, 3) in host memory.

        Each batch is copied into one of two pinned host buffers and sent on a copy stream while the
        GPU runs the batch before it; the compute stream waits for its copy's event, so the GPU never
        waits for the host unless the host is the slower of the two.
        """
        import torch

        if self._cuda_state is None or self._cuda_state.capacity < self.batch_size:
            self._cuda_state = _CudaStaging(self.device, self.batch_size)
        staging = self._cuda_state
        out = torch.empty((len(array), DESCRIPTOR_SIZE), dtype=torch.float32, device=self.device)
        starts = list(range(0, len(array), self.batch_size))
        pending = staging.send(array[:self.batch_size], 0)
        compute = torch.cuda.current_stream(self.device)
        for index, start in enumerate(starts):
            batch = staging.receive(pending, compute)
            out[start:start + len(batch)] = self._forward(batch)
            if index + 1 < len(starts):  # the next copy overlaps this batch's compute
                following = starts[index + 1]
                pending = staging.send(array[following:following + self.batch_size], index + 1)
        return out

    def embed(self, chips: "torch.Tensor") -> "torch.Tensor":
        """(N, 128) float32 descriptors, on the encoder's device, of chips already in a tensor: uint8
        (N, 150, 150, 3) RGB (or float pixel values 0-255 in that layout) on any device. For chips that
        live on the GPU (training, benchmarks of the network alone); same precision rules as :meth:`encode`."""
        import torch

        if chips.dim() != 4 or tuple(chips.shape[1:]) != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"chips must have shape (N, {CHIP_SIZE}, {CHIP_SIZE}, 3), got {tuple(chips.shape)}")
        out = torch.empty((len(chips), DESCRIPTOR_SIZE), dtype=torch.float32, device=self.device)
        with torch.inference_mode(), self._math_mode():
            for start in range(0, len(chips), self.batch_size):
                batch = chips[start:start + self.batch_size].to(self.device, non_blocking=True)
                out[start:start + len(batch)] = self._forward(batch)
        return out

    def frozen_features(self, chips: Chips, stages: int) -> list["torch.Tensor"]:
        """The activations after the network's first ``stages`` stages (``DlibResNet.features``), one
        tensor per batch that :meth:`encode` would run, on the encoder's device. Weights whose first
        stages are frozen while the others train (``finetune --freeze``) give the same activations every
        epoch: computed once, :meth:`encode_features` finishes them. The uncompiled network runs."""
        import torch

        array = as_chips(chips)
        with torch.inference_mode(), self._math_mode():
            return [self._net.features(self._layout(torch.from_numpy(array[start:start + self.batch_size])
                                                    .to(self.device)), stages)
                    for start in range(0, len(array), self.batch_size)]

    def encode_features(self, features: list["torch.Tensor"], stages: int) -> np.ndarray:
        """(n, 128) float64 descriptors from :meth:`frozen_features`' output (of an encoder whose first
        ``stages`` stages hold the same weights as this one's): :meth:`encode`'s, bit for bit, without
        running those stages again."""
        import torch

        out = np.zeros((sum(len(f) for f in features), DESCRIPTOR_SIZE))
        start = 0
        with torch.inference_mode(), self._math_mode():
            for batch in features:
                out[start:start + len(batch)] = self._net.forward_from(batch, stages).float().cpu().numpy()
                start += len(batch)
        return out

    @property
    def identity(self) -> dict[str, Any]:
        """``model_sha256``: the sha256 of the ``.dat`` file the weights came from, or for a model
        built in memory, of the ``.dat`` :func:`~dlibplus.dlibnet.save_dat` writes for it (the same
        for unchanged weights), taken when the encoder was made. ``settings``: ``{"precision":
        "exact" | "float16" | "bfloat16"}`` (plus ``"compile": True`` when compiled)."""
        settings: dict[str, Any] = {"precision": self.precision}
        if self.compiled:
            settings["compile"] = True
        return {"kind": "torch", "model_sha256": self._model_sha256, "settings": settings}

    def __repr__(self) -> str:
        return (f"TorchEncoder(device={str(self.device)!r}, batch_size={self.batch_size}, "
                f"precision={self.precision!r}, channels_last={self.channels_last}, compile={self.compiled})")


class _CudaStaging:
    """Two pinned host buffers and a copy stream that move uint8 chip batches to one GPU."""

    def __init__(self, device: "torch.device", batch_size: int):
        import torch

        self.device, self.capacity = device, batch_size
        self.stream = torch.cuda.Stream(device)
        self.buffers = [torch.empty((batch_size, CHIP_SIZE, CHIP_SIZE, 3), dtype=torch.uint8, pin_memory=True)
                        for _ in range(2)]
        self.copied: list["torch.cuda.Event | None"] = [None, None]

    def send(self, chips: np.ndarray, index: int) -> tuple["torch.Tensor", "torch.cuda.Event"]:
        """Start copying uint8 chips (m, 150, 150, 3) to the GPU (batch number ``index`` picks the buffer);
        returns the device tensor and the event that marks the copy done."""
        import torch

        slot = index % 2
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # the buffer's previous copy has left it
        host = self.buffers[slot][:len(chips)]
        host.copy_(torch.from_numpy(chips))  # a parallel memcpy into pinned memory
        with torch.cuda.stream(self.stream):
            on_device = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.copied[slot] = done
        return on_device, done

    @staticmethod
    def receive(pending: tuple["torch.Tensor", "torch.cuda.Event"], stream: "torch.cuda.Stream") -> "torch.Tensor":
        """The device tensor of a :meth:`send`, usable on ``stream`` once its copy is done."""
        tensor, done = pending
        stream.wait_event(done)
        tensor.record_stream(stream)  # the allocator keeps it until ``stream`` is through with it
        return tensor


class JitterEncoder:
    """dlib's jitter on any encoder: each descriptor is the float32 mean of ``base``'s descriptors of
    ``num_jitters`` jittered copies of the chip (``dlib::jitter_image``, reproduced exactly by
    :func:`dlibplus.align.jitter_image`).

    dlib's own model keeps one random sequence for its lifetime, so a face's jittered descriptor
    depends on every face encoded before it. Here each chip starts from a fresh ``DlibRand()`` (the
    state of a freshly loaded dlib model): a chip's descriptor depends on the chip alone, which is what
    a cache keyed by content needs, and it equals dlib's own ``compute_face_descriptor(chip,
    num_jitters)`` on a freshly loaded model.

    ``scale`` multiplies the mean (train-knn's :mod:`~dlibplus.jitter_scale`, so that 0.6 keeps its meaning);
    1.0, the default, is dlib's jitter itself.
    """

    def __init__(self, base: "Encoder", num_jitters: int, scale: float = 1.0):
        if num_jitters < 2:
            raise ValueError(f"num_jitters must be >= 2 (1 means no jitter), not {num_jitters}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, not {scale}")
        self.base, self.num_jitters, self.scale = base, int(num_jitters), float(scale)

    @property
    def in_workers(self) -> bool:
        return bool(getattr(self.base, "in_workers", False))

    def encode(self, chips: Chips) -> np.ndarray:
        """(n, 128) float64 descriptors of uint8 RGB chips (n, 150, 150, 3)."""
        from .align import DlibRand, jitter_chips

        array = as_chips(chips)
        out = np.zeros((len(array), DESCRIPTOR_SIZE))
        for i, chip in enumerate(array):
            copies = np.stack(jitter_chips(chip, self.num_jitters, DlibRand()))
            # dlib averages the copies' descriptors in float32
            out[i] = np.asarray(self.base.encode(copies), np.float32).mean(axis=0, dtype=np.float32)
        return out * self.scale

    @property
    def identity(self) -> dict[str, Any]:
        base = self.base.identity
        scale = {"jitter_scale": self.scale} if self.scale != 1.0 else {}
        return {**base, "settings": {**base["settings"], "num_jitters": self.num_jitters, **scale}}

    def __repr__(self) -> str:
        scale = f", scale={self.scale}" if self.scale != 1.0 else ""
        return f"JitterEncoder({self.base!r}, num_jitters={self.num_jitters}{scale})"


# At or below this many photos for the median person, dlib's jitter (10 copies) named more faces than plain
# encodings on the labelled sets, and more than the default finetune on average (BENCHMARKS.md): train-knn and
# finetune say so.
FEW_PHOTOS_FOR_JITTER = 4


def with_jitter(encoder: "Encoder", num_jitters: int, scale: float = 1.0) -> "Encoder":
    """``encoder`` itself for ``num_jitters`` 0 or 1 (no jitter, as in face_recognition), else a
    :class:`JitterEncoder` around it (``scale``: its factor)."""
    if num_jitters < 0:
        raise ValueError(f"num_jitters must be >= 0, not {num_jitters}")
    return encoder if num_jitters <= 1 else JitterEncoder(encoder, num_jitters, scale)


def mirror(chips: np.ndarray) -> np.ndarray:
    """Left-right mirror images of chips (n, H, W, 3), contiguous."""
    return np.ascontiguousarray(np.asarray(chips)[:, :, ::-1])


class FlipEncoder:
    """Test-time flip: each descriptor is ``scale`` times the mean of ``base``'s descriptors of the chip
    and of its left-right mirror image (as peers evaluate on LFW). Opt-in: the descriptors are no longer
    dlib's.

    Averaging shrinks distances, so at a fixed tolerance more different-person pairs pass. ``scale``
    undoes that for a fine-tuned model: ``dlibplus finetune`` calibrates the flipped output too, and
    ``load_encoder("DIR+flip")`` applies that scale, so 0.6 stays at the target false-accept rate. With
    dlib's own network (``"dlib+flip"``) there is nothing to calibrate against, and ``scale`` is 1.
    Measured on kpop_idols15 and lfw_dev in BENCHMARKS.md.
    """

    def __init__(self, base: "Encoder", scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"scale must be > 0, not {scale}")
        self.base, self.scale = base, float(scale)

    @property
    def in_workers(self) -> bool:
        return bool(getattr(self.base, "in_workers", False))

    def encode(self, chips: Chips) -> np.ndarray:
        """(n, 128) float64 descriptors of uint8 RGB chips (n, 150, 150, 3)."""
        array = as_chips(chips)
        if not len(array):
            return np.zeros((0, DESCRIPTOR_SIZE))
        both = np.asarray(self.base.encode(array), np.float64) + np.asarray(self.base.encode(mirror(array)), np.float64)
        return both * (self.scale / 2)

    @property
    def identity(self) -> dict[str, Any]:
        base = self.base.identity
        return {**base, "settings": {**base["settings"], "flip": True, "flip_scale": self.scale}}

    def __repr__(self) -> str:
        return f"FlipEncoder({self.base!r}, scale={self.scale})"


def finetuned_flip_scale(folder: Path) -> float:
    """The flip calibration ``dlibplus finetune`` stored in ``folder``'s metadata; 1.0, with a warning
    that says why, when there is none."""
    import warnings

    try:
        scale = model_folder.read_metadata(folder).flip_scale
        if scale is not None:
            return scale
        why = f"{folder / FINETUNED_METADATA} has none (a model made before flip calibration existed)"
    except ModelFileError as exc:
        why = str(exc)
    warnings.warn(f"{folder} has no flip calibration ({why}): with +flip, distance 0.6 is not calibrated "
                  "(fine-tune again to get one)", stacklevel=3)
    return 1.0


def _weights_sha256(model: "DlibResNet") -> str:
    """sha256 of the .dat ``save_dat(model)`` would write."""
    from .dlibnet import convert, dat_io

    data = dat_io.dat_bytes(convert.state_dict_to_dat(model.state_dict(), model.stages_spec))
    return hashlib.sha256(data).hexdigest()


def encoder_sha256(spec: str) -> str | None:
    """sha256 of the model file behind a path encoder spec (``+flip`` ignored); ``None`` for ``'dlib'``
    and ``'torch'`` (dlib's own weights, checked where they are loaded)."""
    base, _ = split_flip(str(spec))
    if base in ("dlib", "torch"):
        return None
    path = Path(base)
    if path.is_dir():
        path = path / FINETUNED_MODEL_NAME
    return file_sha256(path) if path.is_file() else None


def load_encoder(spec: os.PathLike | str, **options) -> DlibEncoder | TorchEncoder | FlipEncoder:
    """An encoder from a short description.

    ``"dlib"``: :class:`DlibEncoder` of dlib's model; ``"torch"``: :class:`TorchEncoder` of dlib's
    weights; a path to a ``.dat`` file: :class:`TorchEncoder` of that file; a folder holding
    ``model.dat`` (what ``dlibplus finetune --output DIR`` writes): :class:`TorchEncoder` of it.
    Any of these followed by ``+flip``: that encoder inside a :class:`FlipEncoder` (for a fine-tuned
    folder, with the flip calibration its metadata holds).
    ``options`` go to the encoder's constructor. Anything else raises ModelFileError (a path that
    is not a usable model) or ValueError.
    """
    if isinstance(spec, str):
        base, flip = split_flip(spec)
        if flip:
            scale = finetuned_flip_scale(Path(base)) if Path(base).is_dir() else 1.0
            return FlipEncoder(load_encoder(base, **options), scale)
    if isinstance(spec, str) and spec in ("dlib", "torch"):
        return DlibEncoder(**options) if spec == "dlib" else TorchEncoder.from_dat(None, **options)
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"encoder must be 'dlib', 'torch', a .dat file or a folder holding "
                         f"{FINETUNED_MODEL_NAME}, not {spec!r}")
    path = Path(spec)
    if path.is_dir():
        if not (path / FINETUNED_MODEL_NAME).is_file():
            if (path / model_folder.CHECKPOINT).is_file():
                raise ModelFileError(path, f"an unfinished `dlibplus finetune` run (it holds {model_folder.CHECKPOINT}"
                                           f" but no {FINETUNED_MODEL_NAME} yet): finish it with the same "
                                           f"`dlibplus finetune ... -o {path}` command plus --resume")
            raise ModelFileError(path, f"the folder holds no {FINETUNED_MODEL_NAME} "
                                       "(expected the output folder of `dlibplus finetune`)")
        path = path / FINETUNED_MODEL_NAME
    elif not path.exists():
        raise ModelFileError(path, f"no such file or folder; an encoder is 'dlib', 'torch', a .dat file "
                                   f"or a folder holding {FINETUNED_MODEL_NAME}")
    elif path.suffix.lower() != ".dat":
        raise ModelFileError(path, "not a .dat file; an encoder is 'dlib', 'torch', a .dat file "
                                   f"or a folder holding {FINETUNED_MODEL_NAME}")
    return TorchEncoder.from_dat(path, **options)


def resolve_encoder(spec: str | None, **options):
    """``(encoder, spec)``: ``'dlib'``/``None``, ``'torch'``, a ``.dat`` file or a fine-tuned model folder,
    each optionally followed by ``+flip`` → a loaded encoder, and the spec with an absolute path (what
    model metadata records). ``options`` go to the torch encoder (``precision``)."""
    if spec is None:
        spec = "dlib"

    base, flip = split_flip(str(spec))
    if base not in ("dlib", "torch"):
        base = str(Path(base).resolve())
    spec = base + (FLIP_SUFFIX if flip else "")
    return load_encoder(spec, **options), spec
