"""``dlibplus finetune``: retrain dlib's network on a people folder."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..train_config import CALIBRATIONS as _CALIBRATIONS
from ..train_config import CONFUSED_SHARE as _CONFUSED
from ..train_config import HEAD_NAMES as _TRAIN_HEADS
from ..train_config import REGIME_CHOICES as _REGIMES
from ..train_config import REGIMES as _REGIME_VALUES
from ..train_config import SMALL_FOLDER as _SMALL_FOLDER
from ..train_config import TRAIN_ONLY_CHOICES as _TRAIN_ONLY
from ..train_config import FinetuneConfig as _FT
from .options import check_output_folder, face_options, face_settings, multiple_faces_option, user_errors

# "[default: the regime's: anchor 3000, distill 0]" for each setting a regime decides
_BY_REGIME = {name: "[default: the regime's: " + ", ".join(f"{regime} {values[name]:g}"
                                                          for regime, values in _REGIME_VALUES.items()) + "]"
              for name in _REGIME_VALUES["anchor"]}


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the fine-tuned model into (model.dat, model.pt, head.pt, classes.json, "
                   "metadata.json; checkpoint.pt while it runs).")
@click.option("--head", type=click.Choice(list(_TRAIN_HEADS)),
              default=_FT.head, show_default=True,
              help="Classification head trained with the network: arcface, cosface or sphereface (angular-margin "
                   "heads), softmax (no margin) or combined (all three margins).")
@click.option("--margin", type=float, default=None,
              help="Head margin [default: the head's own]: radians for arcface, cosine units for cosface, a "
                   "whole number m for sphereface.")
@click.option("--scale", type=float, default=None,
              help="Head logit scale s (arcface, cosface, combined) [default: the head's own].")
@click.option("--center-loss", type=click.FloatRange(0), default=_FT.center_loss, show_default=True,
              help="Weight of the center loss, which pulls each photo towards its person's centre (0: off).")
@click.option("--triplet", type=click.FloatRange(0), default=None,
              help=f"Weight of the triplet loss (batch semi-hard mining) {_BY_REGIME['triplet']}.")
@click.option("--triplet-margin", type=click.FloatRange(0), default=None,
              help="Margin of the triplet loss, in dlib's distance units (a same-person pair should be this much "
                   f"closer than a different-person one) {_BY_REGIME['triplet_margin']}.")
@click.option("--metric-loss", type=click.FloatRange(0), default=_FT.metric_loss, show_default=True,
              help="Weight of dlib's own pairwise hinge loss around distance 0.6 (loss_metric).")
@click.option("--epochs", type=click.IntRange(1), default=_FT.epochs, show_default=True,
              help="Passes over the training photos.")
@click.option("--batch-people", type=click.IntRange(2), default=_FT.people_per_batch, show_default=True,
              help="People per batch (P of P x K batches).")
@click.option("--batch-images", type=click.IntRange(1), default=_FT.images_per_person, show_default=True,
              help="Photos of each person per batch (K of P x K batches).")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default=_FT.optimizer, show_default=True,
              help="AdamW, or SGD with Nesterov momentum 0.9.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=_FT.lr, show_default=True,
              help="Peak learning rate of the network.")
@click.option("--head-lr", type=click.FloatRange(0, min_open=True), default=_FT.head_lr, show_default=True,
              help="Peak learning rate of the head.")
@click.option("--weight-decay", type=click.FloatRange(0), default=_FT.weight_decay, show_default=True,
              help="Decoupled weight decay of the network (the head has none).")
@click.option("--regime", type=click.Choice(list(_REGIMES)), default=_FT.regime, show_default=True,
              help="How far the network may move from dlib. anchor: pulled towards dlib's weights, its first 3 "
                   "stages kept, for people dlib already tells apart; distill: no pull, dlib's descriptors of mixed "
                   "faces kept instead, a heavier triplet loss and every stage trained, for people dlib confuses; "
                   "auto: distill when dlib puts more than "
                   f"{_CONFUSED:.0%} of your different-person pairs within 0.6. Sets the defaults of --anchor, "
                   "--distill, --distill-share, --triplet, --triplet-margin and --freeze; those you give win.")
@click.option("--anchor", type=click.FloatRange(0), default=None,
              help="Pull towards dlib's weights each step (L2-SP; 0: off). Keeps the model good on people "
                   f"it was not trained on; lower it to adapt more to yours {_BY_REGIME['anchor']}.")
@click.option("--distill", type=click.FloatRange(0), default=None,
              help="Weight of a loss that keeps dlib's descriptors of faces nobody trained on (pixel mixes of two "
                   "of your people; 0: off). With --anchor 0, a function-space alternative to the anchor "
                   f"{_BY_REGIME['distill']}.")
@click.option("--distill-share", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Share of each batch's faces mixed for --distill (less: cheaper steps) "
                   f"{_BY_REGIME['distill_share']}.")
@click.option("--warmup-epochs", type=click.FloatRange(0), default=_FT.warmup_epochs, show_default=True,
              help="Epochs of linear learning-rate warm-up before the cosine decay.")
@click.option("--grad-clip", type=click.FloatRange(0), default=_FT.grad_clip, show_default=True,
              help="Clip the gradient to this norm (0: off).")
@click.option("--freeze", type=click.IntRange(0, 7), default=None,
              help="Stages kept frozen, counted from the input: stem, layer1 ... layer5, fc (0: train all) "
                   f"{_BY_REGIME['freeze']}.")
@click.option("--head-epochs", type=click.IntRange(0), default=_FT.head_epochs, show_default=True,
              help="Train the head alone, the network frozen, for this many of the epochs first (LP-FT).")
@click.option("--train-only", type=click.Choice(list(_TRAIN_ONLY)), default=_FT.train_only, show_default=True,
              help="all: every unfrozen parameter of the network trains; affine: only the per-channel scale and "
                   "shift of its affine layers (give it a higher --lr and a lower --anchor).")
@click.option("--augment-on", type=click.Choice(["auto", "host", "device"]), default="auto", show_default=True,
              help="Where the augmentation runs: host (dlib's exact jitter in numpy, in a background thread), "
                   "device (the same transform as batched tensor ops on the GPU), auto (device on CUDA).")
@click.option("--no-augment", is_flag=True, help="Turn off dlib's jitter and colour augmentation.")
@click.option("--echo", type=click.IntRange(0), default=_FT.echo, show_default=True,
              help="Augmented copies of each photo, each kept as the frozen stages (--freeze) see it and used again "
                   "in later epochs (0: a fresh jitter at every use). For slow CPUs: --echo 20 took 0.72-0.73x the "
                   "time on two 300-photo folders; on the benchmark suite it named about 0.35 point fewer test "
                   "photos at each of two training seeds (BENCHMARKS.md).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=_FT.val_fraction,
              show_default=True,
              help="Share of each person's photos kept for validation.")
@click.option("--val-folder", type=click.Path(file_okay=False, path_type=Path),
              help="Validate on this people folder instead of a split.")
@click.option("--folds", type=click.IntRange(0), default=_FT.folds, show_default=True,
              help=f"0 (auto): 2 when your people have {_SMALL_FOLDER} photos or fewer (median), else 1. 1: train "
                   "once, validate on a split (--val-fraction). K >= 2: cross-fit for small folders: K runs, each "
                   "validated on a K-th of every person's photos, choose and calibrate on all the photos, then one "
                   "run learns from every photo (K + 1 trainings).")
@click.option("--fold-workers", type=click.IntRange(0), default=_FT.fold_workers, show_default=True,
              help="On the CPU, cross-fitting's folds train side by side, one process each with the torch threads "
                   "shared out, when there are at most this many folds (0: as many as torch's threads; 1: one "
                   "after the other). On 2 cores two 300-photo folders took 0.73-0.92x the time side by side "
                   "(each fold computes what a one-thread run computes, so the kept epochs differ from one after the "
                   "other's as with another thread count).")
@click.option("--patience", type=click.IntRange(0), default=_FT.patience, show_default=True,
              help="Stop after this many epochs without a better validation accuracy (0: never).")
@click.option("--seed", type=int, default=_FT.seed, show_default=True,
              help="Seed of the split, the batches, the augmentation and the calibration folds.")
@click.option("--device", default=_FT.device, show_default=True,
              help="Where to train: auto (CUDA when there is one, else CPU), cpu, cuda or cuda:N.")
@click.option("--no-amp", is_flag=True, help="Train in float32 on CUDA (no mixed precision).")
@click.option("--target-far", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Calibrate distance 0.6 at this false-accept rate on your photos (stricter, for open-set "
                   "use) instead of the default: the point of best balanced accuracy, as 0.6 is for dlib.")
@click.option("--calibration", type=click.Choice([c.replace("_", "-") for c in _CALIBRATIONS]),
              default=_FT.calibration.replace("_", "-"), show_default=True,
              help="Where 0.6 is put on your validation pairs: best balanced accuracy, or equal error (as many "
                   "same-person pairs rejected as different-person pairs let through). Over the benchmark suite "
                   "equal error put 0.6 within each set's own equal-error rate + 1 point more often (6 of 15 splits "
                   "against 4) but named 0.1 point fewer known photos and called fewer strangers \"unknown\" "
                   "(BENCHMARKS.md).")
@click.option("--keep", type=click.Choice(["auto", "finetuned"]), default="auto", show_default=True,
              help="auto: hand back whichever of dlib, an interpolation between dlib and the fine-tuned weights, "
                   "or the fine-tuned weights names your validation photos best, and dlib unless another beats "
                   "it with confidence. finetuned: the fine-tuned weights (calibrated) whatever they measure.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from OUTPUT/checkpoint.pt (give the same options).")
@click.option("--overwrite", is_flag=True, help="Replace a finished model already in OUTPUT (refused otherwise).")
@multiple_faces_option()
@face_options
@user_errors
def finetune(folder, output, head, margin, scale, center_loss, triplet, triplet_margin, metric_loss, epochs,
             batch_people, batch_images, optimizer, lr, head_lr, weight_decay, regime, anchor, distill, distill_share,
             warmup_epochs, grad_clip, freeze, head_epochs, train_only, augment_on, no_augment, echo,
             val_fraction, val_folder, folds, fold_workers, patience, seed, device, no_amp, target_far, calibration,
             keep, resume, overwrite, multiple_faces, detector, upsample, landmarks, face_box, max_side, jobs):
    """Fine-tune dlib's face network on FOLDER/<person>/<image> and write it to OUTPUT.

    Afterwards use it anywhere with --encoder OUTPUT (train-knn, predict, encode, evaluate) or
    dlibplus.load_encoder(OUTPUT); OUTPUT/model.dat also loads in dlib and face_recognition.
    Under torchrun it trains on several GPUs (DDP).
    """
    from .. import finetune as ft
    from ..distributed import init_distributed, resolve_device
    from ..errors import DlibplusError
    from ..finetune_data import prepare_finetune_data

    head_options = {k: v for k, v in (("margin", margin), ("scale", scale)) if v is not None}
    if head == "sphereface" and "margin" in head_options:
        if head_options["margin"] != int(head_options["margin"]):
            raise click.BadParameter("sphereface's margin is a whole number m", param_hint="--margin")
        head_options["margin"] = int(head_options["margin"])
    try:
        config = _FT(
            head=head, head_options=head_options, center_loss=center_loss, triplet=triplet,
            triplet_margin=triplet_margin, metric_loss=metric_loss, epochs=epochs, people_per_batch=batch_people,
            images_per_person=batch_images, optimizer=optimizer, lr=lr,
            head_lr=head_lr, weight_decay=weight_decay, regime=regime, anchor=anchor, distill=distill,
            distill_share=distill_share, warmup_epochs=warmup_epochs,
            grad_clip=grad_clip, freeze=freeze, head_epochs=head_epochs, train_only=train_only,
            augment=not no_augment, augment_on=augment_on, echo=echo, val_fraction=val_fraction, folds=folds,
            fold_workers=fold_workers, patience=patience, seed=seed, device=device, amp=not no_amp,
            target_far=target_far, calibration=calibration.replace("-", "_"), keep=keep)
        config.check_head()
        ft.check_folds(folds, resume=resume, val_folder=val_folder)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None
    try:
        resolve_device(device)  # a wrong --device fails here, before the photos are aligned
    except DlibplusError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint="--device") from None
    ft.check_output(output, resume=resume, overwrite=overwrite)
    check_output_folder(output, "--output")
    settings = face_settings(detector, upsample, landmarks, face_box, max_side)
    dist_info = init_distributed(device)
    data = prepare_finetune_data(folder, settings, val_folder=val_folder, val_fraction=val_fraction, seed=seed,
                                 jobs=jobs, progress=dist_info.main, dist_info=dist_info,
                                 multiple_faces=multiple_faces)
    if dist_info.main:
        for line in data.report_lines():
            click.echo(line, err=True)
    try:
        result = ft.finetune(data, output, config, resume=resume, overwrite=overwrite,
                             echo=lambda m: click.echo(m, err=True),
                             extra_metadata={"face_settings": settings.to_dict(), "trained_on": str(folder)})
    except KeyboardInterrupt:
        sys.exit(130)
    if dist_info.main:
        from ..finish import summary_lines

        for line in summary_lines(result):
            click.echo(line, err=True)
