"""Cross-fitting's parts: how photos are dealt into folds, and how the folds' judgements pool."""
from __future__ import annotations

import numpy as np
import pytest

from dlibplus.calibration import TOLERANCE, OperatingPoint
from dlibplus.crossfit import fold_of, pool, pooled_metrics
from dlibplus.selection import Assessment


@pytest.mark.parametrize("folds", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_fold_of_spreads_each_person_and_keeps_folds_even(folds, seed):
    counts = [2, 3, 4, 5, 1, 9, 2, 2, 3, 6]  # photos per person, as a user's folder has them
    labels = np.repeat(np.arange(len(counts)), counts)[np.random.default_rng(seed).permutation(sum(counts))]
    fold = fold_of(labels, folds, seed)
    assert fold.shape == labels.shape and fold.dtype == np.int64
    assert set(fold) <= set(range(folds))
    for person, n in enumerate(counts):
        theirs = fold[labels == person]
        # a person's photos go to as many different folds as they can, as evenly as they can
        assert len(set(theirs)) == min(n, folds)
        assert np.bincount(theirs, minlength=folds).max() - np.bincount(theirs, minlength=folds).min() <= 1
        if n >= 2:  # leaving any one fold out still trains on one of their photos
            assert all((theirs != k).any() for k in range(folds))
    sizes = np.bincount(fold, minlength=folds)
    assert sizes.max() - sizes.min() <= len(counts)  # each person adds at most one photo of imbalance
    np.testing.assert_array_equal(fold, fold_of(labels, folds, seed))  # seeded


def test_fold_of_differs_between_seeds():
    labels = np.repeat(np.arange(20), 4)
    assert not np.array_equal(fold_of(labels, 2, 0), fold_of(labels, 2, 1))


def _judged(alpha, threshold, same_ok, diff_in, n_same, n_diff, correct):
    correct = np.asarray(correct, bool)
    point = OperatingPoint("balanced", threshold, TOLERANCE / threshold, same_ok, diff_in, n_same, n_diff, 5,
                           fold_thresholds=[threshold])
    return Assessment(alpha, point, correct, np.zeros_like(correct), np.where(correct, 0.1, -0.1), ~correct)


def test_pool_concatenates_photos_and_weights_rates_by_pairs():
    a = _judged(0.5, 0.40, 0.90, 0.10, 10, 90, [1, 1, 0])
    b = _judged(0.5, 0.50, 0.60, 0.00, 30, 270, [1, 0])
    c = _judged(0.5, 0.44, 0.80, 0.02, 20, 180, [1])
    pooled = pool([a, b, c])
    assert pooled.alpha == 0.5
    np.testing.assert_array_equal(pooled.correct, [1, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(pooled.margin, [0.1, 0.1, -0.1, 0.1, -0.1, 0.1])
    assert pooled.accuracy == pytest.approx(4 / 6)
    p = pooled.point
    assert p.threshold == pytest.approx(0.44) and p.scale == pytest.approx(TOLERANCE / 0.44)
    assert p.n_same_pairs == 60 and p.n_different_pairs == 540 and p.folds == 15
    assert p.same_accepted == pytest.approx((9 + 18 + 16) / 60)
    assert p.different_accepted == pytest.approx((9 + 0 + 3.6) / 540)
    assert p.fold_thresholds == [0.40, 0.50, 0.44]


def test_pool_of_dlib_keeps_it_uncalibrated():
    dlib = [Assessment(0.0, OperatingPoint("none", TOLERANCE, 1.0, 1.0, 0.3, 4, 10, 0), np.ones(2, bool),
                       np.zeros(2, bool), np.zeros(2), np.zeros(2, bool)) for _ in range(2)]
    p = pool(dlib).point
    assert p.method == "none" and p.scale == 1.0 and p.threshold == TOLERANCE
    assert p.same_accepted == 1.0 and p.different_accepted == pytest.approx(0.3)


def test_pooled_metrics_weights_by_photos_and_sums_counts():
    rows = [{"identification_1nn": 1.0, "n_val": 10, "tar_at_far": None},
            {"identification_1nn": 0.5, "n_val": 30, "tar_at_far": 0.2}]
    out = pooled_metrics(rows, [10, 30])
    assert out["identification_1nn"] == pytest.approx(0.625) and out["n_val"] == 40
    assert out["tar_at_far"] == pytest.approx(0.2)  # a fold that could not measure it is left out


def _data(photos_per_person: list[int], val_folder: str | None = None):
    from dlibplus.finetune_data import ChipSet, FinetuneData

    labels = np.repeat(np.arange(len(photos_per_person)), photos_per_person)
    chips = np.zeros((len(labels), 1, 1, 3), np.uint8)
    every = ChipSet(chips, labels, [f"p{i}" for i in range(len(photos_per_person))], [str(i) for i in labels])
    half = np.arange(len(labels)) % 2 == 0
    return FinetuneData(every.subset(np.flatnonzero(half)), every.subset(np.flatnonzero(~half)), None,
                        val_folder=val_folder)


def test_auto_folds_cross_fit_small_folders_only():
    from dlibplus.crossfit import folds_for
    from dlibplus.train_config import SMALL_FOLDER, FinetuneConfig

    auto = FinetuneConfig()
    assert auto.folds == 0
    small, large = _data([2, 3, SMALL_FOLDER, 9]), _data([SMALL_FOLDER + 1, SMALL_FOLDER + 1, 2])
    assert folds_for(auto, small, resume=False, distributed=False) == 2
    assert folds_for(auto, large, resume=False, distributed=False) == 1
    # what rules cross-fitting out: a checkpoint to resume, several processes, a validation folder of its own
    assert folds_for(auto, small, resume=True, distributed=False) == 1
    assert folds_for(auto, small, resume=False, distributed=True) == 1
    assert folds_for(auto, _data([2, 3], val_folder="val/"), resume=False, distributed=False) == 1
    # an explicit choice is kept
    assert folds_for(FinetuneConfig(folds=1), small, resume=False, distributed=False) == 1
    assert folds_for(FinetuneConfig(folds=3), large, resume=False, distributed=False) == 3
    with pytest.raises(ValueError, match="folds"):
        FinetuneConfig(folds=-1)


def test_check_folds_refuses_cross_fitting_where_it_cannot_run():
    from dlibplus.finetune import check_folds

    for folds in (0, 1):  # auto and one split go with anything
        check_folds(folds, resume=True, val_folder="val/")
    check_folds(2, resume=False, val_folder=None)
    with pytest.raises(ValueError, match="--val-folder"):
        check_folds(2, resume=False, val_folder="val/")
    with pytest.raises(ValueError, match="--resume"):
        check_folds(3, resume=True, val_folder=None)


def test_median_photos_counts_each_photo_once_when_validation_is_the_training_set():
    """Cross-fitting's last run validates on the very photos it trains on: a photo in both counts once."""
    from dlibplus.finetune_data import ChipSet, FinetuneData

    chips = np.zeros((7, 150, 150, 3), np.uint8)
    labels = np.array([0, 0, 0, 1, 1, 2, 2])  # 3, 2 and 2 photos
    every = ChipSet(chips, labels, ["a", "b", "c"], [f"p{i}.jpg" for i in range(7)])
    assert FinetuneData(every, every, people=None).median_photos() == 2
    train, val = every.subset(np.array([0, 1, 3, 5])), every.subset(np.array([2, 4, 6]))
    assert FinetuneData(train, val, people=None).median_photos() == 2
    more = ChipSet(chips[:4], np.array([1, 1, 2, 2]), ["a", "b", "c"], [f"q{i}.jpg" for i in range(4)])
    assert FinetuneData(every, more, people=None).median_photos() == 4  # b and c: 2 + 2 new photos each
