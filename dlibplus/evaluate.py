"""``dlibplus evaluate``: is an encoder better than dlib on *your* photos? The protocol, and its results.

Every encoder is measured on the same images, with the same split, by the same functions of
:mod:`dlibplus.metrics`:

- **closed-set identification**: a seeded per-person split of ``FOLDER`` (or ``--test-folder``) into a
  gallery and probes; the train-knn classifier (:class:`~dlibplus.knn.FaceKNN`, same defaults) and 1-NN
  predict each probe of a person in the gallery; per-person accuracy, who each person is taken for, and
  the confusion matrix;
- **open set** (``holdout_people > 0``): some people are left out of the gallery; their probes are
  strangers. Detection-and-identification rate (DIR) against false-alarm rate at the encoder's threshold
  (0.6: fine-tuned encoders are calibrated so that 0.6 is their operating point) and a few others;
- **verification** over all pairs of probe images: ROC, AUC, EER, TAR at FAR 1e-1 … 1e-4 (saying which
  cannot be measured on this many pairs), accuracy at 0.6, a stratified 10-fold accuracy; and the
  LFW-style 10-fold protocol over a pairs file when one is given;
- **comparison** of each encoder with the first (the baseline, dlib by default): the difference in
  identification accuracy and in TAR at FAR 1e-3 (or the smallest measurable FAR) with a bootstrap-over-
  people confidence interval.

With ``jitters`` > 1 each encoder is measured a second time on the same split with dlib's jitter (as
``train-knn --jitters`` encodes), so a user sees on their own photos whether jitter or fine-tuning names more.

:func:`evaluate_folder` computes and returns an :class:`EvaluationResult` (``to_dict()`` is the content of
``metrics.json``); :mod:`dlibplus.report` renders it (report.md, the console table, the charts).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import metrics
from .data import process_images, split_per_person
from .faces import FaceSettings
from .errors import DataFolderError
from .knn import FaceKNN
from .evaluation_results import Comparison, EncoderEvaluation, EvaluationResult, TrainingOverlap
from .pairs_file import PairList, read_pairs_resolved
from .encoders import resolve_encoder, with_jitter
from .people import load_people

log = logging.getLogger(__name__)

THRESHOLD = 0.6  # every encoder's operating point: dlib's, and what fine-tuned encoders are calibrated to
FARS = metrics.DEFAULT_FARS  # 1e-1 … 1e-4
COMPARISON_FAR = 1e-3
OPEN_SET_THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6)
OPEN_SET_FARS = (0.1, 0.01)  # false-alarm rates at which the DIR is read off the open-set curve
FOLDS = 10


# ----------------------------------------------------------------------------------------------------------
# Names


def encoder_name(spec: str | os.PathLike) -> str:
    """Display name: ``'dlib'``, ``'torch'``, else the folder or file name of the path; ``+flip`` kept."""
    from .encoders import FLIP_SUFFIX, split_flip

    s, flip = split_flip(os.fspath(spec))
    suffix = FLIP_SUFFIX if flip else ""
    if s in ("dlib", "torch"):
        return s + suffix
    return (Path(s).resolve().name or s) + suffix


def unique_names(specs: Sequence[str]) -> list[str]:
    """One display name per spec, ``-2``, ``-3`` … appended to repeats."""
    names: list[str] = []
    for spec in specs:
        base = name = encoder_name(spec)
        k = 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def jittered_name(name: str, num_jitters: int) -> str:
    """Display name of an encoder measured with dlib's jitter: ``'dlib jitter10'``."""
    return f"{name} jitter{num_jitters}"


