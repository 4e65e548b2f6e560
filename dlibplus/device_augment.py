"""dlib's training augmentation as batched tensor ops, on whatever device the chips are on.

:mod:`dlibplus.augment` jitters chips one at a time in numpy (dlib's ``jitter_image``: shift up to 2 %,
zoom in 0–3 %, rotation ±3°, a left-right mirror half the time; then ``disturb_colors``: random gamma
and colour balance), about 5 ms a chip on one core. Here the same transform runs on a whole batch at
once, on the CPU or the GPU, from per-sample parameters (:class:`AugmentParams`):

- **Parameters** come from a ``torch.Generator`` seeded by (seed, epoch, step, slot in the global
  batch) (:func:`sample_params`), so every process of a DDP run draws the same ones for a slot and a
  resumed run continues exactly; ``draws="dlib"`` takes them from the very ``DlibRand`` sequence
  :func:`dlibplus.augment.augment_batch` uses instead (slow: ~1 ms a sample on the host), which makes the
  two paths give the same chips. The distributions are dlib's, number for number
  (:func:`params_from_uniforms`).
- **Geometry**: each output pixel samples the chip at dlib's own point (``extract_image_chips``'s
  affine map of the rotated crop rectangle, in float64 from the same formula), bilinearly, in float64
  and in dlib's order of operations, truncated to whole levels as dlib's ``uint8`` chip is. The result
  is dlib's jittered chip pixel for pixel: the only differences are 1-ulp differences of ``cos``/``sin``
  between math libraries, which move a sample by ~1e-14 px (a level changes only when that crosses an
  integer value: not seen in the tests). One deliberate difference: a point exactly on the chip's last
  row or column (only with zero rotation) takes that pixel, where dlib's sampler returns black, so that
  the identity transform returns the chip unchanged. ``torch.nn.functional.grid_sample`` was not used:
  its float32 normalised coordinates move integer sample points by ~1e-5 px, which turns whole levels
  into ``level - 1`` after truncation (the identity would not be the identity).
- **Colours**: the per-sample lookup table of :func:`dlibplus.augment.disturb_colors`, built with the
  same numpy arithmetic, applied with a gather.

Entry point for training: :func:`augment_on_device`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from .align import DlibRand
from .augment import slot_seed

__all__ = ["AugmentParams", "augment", "augment_on_device", "disturb_colors", "identity_params", "jitter",
           "params_from_dlib", "params_from_uniforms", "sample_params", "sample_points"]

CHIP_SIZE = 150
DRAWS_PER_SAMPLE = 9  # y shift, x shift, zoom, angle, mirror (jitter_image); gamma, 3 gains (disturb_colors)
JITTER_DRAWS = 5
GAMMA_MAGNITUDE = 0.5  # dlibplus.augment.disturb_colors' defaults
COLOR_MAGNITUDE = 0.2
_CHUNK = {"cpu": 64, "cuda": 256}  # samples sampled at a time: float64 temporaries ~2.5 MB a sample


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample augmentation parameters (N samples), as dlib draws them. CPU tensors or arrays.

    :ivar shift_x: (N,) int64, pixels the crop centre moves right (dlib: ``round(U(-0.02, 0.02) * (n - 6))``).
    :ivar shift_y: (N,) int64, pixels down.
    :ivar box: (N,) int64, side of the square crop in pixels (dlib: ``int((n - 6) / U(0.97, 0.99999))``,
        144 to 148 for 150-pixel chips; the chip's own side ``n`` with zero shift is the identity).
    :ivar angle: (N,) float64, radians, counter-clockwise in x-right/y-down image coordinates.
    :ivar mirror: (N,) bool, left-right mirror after the crop.
    :ivar gamma: (N,) float64, the colour curve's exponent (``2 ** U(-0.5, 0.5)``).
    :ivar gains: (N, 3) float64, per-channel gains, mean 1.
    """

    shift_x: np.ndarray
    shift_y: np.ndarray
    box: np.ndarray
    angle: np.ndarray
    mirror: np.ndarray
    gamma: np.ndarray
    gains: np.ndarray

    def __len__(self) -> int:
        return len(self.box)

    def __getitem__(self, index) -> "AugmentParams":
        """The parameters of some samples (an index array, slice or boolean mask)."""
        return AugmentParams(**{f.name: np.asarray(getattr(self, f.name))[index] for f in fields(self)})

    @staticmethod
    def concatenate(parts: Sequence["AugmentParams"]) -> "AugmentParams":
        """The parameters of several batches, one after the other."""
        return AugmentParams(**{f.name: np.concatenate([np.asarray(getattr(p, f.name)) for p in parts])
                                for f in fields(AugmentParams)})


