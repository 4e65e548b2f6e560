"""Center loss, triplet loss and its semi-hard miner on hand-built batches; the P×K sampler.

(The sampler's tests live here too, as the metric losses are what it feeds.)
"""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dlibplus.heads import ArcFaceHead
from dlibplus.losses import CenterLoss, TripletLoss, pairwise_distances, semihard_triplets
from dlibplus.samplers import PKSampler

# ------------------------------------------------------------------------------------------ center loss


def _center_loss_with(centres):
    loss = CenterLoss(num_classes=len(centres), dim=2, alpha=0.5)
    loss.init_centers(torch.tensor(centres), torch.arange(len(centres)))
    return loss


def test_center_loss_value_and_update():
    loss = _center_loss_with([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    value = loss(x, y)
    # ½·mean ‖x − c_y‖² with the centres as they were: (1 + 1 + 1) / 2 / 3
    assert value.item() == pytest.approx(0.5)
    # Wen et al. eq. 4: Δc_j = Σ(c_j − x_i)/(1 + n_j), c_j ← c_j − α·Δc_j
    delta0 = (torch.tensor([0.0, 0.0]) * 2 - torch.tensor([1.0, 1.0])) / 3
    delta1 = (torch.tensor([1.0, 1.0]) - torch.tensor([1.0, 2.0])) / 2
    expected = torch.stack([-0.5 * delta0, torch.tensor([1.0, 1.0]) - 0.5 * delta1, torch.tensor([5.0, 5.0])])
    torch.testing.assert_close(loss.centers, expected)
    # the gradient reaches the embeddings only: (x − c)/N
    value.backward()
    torch.testing.assert_close(x.grad, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]) / 3)
    assert list(loss.parameters()) == [] and not loss.centers.requires_grad


def test_center_loss_centres_converge_and_eval_freezes():
    loss = _center_loss_with([[0.0, 0.0], [0.0, 0.0]])
    x = torch.tensor([[2.0, 0.0], [4.0, 2.0], [-1.0, -1.0]])
    y = torch.tensor([0, 0, 1])
    for _ in range(60):
        loss(x, y)
    torch.testing.assert_close(loss.centers, torch.tensor([[3.0, 1.0], [-1.0, -1.0]]))
    loss.eval()
    before = loss.centers.clone()
    # x + 1 against centres (3, 1), (−1, −1): ½·(‖(0, 0)‖² + ‖(2, 2)‖² + ‖(1, 1)‖²) / 3
    assert loss(x + 1.0, y).item() == pytest.approx(5 / 3)
    assert torch.equal(loss.centers, before)


