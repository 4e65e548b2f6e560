"""Classification heads for fine-tuning the 128-d face embedding.

Two layers, kept apart:

* **Margins** are pure functions ``(cosine (N, C), labels (N,)) -> logits (N, C)``. They edit the
  target-class logit of each row and scale the rest; nothing else. They are differentiable end to end:
  no in-place edit under ``no_grad``, so the gradient is the exact gradient of the written formula, not
  the straight-through approximation insightface's ArcFace uses.
* **Heads** are small ``nn.Module``\\ s that own the class weight matrix ``weight`` (C, 128), turn
  embeddings into cosines and call their margin. ``forward(embeddings, labels)`` returns loss-ready
  logits for ``F.cross_entropy``; ``predict(embeddings)`` returns the plain cosine (N, C), no margin, for
  open-set use (threshold the best cosine, or compare embeddings directly).

Units: angular margins (ArcFace, the additive part of the combined margin) are in **radians**; CosFace's
margin and the combined subtractive margin are in **cosine units**; SphereFace's margin is an integer
multiplier of the angle. ``scale`` multiplies the cosine logits (the radius of the hypersphere).

Defaults are chosen for a small fine-tune (about 15 people × 20 photos on top of dlib's pretrained
ResNet), not for training from scratch on 10⁵ identities:

* ``scale=30``. NormFace's bound says a softmax over C classes needs
  ``s ≥ (C−1)/C · ln((C−1)·P/(1−P))`` to reach target probability P: about 9 for C = 15 and 11 for
  C = 100 at P = 0.999. 30 clears that with room for the margin; insightface's 64 is tuned for ~10⁵ classes
  and saturates the loss on a handful of people.
* Margins about 60 % of the papers' (ArcFace 0.5 rad, CosFace 0.35, combined 0.3/0.2), so each takes about
  0.2 cosine off the target logit at θ = 45°: ArcFace ``margin=0.3`` rad, CosFace ``margin=0.2``, combined
  ``(1.0, 0.15, 0.1)``. A pretrained backbone on 20 photos a person overfits, and its embeddings move far
  from dlib's Euclidean 0.6 contract, when pushed by the full margin. This is a judgement, not a measured
  optimum: tune it on held-out pairs.
* SphereFace keeps the paper's ``margin=4`` and the annealing of its released Caffe model
  (``lambda_base=1000, gamma=0.12, power=1, lambda_min=5``); the annealing is what makes it train at all.

After fine-tuning, embeddings are still compared by Euclidean distance. For unit vectors
``d = sqrt(2 − 2·cos)``; dlib's raw vectors have norm ≈ 1.45, so on them ``d ≈ 1.45·sqrt(2 − 2·cos)``
(the 0.6 threshold is about cos 0.91). Recalibrate the threshold after fine-tuning.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "COS_EPS",
    "arcface_margin",
    "combined_margin",
    "cosface_margin",
    "sphereface_margin",
    "sphereface_psi",
    "sphereface_lambda",
    "Head",
    "SoftmaxHead",
    "SphereFaceHead",
    "CosFaceHead",
    "ArcFaceHead",
    "CombinedHead",
    "HEADS",
    "create_head",
]

#: Cosines are clamped to ``[-1 + COS_EPS, 1 - COS_EPS]`` before ``acos`` so its gradient stays finite.
COS_EPS = 1e-7


# --------------------------------------------------------------------------------------------------
# Margins: pure functions


def _check_labels(labels: Tensor, n: int, num_classes: int) -> None:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be (N,) with N = {n}, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]"
        )


def _check_logits_labels(cosine: Tensor, labels: Tensor) -> None:
    if cosine.ndim != 2:
        raise ValueError(f"cosine must be (N, C), got shape {tuple(cosine.shape)}")
    _check_labels(labels, cosine.shape[0], cosine.shape[1])


def _at_least_float32(t: Tensor) -> Tensor:
    """Half-precision cosines lose the margin (1 − 1e-7 rounds to 1): compute margins in float32 or wider."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _replace_target(logits: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """``logits`` with ``logits[i, labels[i]] = target[i]``; out of place, so autograd sees every entry."""
    return logits.scatter(1, labels.long().unsqueeze(1), target.unsqueeze(1))


def _target_angle(cos_target: Tensor) -> Tensor:
    return torch.acos(cos_target.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS))


def cosface_margin(cosine: Tensor, labels: Tensor, *, margin: float, scale: float) -> Tensor:
    """CosFace / LMCL (Wang et al. 2018): target ``s·(cos θ − m)``, others ``s·cos θ``.

    cosine: (N, C) cosines between normalised embeddings and class weights. labels: (N,) int.
    margin: cosine units. Returns (N, C) logits.
    """
    _check_logits_labels(cosine, labels)
    cosine = _at_least_float32(cosine)
    target = cosine.gather(1, labels.long().unsqueeze(1)).squeeze(1) - margin
    return scale * _replace_target(cosine, labels, target)


def arcface_margin(cosine: Tensor, labels: Tensor, *, margin: float, scale: float) -> Tensor:
    """ArcFace (Deng et al. 2019): target ``s·cos(θ + m)``, others ``s·cos θ``.

    Beyond ``θ > π − m`` the curve ``cos(θ + m)`` turns back up (θ + m passes π), so a *worse* target angle
    would give a *larger* logit. There the standard "easy_margin=False" fallback is used instead:
    ``cos θ − m·sin(π − m)``, the first-order expansion of ``cos(θ + m)`` around θ = π − m shifted onto
    ``cos θ``; it keeps the target logit decreasing in θ. It is not continuous at θ = π − m: the logit drops
    by ``cos m + m·sin m − 1`` there (0.12 at m = 0.5, 0.04 at m = 0.3), so a sample past it is pushed harder.

    cosine: (N, C); labels: (N,) int; margin: radians, in [0, π). Returns (N, C) logits. The gradient is
    exact (cosine clamped to ``±(1 − COS_EPS)`` before ``acos``).
    """
    _check_logits_labels(cosine, labels)
    cosine = _at_least_float32(cosine)
    cos_t = cosine.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    with_margin = torch.cos(_target_angle(cos_t) + margin)
    fallback = cos_t - margin * math.sin(math.pi - margin)
    target = torch.where(cos_t > math.cos(math.pi - margin), with_margin, fallback)
    return scale * _replace_target(cosine, labels, target)


def combined_margin(
    cosine: Tensor,
    labels: Tensor,
    *,
    multiplicative_margin: float,
    angular_margin: float,
    cosine_margin: float,
    scale: float,
) -> Tensor:
    """Combined margin (ArcFace paper, §3.3): target ``s·(cos(m1·θ + m2) − m3)``, others ``s·cos θ``.

    m1 = ``multiplicative_margin`` (SphereFace-like, real-valued), m2 = ``angular_margin`` (radians,
    ArcFace), m3 = ``cosine_margin`` (cosine units, CosFace). (1, m, 0) is ArcFace and (1, 0, m) is
    CosFace. No fallback is applied: the target logit is monotonic only while ``m1·θ + m2 ≤ π``, i.e.
    ``θ ≤ (π − m2)/m1`` (171° for the defaults), which a pretrained embedding never reaches in practice.

    cosine: (N, C); labels: (N,) int. Returns (N, C) logits with the exact gradient.
    """
    _check_logits_labels(cosine, labels)
    cosine = _at_least_float32(cosine)
    cos_t = cosine.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    target = torch.cos(multiplicative_margin * _target_angle(cos_t) + angular_margin) - cosine_margin
    return scale * _replace_target(cosine, labels, target)


def _chebyshev_cos_multiple(cos_theta: Tensor, m: int) -> Tensor:
    """``cos(m·θ)`` as the Chebyshev polynomial T_m(cos θ): exact, smooth, no ``acos`` in the gradient."""
    previous, current = torch.ones_like(cos_theta), cos_theta
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2 * cos_theta * current - previous
    return current


def sphereface_psi(cos_theta: Tensor, margin: int) -> tuple[Tensor, Tensor]:
    """SphereFace's ψ(θ) = (−1)^k·cos(m·θ) − 2k for θ ∈ [kπ/m, (k+1)π/m], k ∈ {0, …, m−1}.

    ψ is continuous and decreasing on [0, π], with ψ(0) = 1 and ψ(π) = 1 − 2m. ``cos(m·θ)`` is
    evaluated as a Chebyshev polynomial of cos θ (as in the paper's code), so the gradient is exact;
    k is piecewise constant and carries no gradient.

    cos_theta: any shape; margin: integer m ≥ 1. Returns ``(psi, k)``, both shaped like ``cos_theta``
    (k as int64).
    """
    if int(margin) != margin or margin < 1:
        raise ValueError(f"SphereFace margin must be an integer >= 1, got {margin!r}")
    margin = int(margin)
    cos_theta = cos_theta.clamp(-1.0, 1.0)
    with torch.no_grad():
        theta = torch.acos(cos_theta.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS))
        k = torch.floor(margin * theta / math.pi).clamp(0, margin - 1).long()
    sign = 1.0 - 2.0 * (k % 2).to(cos_theta.dtype)
    psi = sign * _chebyshev_cos_multiple(cos_theta, margin) - 2.0 * k.to(cos_theta.dtype)
    return psi, k


def sphereface_lambda(
    iteration: int, *, lambda_base: float, gamma: float, power: float, lambda_min: float
) -> float:
    """The softmax-annealing weight of SphereFace's code: ``max(λ_min, λ_base·(1 + γ·t)^(−power))``."""
    return max(lambda_min, lambda_base * (1.0 + gamma * iteration) ** (-power))


def sphereface_margin(
    cosine: Tensor,
    labels: Tensor,
    *,
    margin: int,
    lambda_: float = 0.0,
    norms: Tensor | None = None,
) -> Tensor:
    """A-Softmax (SphereFace, Liu et al. 2017) with the annealed target of its released code.

    target ``‖x‖·(λ·cos θ + ψ(θ)) / (1 + λ)``, others ``‖x‖·cos θ``. λ = 0 is the pure A-Softmax; a large
    λ is a plain (weight-normalised) softmax. ‖x‖ is the raw feature norm, kept as in the paper (class
    weights are normalised, no bias); ``norms=None`` means ‖x‖ = 1.

    cosine: (N, C); labels: (N,) int; margin: integer m ≥ 1; norms: (N,) or None. Returns (N, C).
    """
    _check_logits_labels(cosine, labels)
    cosine = _at_least_float32(cosine)
    cos_t = cosine.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    psi, _ = sphereface_psi(cos_t, margin)
    target = (lambda_ * cos_t + psi) / (1.0 + lambda_)
    logits = _replace_target(cosine, labels, target)
    if norms is not None:
        if norms.shape != (cosine.shape[0],):
            raise ValueError(f"norms must be (N,) with N = {cosine.shape[0]}, got {tuple(norms.shape)}")
        logits = logits * norms.to(logits.dtype).unsqueeze(1)
    return logits


# --------------------------------------------------------------------------------------------------
# Heads: modules owning the class weights


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_nonnegative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


class Head(nn.Module):
    """Base head: owns ``weight`` (C, D) and computes cosines; subclasses add the margin in ``forward``.

    ``forward(embeddings (N, D), labels (N,) int) -> logits (N, C)`` for ``F.cross_entropy``.
    ``predict(embeddings (N, D)) -> cosine (N, C)`` in [−1, 1], no margin and no scale.
    ``step()`` is called once per optimiser step by the training loop (only SphereFace uses it).
    """

    def __init__(self, num_classes: int, embedding_size: int = 128):
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if int(embedding_size) != embedding_size or embedding_size < 1:
            raise ValueError(f"embedding_size must be an integer >= 1, got {embedding_size!r}")
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        nn.init.xavier_uniform_(self.weight)

    def _check_embeddings(self, embeddings: Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must be (N, {self.embedding_size}), got shape {tuple(embeddings.shape)}"
            )

    def cosine(self, embeddings: Tensor) -> Tensor:
        """(N, D) embeddings → (N, C) cosines to each class weight, in float32 or wider (also under autocast)."""
        self._check_embeddings(embeddings)
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        with torch.autocast(embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.to(dtype), dim=1)
            w = F.normalize(self.weight.to(dtype), dim=1)
            return F.linear(x, w)

    def predict(self, embeddings: Tensor) -> Tensor:
        """(N, D) embeddings → (N, C) cosines without margin, for open-set classification."""
        return self.cosine(embeddings)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> None:
        """Advance per-step schedules; call once per optimiser step. A no-op except for SphereFace."""

    @torch.no_grad()
    def imprint(self, embeddings: Tensor, labels: Tensor) -> "Head":
        """Set each class weight to the normalised mean of its normalised embeddings ("weight imprinting").

        A good start for fine-tuning: the first logits are already meaningful, so the margin does not
        begin by tearing the pretrained embedding apart. Classes absent from ``labels`` keep their weight.
        embeddings: (N, D); labels: (N,) int in [0, C). Returns ``self``.
        """
        self._check_embeddings(embeddings)
        _check_labels(labels, embeddings.shape[0], self.num_classes)
        x = F.normalize(embeddings.to(torch.promote_types(embeddings.dtype, torch.float32)), dim=1)
        labels = labels.long().to(x.device)
        sums = torch.zeros(self.num_classes, self.embedding_size, dtype=x.dtype, device=x.device)
        sums.index_add_(0, labels, x)
        present = torch.bincount(labels, minlength=self.num_classes) > 0
        self.weight[present] = F.normalize(sums[present], dim=1).to(self.weight)
        return self

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"


class SoftmaxHead(Head):
    """Plain softmax: ``x·Wᵀ + b`` on the raw embeddings, no normalisation and no margin (the baseline)."""

    def __init__(self, num_classes: int, embedding_size: int = 128):
        super().__init__(num_classes, embedding_size)
        self.bias = nn.Parameter(torch.zeros(self.num_classes))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """(N, D), (N,) → (N, C) logits; ``labels`` is only validated."""
        self._check_embeddings(embeddings)
        logits = F.linear(embeddings, self.weight.to(embeddings.dtype), self.bias.to(embeddings.dtype))
        _check_logits_labels(logits, labels)
        return logits


class CosFaceHead(Head):
    """CosFace / LMCL: target ``s·(cos θ − m)``. margin: cosine units (default 0.2); scale default 30."""

    def __init__(self, num_classes: int, embedding_size: int = 128, *, margin: float = 0.2, scale: float = 30.0):
        super().__init__(num_classes, embedding_size)
        _check_nonnegative("margin", margin)
        _check_positive("scale", scale)
        self.margin, self.scale = float(margin), float(scale)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return cosface_margin(self.cosine(embeddings), labels, margin=self.margin, scale=self.scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, scale={self.scale}"


class ArcFaceHead(Head):
    """ArcFace: target ``s·cos(θ + m)`` (fallback ``cos θ − m·sin(π − m)`` past π − m; see ``arcface_margin``).

    margin: radians in [0, π) (default 0.3 ≈ 17°); scale default 30.
    """

    def __init__(self, num_classes: int, embedding_size: int = 128, *, margin: float = 0.3, scale: float = 30.0):
        super().__init__(num_classes, embedding_size)
        if not 0 <= margin < math.pi:
            raise ValueError(f"ArcFace margin is in radians and must lie in [0, π), got {margin!r}")
        _check_positive("scale", scale)
        self.margin, self.scale = float(margin), float(scale)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return arcface_margin(self.cosine(embeddings), labels, margin=self.margin, scale=self.scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, scale={self.scale}"


class CombinedHead(Head):
    """Combined margin: target ``s·(cos(m1·θ + m2) − m3)``.

    multiplicative_margin m1 (default 1.0), angular_margin m2 in radians (default 0.15), cosine_margin m3
    in cosine units (default 0.1), scale default 30. See ``combined_margin``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int = 128,
        *,
        multiplicative_margin: float = 1.0,
        angular_margin: float = 0.15,
        cosine_margin: float = 0.1,
        scale: float = 30.0,
    ):
        super().__init__(num_classes, embedding_size)
        _check_positive("multiplicative_margin", multiplicative_margin)
        if not 0 <= angular_margin < math.pi:
            raise ValueError(f"angular_margin is in radians and must lie in [0, π), got {angular_margin!r}")
        _check_nonnegative("cosine_margin", cosine_margin)
        _check_positive("scale", scale)
        self.multiplicative_margin = float(multiplicative_margin)
        self.angular_margin = float(angular_margin)
        self.cosine_margin = float(cosine_margin)
        self.scale = float(scale)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return combined_margin(
            self.cosine(embeddings),
            labels,
            multiplicative_margin=self.multiplicative_margin,
            angular_margin=self.angular_margin,
            cosine_margin=self.cosine_margin,
            scale=self.scale,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, multiplicative_margin={self.multiplicative_margin}, "
            f"angular_margin={self.angular_margin}, cosine_margin={self.cosine_margin}, scale={self.scale}"
        )


class SphereFaceHead(Head):
    """A-Softmax (SphereFace) with its softmax annealing.

    Logits: target ``‖x‖·(λ·cos θ + ψ(θ)) / (1 + λ)``, others ``‖x‖·cos θ``; class weights normalised,
    no bias, feature norm ‖x‖ kept. dlib's raw embeddings have norm ≈ 1.45, so the logits first span only
    about ±1.5 and the loss stays high until the network grows ‖x‖, as the paper's networks do.
    ``margin``: integer m (default 4). λ = ``max(lambda_min, lambda_base·(1 + gamma·t)^(−power))`` where
    t = ``iteration``, the number of ``step()`` calls so far (a buffer, saved in the state dict); defaults
    are the paper's released model (1000, 0.12, 1, 5): λ reaches its floor after about 1,660 steps.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int = 128,
        *,
        margin: int = 4,
        lambda_base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
    ):
        super().__init__(num_classes, embedding_size)
        if int(margin) != margin or margin < 1:
            raise ValueError(f"SphereFace margin must be an integer >= 1, got {margin!r}")
        _check_nonnegative("lambda_base", lambda_base)
        _check_nonnegative("gamma", gamma)
        _check_nonnegative("power", power)
        _check_nonnegative("lambda_min", lambda_min)
        self.margin = int(margin)
        self.lambda_base, self.gamma = float(lambda_base), float(gamma)
        self.power, self.lambda_min = float(power), float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    @property
    def lambda_(self) -> float:
        """The current annealing weight λ."""
        return sphereface_lambda(
            int(self.iteration),
            lambda_base=self.lambda_base,
            gamma=self.gamma,
            power=self.power,
            lambda_min=self.lambda_min,
        )

    def step(self) -> None:
        """Advance the annealing by one training iteration."""
        self.iteration += 1

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cosine = self.cosine(embeddings)
        norms = embeddings.to(cosine.dtype).norm(dim=1)
        return sphereface_margin(cosine, labels, margin=self.margin, lambda_=self.lambda_, norms=norms)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, margin={self.margin}, lambda_base={self.lambda_base}, "
            f"gamma={self.gamma}, power={self.power}, lambda_min={self.lambda_min}"
        )


#: Head names accepted by ``create_head``.
HEADS: dict[str, type[Head]] = {
    "softmax": SoftmaxHead,
    "sphereface": SphereFaceHead,
    "cosface": CosFaceHead,
    "arcface": ArcFaceHead,
    "combined": CombinedHead,
}


def create_head(name: str, num_classes: int, embedding_size: int = 128, **kwargs) -> Head:
    """Build a head by name: one of ``softmax``, ``sphereface``, ``cosface``, ``arcface``, ``combined``.

    ``kwargs`` go to the head's constructor (``margin``, ``scale``, …). Unknown names raise ``ValueError``
    listing the valid ones.
    """
    cls = HEADS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}")
    return cls(num_classes, embedding_size, **kwargs)
