"""The end of a fine-tuning run: choose the network, calibrate it, write the folder, summarise.

:func:`finish` judges dlib, interpolations and the fine-tuned weights on the validation photos
(:mod:`dlibplus.selection`), scales the kept network so that 0.6 sits at its calibrated point
(:mod:`dlibplus.calibration`), fits the head's open-set threshold and writes the folder that
:mod:`dlibplus.model_folder` describes; :func:`summary_lines` is the end-of-run table.
"""
from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import model_folder
from ._version import __version__
from .calibration import head_open_set_threshold, operating_point, probe_pairs, validation_metrics
from .encoders import FEW_PHOTOS_FOR_JITTER
from .fileio import atomic_path, file_sha256
from .finetune_data import ChipSet, FinetuneData
from .selection import ALPHAS, Assessment, Selection, assess, interpolate, select
from .train import Run, TrainState, encoder_of, validation_embeddings


@dataclass
class FinetuneResult:
    """What a run measured and wrote."""

    output: Path
    history: list[dict]
    dlib_val: dict
    finetuned_val: dict
    finetuned_flip_val: dict
    selection: Selection
    calibration: dict
    best_epoch: int
    wall_seconds: float
    cross_fit: dict = field(default_factory=dict)  # folds, their best epochs, the last run's epochs (folds >= 2)
    median_photos: float = 0.0  # the median person's photos (training and validation)

    @property
    def better(self) -> bool:
        """Whether the written model beats dlib on the user's path with confidence (else it is dlib)."""
        return self.selection.beats_dlib


def judge(run: Run, tuned_backbone: dict, train: ChipSet, val: ChipSet) -> list[Assessment]:
    """dlib (first), then each interpolation towards ``tuned_backbone`` and the fine-tuned weights, each on
    the user's path over the validation photos (:func:`dlibplus.selection.assess`)."""
    config = run.config
    model = copy.deepcopy(run.backbone)
    judged = []
    for alpha in (0.0, *ALPHAS):
        model.load_state_dict(interpolate(run.base_state, tuned_backbone, alpha))
        encoder = encoder_of(model, run.device)
        judged.append(assess(validation_embeddings(run, encoder, train.chips), train.labels,
                             validation_embeddings(run, encoder, val.chips), val.labels,
                             alpha=alpha, calibrate=alpha > 0, target_far=config.target_far, seed=config.seed,
                             grown=config.judge_gallery == "grown", rule=config.calibration))
    return judged


def choose_network(run: Run, best_backbone: dict, train: ChipSet, val: ChipSet) -> tuple[Selection, dict]:
    """Judge dlib, the interpolations and the fine-tuned weights on the validation photos; return the
    selection and the chosen state dict (uncalibrated)."""
    dlib, *candidates = judge(run, best_backbone, train, val)
    selection = select(candidates, dlib, val.labels, seed=run.config.seed, force=run.config.keep == "finetuned")
    return selection, interpolate(run.base_state, best_backbone, selection.chosen.alpha)


def load_scaled(backbone: nn.Module, state: dict, scale: float) -> None:
    """Load ``state`` into ``backbone`` and multiply its output by ``scale`` (the calibration: distances
    scale with the last linear layer)."""
    backbone.load_state_dict(state)
    with torch.no_grad():
        backbone.fc.weight.mul_(scale)


@dataclass
class KeptFigures:
    """The kept network measured on validation photos, after its calibration.

    :ivar val: :func:`~dlibplus.calibration.validation_metrics` of the network; ``flip_val`` of its +flip.
    :ivar calibration_flip: the +flip output's calibration (``scale`` relative to the calibrated output).
    :ivar open_set: the head's open-set threshold (:func:`~dlibplus.calibration.head_open_set_threshold`).
    """

    val: dict
    flip_val: dict
    calibration_flip: dict
    open_set: dict