def test_center_loss_first_batch_initialises_centres():
    loss = CenterLoss(3, dim=2)
    assert not loss.initialized.any()
    x = torch.tensor([[2.0, 0.0], [4.0, 2.0], [-1.0, -1.0]])
    value = loss(x, torch.tensor([0, 0, 2]))
    # class 0's centre starts at its batch mean (3, 1), so the loss is its spread, not its distance to 0
    assert value.item() == pytest.approx(0.5 * (2 + 2 + 0) / 3)
    assert loss.initialized.tolist() == [True, False, True]
    torch.testing.assert_close(loss.centers[0], torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(loss.centers[1], torch.zeros(2))


def test_center_loss_beside_a_head_and_bad_input():
    torch.manual_seed(0)
    head, center = ArcFaceHead(4), CenterLoss(4)
    x = torch.randn(8, 128, requires_grad=True)
    y = torch.arange(4).repeat(2)
    total = F.cross_entropy(head(x, y), y) + 0.01 * center(x, y)
    total.backward()
    assert torch.isfinite(x.grad).all() and head.weight.grad is not None
    with pytest.raises(ValueError, match="labels must lie"):
        center(x, torch.full((8,), 4))
    with pytest.raises(ValueError, match="alpha"):
        CenterLoss(4, alpha=0.0)


# ----------------------------------------------------------------------------------------- triplet loss

# points on a line: A at 0 and 1, B at 0.4 and 3, C alone at 1.7
POSITIONS = [0.0, 1.0, 0.4, 3.0, 1.7]
GROUPS = [0, 0, 1, 1, 2]


def _line_batch():
    x = torch.tensor([[p, 0.0] for p in POSITIONS], dtype=torch.float64, requires_grad=True)
    return x, torch.tensor(GROUPS)


def test_semihard_mining_hand_built_batch():
    x, y = _line_batch()
    a, p, n = semihard_triplets(pairwise_distances(x.detach()), y)
    got = sorted(zip(a.tolist(), p.tolist(), n.tolist()))
    assert got == [
        (0, 1, 4),  # d_ap = 1: B@0.4 is closer (hard), C@1.7 is the closest farther one
        (1, 0, 3),  # d_ap = 1: B@0.4 and C@1.7 are 0.6 and 0.7 away, B@3 (2.0) is the only farther one
        (2, 3, 0),  # d_ap = 2.6: no negative is farther, so the hardest: A@0 (0.4)
        (3, 2, 0),  # d_ap = 2.6: A@0 at 3.0 is the only farther one
    ]  # C has no positive: no triplet


def test_triplet_loss_value_and_gradient():
    x, y = _line_batch()
    value = TripletLoss(margin=0.5)(x, y)
    # relu(1 − 1.7 + .5) + relu(1 − 2 + .5) + relu(2.6 − 0.4 + .5) + relu(2.6 − 3 + .5), over 4
    assert value.item() == pytest.approx((0 + 0 + 2.7 + 0.1) / 4)
    value.backward()
    # active triplets (2, 3, 0) and (3, 2, 0), each /4; on a line ∂|u − v|/∂u = sign(u − v):
    # x0: +¼ + ¼, x2: −½ − ¼, x3: +¼ + 0; x1 and x4 (C) take part in no active triplet
    torch.testing.assert_close(x.grad[:, 0], torch.tensor([0.5, 0.0, -0.75, 0.25, 0.0], dtype=torch.float64))
    assert (x.grad[:, 1] == 0).all()


def test_triplet_cosine_distance_and_degenerate_batches():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    torch.testing.assert_close(
        pairwise_distances(x, "cosine"), torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    )
    loss = TripletLoss(margin=0.2)
    # one person only, or nobody with two photos: zero loss that still backpropagates
    for labels in (torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2])):
        z = x.clone().requires_grad_(True)
        value = loss(z, labels)
        value.backward()
        assert value.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))
    # duplicated photos (zero distances) give finite gradients
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss(z, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="euclidean, cosine"):
        TripletLoss(distance="manhattan")


def test_triplet_loss_gradcheck_float64():
    torch.manual_seed(1)
    x = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    y = torch.arange(4).repeat_interleave(3)
    for distance in ("euclidean", "cosine"):
        assert torch.autograd.gradcheck(lambda e: TripletLoss(0.3, distance)(e, y), (x,))


# -------------------------------------------------------------------------------------------- PK sampler

# 6 people with 20, 12, 8, 5, 2 and 1 photos, interleaved in the dataset
SIZES = {"ann": 20, "bob": 12, "cat": 8, "dan": 5, "eve": 2, "fay": 1}
NAMES = [name for name, n in SIZES.items() for _ in range(n)]
NAMES = [NAMES[i] for i in torch.randperm(len(NAMES), generator=torch.Generator().manual_seed(0)).tolist()]


