"""Metric losses on the raw embeddings: center loss, and triplet loss with its semi-hard miner.

Both take ``(embeddings (N, D), labels (N,) int)`` and return a scalar, so they work alone or added to a
head's cross-entropy (``F.cross_entropy(head(x, y), y) + λ·center(x, y)``). Distances are Euclidean on the
raw vectors by default, the geometry of dlib's "distance ≤ 0.6" contract.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CenterLoss", "TripletLoss", "DlibMetricLoss", "pairwise_distances", "semihard_triplets", "DISTANCES"]

#: Distance names accepted by ``TripletLoss`` and ``pairwise_distances``.
DISTANCES = ("euclidean", "cosine")

_SQRT_EPS = 1e-12  # squared distances are clamped here before sqrt, so identical vectors give a zero gradient


def _check_batch(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be (N,) with N = {embeddings.shape[0]}, got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")


def _check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of: {', '.join(DISTANCES)}")


class CenterLoss(nn.Module):
    """Center loss (Wen et al., ECCV 2016): ``½·mean_i ‖x_i − c_{y_i}‖²`` over the batch.

    The class centres ``centers`` (C, D) are a buffer, not a parameter: the optimiser never sees them.
    In training mode each forward moves them by their own rate ``alpha`` (the paper's eq. 4), after
    computing the loss with the centres as they were:
    ``Δc_j = Σ_{i: y_i = j} (c_j − x_i) / (1 + n_j)``, ``c_j ← c_j − α·Δc_j`` (classes absent from the
    batch do not move). The loss's gradient reaches the embeddings only.

    One departure from the paper, for fine-tuning: instead of starting at zero (which would first pull
    every embedding towards the origin), a centre not yet initialised is set to the mean of its class in
    the first training batch that contains it, or by ``init_centers`` from the whole training set
    (better). ``initialized`` (C,) bool records which. In eval mode nothing moves.

    Under DDP each process updates its own copy; keep the loss inside the DDP module (buffers are broadcast
    from rank 0) or call ``init_centers`` with gathered embeddings.

    num_classes: C ≥ 1; dim: D (128 for dlib); alpha: centre learning rate in (0, 1] (paper: 0.5).
    """

    def __init__(self, num_classes: int, dim: int = 128, alpha: float = 0.5):
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must lie in (0, 1], got {alpha!r}")
        self.num_classes, self.dim, self.alpha = int(num_classes), int(dim), float(alpha)
        self.register_buffer("centers", torch.zeros(self.num_classes, self.dim))
        self.register_buffer("initialized", torch.zeros(self.num_classes, dtype=torch.bool))

    def _check(self, embeddings: Tensor, labels: Tensor) -> None:
        _check_batch(embeddings, labels)
        if embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (N, {self.dim}), got shape {tuple(embeddings.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}]")

    def _class_sums(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        sums = torch.zeros_like(self.centers).index_add_(0, labels, embeddings.to(self.centers.dtype))
        counts = torch.bincount(labels, minlength=self.num_classes).to(self.centers.dtype)
        return sums, counts

    @torch.no_grad()
    def init_centers(self, embeddings: Tensor, labels: Tensor) -> "CenterLoss":
        """Set the centres of the classes present to their mean embedding and mark them initialised."""
        self._check(embeddings, labels)
        labels = labels.long().to(self.centers.device)
        sums, counts = self._class_sums(embeddings.detach().to(self.centers.device), labels)
        present = counts > 0
        self.centers[present] = sums[present] / counts[present].unsqueeze(1)
        self.initialized |= present
        return self

    @torch.no_grad()
    def _update(self, embeddings: Tensor, labels: Tensor) -> None:
        sums, counts = self._class_sums(embeddings, labels)
        delta = (counts.unsqueeze(1) * self.centers - sums) / (1.0 + counts).unsqueeze(1)
        self.centers -= self.alpha * delta

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """(N, D), (N,) → scalar ``½·mean ‖x_i − c_{y_i}‖²``; updates the centres when training."""
        self._check(embeddings, labels)
        labels = labels.long().to(self.centers.device)
        if self.training:
            fresh = torch.zeros_like(self.initialized)
            fresh[labels] = True
            fresh &= ~self.initialized
            if fresh.any():
                self.init_centers(embeddings[fresh[labels]], labels[fresh[labels]])
        centers = self.centers[labels].to(embeddings.dtype)  # a copy: later centre updates don't touch it
        loss = 0.5 * (embeddings - centers).pow(2).sum(dim=1).mean()
        if self.training:
            self._update(embeddings.detach(), labels)
        return loss

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, alpha={self.alpha}"


def pairwise_distances(embeddings: Tensor, distance: str = "euclidean") -> Tensor:
    """(N, D) → (N, N) distances: ``euclidean`` ‖a − b‖ on the raw vectors, or ``cosine`` 1 − cos(a, b)."""
    _check_distance(distance)
    if distance == "cosine":
        x = F.normalize(embeddings, dim=1)
        return 1.0 - x @ x.T
    diff = embeddings.unsqueeze(1) - embeddings.unsqueeze(0)
    return diff.pow(2).sum(-1).clamp_min(_SQRT_EPS).sqrt()


def _pair_distance(a: Tensor, b: Tensor, distance: str) -> Tensor:
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=1)
    return (a - b).pow(2).sum(dim=1).clamp_min(_SQRT_EPS).sqrt()


@torch.no_grad()
def semihard_triplets(distances: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Semi-hard triplet mining over one batch (FaceNet, Schroff et al. 2015).

    For every anchor–positive pair (a, p), a ≠ p, same label, choose the negative n (other label) that is
    the closest to the anchor among those *farther* than the positive (``d(a, n) > d(a, p)``); when there
    is none, the closest negative of all (the hardest). Anchors whose label fills the whole batch give no
    triplet. Ties go to the lowest index.

    distances: (N, N); labels: (N,) int. Returns ``(anchors, positives, negatives)``, three (T,) int64
    index tensors (T may be 0).
    """
    if distances.ndim != 2 or distances.shape[0] != distances.shape[1]:
        raise ValueError(f"distances must be (N, N), got shape {tuple(distances.shape)}")
    _check_batch(distances, labels)
    labels = labels.to(distances.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=distances.device)
    anchors, positives = torch.nonzero(same & ~eye, as_tuple=True)
    keep = (~same[anchors]).any(dim=1)  # the anchor has at least one negative in the batch
    anchors, positives = anchors[keep], positives[keep]
    d_anchor = distances[anchors]  # (T, N)
    negative = ~same[anchors]
    d_ap = distances[anchors, positives].unsqueeze(1)
    inf = torch.tensor(float("inf"), dtype=distances.dtype, device=distances.device)
    semihard = torch.where(negative & (d_anchor > d_ap), d_anchor, inf)
    hardest = torch.where(negative, d_anchor, inf)
    has_semihard = torch.isfinite(semihard).any(dim=1)
    negatives = torch.where(has_semihard, semihard.argmin(dim=1), hardest.argmin(dim=1))
    return anchors, positives, negatives


class TripletLoss(nn.Module):
    """Triplet loss with batch semi-hard mining: ``mean over triplets of max(0, d(a,p) − d(a,n) + margin)``.

    margin: in the units of ``distance`` (default 0.2: for dlib's raw vectors, same-person pairs sit
    around 0.3–0.5 and the decision threshold at 0.6). distance: ``euclidean`` (raw vectors, default) or
    ``cosine`` (1 − cos). Mining (``semihard_triplets``) runs on detached distances; the loss is then
    recomputed with gradient for the chosen triplets only. A batch with no triplet (a single person, or
    no person with two photos) gives a zero loss that still backpropagates. Use a ``PKSampler``.
    """

    def __init__(self, margin: float = 0.2, distance: str = "euclidean"):
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        _check_distance(distance)
        self.margin, self.distance = float(margin), distance

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """(N, D), (N,) → scalar loss."""
        _check_batch(embeddings, labels)
        with torch.no_grad():
            distances = pairwise_distances(embeddings.detach(), self.distance)
        a, p, n = semihard_triplets(distances, labels)
        if a.numel() == 0:
            return embeddings.sum() * 0.0
        d_ap = _pair_distance(embeddings[a], embeddings[p], self.distance)
        d_an = _pair_distance(embeddings[a], embeddings[n], self.distance)
        return F.relu(d_ap - d_an + self.margin).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}"