def evaluated_encoders(specs: Sequence[str], jitters: int = 1) -> tuple[list[str], list[int], list[str]]:
    """``(specs, num_jitters, names)`` of what evaluate measures: each spec plain and, with ``jitters`` > 1,
    also with dlib's jitter of ``jitters`` copies right after it (``train-knn --jitters`` on that encoder)."""
    if jitters < 1:
        raise ValueError(f"jitters must be >= 1, not {jitters}")
    out_specs, out_jitters, out_names = [], [], []
    for spec, name in zip(specs, unique_names(specs)):
        for j in ((1, jitters) if jitters > 1 else (1,)):
            out_specs.append(spec)
            out_jitters.append(j)
            out_names.append(name if j == 1 else jittered_name(name, j))
    return out_specs, out_jitters, out_names


# ----------------------------------------------------------------------------------------------------------
# Loading: the same usable images for every encoder


@dataclass
class _Encoded:
    """Images usable by every encoder: (n,) paths and labels, name -> (n, 128) encodings."""

    paths: np.ndarray
    labels: np.ndarray
    encodings: dict[str, np.ndarray]

    def subset(self, idx: np.ndarray) -> "_Encoded":
        return _Encoded(self.paths[idx], self.labels[idx], {k: v[idx] for k, v in self.encodings.items()})


def _load_common(folder: Path, specs: Sequence[str], jitters: Sequence[int], names: Sequence[str],
                 settings: FaceSettings, jobs: int | None, progress: bool, *, multiple_faces: str = "skip"
                 ) -> tuple[_Encoded, list[str], dict[str, Any]]:
    """Encode ``folder`` with every encoder (``jitters``: its number of jittered copies, 1 for none); keep the
    images usable by all, in scan order (``multiple_faces``: :func:`dlibplus.people.pick_face`)."""
    sets = [load_people(folder, settings=settings, encoder=spec, num_jitters=j, jobs=jobs, progress=progress,
                        multiple_faces=multiple_faces)
            for spec, j in zip(specs, jitters)]
    path_sets = [set(s.paths.tolist()) for s in sets]
    common = set.intersection(*path_sets)
    dropped = sorted(set.union(*path_sets) - common)
    if not common:
        raise DataFolderError(f"no image of {folder} is usable by every encoder")
    first = sets[0]
    keep = np.array([p in common for p in first.paths.tolist()])
    paths, labels = first.paths[keep], first.labels[keep]
    encodings = {}
    for name, s in zip(names, sets):
        pos = {p: i for i, p in enumerate(s.paths.tolist())}
        encodings[name] = s.encodings[[pos[p] for p in paths.tolist()]]
    return _Encoded(paths, labels, encodings), dropped, first.report()


def _choose_holdout(gallery_labels: np.ndarray, probe_labels: np.ndarray, n: int, seed: int) -> list[str]:
    """``n`` people, chosen by ``seed`` among those with both gallery and probe images."""
    if n < 0:
        raise ValueError(f"holdout_people must be >= 0, not {n}")
    if n == 0:
        return []
    candidates = sorted(set(gallery_labels.tolist()) & set(probe_labels.tolist()))
    if n > len(candidates) - 2:
        raise DataFolderError(f"cannot hold out {n} people: only {len(candidates)} people have both gallery and "
                              f"test images, and at least two must stay known")
    rng = np.random.default_rng([seed, 1])  # independent of the split's stream
    return sorted(str(p) for p in rng.choice(candidates, size=n, replace=False))


@dataclass
class _Split:
    """Gallery and probes (``known`` (p,) bool: probe of a gallery person), and what was said on the way."""

    gallery: _Encoded
    probes: _Encoded
    known: np.ndarray
    holdout: list[str]
    dropped: list[str]
    image_reports: dict[str, Any]
    notes: list[str]