def params_from_uniforms(u: np.ndarray, size: int = CHIP_SIZE) -> AugmentParams:
    """Parameters from uniform draws in [0, 1), with dlib's formulas and floating-point steps.

    ``u``: (N, 9) float64, per sample in dlib's order of draws: y shift, x shift, zoom, angle, mirror
    (``dlib::jitter_image``), gamma, red, green, blue gain (``disturb_colors``). ``size``: chip side
    in pixels. dlib's ``get_double_in_range(a, b)`` is ``a + r * (b - a)``; the arithmetic here is the
    same numpy/libm float64 arithmetic as :func:`dlibplus.align.jitter_image` and
    :func:`dlibplus.augment.disturb_colors`, so equal draws give equal parameters bit for bit.
    """
    u = np.asarray(u, np.float64).reshape(-1, DRAWS_PER_SAMPLE)

    def in_range(column: int, begin: float, end: float) -> np.ndarray:
        return begin + u[:, column] * (end - begin)

    height = width = size - 6  # shrink_rect(get_rect(img), 3)
    dy = in_range(0, -0.02, 0.02) * height
    dx = in_range(1, -0.02, 0.02) * width
    scale = in_range(2, 0.97, 0.99999)
    half_color = COLOR_MAGNITUDE / 2
    gains = 1.0 + np.stack([in_range(c, -half_color, half_color) for c in (6, 7, 8)], axis=1)
    gains /= gains.mean(axis=1, keepdims=True)
    return AugmentParams(
        shift_x=np.floor(dx + 0.5).astype(np.int64), shift_y=np.floor(dy + 0.5).astype(np.int64),
        box=(height / scale).astype(np.int64), angle=in_range(3, -3.0, 3.0) * math.pi / 180,
        mirror=u[:, 4] > 0.5, gamma=2.0 ** in_range(5, -GAMMA_MAGNITUDE, GAMMA_MAGNITUDE), gains=gains)


def params_from_dlib(rngs: Sequence[DlibRand], size: int = CHIP_SIZE, colours: bool = True) -> AugmentParams:
    """The parameters :func:`dlibplus.augment.augment_chip` would draw from each generator (each advances
    by nine doubles, as there): equal chips then come out of :func:`augment` and ``augment_chip``.
    ``colours=False``: only ``dlib::jitter_image``'s five draws (as :func:`dlibplus.align.jitter_image`
    and dlib's own ``jitter_image``), with neutral colours."""
    draws = DRAWS_PER_SAMPLE if colours else JITTER_DRAWS
    u = np.array([[rng.get_random_double() for _ in range(draws)] for rng in rngs], np.float64).reshape(-1, draws)
    if not colours:  # gamma 2 ** 0 = 1 and gains 1 + 0
        u = np.concatenate([u, np.full((len(u), DRAWS_PER_SAMPLE - draws), 0.5)], axis=1)
    return params_from_uniforms(u, size)


