"""Choosing between dlib and fine-tuned candidates on real encodings: never worse than dlib, scale-free."""
from __future__ import annotations

import numpy as np
import pytest

from dlibplus.faces import FaceSettings
from dlibplus.people import load_people
from dlibplus.selection import assess, bootstrap_gain, select


@pytest.fixture(scope="module")
def kpop(faces_dir):
    people = load_people(faces_dir / "kpop_idols15", settings=FaceSettings(face_box="whole"), jobs=2,
                         encoder="torch", progress=False)
    rng = np.random.default_rng(0)
    val = np.zeros(len(people.labels), bool)
    for person in np.unique(people.labels):
        val[rng.choice(np.flatnonzero(people.labels == person), 2, replace=False)] = True
    return people.encodings[~val], people.labels[~val], people.encodings[val], people.labels[val]


def judge(train, train_y, val, val_y, alpha, calibrate=True):
    return assess(train, train_y, val, val_y, alpha=alpha, calibrate=calibrate, target_far=None, seed=0)


def pulled_to_means(train, train_y, val, val_y, fraction):
    """The photos moved ``fraction`` of the way to their person's mean: what a useful fine-tuning does."""
    people = np.concatenate([train_y, val_y])
    means = {p: np.concatenate([train, val])[people == p].mean(0) for p in np.unique(train_y)}
    pulled = lambda x, labels: x + (np.stack([means[p] for p in labels]) - x) * fraction  # noqa: E731
    return pulled(train, train_y), pulled(val, val_y)


def test_a_rescaled_dlib_is_not_a_gain_and_a_noisier_one_is_refused(kpop):
    train, train_y, val, val_y = kpop
    dlib = judge(train, train_y, val, val_y, 0.0, calibrate=False)
    rescaled = judge(2 * train, train_y, 2 * val, val_y, 1.0)  # same geometry, other units
    rng = np.random.default_rng(1)
    noisy = judge(train + rng.normal(0, 0.05, train.shape), train_y, val + rng.normal(0, 0.05, val.shape), val_y, 0.5)
    # margins compare geometry whatever the units or the calibration: the rescaled copy separates people as dlib
    assert np.allclose(rescaled.margin, dlib.margin, atol=1e-9)
    chosen = select([rescaled, noisy], dlib, val_y, seed=0)
    assert chosen.chosen is dlib and not chosen.beats_dlib


def test_a_candidate_that_names_more_photos_and_separates_better_is_kept(kpop):
    train, train_y, val, val_y = kpop
    dlib = judge(train, train_y, val, val_y, 0.0, calibrate=False)
    tight_train, tight_val = pulled_to_means(train, train_y, val, val_y, 1 / 3)
    better = judge(tight_train, train_y, tight_val, val_y, 1.0)
    assert better.mean_margin > dlib.mean_margin and better.accuracy >= dlib.accuracy
    chosen = select([better], dlib, val_y, seed=0)
    assert chosen.chosen is better and chosen.beats_dlib


def test_bootstrap_over_people_matches_a_direct_resampling():
    a = np.array([1, 1, 0, 1, 0, 1], float)
    b = np.array([0, 1, 0, 0, 0, 1], float)
    groups = np.array(["x", "x", "y", "y", "z", "z"])
    draws = bootstrap_gain(a, b, groups, n_boot=4000, seed=3)
    # by hand: people x, y, z gain 1/2, 1/2, 0 per photo (2 photos each): the mean over draws is the mean gain
    assert draws.mean() == pytest.approx((a - b).mean(), abs=0.01)
    assert set(np.round(np.unique(draws), 6)) <= {0.0, round(1 / 6, 6), round(1 / 3, 6), 0.5}
    assert np.all(bootstrap_gain(a, a, groups, n_boot=100) == 0)


def test_kept_on_separation_alone_the_smallest_alpha_that_separates_better_is_taken(kpop):
    """Naming no more validation photos than dlib, two candidates both separate people better with confidence:
    the one closer to dlib is kept (the margin only grows with alpha, and so does what unseen people lose)."""
    train, train_y, val, val_y = kpop
    dlib = judge(train, train_y, val, val_y, 0.0, calibrate=False)
    near_train, near_val = pulled_to_means(train, train_y, val, val_y, 0.04)
    far_train, far_val = pulled_to_means(train, train_y, val, val_y, 0.08)
    # uncalibrated (0.6 as is), so that no "unknown" moves the accuracy
    near = judge(near_train, train_y, near_val, val_y, 0.5, calibrate=False)
    far = judge(far_train, train_y, far_val, val_y, 1.0, calibrate=False)
    assert near.accuracy == far.accuracy == dlib.accuracy  # the premise: accuracy cannot decide
    assert far.mean_margin > near.mean_margin > dlib.mean_margin
    chosen = select([near, far], dlib, val_y, seed=0)
    assert chosen.chosen is near and chosen.beats_dlib
    assert select([far], dlib, val_y, seed=0).chosen is far