def _split(folder: Path, test_folder: os.PathLike | str | None, specs: Sequence[str], jitters: Sequence[int],
           names: Sequence[str], settings: FaceSettings, test_fraction: float, holdout_people: int, seed: int, jobs: int | None,
           progress: bool, *, multiple_faces: str = "skip") -> _Split:
    """Encode, split into gallery and probes (or take ``test_folder``'s), hold people out of the gallery."""
    notes: list[str] = []
    if test_folder is not None and Path(test_folder).resolve() == folder.resolve():
        raise DataFolderError(f"--test-folder {test_folder} is the people folder itself: every probe would also be "
                              "in the gallery; give a separate folder of test photos, or leave --test-folder out "
                              "to split the folder")
    main_set, dropped, main_report = _load_common(folder, specs, jitters, names, settings, jobs, progress,
                                                  multiple_faces=multiple_faces)
    image_reports = {"folder": main_report}
    if test_folder is None:
        g_idx, p_idx = split_per_person(main_set.labels, test_fraction, seed)
        gallery, probes = main_set.subset(g_idx), main_set.subset(p_idx)
    else:
        gallery = main_set
        probes, dropped_t, test_report = _load_common(Path(test_folder), specs, jitters, names, settings, jobs,
                                                      progress, multiple_faces=multiple_faces)
        dropped += dropped_t
        image_reports["test_folder"] = test_report
    if dropped:
        notes.append(f"{len(dropped)} images are usable by some encoders but not all; left out for all "
                     f"(listed in metrics.json)")
    holdout = _choose_holdout(gallery.labels, probes.labels, holdout_people, seed)
    if holdout:
        gallery = gallery.subset(np.flatnonzero(~np.isin(gallery.labels, holdout)))
    known = np.isin(probes.labels, gallery.labels)
    if not known.any():
        raise DataFolderError(f"no test image of a person in the gallery ({folder}): every person needs at least "
                              f"two usable images, or give --test-folder")
    strangers = sorted(set(probes.labels[~known].tolist()) - set(holdout))
    if strangers:
        notes.append(f"{len(strangers)} people of the test folder are not in the gallery: strangers in the open set")
    return _Split(gallery, probes, known, holdout, dropped, image_reports, notes)


def _scale_jittered(gallery: _Encoded, probes: _Encoded, names: Sequence[str], jitters: Sequence[int]) -> list[float]:
    """Each encoder's jitter scale (1.0 for a plain one), estimated on the gallery as train-knn would on it
    (:func:`~dlibplus.people.scale_jitter`), and applied to its gallery and probe encodings in place."""
    from .jitter_scale import scale_for

    scales = []
    for i, (name, j) in enumerate(zip(names, jitters)):
        scale = 1.0
        if j > 1:
            plain = names[i - 1]  # evaluated_encoders puts each jittered twin right after its plain encoder
            scale = scale_for(gallery.encodings[plain], gallery.encodings[name], gallery.labels)
            for part in (gallery, probes):
                part.encodings[name] = part.encodings[name] * scale
        scales.append(scale)
    return scales


# ----------------------------------------------------------------------------------------------------------
# Per encoder


def _evaluate_encoder(name: str, spec: str, num_jitters: int, gallery: _Encoded, probes: _Encoded,
                      known: np.ndarray, n_neighbors: int | str, seed: int, threshold: float) -> EncoderEvaluation:
    """Every number of one encoder on the split: ``known`` (p,) bool marks the probes of gallery people."""
    g_enc, g_lab = gallery.encodings[name], gallery.labels
    p_enc, p_lab = probes.encodings[name], probes.labels
    true = p_lab[known]
    knn = FaceKNN(n_neighbors, threshold=threshold).fit(g_enc, g_lab)
    _, knn_dist, knn_pred = knn.predict_with_distance(p_enc[known])
    # one nearest-neighbour search for every probe: the known ones give 1-NN, all of them the open set
    nearest, nearest_dist = metrics.nearest_identity(g_enc, g_lab, p_enc)
    nn1_pred, nn1_dist = nearest[known], nearest_dist[known]
    classes = knn.classes_
    ev = EncoderEvaluation(
        name=name, spec=spec, num_jitters=num_jitters, threshold=threshold, k=int(knn.k_), loo_accuracy=dict(knn.loo_scores_),
        knn_accuracy=metrics.identification_accuracy(true, knn_pred),
        nn1_accuracy=metrics.identification_accuracy(true, nn1_pred),
        identification=metrics.identification_report(true, knn_pred, classes),
        classes=classes, confusion=metrics.confusion_matrix(true, knn_pred, classes),
        knn_pred=np.asarray(knn_pred), knn_distance=knn_dist, nn1_pred=np.asarray(nn1_pred), nn1_distance=nn1_dist)
    d, s = metrics.pair_distances(p_enc, p_lab)
    if s.any() and (~s).any():
        ev.verification = metrics.verification_report(d, s, name, threshold, FARS, folds=FOLDS, seed=seed)
        ev.distances, ev.same = d, s
    if (~known).any():
        ts = sorted(set(OPEN_SET_THRESHOLDS) | {threshold})
        ev.open_set = metrics.open_set_from_nearest(nearest, nearest_dist, p_lab, known, ts)
        ev.dir_at_far = metrics.dir_at_far(ev.open_set, OPEN_SET_FARS)
    return ev


