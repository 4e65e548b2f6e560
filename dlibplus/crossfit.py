"""Cross-fitting (``--folds K``): every photo is judged once by a network that never saw it, then one
network learns from every photo.

With one split, a person with 2 photos trains on one and validates on the other: the network learns from
half the photos, and the choice between dlib, the interpolations and the fine-tuned weights rests on one
photo per person. Cross-fitting deals each person's photos into K folds (:func:`fold_of`). K runs each
train on the other folds and are judged on their own (:mod:`dlibplus.folds`: on the CPU side by side, one
process each); each candidate's judgements are pooled (:func:`pool`), so the selection and the calibration
see every photo. Then one run trains on every photo for the median of the folds' best epoch counts (no photo
is left to stop it), and is interpolated and scaled as the pooled judgement says: the folds measured how this
recipe behaves on photos it never saw, the last run applies it to all of them. K + 1 trainings: meant for small
folders.
The steps are :func:`cross_validate`, then :func:`retrained` (the default) or :func:`souped` (the mean of the
folds' best weights instead of the last run: a third less time, but fewer photos named on the benchmark suite,
BENCHMARKS.md; an experiment, ``FinetuneConfig.crossfit_network``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .calibration import TOLERANCE, OperatingPoint
from .echo import EchoPool
from .finetune_data import ChipSet, FinetuneData
from .finish import FinetuneResult, KeptFigures, conclude, head_for, load_scaled
from .folds import FoldRun, close, train_folds
from .selection import Assessment, Selection, interpolate, select
from .train import Run, TrainState, build, encoder_of, fit
from .train_config import SMALL_FOLDER, FinetuneConfig


def folds_for(config: FinetuneConfig, data: FinetuneData, *, resume: bool, distributed: bool) -> int:
    """The folds a run uses: ``config.folds`` when set; for 0 (auto), 2 when the median person of ``data``
    has at most :data:`SMALL_FOLDER` photos and nothing rules cross-fitting out (``--resume``, ``--val-folder``,
    ``torchrun``), else 1."""
    if config.folds:
        return config.folds
    if resume or distributed or data.val_folder is not None:
        return 1
    labels = np.concatenate([data.train.labels, data.val.labels])
    return 2 if np.median(np.bincount(labels)[np.unique(labels)]) <= SMALL_FOLDER else 1


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(n,) int64 fold of each photo, in ``range(folds)``.

    Each person's photos are shuffled (seeded) and dealt to consecutive folds from a random first one, so
    a person's photos land in ``min(n, folds)`` different folds, the folds stay near equal in size, and a
    run that leaves one fold out still trains on at least one photo of everyone with 2 or more.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), np.int64)
    for person in np.unique(labels):
        idx = np.flatnonzero(labels == person)
        out[idx[rng.permutation(len(idx))]] = (rng.integers(folds) + np.arange(len(idx))) % folds
    return out


def pool(judged: list[Assessment]) -> Assessment:
    """One candidate's judgements on the K folds, as one.

    The per-photo arrays are concatenated (every photo once, in fold order); the raw threshold is the
    median of the folds' (what the run on every photo is scaled with); the accept rates at 0.6 are pooled
    over the folds' pairs, each already read on photos its threshold was not fit on.
    """
    points = [a.point for a in judged]
    method = points[0].method
    threshold = float(np.median([p.threshold for p in points]))
    n_same, n_diff = sum(p.n_same_pairs for p in points), sum(p.n_different_pairs for p in points)
    used = [p.far_used for p in points if p.far_used is not None]
    point = OperatingPoint(
        method, threshold, 1.0 if method == "none" else TOLERANCE / threshold,
        sum(p.same_accepted * p.n_same_pairs for p in points) / max(n_same, 1),
        sum(p.different_accepted * p.n_different_pairs for p in points) / max(n_diff, 1),
        n_same, n_diff, sum(p.folds for p in points), points[0].target_far, max(used) if used else None,
        [p.threshold for p in points], "; ".join(sorted({p.note for p in points if p.note})))
    return Assessment(judged[0].alpha, point, *(np.concatenate([getattr(a, name) for a in judged])
                                                for name in ("correct", "rejected", "margin", "stranger_out")))


def pooled_metrics(rows: list[dict], weights: list[int]) -> dict[str, Any]:
    """Validation figures of the folds as one: each number the mean weighted by ``weights`` (the folds'
    photo counts), ``n_val`` their sum; figures a fold could not measure are left out of the mean."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        vals = [(row[key], w) for row, w in zip(rows, weights) if isinstance(row.get(key), (int, float))]
        if key in ("n_val", "n_validation_faces"):
            out[key] = int(sum(v for v, _ in vals))
        elif vals:
            out[key] = float(sum(v * w for v, w in vals) / max(sum(w for _, w in vals), 1))
    return out


