"""Data echoing (``--echo``): augmented copies kept after the frozen stages, on real faces."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

from conftest import whole_face_chips
from dlibplus import augment
from dlibplus.distributed import Dist
from dlibplus.echo import copy_rng, photo_keys, uses_in_epoch
from dlibplus.train import build, train_one_epoch
from dlibplus.train_config import FinetuneConfig

PEOPLE = ["Arin", "Chaeyong", "Dahyun"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def chips(tmp_path_factory, faces_dir):
    return whole_face_chips(tmp_path_factory.mktemp("echo-people"), faces_dir, PEOPLE, 5)


def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{**dict(epochs=4, freeze=3, echo=2, people_per_batch=3, images_per_person=4,
                                    device="cpu", regime="anchor", augment_on="host"), **kw})


def test_a_copy_is_dlibs_jitter_of_its_photo_through_the_frozen_stages(chips):
    """Each row of a step is the frozen stages' activation of dlib's jitter and colours of that photo, drawn from
    the generator of (seed, photo bytes, copy); a photo used twice in a step takes two copies; a kept copy is what
    a later step reads back."""
    torch.manual_seed(0)
    run = build(chips, _config(seed=3, echo=8), CPU, Dist())
    pool, keys = run.echo, run.echo_keys
    assert pool is not None and (pool.variants, pool.stages, pool.seed, pool.stride) == (8, 3, 3, 2)
    rows, uses = np.array([0, 4, 0, 7]), uses_in_epoch([np.array([0, 4, 0, 7])])[0]
    assert uses.tolist() == [0, 0, 1, 0]
    step = pool.plan(keys[rows], chips.chips[rows], 5, uses)  # epoch 5: copy 5, the second use copy 7
    assert [c for _, c in step.names] == [5, 5, 7, 5] and step.fresh == [0, 1, 2, 3]
    got = pool.features(step, run.backbone, CPU)
    assert got.shape == (4, 64, 17, 17)
    for row, (i, (_, copy)) in enumerate(zip(rows, step.names)):
        drawn = augment.augment_chip(chips.chips[i], copy_rng(3, int(keys[i]), copy))
        x = torch.from_numpy(drawn[None]).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            want = run.backbone.features(x, 3)[0]
        torch.testing.assert_close(got[row], want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got[0], got[2])
    again = pool.plan(keys[rows[:2]], chips.chips[rows[:2]], 13, np.zeros(2))  # copy 13 % 8 = 5 again: no draw
    assert again.fresh == [] and again.chips is None
    assert torch.equal(pool.features(again, run.backbone, CPU), got[:2])
    assert len(set(photo_keys(chips.chips).tolist())) == len(chips)  # distinct photos, distinct keys


def test_epochs_reuse_the_copies_and_the_budget_changes_speed_not_draws(chips, monkeypatch):
    """After ``echo`` epochs the copies come from the pool (no photo is augmented again); a run whose pool may
    keep nothing draws and computes every copy each time instead and trains to the same losses and weights, bit for
    bit."""
    drawn = []
    real = augment.augment_chip
    monkeypatch.setattr(augment, "augment_chip", lambda chip, rng: drawn.append(1) or real(chip, rng))
    runs, counts = [], []
    for budget in (None, 0):
        torch.manual_seed(0)
        run = build(chips, _config(), CPU, Dist())
        if budget is not None:
            run.echo.max_bytes = budget
        rows = []
        for epoch in range(4):
            drawn.clear()
            rows.append(train_one_epoch(run, chips, epoch, tqdm(disable=True)))
            counts.append(len(drawn))
        runs.append((run, rows))
    kept_counts, none_counts = counts[:4], counts[4:]
    assert kept_counts[0] > 0 and kept_counts[2] < kept_counts[0] and kept_counts[3] < kept_counts[1]
    assert min(none_counts) > 0 and none_counts[2] > kept_counts[2]
    assert len(runs[0][0].echo.kept) > 0 and len(runs[1][0].echo.kept) == 0
    (a, rows_a), (b, rows_b) = runs
    # bit for bit on CPU: a copy computed in another batch gives the same activation
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.backbone.parameters(), b.backbone.parameters()))


def test_echo_is_off_where_it_cannot_help_or_would_change_what_trains(chips):
    """No pool without augmentation, without a frozen stage, with distillation (it mixes the augmented pixels) or
    with ``echo`` 0; a pool given to another run is shared only when it holds the same copies."""
    for kw in (dict(echo=0), dict(augment=False), dict(freeze=0), dict(distill=1.0, anchor=0.0)):
        assert build(chips, _config(**kw), CPU, Dist()).echo is None, kw
    first = build(chips, _config(), CPU, Dist())
    assert build(chips.subset(np.arange(0, len(chips), 2)), _config(), CPU, Dist(), first.echo).echo is first.echo
    assert build(chips, _config(seed=1), CPU, Dist(), first.echo).echo is not first.echo
    assert build(chips, _config(freeze=4), CPU, Dist(), first.echo).echo is not first.echo
    assert build(chips, _config(images_per_person=2), CPU, Dist(), first.echo).echo is not first.echo


def test_cross_fitting_folds_fill_one_pool_the_last_run_reads(chips):
    """The folds and the run on every photo share one pool: the last run draws no copy the folds drew."""
    from dlibplus.crossfit import cross_validate, retrained

    config = _config(folds=2, epochs=3, patience=0, keep="finetuned")
    torch.manual_seed(0)
    cf = cross_validate(chips, config, CPU, Dist(), progress=False, say=lambda s: None)
    assert cf.echo is not None and len(cf.echo.kept) > 0
    before = dict(cf.echo.kept)
    run, _ = retrained(cf, config, CPU, Dist(), progress=False, say=lambda s: None)
    assert run.echo is cf.echo
    assert all(torch.equal(cf.echo.kept[name], value) for name, value in before.items())
