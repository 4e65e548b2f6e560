"""``dlibplus finetune`` as one library call: check the output folder, set up the device, train, choose,
calibrate, write.

The top of the training layer: :func:`finetune` runs :mod:`dlibplus.train` (:func:`~dlibplus.train.build`,
:func:`~dlibplus.train.fit`) and then :func:`dlibplus.finish.finish`, or, with ``folds`` >= 2,
:func:`dlibplus.crossfit.finetune_crossfit`; each of those imports only what lies below it.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch

from . import model_folder
from .crossfit import finetune_crossfit, folds_for
from .distributed import barrier, init_distributed, training_device
from .errors import DataFolderError, DlibplusError
from .finetune_data import ChipSet, FinetuneData
from .finish import FinetuneResult, finish
from .regime import RegimeChoice, choose_regime, sample_photos
from .train import TrainState, build, fit, seed_run, validate
from .train_config import SMALL_FOLDER, FinetuneConfig


def check_output(output: Path, *, resume: bool, overwrite: bool = False) -> None:
    """Refuse, before any work, to start over a checkpoint without ``--resume`` or over a finished model.

    :raises DataFolderError: naming the file and what to do.
    """
    ckpt, dat = output / model_folder.CHECKPOINT, output / model_folder.MODEL_DAT
    if output.exists() and not output.is_dir():
        raise DataFolderError(f"--output {output} is a file, not a folder")
    if resume:
        if not ckpt.is_file():
            raise DataFolderError(f"--resume: no checkpoint at {ckpt}")
        return
    if ckpt.is_file():
        raise DataFolderError(f"{output} holds the checkpoint of an unfinished run ({ckpt}): continue it with "
                              "--resume, or choose another --output folder")
    if dat.is_file() and not overwrite:
        raise DataFolderError(f"{output} already holds a fine-tuned model ({dat}); choose another --output "
                              "folder or pass --overwrite")


def check_folds(folds: int, *, resume: bool, val_folder: str | Path | None) -> None:
    """Refuse, before any work, cross-fitting (``folds`` >= 2) where it cannot run.

    :raises ValueError: naming the options that do not go together.
    """
    if folds > 1 and val_folder is not None:
        raise ValueError("--folds deals your own photos into folds; it cannot be combined with --val-folder")
    if folds > 1 and resume:
        raise ValueError("--resume is not available with --folds: a cross-fitted run writes no checkpoint")


def dlib_regime(train: ChipSet, device: torch.device) -> RegimeChoice:
    """The regime ``auto`` resolves to, from dlib's descriptors (the exact replica, on ``device``) of the
    training photos (:func:`dlibplus.regime.sample_photos` of them)."""
    from .encoders import TorchEncoder

    rows = sample_photos(train.labels)
    embeddings = TorchEncoder(device=str(device)).encode(train.chips[rows])  # dlib's own weights
    return choose_regime(embeddings, train.labels[rows])


def finetune(data: FinetuneData, output, config: FinetuneConfig = FinetuneConfig(), *, resume: bool = False,
             overwrite: bool = False, progress: bool = True, echo: Callable[[str], None] = print,
             extra_metadata: dict | None = None) -> FinetuneResult:
    """Fine-tune dlib's network on ``data.train``, choose and calibrate on ``data.val``, write ``output``.

    ``data`` comes from :func:`dlibplus.finetune_data.prepare_finetune_data`. Raises KeyboardInterrupt
    through after saying where the last checkpoint is; the checkpoint is removed once the folder is written.
    """
    t_start = time.time()
    output = Path(output)
    check_folds(config.folds, resume=resume, val_folder=data.val_folder)
    check_output(output, resume=resume, overwrite=overwrite)
    dist_info = init_distributed(config.device)
    device = training_device(config.device, dist_info)
    say = echo if dist_info.main else (lambda *_: None)
    seed_run(config, device)
    if dist_info.active and config.head_epochs:
        raise DlibplusError("head_epochs (LP-FT) is not supported under torchrun: DDP needs the same trainable "
                            "parameters in every epoch")
    if config.folds > 1 and dist_info.active:
        raise DlibplusError("--folds (cross-fitting, for small folders) is not supported under torchrun")
    if config.regime == "auto":  # resolved before anything trains: every fold and a resumed run agree
        choice = dlib_regime(data.train, device)
        config = config.with_regime(choice.regime)
        say(choice.describe())
        regime = choice.to_dict()
    else:
        regime = {"regime": config.regime, "chosen_by": "option"}
    extra_metadata = {**(extra_metadata or {}), "regime": regime}
    if not config.folds:  # auto: recorded as what it resolved to
        config = dataclasses.replace(config, folds=folds_for(config, data, resume=resume,
                                                            distributed=dist_info.active))
        if config.folds > 1:
            say(f"cross-fitting over {config.folds} folds: your people have {SMALL_FOLDER} photos or fewer (median); "
                "--folds 1 trains once on a split instead")
    if config.folds > 1:
        return finetune_crossfit(data, output, config, device, dist_info, t_start=t_start, progress=progress,
                                 say=say, extra=extra_metadata)
    train, val = data.train, data.val
    run = build(train, config, device, dist_info)
    dlib_val = validate(run, train, val)
    checkpoint = output / model_folder.CHECKPOINT
    state = TrainState(best_metrics=dlib_val, best_backbone=copy.deepcopy(run.backbone.state_dict()))
    if resume:
        state = TrainState.load(checkpoint, run)
        say(f"resuming after epoch {state.epoch + 1} of {config.epochs}")
    say(f"fine-tuning on {len(train)} photos of {len(train.classes)} people (validation: {len(val)}), "
        f"head {config.head}, device {device}" + (f" x{dist_info.world_size}" if dist_info.active else "")
        + f", frozen: {', '.join(run.frozen) or 'nothing'}"
        + (", only the affine layers train" if config.train_only == "affine" else "")
        + (f", the head alone for the first {config.head_epochs} epochs" if config.head_epochs else ""))
    state = fit(run, train, val, state, checkpoint, progress=progress, say=say)
    run.backbone.load_state_dict(state.best_backbone)
    result = finish(run, state, data, output, dlib_val=dlib_val, t_start=t_start, extra=extra_metadata)
    barrier(dist_info)
    if dist_info.main:
        checkpoint.unlink(missing_ok=True)  # the folder is complete: the 90 MB checkpoint has no more use
    return result