def pooled_figures(figures: list[KeptFigures], weights: list[int], alpha: float) -> KeptFigures:
    """The folds' figures of the kept candidate as one; thresholds and scales take the median."""
    if alpha > 0:
        flip = {**pooled_metrics([f.calibration_flip for f in figures], weights),
                "scale": float(np.median([f.calibration_flip["scale"] for f in figures])),
                "fold_scales": [f.calibration_flip["scale"] for f in figures]}
        flip.pop("threshold", None)  # the folds' raw thresholds are in their own units
    else:
        flip = dict(figures[0].calibration_flip)
    open_set = {**pooled_metrics([f.open_set for f in figures], weights),
                "cosine_threshold": float(np.median([f.open_set["cosine_threshold"] for f in figures]))}
    return KeptFigures(pooled_metrics([f.val for f in figures], weights),
                       pooled_metrics([f.flip_val for f in figures], weights), flip, open_set)


@dataclass
class CrossFit:
    """What the folds measured: the choice between dlib, the interpolations and the fine-tuned weights, made
    on every photo once, and each fold's best weights.

    :ivar photos: every photo, the folds' training and validation photos together.
    :ivar fold_states: each fold's best backbone state dict (uncalibrated, not interpolated).
    :ivar best_epochs: each fold's best epoch, 1-based.
    :ivar histories: each fold's epochs (:attr:`TrainState.history`: loss, seconds and validation figures), so
        that a rule on when to stop can be replayed on a finished run.
    """

    photos: ChipSet
    selection: Selection
    figures: KeptFigures
    dlib_val: dict
    fold_states: list[dict]
    best_epochs: list[int]
    n_validated: int
    histories: list[list[dict]]
    echo: EchoPool | None = None  # the folds' augmented copies, for the run on every photo (:mod:`dlibplus.echo`)
    threads_per_fold: int = 0  # each fold's torch threads when they trained side by side; 0: one after the other
    seconds: float = 0.0  # wall time of the folds, training and judging

    @property
    def epochs(self) -> int:
        """The epochs a run on every photo trains for: the median of the folds' best."""
        return max(1, int(round(float(np.median(self.best_epochs)))))


def cross_validate(photos: ChipSet, config: FinetuneConfig, device: torch.device, dist_info, *, progress: bool,
                   say: Callable[[str], None]) -> CrossFit:
    """Deal ``photos`` into ``config.folds`` folds, fine-tune on each fold's complement (one after the other, or
    side by side: :func:`dlibplus.folds.train_folds`), judge and pool (:func:`pool`), select
    (:func:`dlibplus.selection.select`) and measure the kept candidate on each fold."""
    t_start = time.time()
    fold = fold_of(photos.labels, config.folds, config.seed)
    folds = train_folds(photos, fold, config, device, dist_info, progress=progress, say=say)
    try:
        outcomes = [f.outcome for f in folds]
        val_y = np.concatenate([o.val_labels for o in outcomes])
        dlib, *candidates = [pool([o.judged[i] for o in outcomes]) for i in range(len(outcomes[0].judged))]
        selection = select(candidates, dlib, val_y, seed=config.seed, force=config.keep == "finetuned")
        alpha = selection.chosen.alpha
        index = next(i for i, a in enumerate(outcomes[0].judged) if a.alpha == alpha)
        # each fold's network at the chosen alpha, scaled by its own calibration, on its photos
        figures = [f.kept(alpha, index) for f in folds]
    except BaseException:
        close(folds, at_once=True)
        raise
    close(folds)
    weights = [len(o.val_labels) for o in outcomes]
    here = isinstance(folds[-1], FoldRun)
    return CrossFit(photos, selection, pooled_figures(figures, weights, alpha),
                    pooled_metrics([o.dlib_val for o in outcomes], weights), [o.best_backbone for o in outcomes],
                    [o.best_epoch + 1 for o in outcomes], int(len(val_y)), [o.history for o in outcomes],
                    folds[-1].run.echo if here else None, 0 if here else folds[-1].threads, time.time() - t_start)