def kept_figures(run: Run, alpha: float, scale: float, train: ChipSet, val: ChipSet
                 ) -> tuple[KeptFigures, nn.Module, np.ndarray]:
    """Measure ``run.backbone`` (loaded and calibrated) on ``val``; also return the head the folder gets and
    the mean it subtracts."""
    config = run.config
    encoder, flip = encoder_of(run.backbone, run.device), encoder_of(run.backbone, run.device, flip=True)
    train_emb, val_emb = (validation_embeddings(run, encoder, chips) for chips in (train.chips, val.chips))
    train_flip, val_flip = flip.encode(train.chips), flip.encode(val.chips)
    far = config.target_far or 1e-3
    if alpha > 0:  # DIR+flip averages with the mirror image, which shrinks distances: calibrate it
        flip_point, _ = operating_point(probe_pairs(train_flip, train.labels, val_flip, val.labels),
                                        target_far=config.target_far, rule=config.calibration, seed=config.seed)
        calibration_flip = {**flip_point.to_dict(), "scale": flip_point.scale}
    else:  # the folder is dlib: DIR+flip is dlib+flip, which is not calibrated either
        calibration_flip = {"scale": 1.0, "note": "the model is dlib's: +flip is left as dlib+flip"}
    head, head_mean = head_for(run, alpha, scale, train_emb, train.labels)
    figures = KeptFigures(validation_metrics(train_emb, train.labels, val_emb, val.labels, far),
                          validation_metrics(train_flip, train.labels, val_flip, val.labels, far),
                          calibration_flip, head_open_set_threshold(head, val_emb - head_mean, val.labels, far))
    return figures, head, head_mean


def finish(run: Run, state: TrainState, data: FinetuneData, output: Path, *, dlib_val: dict, t_start: float,
           extra: dict[str, Any]) -> FinetuneResult:
    """Choose and calibrate the network on the validation split, fit the head's open-set threshold, write
    the folder."""
    selection, chosen_state = choose_network(run, state.best_backbone, data.train, data.val)
    scale = selection.chosen.point.scale
    load_scaled(run.backbone, chosen_state, scale)
    figures, head, head_mean = kept_figures(run, selection.chosen.alpha, scale, data.train, data.val)
    return conclude(run, state, data, output, selection, figures, head, head_mean, dlib_val=dlib_val,
                    t_start=t_start, extra=extra)


def conclude(run: Run, state: TrainState, data: FinetuneData, output: Path, selection: Selection,
             figures: KeptFigures, head: nn.Module, head_mean: np.ndarray, *, dlib_val: dict, t_start: float,
             extra: dict[str, Any]) -> FinetuneResult:
    """Write the folder of ``run.backbone`` (already chosen and calibrated) and return the run's result."""
    calibration = {**selection.chosen.point.to_dict(), "scale": selection.chosen.point.scale}
    result = FinetuneResult(output, state.history, dlib_val, figures.val, figures.flip_val, selection,
                            calibration, state.best_epoch + 1, time.time() - t_start, extra.get("cross_fit", {}),
                            data.median_photos())
    if run.dist.main:
        meta = _metadata(run, state, data, result, figures.calibration_flip, figures.open_set, extra)
        write_outputs(output, run.backbone, head, head_mean, data.train.classes, meta)
    return result


def head_for(run: Run, alpha: float, scale: float, train_emb: np.ndarray, train_y: np.ndarray, *,
             head_trained: bool = True) -> tuple[nn.Module, np.ndarray]:
    """The head and the mean it subtracts, in the written network's units.

    For the fine-tuned weights, the trained head (it saw embeddings minus dlib's mean; cosines do not
    change when both are scaled by the calibration). For dlib, an interpolation, or weights ``run`` did not
    train (``head_trained`` false: cross-fitting's soup), whose embeddings that head never saw, a head of the
    same kind imprinted with each person's mean embedding.
    """
    from .heads import create_head

    if alpha == 1.0 and head_trained:
        return run.head, run.trainee.embedding_mean.cpu().numpy().astype(np.float64) * scale
    mean = train_emb.mean(axis=0)
    head = create_head(run.config.head, len(np.unique(train_y)), **run.config.head_options)
    head.imprint(torch.from_numpy(train_emb - mean).float(), torch.from_numpy(train_y)).to(run.device)
    return head, mean


