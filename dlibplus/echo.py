"""Data echoing after the frozen stages: a training photo's augmented copies, kept as the frozen stages see them.

With dlib's first stages frozen (``--freeze``), their activation of an augmented photo never changes during a run,
yet on CPU it is a third of a training step's work, and the augmentation another sixth. So each photo gets
``variants`` augmented copies; the first time a copy is needed it is drawn (dlib's jitter and colours,
:func:`dlibplus.augment.augment_chip`, from a generator seeded by the run's seed, the photo's bytes and the copy's
number), passed through the frozen stages, and kept; later uses start from the kept activation. Choi et al. 2019
("Faster Neural Network Training with Data Echoing") repeat augmented examples in the same way, to spare an
expensive stage before the network.

Which copy a use takes (:meth:`EchoPool.copy_of`): in epoch ``e`` the ``j``-th use of a photo in that epoch takes
copy ``(e + j * stride) % variants``, ``stride = variants // images_per_person``. A person with fewer photos than a
batch holds of them (``--batch-images``) fills the batch with repeats, and the repeats must stay different copies,
as the default's fresh jitters are: four identical faces teach the network nothing about how a person's faces vary.

Off by default (``FinetuneConfig.echo`` 0): on the benchmark suite ``--echo 20`` trained in 0.56x the time but named
0.3 point fewer test photos and fell below dlib on more splits (BENCHMARKS.md).

A copy is the same whichever run, step or batch slot needs it, so runs with the same seed and frozen stages share
one pool: cross-fitting's folds fill it and the run on every photo finds its copies there. Copies beyond
``max_bytes`` are drawn and computed again each time they are needed: the budget changes the speed, not the draws
(nor, on CPU, the trained weights: a test compares them bit for bit).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .align import DlibRand

ECHO_BYTES = 1 << 30  # ~74 KB a copy after 3 frozen stages: 14,500 copies, e.g. 725 photos x 20


def photo_keys(chips: np.ndarray) -> np.ndarray:
    """(n,) uint64: a digest of each (150, 150, 3) uint8 chip's bytes, which names its copies in a pool."""
    return np.array([int.from_bytes(hashlib.blake2b(c.tobytes(), digest_size=8).digest(), "little")
                     for c in chips], dtype=np.uint64)


def copy_rng(seed: int, key: int, variant: int) -> DlibRand:
    """The generator that draws copy ``variant`` of the photo ``key`` in a run seeded ``seed``."""
    digest = hashlib.blake2b(f"echo/{seed}/{key}/{variant}".encode(), digest_size=4).digest()
    return DlibRand(seed=int.from_bytes(digest, "little"), discard=0)


def uses_in_epoch(batches: list[np.ndarray]) -> list[np.ndarray]:
    """For each global batch of an epoch, in order, (b,) int64: how many times each of its photos (indices into the
    training photos) was used before in the epoch, earlier rows of the same batch included."""
    seen: dict[int, int] = {}
    out = []
    for batch in batches:
        uses = np.empty(len(batch), np.int64)
        for i, photo in enumerate(int(p) for p in batch):
            uses[i] = seen.get(photo, 0)
            seen[photo] = uses[i] + 1
        out.append(uses)
    return out


@dataclass
class StepCopies:
    """The copies one step trains on (:meth:`EchoPool.plan`): ``names`` its (photo key, copy) in batch order,
    ``fresh`` (m,) the rows whose copy must be computed now (a copy's first row in the step), ``chips``
    (m, 150, 150, 3) uint8 their augmented pixels (``None`` when m is 0), ``keep`` (m,) bool which of them the
    pool keeps."""

    names: list[tuple[int, int]]
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

    def __init__(self, variants: int, stages: int, seed: int, copy_bytes: int, images_per_person: int,
                 max_bytes: int = ECHO_BYTES):
        if variants < 1 or stages < 1 or images_per_person < 1:
            raise ValueError(f"an echo pool needs variants, frozen stages and images per person >= 1, not "
                             f"{variants}, {stages}, {images_per_person}")
        self.variants, self.stages, self.seed, self.images_per_person = variants, stages, seed, images_per_person
        self.stride = max(1, variants // images_per_person)
        self.copy_bytes, self.max_bytes = copy_bytes, max_bytes
        self.kept: dict[tuple[int, int], torch.Tensor] = {}
        self._planned: set[tuple[int, int]] = set()

    def holds_copies_of(self, variants: int, stages: int, seed: int, images_per_person: int) -> bool:
        """Whether a run with these settings would draw and use the copies this pool holds."""
        return (self.variants, self.stages, self.seed, self.images_per_person) == (
            variants, stages, seed, images_per_person)

    def copy_of(self, epoch: int, uses: np.ndarray) -> np.ndarray:
        """(n,) int64: the copy each use takes, from ``uses`` (n,) the photo's earlier uses in ``epoch``."""
        return (epoch + np.asarray(uses, np.int64) * self.stride) % self.variants

    def plan(self, keys: np.ndarray, chips: np.ndarray, epoch: int, uses: np.ndarray) -> StepCopies:
        """What a step of ``epoch`` computes for its photos: ``keys`` (n,) from :func:`photo_keys`, ``chips``
        (n, 150, 150, 3) uint8 their unaugmented pixels, ``uses`` (n,) from :func:`uses_in_epoch`."""
        from . import augment

        names = [(int(k), int(c)) for k, c in zip(keys, self.copy_of(epoch, uses))]
        fresh, drawn, keep, seen = [], [], [], set()
        for row, name in enumerate(names):
            if name in self._planned or name in seen:
                continue
            seen.add(name)
            fresh.append(row)
            drawn.append(augment.augment_chip(chips[row], copy_rng(self.seed, *name)))
            keep.append((len(self._planned) + 1) * self.copy_bytes <= self.max_bytes)
            if keep[-1]:
                self._planned.add(name)
        return StepCopies(names, fresh, np.stack(drawn) if drawn else None, keep)

    def features(self, step: StepCopies, backbone: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """(n, C, H, W) float activations of ``step``'s copies after the frozen stages, channels-last, on
        ``device``: the fresh ones computed by ``backbone`` (no gradient), the others from the pool."""
        computed: dict[tuple[int, int], torch.Tensor] = {}
        if step.chips is not None:
            x = torch.from_numpy(step.chips).to(device).permute(0, 3, 1, 2).float()
            with torch.no_grad():
                h = backbone.features(x.contiguous(memory_format=torch.channels_last), self.stages)
            for j, (row, keep) in enumerate(zip(step.fresh, step.keep)):
                computed[step.names[row]] = h[j]
                if keep:
                    self.kept[step.names[row]] = h[j].clone()
        rows = [computed[name] if name in computed else self.kept[name] for name in step.names]
        return torch.stack(rows).contiguous(memory_format=torch.channels_last)