def _measurability_notes(base: EncoderEvaluation) -> list[str]:
    """What the baseline could not measure on these probes (the others share its pairs and strangers)."""
    notes = []
    if base.verification is None:
        notes.append("verification skipped: the test images need both same-person and different-person pairs")
    else:
        for t in base.verification.tar_at_far:
            if not t.measurable:
                notes.append(f"TAR @ FAR {t.far:g} not measurable: {t.reason}")
        if base.verification.kfold is None:
            notes.append(f"{FOLDS}-fold accuracy skipped: too few test pairs")
    if base.open_set is not None:
        for row in base.dir_at_far:
            if row.reason:
                notes.append(f"open-set DIR at false-alarm rate {row.far:g} not measurable: {row.reason}")
    return notes


def _duplicate_notes(base: EncoderEvaluation) -> list[str]:
    """Known probes whose very photo (distance 0) is in the gallery: named right by any encoder."""
    n = int(np.sum(base.nn1_distance <= 1e-6))  # float noise only: different photos lie ~0.1 or more apart
    if not n:
        return []
    return [f"{n} of {len(base.nn1_distance)} known probes have an identical photo in the gallery (distance 0): "
            "any encoder names them right; remove the duplicates for a fair measure"]


# ----------------------------------------------------------------------------------------------------------
# Pairs file


def _pair_distances(pairs: PairList, pairs_file: Path, specs: Sequence[str], jitters: Sequence[int],
                    jitter_scales: Sequence[float], names: Sequence[str], settings: FaceSettings, jobs: int | None,
                    progress: bool) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None, dict[str, Any], list[str]]:
    """Distances of the usable pairs for each encoder (a jittered one with its gallery's scale): ``(name -> (m,),
    same (m,), fold ids or None, summary, notes)``. An image with several faces gives its largest face; a pair
    with an image without a usable face (for any encoder) is left out."""
    unique = sorted(set(map(str, pairs.path1 + pairs.path2)))
    usable = np.ones(len(unique), bool)
    reasons: dict[str, str] = {}
    several: set[str] = set()
    per_encoder: dict[str, np.ndarray] = {}
    for spec, j, scale, name in zip(specs, jitters, jitter_scales, names):
        enc = with_jitter(resolve_encoder(spec)[0], j, scale)
        results = process_images(unique, settings, encoder=enc, jobs=jobs, progress=progress, desc="pairs")
        rows = np.zeros((len(unique), 128))
        for i, r in enumerate(results):
            if r.error is not None or r.n_faces == 0:
                usable[i] = False
                reasons.setdefault(unique[i], r.error or "no face found")
                continue
            b = np.asarray(r.boxes, np.int64)
            largest = int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 1] - b[:, 3])))
            if r.n_faces > 1:
                several.add(unique[i])
            rows[i] = r.encodings[largest]
        per_encoder[name] = rows
    pos = {p: i for i, p in enumerate(unique)}
    i1 = np.array([pos[str(p)] for p in pairs.path1])
    i2 = np.array([pos[str(p)] for p in pairs.path2])
    keep = usable[i1] & usable[i2]
    distances = {name: metrics.paired_distances(rows[i1[keep]], rows[i2[keep]]) for name, rows in per_encoder.items()}
    same = pairs.same[keep]
    folds = pairs.folds[keep] if pairs.folds is not None else None
    summary = {"pairs": len(pairs), "used": int(keep.sum()), "dropped": int((~keep).sum()),
               "unusable_images": [{"path": p, "reason": r} for p, r in sorted(reasons.items())],
               "images_with_several_faces": sorted(several),
               "folds": "from the file" if folds is not None else f"{FOLDS} stratified folds (seed)"}
    notes = []
    if (~keep).any():
        notes.append(f"pairs file: {int((~keep).sum())} of {len(pairs)} pairs left out, an image has no usable "
                     f"face ({len(reasons)} images, listed in metrics.json)")
    if several:
        notes.append(f"pairs file: {len(several)} images hold several faces; the largest one was used")
    if not keep.any():
        raise DataFolderError(f"no pair of {pairs_file} has two usable faces")
    return distances, same, folds, summary, notes