def sample_params(seed: int, epoch: int, step: int, slots: Sequence[int] | np.ndarray,
                  size: int = CHIP_SIZE, draws: str = "torch") -> AugmentParams:
    """The parameters of the samples in ``slots`` (each sample's place in the global batch) of one step.

    ``draws="torch"``: nine float64 uniforms per sample from a CPU ``torch.Generator`` seeded by a hash of
    (seed, epoch, step, slot): a sample's parameters depend on those four numbers only, whichever process
    draws them and whatever else is in its batch (~15 µs a sample). ``draws="dlib"``: from
    :func:`dlibplus.augment.sample_rng` (the generators :func:`dlibplus.augment.augment_batch` uses), so
    that :func:`augment` gives the same chips as the numpy path (~1 ms a sample).
    """
    slots = [int(s) for s in np.asarray(slots).reshape(-1)]
    if draws == "dlib":
        from .augment import sample_rng

        return params_from_dlib([sample_rng(seed, epoch, step, s) for s in slots], size)
    if draws != "torch":
        raise ValueError(f"draws must be 'torch' or 'dlib', not {draws!r}")
    u = np.zeros((len(slots), DRAWS_PER_SAMPLE))
    generator = torch.Generator()
    for row, slot in enumerate(slots):
        generator.manual_seed(slot_seed(seed, epoch, step, slot))
        u[row] = torch.rand(DRAWS_PER_SAMPLE, generator=generator, dtype=torch.float64).numpy()
    return params_from_uniforms(u, size)


def identity_params(n: int, size: int = CHIP_SIZE) -> AugmentParams:
    """Parameters that leave ``n`` chips unchanged: no shift, a crop of the whole chip, no rotation,
    no mirror, gamma 1 and unit gains."""
    zeros = np.zeros(n, np.int64)
    return AugmentParams(shift_x=zeros, shift_y=zeros.copy(), box=np.full(n, size, np.int64),
                         angle=np.zeros(n), mirror=np.zeros(n, bool), gamma=np.ones(n), gains=np.ones((n, 3)))