def _metadata(run: Run, state: TrainState, data: FinetuneData, result: FinetuneResult, calibration_flip: dict,
              open_set: dict, extra: dict) -> model_folder.FinetunedMetadata:
    from .models import FACE_RECOGNITION_MODEL, model_path

    base = model_path(FACE_RECOGNITION_MODEL)
    train, val = data.train, data.val
    return model_folder.FinetunedMetadata(
        base_model={"file": base.name, "sha256": file_sha256(base)}, config=run.config.to_dict(),
        classes=train.classes, face_settings=extra.get("face_settings", {}), calibration=result.calibration,
        calibration_flip=calibration_flip, head_open_set=open_set, selection=result.selection.to_dict(),
        validation={"dlib": result.dlib_val, "finetuned": result.finetuned_val,
                    "finetuned_flip": result.finetuned_flip_val, "better_than_dlib": result.better},
        data={"train_fingerprint": train.fingerprint(), "n_train": len(train), "n_val": len(val),
              "files_sha256": data.file_hashes(),
              # which face a photo with several gave (--multiple-faces); a library caller may pass no PeopleSet
              "multiple_faces": getattr(data.people, "multiple_faces", "skip"),
              "largest_of_several_faces": list(getattr(data.people, "largest_of_several", []))},
        cross_fit=extra.get("cross_fit", {}), regime=extra.get("regime", {}), frozen_stages=run.frozen,
        history=state.history,
        best_epoch=state.best_epoch + 1,
        epochs_run=len(state.history), trained_on=extra.get("trained_on", data.folder),
        wall_seconds=result.wall_seconds, device=str(run.device), world_size=run.dist.world_size,
        versions=_versions())


def _versions() -> dict[str, str]:
    import dlib

    return {"dlibplus": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "dlib": getattr(dlib, "__version__", "?"), "python": platform.python_version()}


def write_outputs(output: Path, backbone, head, head_mean: np.ndarray, classes: list[str],
                  meta: model_folder.FinetunedMetadata) -> None:
    """model.dat (dlib loads it), model.pt, head.pt, classes.json, metadata.json — each atomically."""
    from . import dlibnet
    from .fileio import write_json

    output.mkdir(parents=True, exist_ok=True)
    cpu_backbone = copy.deepcopy(backbone).float().cpu().to(memory_format=torch.contiguous_format)
    dlibnet.save_dat(cpu_backbone, output / model_folder.MODEL_DAT)
    with atomic_path(output / model_folder.MODEL_PT) as tmp:
        torch.save(cpu_backbone.state_dict(), tmp)
    with atomic_path(output / model_folder.HEAD_PT) as tmp:
        torch.save({"name": meta.config["head"], "options": meta.config["head_options"],
                    "state": {k: v.cpu() for k, v in head.state_dict().items()},
                    "embedding_mean": torch.from_numpy(np.asarray(head_mean)).float()}, tmp)
    write_json(output / model_folder.CLASSES, classes)
    meta.model_dat_sha256 = file_sha256(output / model_folder.MODEL_DAT)
    model_folder.write_metadata(output, meta)