def _score_pairs_file(pairs: PairList, pairs_file: Path, specs: Sequence[str], jitters: Sequence[int],
                      jitter_scales: Sequence[float], names: Sequence[str], settings: FaceSettings, jobs: int | None,
                      progress: bool, evaluations: list[EncoderEvaluation], seed: int) -> tuple[dict[str, Any], list[str]]:
    """Set each evaluation's ``pairs`` report (the 10-fold protocol over the pairs file's ``pairs``); returns
    the file's summary and notes."""
    distances, same, folds, summary, notes = _pair_distances(pairs, pairs_file, specs, jitters, jitter_scales, names,
                                                             settings, jobs, progress)
    for ev in evaluations:
        if same.all() or not same.any():
            ev.pairs = None
            continue
        ev.pairs = metrics.verification_report(distances[ev.name], same, ev.name, THRESHOLD, FARS, folds=FOLDS,
                                               seed=seed, fold_ids=folds)
    if evaluations[0].pairs is None:
        notes.append("pairs file: the usable pairs need both same-person and different-person pairs")
    return summary, notes


# ----------------------------------------------------------------------------------------------------------
# Comparisons


def _comparison_far(base: EncoderEvaluation) -> tuple[float | None, str | None]:
    """1e-3 when the baseline's pairs can measure it, else the smallest measurable FAR."""
    if base.verification is None:
        return None, None
    measurable = [t.far for t in base.verification.tar_at_far if t.measurable]
    if not measurable:
        return None, "TAR comparison skipped: no target FAR is measurable on the test pairs"
    if any(math.isclose(f, COMPARISON_FAR) for f in measurable):
        return COMPARISON_FAR, None
    far = min(measurable)
    return far, f"TAR compared at FAR {far:g}: FAR {COMPARISON_FAR:g} is not measurable on the test pairs"


def _compare(result_encoders: list[EncoderEvaluation], probes: _Encoded, known: np.ndarray, n_boot: int,
             seed: int) -> tuple[list[Comparison], list[str]]:
    """Each encoder against the first: identification accuracies and TAR at the comparison FAR, with CIs.

    The TAR statistic is built once per encoder, from the probe-pair distances its verification already
    computed (the baseline's once for all comparisons)."""
    base = result_encoders[0]
    true = probes.labels[known]
    far, note = _comparison_far(base)
    notes = [note] if note and len(result_encoders) > 1 else []
    out = []
    base_tar = None
    for ev in result_encoders[1:]:
        for metric, a, b in (("knn_accuracy", ev.knn_pred, base.knn_pred),
                             ("nn1_accuracy", ev.nn1_pred, base.nn1_pred)):
            ci = metrics.bootstrap_identification_diff(true, a, b, n_boot=n_boot, seed=seed)
            out.append(Comparison(ev.name, base.name, metric, getattr(ev, metric), getattr(base, metric), ci))
        if far is None:
            continue
        try:
            if base_tar is None:
                base_tar = metrics.WeightedTar.from_labels(probes.encodings[base.name], probes.labels, far,
                                                           distances=base.distances)
            tar = metrics.WeightedTar.from_labels(probes.encodings[ev.name], probes.labels, far,
                                                  distances=ev.distances)
            ci = metrics.bootstrap_tar_diff(tar, base_tar, n_boot=n_boot, seed=seed)
        except ValueError as exc:
            notes.append(f"{ev.name} vs {base.name}: TAR comparison skipped ({exc})")
            continue
        out.append(Comparison(ev.name, base.name, "tar_at_far", ev.tar_at(far), base.tar_at(far), ci, far))
    return out, notes


