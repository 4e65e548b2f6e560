"""Faces of nobody, for ``finetune --distill``: training faces mixed pixel by pixel with a face of
someone else in the same step, in a seeded share.

Everything is decided on the **global** batch (all processes' faces of a step), slot by slot: which slots
are mixed (all, or a seeded draw of ``--distill-share`` of them), a face's partner is the next slot
(cyclically) holding another person, and its share comes from a hash of (seed, epoch, step, slot).
Under ``torchrun`` a process also makes the chips of partners that sit in other processes' slices (with
those slots' own augmentation), so N processes mix exactly the faces one process does, and a resumed run
mixes as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .augment import slot_seed

__all__ = ["MixPlan", "mix_partners", "mix_people", "mix_shares", "mixed_slots", "plan_mix"]

SHARE_LOW, SHARE_HIGH = 0.2, 0.8  # a face's own share: never near a single person's face


def mix_partners(labels: np.ndarray) -> np.ndarray:
    """Each slot's partner in a global batch: the next slot (cyclically) of another person; the next slot
    when the batch holds one person.

    :param labels: (B,) int, the person of each slot. :return: (B,) int64 slot numbers.
    """
    labels = np.asarray(labels)
    n = len(labels)
    partner = np.full(n, -1, np.int64)
    slots = np.arange(n)
    for shift in range(1, n):
        candidate = (slots + shift) % n
        take = (partner < 0) & (labels[candidate] != labels)
        partner[take] = candidate[take]
        if (partner >= 0).all():
            break
    return np.where(partner < 0, (slots + 1) % n, partner)


def mix_shares(seed: int, epoch: int, step: int, slots: np.ndarray) -> np.ndarray:
    """(n,) float64 in [0.2, 0.8): each slot's own share of its mixed face (its partner has the rest)."""
    u = np.array([slot_seed(seed, epoch, step, int(s), stream="mix") / 2.0 ** 63 for s in np.asarray(slots)])
    return SHARE_LOW + (SHARE_HIGH - SHARE_LOW) * u.reshape(-1)


def mixed_slots(batch_size: int, seed: int, epoch: int, step: int, share: float = 1.0) -> np.ndarray:
    """The slots of a global batch whose faces are mixed: all of them at ``share`` 1, else a seeded draw of
    ``round(share · batch_size)`` (at least one), the same in every process.

    :return: (k,) int64 slot numbers, sorted.
    """
    if share >= 1.0:
        return np.arange(batch_size, dtype=np.int64)
    count = min(batch_size, max(1, round(share * batch_size)))
    rng = np.random.default_rng(slot_seed(seed, epoch, step, 0, stream="mix-slots"))
    return np.sort(rng.choice(batch_size, count, replace=False)).astype(np.int64)


@dataclass(frozen=True)
class MixPlan:
    """How one process mixes its faces in one step.

    :ivar extra_slots: (m,) int64, partner slots in other processes' slices: this process makes their
        chips too, after its own, with their slots' augmentation.
    :ivar own_row: (k,) int64, the local faces that are mixed, as rows of the local faces.
    :ivar partner_row: (k,) int64, each mixed face's partner as a row of [local faces; extra faces].
    :ivar share: (k,) float64, each mixed face's own share.
    :ivar mixed_total: faces mixed in the whole global batch (all processes).
    """

    extra_slots: np.ndarray
    own_row: np.ndarray
    partner_row: np.ndarray
    share: np.ndarray
    mixed_total: int

    def loss_weight(self, world_size: int) -> float:
        """The factor on this process's mean loss over its mixed faces that makes DDP's average of the
        processes' gradients the mean over every mixed face of the global batch (1 in one process; the
        processes may hold different numbers of mixed faces when only a share is mixed)."""
        return world_size * len(self.own_row) / self.mixed_total


def plan_mix(labels: np.ndarray, slots: np.ndarray, seed: int, epoch: int, step: int,
             share: float = 1.0) -> MixPlan:
    """The mixing of the faces in ``slots`` (this process's slice of the global batch).

    :param labels: (B,) int, the people of the whole global batch. :param slots: (n,) int, this process's
        slots in it (``rank::world_size``). :param share: the share of the global batch mixed
        (:func:`mixed_slots`).
    """
    slots = np.asarray(slots, np.int64).reshape(-1)
    chosen = mixed_slots(len(labels), seed, epoch, step, share)
    own_row = np.flatnonzero(np.isin(slots, chosen))
    mixed = slots[own_row]
    partners = mix_partners(labels)[mixed]
    extra = np.setdiff1d(partners, slots)  # sorted, unique
    rows = np.concatenate([slots, extra])
    row_of_slot = dict(zip(rows.tolist(), range(len(rows))))
    partner_row = np.array([row_of_slot[int(p)] for p in partners], np.int64)
    return MixPlan(extra, own_row.astype(np.int64), partner_row, mix_shares(seed, epoch, step, mixed), len(chosen))


def mix_people(faces: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """The mixed faces ``share·x_i + (1 − share)·x_partner``.

    :param faces: (n + m, 3, h, w) float, the local faces then the extra ones (:attr:`MixPlan.extra_slots`).
    :return: (k, 3, h, w), the mixed faces (:attr:`MixPlan.own_row`), same dtype and device.
    """
    k = len(plan.share)
    share = torch.from_numpy(plan.share).to(faces.device, faces.dtype).view(k, 1, 1, 1)
    own = torch.from_numpy(plan.own_row).to(faces.device)
    partner = torch.from_numpy(plan.partner_row).to(faces.device)
    return share * faces[own] + (1 - share) * faces[partner]
