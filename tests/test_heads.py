"""Each head against its paper's formula, recomputed sample by sample with ``math`` on hand-placed angles."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlibplus.heads import (
    HEADS,
    ArcFaceHead,
    CombinedHead,
    CosFaceHead,
    SoftmaxHead,
    SphereFaceHead,
    arcface_margin,
    combined_margin,
    cosface_margin,
    create_head,
    sphereface_lambda,
    sphereface_margin,
    sphereface_psi,
)

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}

# 2-d setup: three classes at known directions, four samples at known angles, with norms ≠ 1.
CLASS_ANGLES = [0.0, math.pi / 2, math.pi]
SAMPLE_ANGLES = [math.pi / 3, math.pi / 6, 2.0, -0.4]
SAMPLE_NORMS = [2.0, 0.5, 1.45, 3.0]
LABELS = [0, 1, 2, 0]


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def _known(head_cls, dtype, **kwargs):
    head = head_cls(len(CLASS_ANGLES), embedding_size=2, **kwargs).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([_unit(a) for a in CLASS_ANGLES]) * 3.0)  # norm must not matter
    x = torch.tensor([[r * c for c in _unit(a)] for a, r in zip(SAMPLE_ANGLES, SAMPLE_NORMS)], dtype=dtype)
    return head, x, torch.tensor(LABELS)


def _cos(i: int, j: int) -> float:
    return math.cos(SAMPLE_ANGLES[i] - CLASS_ANGLES[j])


def _expected(target_fn, nontarget_fn):
    """(N, C) logits from per-sample formulas: target_fn(i, theta) and nontarget_fn(i, cos)."""
    rows = []
    for i, y in enumerate(LABELS):
        row = []
        for j in range(len(CLASS_ANGLES)):
            c = _cos(i, j)
            row.append(target_fn(i, math.acos(c)) if j == y else nontarget_fn(i, c))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def _close(actual, expected, dtype):
    torch.testing.assert_close(actual.double(), expected, **TOL[dtype])


DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64])


@DTYPES
def test_predict_is_plain_cosine(dtype):
    for head_cls in (CosFaceHead, ArcFaceHead, CombinedHead, SphereFaceHead, SoftmaxHead):
        head, x, _ = _known(head_cls, dtype)
        _close(head.predict(x), _expected(lambda i, t: math.cos(t), lambda i, c: c), dtype)


@DTYPES
def test_cosface_formula(dtype):
    s, m = 30.0, 0.2
    head, x, y = _known(CosFaceHead, dtype, margin=m, scale=s)
    expected = _expected(lambda i, t: s * (math.cos(t) - m), lambda i, c: s * c)
    _close(head(x, y), expected, dtype)


@DTYPES
def test_arcface_formula(dtype):
    s, m = 30.0, 0.3
    head, x, y = _known(ArcFaceHead, dtype, margin=m, scale=s)
    # every sample here has θ_target < π − m, so the margin applies as cos(θ + m)
    assert all(math.acos(_cos(i, yi)) < math.pi - m for i, yi in enumerate(LABELS))
    expected = _expected(lambda i, t: s * math.cos(t + m), lambda i, c: s * c)
    _close(head(x, y), expected, dtype)


@DTYPES
def test_arcface_fallback_beyond_pi_minus_m(dtype):
    s, m = 64.0, 0.5
    thetas = [math.pi - m - 0.01, math.pi - m + 0.01, math.pi - 0.2, math.pi - 1e-3]
    cosine = torch.tensor([[math.cos(t), 0.1] for t in thetas], dtype=dtype)
    logits = arcface_margin(cosine, torch.zeros(len(thetas), dtype=torch.long), margin=m, scale=s)
    expected = [
        s * math.cos(t + m) if t < math.pi - m else s * (math.cos(t) - math.sin(math.pi - m) * m) for t in thetas
    ]
    _close(logits[:, 0], torch.tensor(expected, dtype=torch.float64), dtype)
    _close(logits[:, 1], torch.full((len(thetas),), s * 0.1, dtype=torch.float64), dtype)


def test_arcface_target_logit_decreases_with_angle():
    theta = torch.linspace(0.0, math.pi, 2001, dtype=torch.float64)
    cosine = torch.stack([torch.cos(theta), torch.zeros_like(theta)], dim=1)
    target = arcface_margin(cosine, torch.zeros(len(theta), dtype=torch.long), margin=0.5, scale=1.0)[:, 0]
    assert (target.diff() < 0).all()
    # without the fallback cos(θ + m) would turn back up past π − m
    assert torch.cos(theta[-1] + 0.5) > torch.cos(theta[-200] + 0.5)


@DTYPES
def test_combined_formula(dtype):
    s, m1, m2, m3 = 30.0, 0.9, 0.4, 0.15
    head, x, y = _known(CombinedHead, dtype, multiplicative_margin=m1, angular_margin=m2, cosine_margin=m3, scale=s)
    expected = _expected(lambda i, t: s * (math.cos(m1 * t + m2) - m3), lambda i, c: s * c)
    _close(head(x, y), expected, dtype)


def test_combined_reduces_to_arcface_and_cosface():
    torch.manual_seed(0)
    cosine = torch.empty(16, 5, dtype=torch.float64).uniform_(-0.9, 0.99)
    labels = torch.randint(0, 5, (16,))
    kw = dict(multiplicative_margin=1.0, scale=30.0)
    torch.testing.assert_close(
        combined_margin(cosine, labels, angular_margin=0.3, cosine_margin=0.0, **kw),
        arcface_margin(cosine, labels, margin=0.3, scale=30.0),
    )
    torch.testing.assert_close(
        combined_margin(cosine, labels, angular_margin=0.0, cosine_margin=0.25, **kw),
        cosface_margin(cosine, labels, margin=0.25, scale=30.0),
    )


def test_sphereface_psi_hand_values_and_k():
    m = 4
    cases = {  # θ: (ψ(θ), k)
        0.0: (1.0, 0),
        math.pi / 3: (0.5 - 2.0, 1),  # 4θ = 4π/3: −cos(4π/3) − 2 = −1.5
        math.pi / 8: (math.cos(math.pi / 2), 0),
        5 * math.pi / 8: (math.cos(5 * math.pi / 2) - 4.0, 2),
        0.9 * math.pi: (-math.cos(3.6 * math.pi) - 6.0, 3),
        math.pi: (1.0 - 2 * m, 3),
    }
    cos = torch.tensor([math.cos(t) for t in cases], dtype=torch.float64)
    psi, k = sphereface_psi(cos, m)
    torch.testing.assert_close(psi, torch.tensor([v[0] for v in cases.values()], dtype=torch.float64))
    assert k.tolist() == [v[1] for v in cases.values()]


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_sphereface_psi_monotonic_continuous(m):
    theta = torch.linspace(0.0, math.pi, 4001, dtype=torch.float64)
    psi, k = sphereface_psi(torch.cos(theta), m)
    assert (psi.diff() < 0).all()
    assert psi.diff().abs().max() < 2 * m * (math.pi / 4000) + 1e-9  # no jumps at the kπ/m boundaries
    assert psi[0].item() == pytest.approx(1.0) and psi[-1].item() == pytest.approx(1 - 2 * m)
    assert k.min() == 0 and k.max() == m - 1
    expected_k = torch.clamp(torch.floor(m * theta / math.pi), max=m - 1).long()
    interior = (m * theta / math.pi - torch.round(m * theta / math.pi)).abs() > 1e-6
    assert torch.equal(k[interior], expected_k[interior])


@DTYPES
def test_sphereface_formula_with_norms_and_annealing(dtype):
    m = 4
    head, x, y = _known(SphereFaceHead, dtype, margin=m)
    for iteration in (0, 1, 10, 5000):
        head.iteration.fill_(iteration)
        lam = max(5.0, 1000.0 * (1 + 0.12 * iteration) ** -1)
        assert head.lambda_ == pytest.approx(lam)

        def psi(t):
            k = min(int(m * t / math.pi), m - 1)
            return (-1) ** k * math.cos(m * t) - 2 * k

        expected = _expected(
            lambda i, t: SAMPLE_NORMS[i] * (lam * math.cos(t) + psi(t)) / (1 + lam),
            lambda i, c: SAMPLE_NORMS[i] * c,
        )
        _close(head(x, y), expected, dtype)


def test_sphereface_lambda_schedule_and_step():
    head = SphereFaceHead(3, 2)
    assert head.lambda_ == 1000.0
    head.step()
    assert int(head.iteration) == 1 and head.lambda_ == pytest.approx(1000 / 1.12)
    lambdas = [sphereface_lambda(t, lambda_base=1000, gamma=0.12, power=1, lambda_min=5) for t in range(0, 3000, 10)]
    assert all(a >= b for a, b in zip(lambdas, lambdas[1:])) and lambdas[-1] == 5.0
    assert "iteration" in head.state_dict()
    # λ = 0 is pure A-Softmax: target ‖x‖·ψ(θ)
    cos = torch.tensor([[0.5, 0.2]], dtype=torch.float64)
    out = sphereface_margin(cos, torch.tensor([0]), margin=4, lambda_=0.0, norms=torch.tensor([2.0]))
    torch.testing.assert_close(out, torch.tensor([[2 * -1.5, 2 * 0.2]], dtype=torch.float64))


@DTYPES
def test_softmax_is_plain_linear(dtype):
    head, x, y = _known(SoftmaxHead, dtype)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    expected = x.double() @ head.weight.double().T + head.bias.double()
    _close(head(x, y), expected, dtype)


HEAD_CLASSES = [SoftmaxHead, SphereFaceHead, CosFaceHead, ArcFaceHead, CombinedHead]


@pytest.mark.parametrize("head_cls", HEAD_CLASSES)
def test_gradient_pulls_embedding_toward_target_weight(head_cls):
    torch.manual_seed(1)
    head = head_cls(10, 128).double()
    x = torch.randn(32, 128, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (32,))
    F.cross_entropy(head(x, y), y).backward()
    w = F.normalize(head.weight.detach()[y], dim=1)
    xn = F.normalize(x.detach(), dim=1)
    tangent = w - (w * xn).sum(1, keepdim=True) * xn  # direction on the sphere from x toward w_y
    assert ((-x.grad * tangent).sum(1) > 0).all()
    # and the class weight is pulled toward its samples
    assert (-(head.weight.grad[y] * xn).sum(1) > 0).float().mean() > 0.9
    # a small descent step raises every target cosine
    before = head.predict(x.detach()).gather(1, y[:, None])
    after = head.predict(x.detach() - 1e-3 * x.grad).gather(1, y[:, None])
    assert (after > before).all()


@pytest.mark.parametrize(
    "fn,kw",
    [
        (arcface_margin, dict(margin=0.5, scale=4.0)),
        (cosface_margin, dict(margin=0.35, scale=4.0)),
        (combined_margin, dict(multiplicative_margin=0.9, angular_margin=0.4, cosine_margin=0.15, scale=4.0)),
        (sphereface_margin, dict(margin=4, lambda_=3.0)),
    ],
)
def test_margin_gradients_exact(fn, kw):
    torch.manual_seed(2)
    # avoid the kinks: θ = π − m for ArcFace, θ = kπ/m has a continuous ψ but check away from it anyway
    theta = torch.tensor([0.3, 1.0, 1.4, 2.0, 2.5, 0.7], dtype=torch.float64)
    cosine = torch.stack([torch.cos(theta), torch.cos(theta + 0.6), torch.cos(theta - 0.9)], dim=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    cosine.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: F.cross_entropy(fn(c, labels, **kw), labels), (cosine,))
    assert torch.autograd.gradcheck(lambda c: fn(c, labels, **kw), (cosine,))


def test_arcface_head_gradient_exact_not_straight_through():
    torch.manual_seed(3)
    head = ArcFaceHead(8, 16, margin=0.5, scale=8.0).double()
    x = torch.randn(12, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 8, (12,))
    assert torch.autograd.gradcheck(lambda e, w: F.cross_entropy(_head_with_weight(head, w)(e, y), y),
                                    (x, head.weight.detach().clone().requires_grad_(True)))

    # insightface-style: edit the target logit in place under no_grad; the loss is the same, the gradient
    # is not (it is the gradient of s·cos θ, treating the margin as a constant)
    def straight_through(e):
        logits = head.cosine(e).clone()
        with torch.no_grad():
            rows = torch.arange(len(y))
            theta = torch.acos(logits[rows, y].clamp(-1 + 1e-7, 1 - 1e-7))
            logits[rows, y] = torch.cos(theta + head.margin)
        return F.cross_entropy(head.scale * logits, y)

    exact_loss = F.cross_entropy(head(x, y), y)
    (g_exact,) = torch.autograd.grad(exact_loss, x)
    st_loss = straight_through(x)
    (g_st,) = torch.autograd.grad(st_loss, x)
    torch.testing.assert_close(exact_loss, st_loss)
    assert (g_exact - g_st).norm() > 0.05 * g_exact.norm()


def _head_with_weight(head, weight):
    def run(e, y):
        return arcface_margin(
            F.linear(F.normalize(e, dim=1), F.normalize(weight, dim=1)), y, margin=head.margin, scale=head.scale
        )

    return run


@pytest.mark.parametrize("head_cls", HEAD_CLASSES)
def test_head_gradcheck_float64(head_cls):
    torch.manual_seed(4)
    head = head_cls(5, 6).double()
    if isinstance(head, SphereFaceHead):
        head.iteration.fill_(100)
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (7,))
    assert torch.autograd.gradcheck(lambda e: F.cross_entropy(head(e, y), y), (x,))


def test_half_precision_cosine_is_upcast():
    cosine = torch.tensor([[0.6, 0.1], [0.2, 0.9]], dtype=torch.float16)
    out = arcface_margin(cosine, torch.tensor([0, 1]), margin=0.3, scale=30.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_imprint_makes_class_means_the_weights():
    torch.manual_seed(5)
    centres = torch.randn(4, 128)
    y = torch.arange(4).repeat_interleave(5)
    x = centres[y] + 0.1 * torch.randn(20, 128)
    head = ArcFaceHead(4).imprint(x, y)
    assert torch.equal(head.predict(x).argmax(1), y)
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(4))


def test_create_head_names_and_defaults():
    assert set(HEADS) == {"softmax", "sphereface", "cosface", "arcface", "combined"}
    for name, cls in HEADS.items():
        head = create_head(name, 15)
        assert type(head) is cls and head.weight.shape == (15, 128)
    arc = create_head("ArcFace", 15, margin=0.5, scale=64.0)
    assert (arc.margin, arc.scale) == (0.5, 64.0)
    defaults = create_head("arcface", 3), create_head("cosface", 3), create_head("combined", 3)
    assert (defaults[0].margin, defaults[0].scale, defaults[1].margin) == (0.3, 30.0, 0.2)
    combined = defaults[2]
    assert (combined.multiplicative_margin, combined.angular_margin, combined.cosine_margin) == (1.0, 0.15, 0.1)
    assert create_head("sphereface", 3).margin == 4
    with pytest.raises(ValueError, match="softmax, sphereface, cosface, arcface, combined"):
        create_head("adaface", 15)
    with pytest.raises(TypeError):
        create_head("cosface", 15, m=0.3)


def test_bad_inputs_raise_value_error():
    head = ArcFaceHead(3, 4)
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="labels must lie"):
        head(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels must be"):
        head(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels must be"):
        head(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="embeddings must be"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="radians"):
        ArcFaceHead(3, margin=30)
    with pytest.raises(ValueError, match="integer"):
        SphereFaceHead(3, margin=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        CosFaceHead(1)


def test_the_cli_head_names_are_the_registry():
    """train_config lists the heads without importing torch (the CLI's choices); it must list exactly the
    heads that create_head builds."""
    from dlibplus.heads import HEADS
    from dlibplus.train_config import HEAD_NAMES

    assert set(HEAD_NAMES) == set(HEADS)
    for name in HEAD_NAMES:
        assert create_head(name, 3).num_classes == 3
