"""Training augmentation as dlib trains its face model: ``jitter_image`` plus colour perturbation.

Every random draw comes from a :class:`~dlibplus.align.DlibRand` seeded by (seed, epoch, step, slot in
the global batch), so a batch is the same whichever process augments it (DDP gives the same result
as one process) and a resumed run continues exactly.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .align import DlibRand, jitter_image


def slot_seed(seed: int, epoch: int, step: int, slot: int, stream: str = "device") -> int:
    """A 63-bit seed (any ``torch.Generator`` takes it) for one sample of one step and one stream of draws
    (``"device"``: the device augmentation's parameters, ``"mix"``: distillation's mixing shares).

    It depends on those five values only, so every process of a DDP run draws the same for a slot of the
    global batch, and a resumed run draws what an uninterrupted one does.
    """
    digest = hashlib.blake2b(f"{stream}/{seed}/{epoch}/{step}/{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_rng(seed: int, epoch: int, step: int, slot: int) -> DlibRand:
    """The generator of one sample of one step (independent of which process runs it)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{step}/{slot}".encode(), digest_size=4).digest()
    return DlibRand(seed=int.from_bytes(digest, "little"), discard=0)


def disturb_colors(chip: np.ndarray, rng: DlibRand, gamma_magnitude: float = 0.5,
                   color_magnitude: float = 0.2) -> np.ndarray:
    """Random gamma and colour balance, in the spirit of dlib's ``disturb_colors``.

    ``gamma = 2**U(-m, m) `` for ``m = gamma_magnitude``; each channel is then scaled by
    ``1 + U(-c, c)`` for ``c = color_magnitude / 2`` (renormalised so the mean gain is 1).
    :param chip: (H, W, 3) uint8. :return: (H, W, 3) uint8.
    """
    gamma = 2.0 ** rng.get_double_in_range(-gamma_magnitude, gamma_magnitude)
    gains = np.array([1.0 + rng.get_double_in_range(-color_magnitude / 2, color_magnitude / 2) for _ in range(3)])
    gains /= gains.mean()
    levels = (np.arange(256) / 255.0) ** gamma
    lut = np.clip(np.rint(levels[:, None] * gains[None, :] * 255.0), 0, 255).astype(np.uint8)  # (256, 3)
    return np.stack([lut[chip[..., c], c] for c in range(3)], axis=-1)


def augment_chip(chip: np.ndarray, rng: DlibRand) -> np.ndarray:
    """dlib's jitter (shift ±2 %, zoom 0–3 %, rotation ±3°, mirror half the time), then colours."""
    return disturb_colors(jitter_image(chip, rng), rng)


def augment_batch(chips: np.ndarray, seed: int, epoch: int, step: int, slots: np.ndarray) -> np.ndarray:
    """Augmented copies of (n, 150, 150, 3) uint8 chips; ``slots``: each chip's place in the global batch."""
    return np.stack([augment_chip(c, sample_rng(seed, epoch, step, int(s))) for c, s in zip(chips, slots)])
