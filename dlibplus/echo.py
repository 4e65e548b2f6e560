"""Data echoing after the frozen stages: a training photo's augmented copies, kept as the frozen stages see them.

With dlib's first stages frozen (``--freeze``), their activation of an augmented photo never changes during a run,
yet on CPU it is a third of a training step's work, and the augmentation another sixth. So each photo gets
``variants`` augmented copies, epoch ``e`` using copy ``e % variants``; the first time a copy is needed it is drawn
(dlib's jitter and colours, :func:`dlibplus.augment.augment_chip`, from a generator seeded by the run's seed, the
photo's bytes and the copy's number), passed through the frozen stages, and kept; later epochs start from the kept
activation. Choi et al. 2019 ("Faster Neural Network Training with Data Echoing") repeat augmented examples in the
same way, to spare an expensive stage before the network.

A copy is the same whichever run, step or batch slot needs it, so runs with the same seed and frozen stages share
one pool: cross-fitting's folds fill it and the run on every photo finds its copies there. Copies beyond
``max_bytes`` are drawn and computed again each time they are needed: the budget changes the speed, not the result.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .align import DlibRand

ECHO_BYTES = 1 << 30  # ~74 KB a copy after 3 frozen stages: 14,000 copies, e.g. 1,800 photos x 8


def photo_keys(chips: np.ndarray) -> np.ndarray:
    """(n,) uint64: a digest of each (150, 150, 3) uint8 chip's bytes, which names its copies in a pool."""
    return np.array([int.from_bytes(hashlib.blake2b(c.tobytes(), digest_size=8).digest(), "little")
                     for c in chips], dtype=np.uint64)


def copy_rng(seed: int, key: int, variant: int) -> DlibRand:
    """The generator that draws copy ``variant`` of the photo ``key`` in a run seeded ``seed``."""
    digest = hashlib.blake2b(f"echo/{seed}/{key}/{variant}".encode(), digest_size=4).digest()
    return DlibRand(seed=int.from_bytes(digest, "little"), discard=0)


@dataclass
class StepCopies:
    """The copies one step trains on (:meth:`EchoPool.plan`): ``keys`` (n,) its photos in batch order, ``variant``
    the epoch's copy, ``fresh`` (m,) the rows whose copy must be computed now (a photo's first row in the step),
    ``chips`` (m, 150, 150, 3) uint8 their augmented pixels (``None`` when m is 0), ``keep`` (m,) bool which of
    them the pool keeps."""

    keys: np.ndarray
    variant: int
    fresh: list[int]
    chips: np.ndarray | None
    keep: list[bool]


class EchoPool:
    """The kept frozen-stage activations of augmented copies, by (photo key, copy number).

    :meth:`plan` (numpy only: the background thread that prepares the next step calls it, in step order) decides
    what a step computes and what the pool will keep; :meth:`features` (the training thread) computes it and returns
    the step's activations. Planning before computing keeps the result independent of the threads' timing: a copy
    is read from the pool only after the step that planned it has stored it.
    """

    def __init__(self, variants: int, stages: int, seed: int, copy_bytes: int, max_bytes: int = ECHO_BYTES):
        if variants < 1 or stages < 1:
            raise ValueError(f"an echo pool needs variants >= 1 and frozen stages >= 1, not {variants}, {stages}")
        self.variants, self.stages, self.seed = variants, stages, seed
        self.copy_bytes, self.max_bytes = copy_bytes, max_bytes
        self.kept: dict[tuple[int, int], torch.Tensor] = {}
        self._planned: set[tuple[int, int]] = set()

    def plan(self, keys: np.ndarray, chips: np.ndarray, epoch: int) -> StepCopies:
        """What a step of ``epoch`` computes for its photos: ``keys`` (n,) from :func:`photo_keys`, ``chips``
        (n, 150, 150, 3) uint8 their unaugmented pixels."""
        from . import augment

        variant = epoch % self.variants
        fresh, drawn, keep, seen = [], [], [], set()
        for row, key in enumerate(int(k) for k in keys):
            name = (key, variant)
            if name in self._planned or name in seen:
                continue
            seen.add(name)
            fresh.append(row)
            drawn.append(augment.augment_chip(chips[row], copy_rng(self.seed, key, variant)))
            keep.append((len(self._planned) + 1) * self.copy_bytes <= self.max_bytes)
            if keep[-1]:
                self._planned.add(name)
        return StepCopies(np.asarray(keys), variant, fresh, np.stack(drawn) if drawn else None, keep)

    def features(self, step: StepCopies, backbone: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """(n, C, H, W) float activations of ``step``'s copies after the frozen stages, channels-last, on
        ``device``: the fresh ones computed by ``backbone`` (no gradient), the others from the pool."""
        computed: dict[tuple[int, int], torch.Tensor] = {}
        if step.chips is not None:
            x = torch.from_numpy(step.chips).to(device).permute(0, 3, 1, 2).float()
            with torch.no_grad():
                h = backbone.features(x.contiguous(memory_format=torch.channels_last), self.stages)
            for j, (row, keep) in enumerate(zip(step.fresh, step.keep)):
                name = (int(step.keys[row]), step.variant)
                computed[name] = h[j]
                if keep:
                    self.kept[name] = h[j].clone()
        rows = [computed.get((int(k), step.variant)) for k in step.keys]
        rows = [r if r is not None else self.kept[(int(k), step.variant)] for r, k in zip(rows, step.keys)]
        return torch.stack(rows).contiguous(memory_format=torch.channels_last)

    @property
    def nbytes(self) -> int:
        return len(self.kept) * self.copy_bytes