def test_grown_gallery_names_each_validation_photo_against_the_others_never_itself(kpop):
    """judge_gallery "grown": a person with no training photo is named from another of their validation
    photos in another group, but a photo alone under its name never is: it is not in its own gallery."""
    from dlibplus.calibration import GROWN_GROUPS, knn_correct, knn_correct_grown, probe_folds

    train, train_y, val, val_y = kpop
    person = val_y[0]
    first = np.flatnonzero(val_y == person)[0]
    keep = train_y != person  # nobody in the training gallery carries their name
    # their first photo again at the end (a duplicate, at distance 0), in another group than the first
    probes, probe_y = np.concatenate([val, val[[first]]]), np.append(val_y, person)
    seed = next(s for s in range(50) if len(set(probe_folds(len(probe_y), GROWN_GROUPS, s)[[first, -1]])) == 2)
    thresholds = np.full(len(probe_y), 0.6)
    plain, _ = knn_correct(train[keep], train_y[keep], probes, probe_y, thresholds)
    grown, _ = knn_correct_grown(train[keep], train_y[keep], probes, probe_y, thresholds, seed)
    assert not plain[probe_y == person].any()
    assert grown[first] and grown[-1]  # each named from the other
    alone = np.flatnonzero(val_y != person).tolist() + [first]
    grown, _ = knn_correct_grown(train[keep], train_y[keep], val[alone], val_y[alone], thresholds[alone], seed)
    assert not grown[-1]  # its only namesake would be itself


def test_judge_gallery_setting_is_checked():
    from dlibplus.train_config import FinetuneConfig

    assert FinetuneConfig().judge_gallery == "trained"
    with pytest.raises(ValueError, match="judge_gallery"):
        FinetuneConfig(judge_gallery="everything")


def test_end_of_run_table_says_a_kept_gain_was_read_on_the_photos_that_chose_it(kpop, tmp_path):
    """The kept network's validated gain is the best of several candidates on the same photos (the winner's
    curse, BENCHMARKS.md): the end of the run says so and names the command that measures it on new photos;
    not when the network was kept as asked, nor when dlib is kept."""
    from dlibplus.finish import FinetuneResult, summary_lines

    train, train_y, val, val_y = kpop
    dlib = judge(train, train_y, val, val_y, 0.0, calibrate=False)
    tight_train, tight_val = pulled_to_means(train, train_y, val, val_y, 1 / 3)
    better = judge(tight_train, train_y, tight_val, val_y, 1.0)

    def text(selection, median_photos=8.0):
        result = FinetuneResult(tmp_path / "mymodel", [], {}, {}, {}, selection, {}, 1, 1.0,
                                median_photos=median_photos)
        return "\n".join(summary_lines(result))

    kept = text(select([better], dlib, val_y, seed=0))
    assert "kept: fine-tuned" in kept and "validation photos that chose this network" in kept
    row = next(line for line in kept.splitlines() if line.startswith("fine-tuned "))  # its strangers out, last
    assert "strangers out" in kept and row.split()[5] == f"{better.strangers_out:.3f}"
    assert "--jitters 10" not in kept  # 8 photos a person: beyond where jitter was measured to match fine-tuning
    few = text(select([better], dlib, val_y, seed=0), median_photos=3.0)
    assert "With 3 photos for the median person" in few
    assert f"--encoder torch --encoder {tmp_path / 'mymodel'} --jitters 10" in few
    assert f"dlibplus evaluate NEW_PHOTOS/ --encoder dlib --encoder {tmp_path / 'mymodel'}" in kept
    forced = text(select([better], dlib, val_y, seed=0, force=True))  # --keep finetuned: nothing chose it
    assert "kept as asked" in forced and "chose this network" not in forced
    refused = text(select([judge(train, train_y, val, val_y, 0.5)], dlib, val_y, seed=0))
    assert "NOT better than dlib" in refused and "chose this network" not in refused
    assert "train-knn --jitters 10" in refused  # what named more than fine-tuning with 2-4 photos a person