class DlibMetricLoss(nn.Module):
    """dlib's own training loss (``loss_metric``): a pairwise hinge around the distance threshold.

    Over every pair of the batch, on raw Euclidean distances: a same-person pair pays
    ``max(0, d − (threshold − margin))``, a different-person pair ``max(0, (threshold + margin) − d)``;
    only the hardest different-person pairs count, as many as there are same-person pairs. The loss is
    the sum over the counted pairs divided by their number. dlib trained its model with
    ``threshold=0.6, margin=0.04``: this loss optimises face_recognition's "distance ≤ 0.6" rule itself.
    """

    def __init__(self, threshold: float = 0.6, margin: float = 0.04):
        super().__init__()
        if threshold <= 0 or margin < 0:
            raise ValueError(f"need threshold > 0 and margin >= 0, got {threshold}, {margin}")
        self.threshold, self.margin = float(threshold), float(margin)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        _check_batch(embeddings, labels)
        d = pairwise_distances(embeddings, "euclidean")
        upper = torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)
        same = (labels[:, None] == labels[None, :]) & upper
        different = (labels[:, None] != labels[None, :]) & upper
        pos = F.relu(d[same] - (self.threshold - self.margin))
        neg = F.relu((self.threshold + self.margin) - d[different])
        n_neg = min(int(same.sum()), neg.numel())
        hardest = torch.topk(neg, n_neg).values if n_neg else neg[:0]
        count = pos.numel() + hardest.numel()
        if count == 0:
            return embeddings.sum() * 0.0
        return (pos.sum() + hardest.sum()) / count