def summary_lines(result: FinetuneResult) -> list[str]:
    """The end-of-run table: per-epoch history, the candidates on the user's path, the decision."""
    header = f"{'epoch':>5} {'loss':>8} {'train acc':>9} {'val 1-NN':>8} {'val AUC':>8} {'s':>6}"
    lines = [header] if result.history else []  # a soup of the folds trained no epoch of its own
    for h in result.history:  # cross-fitting's run on every photo has no validation: its columns read nan
        lines.append(f"{h['epoch']:>5} {h['loss']:>8.4f} {h['train_acc']:>9.3f} "
                     f"{h.get('identification_1nn', float('nan')):>8.3f} {h.get('auc', float('nan')):>8.4f} "
                     f"{h['seconds']:>6.1f}")
    if result.cross_fit:
        cf = result.cross_fit
        if result.selection.chosen.alpha == 0:
            tail = "the folds kept dlib, so no network was made from every photo"
        elif cf.get("network") == "soup":
            tail = "the network handed back is the mean of the folds' best weights (no run on every photo)"
        else:
            tail = f"the network above trained on every photo for {cf['epochs']} epochs"
        lines.append(f"cross-fitted over {cf['folds']} folds (best epochs {cf['best_epochs']}): every photo was "
                     f"validated once; {tail}")
    sel = result.selection
    lines += ["", "on the validation photos (train-knn + predict at tolerance 0.6; rates at 0.6 cross-validated):",
              f"{'network':<18}{'named right':>12}{'unknown':>9}{'same pairs ok':>15}{'diff. pairs in':>16}"
              f"{'strangers out':>15}"]
    for c in [sel.dlib] + sel.candidates:
        mark = " <- kept" if c is sel.chosen else ""
        lines.append(f"{c.name:<18}{c.accuracy:>12.3f}{c.unknown_rate:>9.3f}{c.point.same_accepted:>15.3f}"
                     f"{c.point.different_accepted:>16.3f}{c.strangers_out:>15.3f}{mark}")
    lines.append("strangers out: validation photos with no training photo of anyone else within 0.6, so that with "
                 "their person left out of train-knn they are called \"unknown\"")
    flip = result.finetuned_flip_val.get("identification_1nn")
    plain = result.finetuned_val.get("identification_1nn")
    if flip is not None and plain is not None:
        lines.append(f"validation 1-NN of the kept network: {plain:.3f}, with +flip {flip:.3f}")
    if sel.chosen.alpha > 0:
        made = ("the folds' mean" if result.cross_fit.get("network") == "soup"
                else f"best epoch {result.best_epoch}")
        lines.append(f"kept: {sel.chosen.name} ({made}) — {sel.reason}. "
                     f"Use it with --encoder {result.output}")
        if not sel.beats_dlib:
            lines.append(f"WARNING: it does not beat dlib with confidence on your validation photos "
                         f"(gain {sel.gain:+.1%}, lower bound {sel.gain_low:+.1%}).")
        elif not sel.forced:
            # the winner's curse: replayed over the benchmark suite's rows, the kept candidates' validated
            # gain was many times what their test photos showed (BENCHMARKS.md, the selection replay)
            lines.append(f"The gain above is read on the validation photos that chose this network, so photos it "
                         f"never saw will show less of it, often none. To check: dlibplus evaluate NEW_PHOTOS/ "
                         f"--encoder dlib --encoder {result.output}")
        if 0 < result.median_photos <= FEW_PHOTOS_FOR_JITTER:
            lines.append(f"With {result.median_photos:g} photos for the median person, dlib's own network with "
                         "jitter (train-knn --encoder torch --jitters 10) named 1.2 points more faces than "
                         "fine-tuning on average over the labelled sets, and jitter on this network 0.5 more "
                         "(README). Compare them on new photos: dlibplus evaluate NEW_PHOTOS/ "
                         f"--encoder torch --encoder {result.output} --jitters 10")
    else:
        lines.append(f"NOT better than dlib: {sel.reason}. {result.output} holds dlib's own network, so "
                     "--encoder with it behaves exactly as dlib; add photos, try another head, or try dlib's "
                     "jitter: train-knn --jitters 10 named more faces than fine-tuning with 2-4 photos a person, "
                     "on average over the labelled sets (README).")
    return lines