def test_equal_error_threshold_is_the_cut_where_both_error_shares_meet(kpop):
    """On real validation pairs (dlib's encodings of kpop: a fifth of different-person pairs within 0.6),
    the equal-error cut brings the rejected share of same-person pairs and the accepted share of
    different-person pairs closer than any other cut (brute force over every distinct distance), and its
    shares agree with :func:`dlibplus.metrics.eer`'s interpolated rate."""
    from dlibplus import metrics
    from dlibplus.calibration import equal_error_threshold, probe_pairs

    pairs = probe_pairs(*kpop)
    t = equal_error_threshold(pairs.dist, pairs.same)
    def gap(cut):  # |rejected same-person share - accepted different-person share|
        return abs(np.mean(pairs.dist[pairs.same] > cut) - np.mean(pairs.dist[~pairs.same] <= cut))

    cuts = np.unique(pairs.dist)
    assert gap(t) == pytest.approx(min(gap(c) for c in np.r_[cuts[0] / 2, (cuts[1:] + cuts[:-1]) / 2]))
    assert t not in cuts  # midway between two distances
    frr, far = np.mean(pairs.dist[pairs.same] > t), np.mean(pairs.dist[~pairs.same] <= t)
    assert abs(frr - metrics.eer(pairs.dist, pairs.same).rate) < 0.01 and abs(far - frr) < 0.01


def test_equal_error_threshold_of_separated_pairs_is_the_middle_of_the_gap():
    from dlibplus.calibration import equal_error_threshold

    dist = np.array([0.1, 0.3, 0.35, 0.7, 0.9])
    same = np.array([True, True, True, False, False])
    assert equal_error_threshold(dist, same) == pytest.approx((0.35 + 0.7) / 2)
    with pytest.raises(ValueError, match="both"):
        equal_error_threshold(dist[:3], same[:3])


def test_calibration_rule_is_recorded_and_checked(kpop):
    """``rule`` decides where 0.6 sits; the operating point says which rule placed it, and its
    cross-validated shares (read on photos each threshold was not fit on) are near equal for the
    equal-error rule. A rule that does not exist is refused by the config."""
    from dlibplus.train_config import FinetuneConfig

    a = assess(*kpop, alpha=1.0, calibrate=True, target_far=None, seed=0, rule="equal_error")
    b = judge(*kpop, alpha=1.0)
    assert a.point.method == "equal_error" and b.point.method == "balanced"
    assert a.point.scale == pytest.approx(0.6 / a.point.threshold)
    assert abs((1 - a.point.same_accepted) - a.point.different_accepted) < 0.05
    with pytest.raises(ValueError, match="calibration must be one of"):
        FinetuneConfig(calibration="median")
    with pytest.raises(ValueError, match="calibration rule must be"):
        assess(*kpop, alpha=1.0, calibrate=True, target_far=None, seed=0, rule="median")


def test_strangers_out_are_called_unknown_by_a_knn_without_their_person(kpop):
    """``strangers_out``: the validation photos with no training photo of anyone else within their held-out
    threshold. Each of them, named by train-knn fitted without its own person, is "unknown", so the share is a
    floor on the strangers a gallery rejects. On kpop dlib's 0.6 rejects almost no stranger; a network that
    pulls each person's photos together, calibrated, rejects many more."""
    from dlibplus.calibration import operating_point, probe_pairs
    from dlibplus.knn import FaceKNN
    from dlibplus.predict import UNKNOWN

    train, train_y, val, val_y = kpop
    dlib = judge(train, train_y, val, val_y, alpha=0.0, calibrate=False)
    d = np.linalg.norm(val[:, None] - train[None], axis=-1)
    np.testing.assert_array_equal(dlib.stranger_out, np.where(val_y[:, None] != train_y, d, np.inf).min(1) > 0.6)
    pulled_train, pulled_val = pulled_to_means(train, train_y, val, val_y, 0.5)
    tuned = judge(pulled_train, train_y, pulled_val, val_y, alpha=1.0)
    assert dlib.strangers_out < 0.1 and tuned.strangers_out > dlib.strangers_out + 0.2
    _, thresholds = operating_point(probe_pairs(pulled_train, train_y, pulled_val, val_y), seed=0)
    for i in np.flatnonzero(tuned.stranger_out):
        without = train_y != val_y[i]
        knn = FaceKNN().fit(pulled_train[without], train_y[without].astype(str))
        assert knn.predict(pulled_val[i:i + 1], threshold=thresholds[i])[0] == UNKNOWN
