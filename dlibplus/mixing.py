"""Faces of nobody, for ``finetune --distill``: each training face mixed pixel by pixel with a face of
someone else in the same step, in a seeded share.

Everything is decided on the **global** batch (all processes' faces of a step), slot by slot: a face's
partner is the next slot (cyclically) holding another person, and its share comes from a hash of
(seed, epoch, step, slot). Under ``torchrun`` a process also makes the chips of partners that sit in
other processes' slices (with those slots' own augmentation), so N processes mix exactly the faces one
process does, and a resumed run mixes as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .augment import slot_seed

__all__ = ["MixPlan", "mix_partners", "mix_people", "mix_shares", "plan_mix"]

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


@dataclass(frozen=True)
class MixPlan:
    """How one process mixes its faces in one step.

    :ivar extra_slots: (m,) int64, partner slots in other processes' slices: this process makes their
        chips too, after its own, with their slots' augmentation.
    :ivar partner_row: (n,) int64, each local face's partner as a row of [local faces; extra faces].
    :ivar share: (n,) float64, each local face's own share.
    """

    extra_slots: np.ndarray
    partner_row: np.ndarray
    share: np.ndarray


def plan_mix(labels: np.ndarray, slots: np.ndarray, seed: int, epoch: int, step: int) -> MixPlan:
    """The mixing of the faces in ``slots`` (this process's slice of the global batch).

    :param labels: (B,) int, the people of the whole global batch. :param slots: (n,) int, this process's
        slots in it (``rank::world_size``).
    """
    slots = np.asarray(slots, np.int64).reshape(-1)
    partners = mix_partners(labels)[slots]
    extra = np.setdiff1d(partners, slots)  # sorted, unique
    rows = np.concatenate([slots, extra])
    row_of_slot = dict(zip(rows.tolist(), range(len(rows))))
    partner_row = np.array([row_of_slot[int(p)] for p in partners], np.int64)
    return MixPlan(extra, partner_row, mix_shares(seed, epoch, step, slots))


def mix_people(faces: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """The mixed faces ``share·x_i + (1 − share)·x_partner``.

    :param faces: (n + m, 3, h, w) float, the local faces then the extra ones (:attr:`MixPlan.extra_slots`).
    :return: (n, 3, h, w), same dtype and device.
    """
    n = len(plan.share)
    share = torch.from_numpy(plan.share).to(faces.device, faces.dtype).view(n, 1, 1, 1)
    partner = torch.from_numpy(plan.partner_row).to(faces.device)
    return share * faces[:n] + (1 - share) * faces[partner]
