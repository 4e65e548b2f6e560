"""Face verification and identification metrics, as pure functions on numpy arrays.

One module per family; every public name is re-exported here (``from dlibplus import metrics;
metrics.tar_at_far(...)``):

- :mod:`.distances`: Euclidean distances of all pairs of a set, of paired rows, nearest gallery row;
- :mod:`.verification`: ROC, AUC, EER, rates at a threshold, TAR at FAR and the threshold that gives it,
  :func:`verification_report` (everything at once); :mod:`.kfold`: the LFW k-fold accuracy;
- :mod:`.identification`: 1-NN identification, accuracy, confusion matrix, per-person errors, open-set
  detection-and-identification rate against false-alarm rate;
- :mod:`.bootstrap`: confidence intervals of differences between encoders, resampling people.

Conventions, the same as face_recognition's: an *encoding* is a float vector (dlib: 128-d, not
L2-normalised), the *distance* between two encodings is Euclidean, and two faces are "the same person" when
``distance <= threshold`` (inclusive; dlib's threshold is 0.6). Functions return numbers or small result
objects (``to_dict()`` gives JSON-ready values); nothing is printed or plotted (see :mod:`dlibplus.plots`),
nothing is read from disk (pairs files: :mod:`dlibplus.pairs_file`). Only numpy is imported. Errors in the
arrays passed (wrong shapes, NaN, no same-person pair at all) raise ``ValueError``.
"""
from __future__ import annotations

from ._common import DEFAULT_FARS, DEFAULT_THRESHOLD
from .bootstrap import (BootstrapResult, WeightedTar, bootstrap_identification_diff, bootstrap_over_people,
                        bootstrap_tar_at_far_diff, bootstrap_tar_diff)
from .distances import cross_distances, nearest_index, pair_distances, paired_distances
from .identification import (DirAtFar, IdentificationReport, OpenSetResult, PersonRow, confusion_matrix,
                             dir_at_far, identification_accuracy, identification_report, nearest_identity,
                             open_set_dir_far, open_set_from_nearest, per_person_report)
from .kfold import KFoldResult, best_accuracy_threshold, kfold_verification, stratified_folds
from .verification import (Eer, Roc, TarAtFar, VerificationReport, accuracy_at_threshold, auc, eer,
                           rates_at_threshold, roc_curve_distances, tar_at_far, threshold_at_far,
                           verification_report)

__all__ = [
    "DEFAULT_FARS", "DEFAULT_THRESHOLD",
    # distances
    "cross_distances", "nearest_index", "pair_distances", "paired_distances",
    # verification
    "Eer", "Roc", "TarAtFar", "VerificationReport", "accuracy_at_threshold", "auc", "eer", "rates_at_threshold",
    "roc_curve_distances", "tar_at_far", "threshold_at_far", "verification_report",
    # k-fold
    "KFoldResult", "best_accuracy_threshold", "kfold_verification", "stratified_folds",
    # identification
    "DirAtFar", "IdentificationReport", "OpenSetResult", "PersonRow", "confusion_matrix", "dir_at_far",
    "identification_accuracy", "identification_report", "nearest_identity", "open_set_dir_far",
    "open_set_from_nearest", "per_person_report",
    # bootstrap
    "BootstrapResult", "WeightedTar", "bootstrap_identification_diff", "bootstrap_over_people",
    "bootstrap_tar_at_far_diff", "bootstrap_tar_diff",
]
