"""``dlibplus finetune``: retrain dlib's network on a people folder."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..train_config import HEAD_NAMES as _TRAIN_HEADS
from ..train_config import FinetuneConfig as _FT
from .options import face_options, face_settings, user_errors


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the fine-tuned model into (model.dat, model.pt, head.pt, metadata.json).")
@click.option("--head", type=click.Choice(list(_TRAIN_HEADS)),
              default=_FT.head, show_default=True, help="Classification head and margin.")
@click.option("--margin", type=float, default=None,
              help="Head margin: radians for arcface, cosine units for cosface, integer m for sphereface.")
@click.option("--scale", type=float, default=None, help="Head logit scale s (arcface, cosface, combined).")
@click.option("--center-loss", type=float, default=_FT.center_loss, show_default=True, help="Weight of the center loss.")
@click.option("--triplet", type=float, default=_FT.triplet, show_default=True,
              help="Weight of the triplet loss (batch semi-hard mining).")
@click.option("--metric-loss", type=float, default=_FT.metric_loss, show_default=True,
              help="Weight of dlib's own pairwise hinge loss around distance 0.6 (loss_metric).")
@click.option("--epochs", type=click.IntRange(1), default=_FT.epochs, show_default=True)
@click.option("--batch-people", type=click.IntRange(2), default=_FT.people_per_batch, show_default=True, help="P in P x K batches.")
@click.option("--batch-images", type=click.IntRange(1), default=_FT.images_per_person, show_default=True, help="K in P x K batches.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default=_FT.optimizer, show_default=True)
@click.option("--lr", type=float, default=_FT.lr, show_default=True, help="Learning rate of the network.")
@click.option("--head-lr", type=float, default=_FT.head_lr, show_default=True, help="Learning rate of the head.")
@click.option("--weight-decay", type=float, default=_FT.weight_decay, show_default=True)
@click.option("--anchor", type=float, default=_FT.anchor, show_default=True,
              help="Pull towards dlib's weights each step (L2-SP; 0: off). Keeps the model good on people "
                   "it was not trained on; lower it to adapt more to yours.")
@click.option("--warmup-epochs", type=float, default=_FT.warmup_epochs, show_default=True)
@click.option("--grad-clip", type=float, default=_FT.grad_clip, show_default=True, help="Max gradient norm (0: off).")
@click.option("--freeze", type=click.IntRange(0, 7), default=_FT.freeze, show_default=True,
              help="Stages to freeze from the input (stem, layer1..layer5, fc).")
@click.option("--no-augment", is_flag=True, help="Turn off dlib's jitter and colour augmentation.")
@click.option("--val-fraction", type=float, default=_FT.val_fraction, show_default=True,
              help="Share of each person's photos kept for validation.")
@click.option("--val-folder", type=click.Path(file_okay=False, path_type=Path),
              help="Validate on this people folder instead of a split.")
@click.option("--patience", type=click.IntRange(0), default=_FT.patience, show_default=True,
              help="Stop after this many epochs without a better validation accuracy (0: never).")
@click.option("--seed", type=int, default=_FT.seed, show_default=True)
@click.option("--device", default=_FT.device, show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-amp", is_flag=True, help="No mixed precision on CUDA.")
@click.option("--target-far", type=float, default=_FT.target_far, show_default=True,
              help="False-accept rate at which distance 0.6 is calibrated.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/checkpoint.pt.")
@face_options
@user_errors
def finetune(folder, output, head, margin, scale, center_loss, triplet, metric_loss, epochs, batch_people, batch_images,
             optimizer, lr, head_lr, weight_decay, anchor, warmup_epochs, grad_clip, freeze, no_augment, val_fraction,
             val_folder, patience, seed, device, no_amp, target_far, resume,
             detector, upsample, landmarks, face_box, max_side, jobs):
    """Fine-tune dlib's face network on FOLDER/<person>/<image> and write it to OUTPUT.

    Afterwards use it anywhere with --encoder OUTPUT (train-knn, predict, encode, evaluate) or
    dlibplus.load_encoder(OUTPUT); OUTPUT/model.dat also loads in dlib and face_recognition.
    Under torchrun it trains on several GPUs (DDP).
    """
    from .. import train as tr
    from ..data import split_per_person

    head_options = {k: v for k, v in (("margin", margin), ("scale", scale)) if v is not None}
    if head == "sphereface" and "margin" in head_options:
        head_options["margin"] = int(head_options["margin"])
    try:
        config = tr.FinetuneConfig(head=head, head_options=head_options, center_loss=center_loss, triplet=triplet,
                                   metric_loss=metric_loss,
                                   epochs=epochs, people_per_batch=batch_people, images_per_person=batch_images,
                                   optimizer=optimizer, lr=lr, head_lr=head_lr, weight_decay=weight_decay, anchor=anchor,
                                   warmup_epochs=warmup_epochs, grad_clip=grad_clip, freeze=freeze,
                                   augment=not no_augment, val_fraction=val_fraction, patience=patience,
                                   seed=seed, device=device, amp=not no_amp, target_far=target_far)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None
    settings = face_settings(detector, upsample, landmarks, face_box, max_side)
    dist_info = tr.init_distributed(device)  # under torchrun: rank 0 aligns and caches, the others read
    is_main = dist_info.main
    with tr.main_process_first(dist_info):
        data, people = tr.load_chipset(folder, settings, jobs=jobs, progress=is_main)
        val_data = tr.load_chipset(val_folder, settings, jobs=jobs, progress=is_main)[0] if val_folder else None
    if is_main:
        for line in people.report_lines():
            click.echo(line, err=True)
    if val_data is not None:
        train_set, dropped = tr.drop_small_classes(data, 1)
        val_set, unknown = tr.restrict_to_classes(val_data, train_set.classes)
        for name in unknown:
            click.echo(f"warning: validation person {name} is not in the training folder and is left out", err=True)
    else:
        data, dropped = tr.drop_small_classes(data, 2)
        train_idx, val_idx = split_per_person(data.labels, val_fraction, seed)
        train_set, val_set = data.subset(train_idx), data.subset(val_idx)
    for name in dropped:
        click.echo(f"warning: {name} has fewer than 2 usable photos and is left out", err=True)
    try:
        result = tr.finetune(train_set, val_set, output, config, resume=resume,
                             echo=lambda m: click.echo(m, err=True),
                             extra_metadata={"face_settings": settings.to_dict(), "trained_on": str(folder)})
    except KeyboardInterrupt:
        sys.exit(130)
    if is_main:
        for line in tr.summary_lines(result, target_far):
            click.echo(line, err=True)