def retrained(cf: CrossFit, config: FinetuneConfig, device: torch.device, dist_info, *, progress: bool,
              say: Callable[[str], None]) -> tuple[Run, TrainState]:
    """The network handed back made by one more run on every photo, for :attr:`CrossFit.epochs` epochs (none
    when the folds keep dlib)."""
    run = build(cf.photos, config, device, dist_info, cf.echo)
    state = TrainState(best_backbone=copy.deepcopy(run.backbone.state_dict()))
    if cf.selection.chosen.alpha > 0:
        say(f"fine-tuning on every photo ({len(cf.photos)}) for {cf.epochs} epochs (the folds' median best)")
        state = fit(run, cf.photos, None, state, None, progress=progress, say=say, until=cf.epochs)
    else:
        say("the folds keep dlib: no run on every photo is needed")
    return run, state


def souped(cf: CrossFit, config: FinetuneConfig, device: torch.device, dist_info) -> tuple[Run, TrainState]:
    """The network handed back made as the mean of the folds' best weights (a uniform model soup, Wortsman et
    al. 2022: fine-tuned from the same weights and held near them by the anchor, their mean is a network that
    learnt from every photo), with no further training."""
    run = build(cf.photos, config, device, dist_info)
    return run, TrainState(best_backbone=soup(cf.fold_states), best_epoch=-1)


def soup(states: list[dict]) -> dict:
    """The mean of state dicts of one architecture (floating tensors; the others from the first)."""
    return {key: (torch.stack([s[key] for s in states]).mean(dim=0) if first.is_floating_point() else first.clone())
            for key, first in states[0].items()}


def finetune_crossfit(data: FinetuneData, output: Path, config: FinetuneConfig, device: torch.device, dist_info, *,
                      t_start: float, progress: bool = True, say: Callable[[str], None] = print,
                      extra: dict | None = None) -> FinetuneResult:
    """:func:`dlibplus.finetune.finetune` with ``config.folds`` >= 2: the photos of ``data.train`` and
    ``data.val`` are pooled and dealt into folds; ``config.crossfit_network`` makes the network handed back."""
    photos = data.pooled()
    cf = cross_validate(photos, config, device, dist_info, progress=progress, say=say)
    alpha, scale = cf.selection.chosen.alpha, cf.selection.chosen.point.scale
    if config.crossfit_network == "soup":
        run, state = souped(cf, config, device, dist_info)
    else:
        run, state = retrained(cf, config, device, dist_info, progress=progress, say=say)
    load_scaled(run.backbone, interpolate(run.base_state, state.best_backbone, alpha), scale)
    head, head_mean = head_for(run, alpha, scale, encoder_of(run.backbone, run.device).encode(photos.chips),
                               photos.labels, head_trained=config.crossfit_network == "retrain")
    trained = alpha > 0 and config.crossfit_network == "retrain"
    cross_fit = {"folds": len(cf.best_epochs), "best_epochs": cf.best_epochs, "epochs": cf.epochs if trained else 0,
                 "n_validated": cf.n_validated, "network": config.crossfit_network, "fold_histories": cf.histories,
                 "threads_per_fold": cf.threads_per_fold, "fold_seconds": round(cf.seconds, 1)}
    every = FinetuneData(photos, photos, data.people, data.dropped, data.val_strangers, data.folder)
    return conclude(run, state, every, output, cf.selection, cf.figures, head, head_mean, dlib_val=cf.dlib_val,
                    t_start=t_start, extra={**(extra or {}), "cross_fit": cross_fit})