def _to_device(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A small host array as a tensor on ``device``; to CUDA through pinned memory without blocking,
    so that no copy waits for the GPU's queued work (no host sync inside a training step)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# --- geometry -----------------------------------------------------------------------------------------

def _affine(params: AugmentParams, size: int) -> np.ndarray:
    """(N, 6) float64 ``(m00, m01, tlx, m10, m11, tly)``: output pixel (c, r) samples the chip at
    ``x = (m00 c + m01 r) + tlx``, ``y = (m10 c + m11 r) + tly``, computed as dlib's
    ``jitter_image`` / ``extract_image_chips`` do (crop rectangle, its rotation about its centre, the
    map from the chip's corners)."""
    centre = size // 2  # dlib's integer centre(rect(3, 3, size - 4, size - 4))
    box = np.asarray(params.box, np.int64)
    left = centre + np.asarray(params.shift_x, np.int64) - box // 2
    top = centre + np.asarray(params.shift_y, np.int64) - box // 2
    left, top, right, bottom = (v.astype(np.float64) for v in (left, top, left + box - 1, top + box - 1))
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    angle = np.asarray(params.angle, np.float64)
    cos_a, sin_a = np.cos(angle), np.sin(angle)

    def rotate(px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # dlib's rotate_point
        dx, dy = px - cx, py - cy
        return cos_a * dx - sin_a * dy + cx, sin_a * dx + cos_a * dy + cy

    (tlx, tly), (trx, try_), (blx, bly) = rotate(left, top), rotate(right, top), rotate(left, bottom)
    span = max(size - 1, 1)
    return np.stack([(trx - tlx) / span, (blx - tlx) / span, tlx, (try_ - tly) / span, (bly - tly) / span, tly],
                    axis=1)


def sample_points(params: AugmentParams, size: int = CHIP_SIZE,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Where each output pixel samples its chip: ``(x, y)``, each (N, size, size) float64 on ``device``,
    in chip pixels (x right, y down), mirror included (a mirrored sample's column c takes column
    ``size - 1 - c``'s point)."""
    m = _to_device(_affine(params, size), device)
    columns = torch.arange(size, dtype=torch.float64, device=device)
    mirror = _to_device(np.asarray(params.mirror, bool), device).view(-1, 1, 1)
    cols = torch.where(mirror, columns.flip(0).view(1, 1, size), columns.view(1, 1, size))  # (N, 1, size)
    rows = columns.view(1, size, 1)
    x = (m[:, 0, None, None] * cols + m[:, 1, None, None] * rows) + m[:, 2, None, None]
    y = (m[:, 3, None, None] * cols + m[:, 4, None, None] * rows) + m[:, 5, None, None]
    return x, y


def _bilinear(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: int) -> torch.Tensor:
    """dlib's ``interpolate_bilinear`` with a black background, truncated to whole levels.

    ``flat``: (N, size*size, 3) uint8 chips; ``x``, ``y``: (N, size, size) float64 points. Returns
    (N, size*size, 3) uint8 levels. A point is black unless its 2x2 neighbourhood lies in the chip
    (a point exactly on the last row or column uses the pixel itself: see the module notes). The blend
    is dlib's float64 expression ``(1-tb)((1-lr)tl + lr tr) + tb((1-lr)bl + lr br)``, in place.
    """
    last, n = size - 1, len(x)
    outside = ~((x >= 0) & (y >= 0) & (x <= last) & (y <= last)).view(n, -1, 1)
    left = torch.floor(x).clamp_(0, last - 1)
    top = torch.floor(y).clamp_(0, last - 1)
    lr = (x - left).view(n, -1, 1)
    tb = (y - top).view(n, -1, 1)
    # row of each top-left neighbour in the (N * size * size, 3) pixel table
    first = torch.arange(n, device=x.device).view(n, 1, 1) * (size * size)
    index = top.mul_(size).add_(left).long().add_(first).view(-1)
    pixels = flat.reshape(-1, 3)
    tl, tr, bl, br = (pixels.index_select(0, index + offset).view(n, -1, 3).double()
                      for offset in (0, 1, size, size + 1))
    not_lr, not_tb = 1 - lr, 1 - tb
    upper = tl.mul_(not_lr).add_(tr.mul_(lr))
    lower = bl.mul_(not_lr).add_(br.mul_(lr))
    value = upper.mul_(not_tb).add_(lower.mul_(tb)).clamp_(0, 255).masked_fill_(outside, 0)
    return value.to(torch.uint8)  # truncation, as dlib's cast


def _as_nhwc(chips: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) contiguous from uint8 chips (N, H, W, 3) or (N, 3, H, W) (square)."""
    if chips.dim() != 4 or chips.dtype != torch.uint8:
        raise ValueError(f"chips must be a uint8 tensor (N, H, W, 3) or (N, 3, H, W), not {chips.dtype} "
                         f"{tuple(chips.shape)}")
    if chips.shape[-1] != 3 and chips.shape[1] == 3:
        chips = chips.permute(0, 2, 3, 1)
    if chips.shape[-1] != 3 or chips.shape[1] != chips.shape[2] or chips.shape[1] < 2:
        raise ValueError(f"chips must be square RGB (N, n, n, 3) or (N, 3, n, n), not {tuple(chips.shape)}")
    return chips.contiguous()


def _check_params(chips: torch.Tensor, params: AugmentParams) -> None:
    if len(params) != len(chips):
        raise ValueError(f"{len(params)} parameter sets for {len(chips)} chips")


def _levels(chips: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Jittered chips as uint8 levels (N, n*n, 3) from uint8 NHWC chips."""
    size = chips.shape[1]
    flat = chips.view(len(chips), size * size, 3)
    out, chunk = [], _CHUNK.get(chips.device.type, _CHUNK["cuda"])
    for start in range(0, len(chips), chunk):
        x, y = sample_points(params[start:start + chunk], size, chips.device)
        out.append(_bilinear(flat[start:start + chunk], x, y, size))
    return out[0] if len(out) == 1 else torch.cat(out) if out else flat.clone()


def _as_output(levels: torch.Tensor, size: int) -> torch.Tensor:
    """float32 (N, 3, n, n) in channels_last memory from (N, n*n, 3) uint8 levels."""
    return levels.view(len(levels), size, size, 3).permute(0, 3, 1, 2).float()


def jitter(chips: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """dlib's ``jitter_image`` of each chip with its parameters: float32 (N, 3, n, n) whole levels
    0-255 (channels_last memory) on the chips' device. ``chips``: uint8 (N, n, n, 3) or (N, 3, n, n)."""
    chips = _as_nhwc(chips)
    _check_params(chips, params)
    return _as_output(_levels(chips, params), chips.shape[1])


def colour_tables(params: AugmentParams) -> np.ndarray:
    """(N, 256, 3) uint8: each sample's level -> level table of :func:`dlibplus.augment.disturb_colors`
    (``round(255 * (v / 255) ** gamma * gain)``, clipped), with its numpy arithmetic."""
    levels = (np.arange(256) / 255.0)[None, :] ** np.asarray(params.gamma, np.float64)[:, None]  # (N, 256)
    gains = np.asarray(params.gains, np.float64)
    return np.clip(np.rint(levels[:, :, None] * gains[:, None, :] * 255.0), 0, 255).astype(np.uint8)


def _apply_tables(levels: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """(N, m, 3) uint8 levels through each sample's colour table (uint8, same shape)."""
    tables = _to_device(colour_tables(params), levels.device).view(len(levels), 256 * 3)
    channel = torch.arange(3, device=levels.device)
    index = (levels.long() * 3 + channel).flatten(1)
    return torch.gather(tables, 1, index).view(levels.shape)


def disturb_colors(chips: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """:func:`dlibplus.augment.disturb_colors` of each chip with its gamma and gains: float32 (N, 3, n, n)
    levels (channels_last memory). ``chips``: uint8 (N, n, n, 3) or (N, 3, n, n)."""
    chips = _as_nhwc(chips)
    _check_params(chips, params)
    size = chips.shape[1]
    return _as_output(_apply_tables(chips.view(len(chips), -1, 3), params), size)


def augment(chips: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """:func:`dlibplus.augment.augment_chip` of each chip with its parameters (jitter, then colours):
    float32 (N, 3, n, n) whole levels 0-255 in channels_last memory, on the chips' device, ready for
    :class:`~dlibplus.dlibnet.DlibResNet` (which centres and scales them itself).
    ``chips``: uint8 (N, n, n, 3) or (N, 3, n, n) on any device."""
    chips = _as_nhwc(chips)
    _check_params(chips, params)
    return _as_output(_apply_tables(_levels(chips, params), params), chips.shape[1])


def augment_on_device(chips: torch.Tensor, seed: int, epoch: int, step: int, slots: Sequence[int] | np.ndarray,
                      *, draws: str = "torch") -> torch.Tensor:
    """Training augmentation of one step's chips, where they are (the device version of
    :func:`dlibplus.augment.augment_batch`).

    :param chips: uint8 (N, 150, 150, 3) or (N, 3, 150, 150) tensor on any device.
    :param seed: the run's seed. :param epoch: epoch number. :param step: step number in the epoch.
    :param slots: (N,) each chip's place in the global batch (under DDP, a process's share of it).
    :param draws: ``"torch"`` (fast, default) or ``"dlib"`` (the numpy path's draws: same chips as
        ``augment_batch``; ~1 ms a sample on the host), see :func:`sample_params`.
    :return: float32 (N, 3, 150, 150) whole levels 0-255, channels_last memory, on ``chips.device``.
    """
    nhwc = _as_nhwc(chips)
    slots = np.asarray(slots).reshape(-1)
    if len(slots) != len(nhwc):
        raise ValueError(f"{len(slots)} slots for {len(nhwc)} chips")
    return augment(nhwc, sample_params(seed, epoch, step, slots, nhwc.shape[1], draws))