# ----------------------------------------------------------------------------------------------------------
# Photos a fine-tuned encoder was trained on


def _finetuned_folder(spec: str) -> Path | None:
    """The folder of a fine-tuned encoder spec (``DIR`` or ``DIR+flip``), else ``None``."""
    from . import model_folder
    from .encoders import split_flip

    base = split_flip(spec)[0]
    return Path(base) if base not in ("dlib", "torch") and model_folder.is_model_folder(base) else None


def _training_hashes(folder: Path) -> set[str] | None:
    """sha256 of every photo a fine-tuned folder's run used (its metadata's ``data.files_sha256``), or
    ``None`` when its metadata does not list them (made by an older dlibplus, or unreadable)."""
    from . import model_folder
    from .errors import ModelFileError

    try:
        hashes = model_folder.read_metadata(folder).data.get("files_sha256")
    except ModelFileError:
        return None
    return set(hashes) if isinstance(hashes, list) else None


def training_overlaps(specs: Sequence[str], names: Sequence[str], photos: Sequence[str | os.PathLike]
                      ) -> tuple[list[TrainingOverlap], list[str]]:
    """For each fine-tuned folder among ``specs``: how many of ``photos`` (by content) its run used; and
    notes for the folders that cannot say."""
    from .fileio import file_sha256

    overlaps, notes = [], []
    photo_hashes: list[str] | None = None
    for spec, name in zip(specs, names):
        folder = _finetuned_folder(spec)
        if folder is None:
            continue
        trained = _training_hashes(folder)
        if trained is None:
            notes.append(f"{name}: its metadata does not list the photos it was fine-tuned on; make sure they "
                         "are not the evaluated ones")
            continue
        if photo_hashes is None:
            photo_hashes = [file_sha256(p) for p in dict.fromkeys(map(str, photos))]
        overlaps.append(TrainingOverlap(name, sum(h in trained for h in photo_hashes), len(photo_hashes)))
    return overlaps, notes


# ----------------------------------------------------------------------------------------------------------
# The entry point