def test_pk_batches_are_balanced():
    sampler = PKSampler(NAMES, p=3, k=4, seed=7)
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(len(NAMES) / 12)
    people = Counter()
    photos = Counter()
    for batch in batches:
        assert len(batch) == 12
        names = [NAMES[i] for i in batch]
        per_person = Counter(names)
        assert len(per_person) == 3 and set(per_person.values()) == {4}
        people.update(per_person.keys())
        photos.update(batch)
        for name in per_person:  # a person with ≥ K photos never repeats one within a batch
            own = [i for i in batch if NAMES[i] == name]
            if SIZES[name] >= 4:
                assert len(set(own)) == 4
            else:  # fewer than K: all of them, then repeats as even as possible
                assert len(set(own)) == SIZES[name]
                assert max(Counter(own).values()) - min(Counter(own).values()) <= 1
    assert max(people.values()) - min(people.values()) <= 1  # people drawn evenly over the epoch
    for name, n in SIZES.items():  # photos of a person are cycled before any repeats
        counts = [photos[i] for i, nm in enumerate(NAMES) if nm == name]
        assert max(counts) - min(counts) <= 1


def test_pk_deterministic_per_seed_and_epoch():
    def run(seed, epoch):
        sampler = PKSampler(NAMES, p=2, k=3, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert run(0, 0) == run(0, 0)
    assert run(0, 0) != run(0, 1)
    assert run(0, 0) != run(1, 0)
    sampler = PKSampler(NAMES, p=2, k=3, seed=0)
    assert list(sampler) == run(0, 0) and list(sampler) == run(0, 1)  # a full pass moves to the next epoch
    assert sampler.epoch == 2


def test_pk_ddp_split():
    single = list(PKSampler(NAMES, p=2, k=3, seed=3, batches_per_epoch=9, rank=0, world_size=1))
    ranks = [PKSampler(NAMES, p=2, k=3, seed=3, batches_per_epoch=9, rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in ranks] == [5, 5]
    per_rank = [list(s) for s in ranks]
    interleaved = [b for pair in zip(*per_rank) for b in pair]
    assert interleaved[:9] == single
    assert not set(map(tuple, per_rank[0])) & set(map(tuple, per_rank[1]))


def test_pk_with_dataloader_and_bad_arguments():
    labels = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)
    data = TensorDataset(torch.arange(15), labels)
    loader = DataLoader(data, batch_sampler=PKSampler(labels, p=3, k=2, seed=0))
    for _, y in loader:
        assert sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="number of people"):
        PKSampler(labels, p=4, k=2)
    with pytest.raises(ValueError, match="k must"):
        PKSampler(labels, p=2, k=0)
    with pytest.raises(ValueError, match="rank"):
        PKSampler(labels, p=2, k=2, rank=2, world_size=2)


def test_dlib_metric_loss_by_hand():
    from dlibplus.losses import DlibMetricLoss

    # points on a line: A at 0 and 0.5 (same person), B at 0.62 and 2.0
    x = torch.tensor([[0.0], [0.5], [0.62], [2.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    loss = DlibMetricLoss(threshold=0.6, margin=0.04)(x, y)
    # same pairs: d=0.5 pays 0.5-0.56<0 → 0; d=1.38 (B,B) pays 1.38-0.56=0.82
    # different pairs: d(0.5,0.62)=0.12 → 0.64-0.12=0.52, d(0,0.62)=0.62 → 0.02, the rest beyond 0.64 → 0
    # two same pairs → the two hardest negatives: 0.52 and 0.02
    assert float(loss.detach()) == pytest.approx((0.0 + 0.82 + 0.52 + 0.02) / 4)
    loss.backward()
    # descent (−grad) pulls B(2.0) down towards B(0.62), pushes A(0.5) down, away from B(0.62),
    # and moves B(0.62) up, away from both A's and towards B(2.0): each term contributes ±1/4
    assert x.grad[:, 0].tolist() == pytest.approx([0.25, 0.25, -0.75, 0.25])


def test_dlib_metric_loss_is_zero_when_separated():
    from dlibplus.losses import DlibMetricLoss

    x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    y = torch.tensor([0, 0, 1, 1])
    assert float(DlibMetricLoss()(x, y)) == 0.0