def evaluate_folder(folder: os.PathLike | str, encoders: Sequence[str | os.PathLike] = ("dlib",), *,
                    settings: FaceSettings | None = None, test_fraction: float = 0.5,
                    test_folder: os.PathLike | str | None = None, holdout_people: int = 0,
                    pairs_file: os.PathLike | str | None = None, seed: int = 0, n_neighbors: int | str = "auto",
                    jobs: int | None = None, progress: bool = True, n_boot: int = 1000,
                    jitters: int = 1, multiple_faces: str = "skip") -> EvaluationResult:
    """Evaluate one or more encoders on a people folder ``FOLDER/<person>/<image>``.

    :param encoders: ``'dlib'``, ``'torch'``, ``.dat`` files or ``dlibplus finetune`` folders; the first is
        the baseline the others are compared with.
    :param test_fraction: share of each person's images used as probes (the rest is the gallery); a person
        with one image stays in the gallery. Ignored when ``test_folder`` is given.
    :param test_folder: a second people folder of probes; the whole of ``folder`` is then the gallery, and
        probes of people missing from it are strangers (open set).
    :param holdout_people: people (chosen by ``seed``) removed from the gallery; their probes are strangers.
    :param pairs_file: LFW ``pairs.txt`` or CSV ``path1,path2,same`` (relative paths: against the file's
        folder, or ``folder``); its images are encoded too and scored with the 10-fold protocol.
    :param n_neighbors: the KNN's k (``'auto'``, ``'sqrt'`` or an int), as ``train-knn``.
    :param n_boot: bootstrap replicates of the comparison confidence intervals (95 %).
    :param jitters: above 1, each encoder is also measured with dlib's jitter (each face the mean of
        ``jitters`` jittered copies, scaled as ``train-knn --jitters`` would scale them with the gallery as its
        folder), as ``"NAME jitterN"`` right after it.
    :param multiple_faces: a photo of ``folder`` (or ``test_folder``) with several faces: ``"skip"`` it, or its
        clearly ``"largest"`` face (:func:`dlibplus.people.pick_face`).
    :raises DataFolderError: a folder is unusable, there are no probes, or too many people are held out.
    """
    specs = [os.fspath(e) for e in encoders]
    if not specs:
        raise ValueError("give at least one encoder")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, not {n_boot}")
    settings = settings or FaceSettings()
    specs, num_jitters, names = evaluated_encoders(specs, jitters)
    folder = Path(folder)
    pairs = read_pairs_resolved(pairs_file, folder) if pairs_file is not None else None  # a bad file fails first
    split = _split(folder, test_folder, specs, num_jitters, names, settings, test_fraction, holdout_people, seed,
                   jobs, progress, multiple_faces=multiple_faces)
    gallery, probes, known = split.gallery, split.probes, split.known
    notes = list(split.notes)
    jitter_scales = _scale_jittered(gallery, probes, names, num_jitters)

    log.info("%s: gallery %d images, probes %d known + %d unknown", folder, len(gallery.labels), int(known.sum()),
             int((~known).sum()))
    evaluations = [_evaluate_encoder(n, s, j, gallery, probes, known, n_neighbors, seed, THRESHOLD)
                   for n, s, j in zip(names, specs, num_jitters)]
    for ev, scale in zip(evaluations, jitter_scales):
        ev.jitter_scale = scale
    notes += _measurability_notes(evaluations[0]) + _duplicate_notes(evaluations[0])
    comparisons, cmp_notes = _compare(evaluations, probes, known, n_boot, seed)
    notes += cmp_notes

    pairs_summary = None
    if pairs_file is not None:
        pairs_summary, pair_notes = _score_pairs_file(pairs, Path(pairs_file), specs, num_jitters, jitter_scales,
                                                      names, settings, jobs, progress, evaluations, seed)
        notes += pair_notes
    evaluated = [*gallery.paths.tolist(), *probes.paths.tolist()]
    if pairs is not None:
        evaluated += [str(p) for p in pairs.path1 + pairs.path2 if Path(p).is_file()]
    plain = [i for i, j in enumerate(num_jitters) if j == 1]  # a jittered twin was trained on the same photos
    overlaps, overlap_notes = training_overlaps([specs[i] for i in plain], [names[i] for i in plain], evaluated)
    notes += overlap_notes

    return EvaluationResult(
        folder=folder, test_folder=Path(test_folder) if test_folder is not None else None,
        pairs_file=Path(pairs_file) if pairs_file is not None else None, settings=settings,
        test_fraction=None if test_folder is not None else test_fraction, seed=seed, n_boot=n_boot,
        threshold=THRESHOLD, encoders=evaluations, gallery_paths=gallery.paths, gallery_labels=gallery.labels,
        probe_paths=probes.paths, probe_labels=probes.labels, known=known, holdout_people=split.holdout,
        comparisons=comparisons, image_reports=split.image_reports, dropped_images=split.dropped,
        pairs_summary=pairs_summary, notes=notes, comparison_far=_comparison_far(evaluations[0])[0],
        training_overlap=overlaps)
