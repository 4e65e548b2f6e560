"""Fine-tune dlib's face ResNet on a people folder (``dlibplus finetune``).

The run: align every photo once with dlib's exact chip pipeline (cached); split each person's photos
into train and validation; start from dlib's weights with a margin head initialised from the mean
embedding of each person; train with P×K batches, dlib's jitter and colour augmentation, warm-up then
cosine decay, gradient clipping; keep the epoch with the best validation identification accuracy;
calibrate the output scale so that face_recognition's tolerance 0.6 sits at the target false-accept
rate; write the network as a ``.dat`` dlib loads and as torch weights, with the head and metadata.

Runs on CUDA when present, on CPU otherwise, and on several GPUs under ``torchrun`` (DDP: each process
takes a slice of every global batch and augments it with the same per-sample random draws, so N
processes compute what one does).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._version import __version__
from .encoders import FINETUNED_METADATA, FINETUNED_MODEL_NAME, mirror
from .errors import DataFolderError, DlibplusError
from .fileio import atomic_path, file_sha256, write_json
from .train_config import FinetuneConfig

log = logging.getLogger(__name__)

# The output folder. model.dat and metadata.json are named in encoders.py, which reads them (torch-free).
CHECKPOINT = "checkpoint.pt"
MODEL_DAT = FINETUNED_MODEL_NAME
MODEL_PT = "model.pt"
HEAD_PT = "head.pt"
CLASSES = "classes.json"
METADATA = FINETUNED_METADATA


@dataclass
class ChipSet:
    """Aligned chips with labels. ``chips``: (n, 150, 150, 3) uint8; ``labels``: (n,) int64 into ``classes``."""

    chips: np.ndarray
    labels: np.ndarray
    classes: list[str]
    paths: list[str]

    def subset(self, idx: np.ndarray) -> "ChipSet":
        return ChipSet(self.chips[idx], self.labels[idx], self.classes, [self.paths[i] for i in idx])

    def fingerprint(self) -> str:
        """sha256 over (label, chip bytes) in order: identifies the training data exactly."""
        import hashlib

        h = hashlib.sha256()
        for label, chip in zip(self.labels, self.chips):
            h.update(self.classes[label].encode())
            h.update(chip.tobytes())
        return h.hexdigest()


# --- distributed helpers --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = _resolve_device(device).type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(rank, world, local)


@contextlib.contextmanager
def main_process_first(dist_info: Dist):
    """Run the block on rank 0 first, then on the other ranks.

    Around ``load_chipset`` under ``torchrun``: rank 0 detects, aligns and caches the chips while the
    others wait; they then read the cache instead of repeating the work.
    """
    import torch.distributed as dist

    if dist_info.active and not dist_info.main:
        dist.barrier()
    try:
        yield
    finally:
        if dist_info.active and dist_info.main:
            dist.barrier()


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DlibplusError(f"--device {device}: torch sees no CUDA device (use --device cpu)")
    return torch.device(device)


# --- model pieces --------------------------------------------------------------------------------------

class Trainee(nn.Module):
    """Backbone, head and auxiliary losses together, so DDP synchronises all their gradients."""

    def __init__(self, backbone: nn.Module, head: nn.Module, center: nn.Module | None, triplet: nn.Module | None,
                 metric: nn.Module | None, config: FinetuneConfig):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.center, self.triplet, self.metric = center, triplet, metric
        self.config = config
        # dlib's embeddings share a large common component (different people are at cosine ~0.85), so
        # angular heads see them after subtracting dlib's mean embedding. A translation leaves every
        # Euclidean distance unchanged, so this costs the distance contract nothing.
        self.register_buffer("embedding_mean", torch.zeros(128))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        emb = self.backbone(x)
        logits = self.head(emb.float() - self.embedding_mean, y)
        loss = F.cross_entropy(logits, y)
        parts = {"ce": float(loss.detach())}
        if self.center is not None or self.triplet is not None or self.metric is not None:
            # batch-level losses see the whole global batch, as in one process
            batch_emb, batch_y = _gather(emb.float()), _gather(y)
        if self.center is not None:
            c = self.center(batch_emb, batch_y)
            loss = loss + self.config.center_loss * c
            parts["center"] = float(c.detach())
        if self.triplet is not None:
            t = self.triplet(batch_emb, batch_y)
            loss = loss + self.config.triplet * t
            parts["triplet"] = float(t.detach())
        if self.metric is not None:
            m = self.metric(batch_emb, batch_y)
            loss = loss + self.config.metric_loss * m
            parts["metric"] = float(m.detach())
        with torch.no_grad():
            cos = self.head.predict(emb.float() - self.embedding_mean)
        return loss, cos, parts


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All processes' ``x`` concatenated, differentiably (the identity outside DDP).

    Every process then computes the same batch-level loss; all_gather's backward sums the gradients
    over processes, and DDP's averaging turns that back into exactly the one-process gradient.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


@torch.no_grad()
def embed(backbone: nn.Module, chips: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """(n, 128) float64 embeddings of uint8 chips (n, 150, 150, 3), in eval mode without autocast."""
    was_training = backbone.training
    backbone.eval()
    out = []
    for start in range(0, len(chips), batch_size):
        x = _to_tensor(chips[start:start + batch_size], device)
        out.append(backbone(x).float().cpu().numpy())
    backbone.train(was_training)
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 128))


def _to_tensor(chips: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(chips)).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)


# --- validation ----------------------------------------------------------------------------------------

def validation_metrics(train_emb: np.ndarray, train_y: np.ndarray, val_emb: np.ndarray, val_y: np.ndarray,
                       far: float) -> dict[str, Any]:
    """1-NN identification accuracy of validation faces against the training gallery, and verification
    over the validation pairs (AUC, TAR at ``far`` and 1e-2 where measurable)."""
    from . import metrics

    nearest, _ = metrics.nearest_identity(train_emb, train_y, val_emb)
    acc = float(np.mean(nearest == val_y))
    dist, same = metrics.pair_distances(val_emb, val_y)
    out: dict[str, Any] = {"identification_1nn": acc, "n_val": int(len(val_y))}
    if same.any() and (~same).any():
        out["auc"] = metrics.auc(dist, same)
        for r in metrics.tar_at_far(dist, same, sorted({far, 1e-2})):
            out[f"tar@far={r.far:g}"] = r.tar
    return out


def _score(m: dict[str, Any]) -> tuple:
    return (m["identification_1nn"], m.get("auc", 0.0))


# --- the run ---------------------------------------------------------------------------------------------

def load_chipset(folder: os.PathLike | str, settings, *, jobs: int | None = None, progress: bool = True) -> tuple[ChipSet, Any]:
    """Aligned chips of a people folder (cached on disk), and the :class:`~dlibplus.people.PeopleSet` report."""
    from .people import load_people

    people = load_people(folder, settings=settings, want="chips", jobs=jobs, progress=progress)
    classes = sorted(set(people.labels.tolist()))
    labels = np.searchsorted(classes, people.labels).astype(np.int64)
    return ChipSet(people.chips, labels, classes, people.paths.tolist()), people


def restrict_to_classes(data: ChipSet, classes: list[str]) -> tuple[ChipSet, list[str]]:
    """``data`` re-labelled into ``classes`` (a training set's), and the people of ``data`` not among them,
    whose photos are left out.

    :raises DataFolderError: no photo of ``data`` belongs to one of ``classes``.
    """
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([i for i, label in enumerate(data.labels) if data.classes[label] in index], dtype=np.int64)
    unknown = sorted({data.classes[label] for label in data.labels} - set(classes))
    if not len(keep):
        raise DataFolderError("no validation photo belongs to a person of the training folder")
    labels = np.array([index[data.classes[data.labels[i]]] for i in keep], dtype=np.int64)
    return ChipSet(data.chips[keep], labels, list(classes), [data.paths[i] for i in keep]), unknown


def drop_small_classes(data: ChipSet, minimum: int = 2) -> tuple[ChipSet, list[str]]:
    """Leave out people with fewer than ``minimum`` photos (they cannot be split); error under 2 people."""
    counts = np.bincount(data.labels, minlength=len(data.classes))
    keep = np.flatnonzero(counts >= minimum)
    dropped = [data.classes[i] for i in np.flatnonzero(counts < minimum)]
    if len(keep) < 2:
        raise DataFolderError(f"fine-tuning needs at least 2 people with at least {minimum} usable photos each; "
                              f"found {len(keep)}")
    remap = -np.ones(len(data.classes), np.int64)
    remap[keep] = np.arange(len(keep))
    rows = np.flatnonzero(remap[data.labels] >= 0)
    return ChipSet(data.chips[rows], remap[data.labels[rows]], [data.classes[i] for i in keep],
                   [data.paths[i] for i in rows]), dropped


@dataclass
class FinetuneResult:
    output: Path
    history: list[dict]
    dlib_val: dict
    finetuned_val: dict
    calibration: dict
    better: bool
    best_epoch: int
    wall_seconds: float
    finetuned_flip_val: dict = field(default_factory=dict)  # with test-time flip (``DIR+flip``)


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return f


def finetune(train: ChipSet, val: ChipSet, output: os.PathLike | str, config: FinetuneConfig = FinetuneConfig(),
             *, resume: bool = False, progress: bool = True, echo: Callable[[str], None] = print,
             extra_metadata: dict | None = None) -> FinetuneResult:
    """Fine-tune dlib's network on ``train``, select and calibrate on ``val``, write ``output``.

    Returns the history and the validation comparison with dlib. Raises KeyboardInterrupt through
    after saying where the last checkpoint is.
    """
    from tqdm.auto import tqdm

    from . import dlibnet
    from .heads import create_head
    from .losses import CenterLoss, DlibMetricLoss, TripletLoss
    from .models import FACE_RECOGNITION_MODEL, model_path
    from .samplers import PKSampler

    t_start = time.time()
    dist_info = init_distributed(config.device)
    device = _resolve_device(config.device)
    if device.type == "cuda" and dist_info.active:
        device = torch.device("cuda", dist_info.local_rank)
    output = Path(output)
    say = echo if dist_info.main else (lambda *_: None)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_flush_denormal(True)  # tiny weights/gradients in denormal range slow CPUs 10-100x

    base_path = model_path(FACE_RECOGNITION_MODEL)
    backbone = dlibnet.load_dat(base_path)
    frozen = backbone.freeze(config.freeze)
    backbone = backbone.to(device).to(memory_format=torch.channels_last)

    # dlib's own embeddings, for the head's initial weights and the final comparison
    train_emb0 = embed(backbone, train.chips, device)
    val_emb0 = embed(backbone, val.chips, device)
    dlib_val = validation_metrics(train_emb0, train.labels, val_emb0, val.labels, config.target_far)

    n_classes = len(train.classes)
    head = create_head(config.head, n_classes, **config.head_options)
    embedding_mean = torch.from_numpy(train_emb0.mean(axis=0)).float()
    head.imprint(torch.from_numpy(train_emb0).float() - embedding_mean, torch.from_numpy(train.labels))
    head = head.to(device)
    center = CenterLoss(n_classes, 128, alpha=config.center_alpha).to(device) if config.center_loss > 0 else None
    if center is not None:
        center.init_centers(torch.from_numpy(train_emb0).float().to(device), torch.from_numpy(train.labels).to(device))
    triplet = TripletLoss(config.triplet_margin) if config.triplet > 0 else None
    metric = DlibMetricLoss() if config.metric_loss > 0 else None
    trainee = Trainee(backbone, head, center, triplet, metric, config)
    trainee.embedding_mean.copy_(embedding_mean)
    trainee.to(device)
    ddp_model: nn.Module = trainee
    if dist_info.active:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(trainee, device_ids=[device.index] if device.type == "cuda" else None)

    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad], "lr": config.lr},
              {"params": list(head.parameters()), "lr": config.head_lr, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    people_per_batch = min(config.people_per_batch, n_classes)  # a small folder: every person in each batch
    # L2-SP, decoupled: every step pulls the trainable weights back towards dlib's by lr·anchor of the
    # way, so the network adapts to these people without forgetting the faces it was trained on.
    anchors = [(p, p.detach().clone()) for p in backbone.parameters() if p.requires_grad] if config.anchor > 0 else []
    sampler = PKSampler(train.labels, people_per_batch, config.images_per_person, seed=config.seed,
                        rank=0, world_size=1)  # global batches: each process takes its slice below
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, int(round(config.warmup_epochs * steps_per_epoch))))
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    history: list[dict] = []
    start_epoch, best_epoch, best_score, since_best = 0, -1, None, 0
    best_state = copy.deepcopy(backbone.state_dict())
    best_metrics = dlib_val
    ckpt_path = output / CHECKPOINT
    if resume:
        if not ckpt_path.is_file():
            raise DlibplusError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt["config"] != json.loads(json.dumps(config.to_dict())):
            raise DlibplusError(f"--resume: {ckpt_path} was made with other settings; use the same options")
        trainee.load_state_dict(ckpt["trainee"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        best_state = ckpt["best_backbone"]
        start_epoch, best_epoch, since_best = ckpt["epoch"] + 1, ckpt["best_epoch"], ckpt["since_best"]
        history = json.loads(ckpt["history"])
        best_metrics = json.loads(ckpt["best_metrics"])
        best_score = _score(best_metrics) if best_epoch >= 0 else None
        say(f"resuming after epoch {ckpt['epoch'] + 1} of {config.epochs}")

    say(f"fine-tuning on {len(train.labels)} photos of {n_classes} people (validation: {len(val.labels)}), "
        f"head {config.head}, device {device}" + (f" x{dist_info.world_size}" if dist_info.active else "")
        + f", frozen: {', '.join(frozen) or 'nothing'}")
    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc="fine-tuning", unit="step",
               disable=not (progress and dist_info.main), dynamic_ncols=True)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs):
            trainee.train()
            sampler.set_epoch(epoch)
            t_epoch, seen, loss_sum, correct = time.time(), 0, 0.0, 0
            for step, batch in enumerate(sampler):
                batch = np.asarray(batch)
                slots = np.arange(len(batch))[dist_info.rank::dist_info.world_size]
                idx = batch[slots]
                chips = train.chips[idx]
                if config.augment:
                    from .augment import augment_batch

                    chips = augment_batch(chips, config.seed, epoch, step, slots)
                x = _to_tensor(chips, device)
                y = torch.from_numpy(train.labels[idx]).to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss, logits, parts = ddp_model(x, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if anchors:
                    pull = min(1.0, scheduler.get_last_lr()[0] * config.anchor)
                    with torch.no_grad():
                        for p, p0 in anchors:
                            p.lerp_(p0, pull)
                scheduler.step()
                head.step()
                seen += len(idx)
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == y).sum())
                bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{loss_sum / seen:.3f}",
                                acc=f"{correct / seen:.2f}", lr=f"{scheduler.get_last_lr()[0]:.1e}",
                                img_s=f"{seen * dist_info.world_size / (time.time() - t_epoch):.0f}")
                bar.update(1)
            val_metrics = validation_metrics(embed(backbone, train.chips, device), train.labels,
                                             embed(backbone, val.chips, device), val.labels, config.target_far)
            row = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                   "lr": scheduler.get_last_lr()[0], "seconds": time.time() - t_epoch, **val_metrics}
            history.append(row)
            score = _score(val_metrics)
            if best_score is None or score > best_score:
                best_score, best_epoch, since_best = score, epoch, 0
                best_state = copy.deepcopy(backbone.state_dict())
                best_metrics = val_metrics
            else:
                since_best += 1
            if dist_info.main:
                _save_checkpoint(ckpt_path, trainee, optimizer, scheduler, scaler, best_state, epoch, best_epoch,
                                 since_best, history, best_metrics, config)
            if config.patience and since_best >= config.patience:
                say(f"early stop: no better validation accuracy for {config.patience} epochs")
                break
    except KeyboardInterrupt:
        bar.close()
        if dist_info.main:
            say(f"\ninterrupted during epoch {epoch + 1}; the checkpoint of the last finished epoch is in "
                f"{ckpt_path}: continue with the same command and --resume")
        raise
    bar.close()

    backbone.load_state_dict(best_state)
    train_emb = embed(backbone, train.chips, device)
    val_emb = embed(backbone, val.chips, device)
    calibration = calibrate(val_emb, val.labels, config.target_far)
    with torch.no_grad():
        backbone.fc.weight.mul_(calibration["scale"])
    train_emb, val_emb = train_emb * calibration["scale"], val_emb * calibration["scale"]
    # test-time flip (`--encoder DIR+flip`) averages each face with its mirror image, which shrinks
    # distances: calibrate that output too, relative to the calibrated network's
    val_flip = (val_emb + embed(backbone, mirror(val.chips), device)) / 2
    calibration_flip = calibrate(val_flip, val.labels, config.target_far)
    train_flip = (train_emb + embed(backbone, mirror(train.chips), device)) / 2
    finetuned_val = validation_metrics(train_emb, train.labels, val_emb, val.labels, config.target_far)
    # so the user sees on their own photos whether `+flip` is worth its second pass
    finetuned_flip_val = validation_metrics(train_flip, train.labels, val_flip, val.labels, config.target_far)
    better = _score(finetuned_val) > _score(dlib_val)
    # the head sees embeddings minus dlib's mean, in the calibrated units from here on
    head_mean = trainee.embedding_mean.cpu().numpy().astype(np.float64) * calibration["scale"]
    open_set = head_open_set_threshold(head, val_emb - head_mean, val.labels, config.target_far)

    result = FinetuneResult(output, history, dlib_val, finetuned_val, calibration, better, best_epoch + 1,
                            time.time() - t_start, finetuned_flip_val)
    if dist_info.main:
        meta = {
            "format": "dlibplus-finetuned", "format_version": 1,
            "base_model": {"file": base_path.name, "sha256": file_sha256(base_path)},
            "config": config.to_dict(), "frozen_stages": frozen,
            "classes": train.classes, "data": {"train_fingerprint": train.fingerprint(),
                                               "n_train": int(len(train.labels)), "n_val": int(len(val.labels))},
            "best_epoch": best_epoch + 1, "epochs_run": len(history),
            "validation": {"dlib": dlib_val, "finetuned": finetuned_val, "finetuned_flip": finetuned_flip_val,
                           "better_than_dlib": better},
            "calibration": calibration, "calibration_flip": calibration_flip, "head_open_set": open_set,
            "history": history, "wall_seconds": result.wall_seconds,
            "device": str(device), "world_size": dist_info.world_size,
            "versions": _versions(), **(extra_metadata or {}),
        }
        write_outputs(output, backbone, head, head_mean, train.classes, meta)
    if dist_info.active:
        import torch.distributed as dist

        dist.barrier()
    return result


def calibrate(val_emb: np.ndarray, val_y: np.ndarray, target_far: float) -> dict[str, Any]:
    """The output scale that puts distance 0.6 at ``target_far`` on the validation pairs.

    When there are too few different-person pairs to measure ``target_far``, the smallest measurable
    FAR (one false accept) is used instead, and the result says so.
    """
    from . import metrics

    dist, same = metrics.pair_distances(val_emb, val_y)
    n_diff = int((~same).sum())
    if n_diff == 0 or not same.any():
        return {"scale": 1.0, "far": None, "threshold": None, "note": "no validation pairs: not calibrated"}
    far = target_far if n_diff * target_far >= 1 else 1.0 / n_diff
    threshold = metrics.threshold_at_far(dist, same, far)
    if threshold <= 0:
        return {"scale": 1.0, "far": far, "threshold": threshold, "note": "degenerate threshold: not calibrated"}
    out = {"scale": 0.6 / threshold, "far": far, "threshold": threshold, "target_far": target_far,
           "n_different_pairs": n_diff}
    if far != target_far:
        out["note"] = (f"only {n_diff} different-person validation pairs: calibrated at FAR {far:.2g} "
                       f"instead of {target_far:g}")
    return out


def head_open_set_threshold(head, val_emb: np.ndarray, val_y: np.ndarray, far: float) -> dict[str, Any]:
    """Cosine threshold below which ``predict --classifier head`` says "unknown".

    A stranger is named when their best cosine over all trained people passes the threshold, so each
    validation face stands in for a stranger through its best cosine among the *other* people; the
    threshold lets through a fraction ``far`` of those (with fewer than ``1 / far`` faces: none of them).
    """
    with torch.no_grad():
        cos = head.predict(torch.from_numpy(val_emb).float().to(next(head.parameters()).device)).cpu().numpy()
    rows = np.arange(len(val_y))
    others = cos.copy()
    others[rows, val_y] = -np.inf
    impostor = np.sort(others.max(axis=1))[::-1]  # best wrong-person cosine of each face, highest first
    k = int(np.floor(far * len(impostor)))
    # accept cos >= threshold: just above the (k+1)-th highest impostor, so that k of them pass
    threshold = float(np.nextafter(impostor[k], np.inf)) if len(impostor) else 0.0
    genuine = cos[rows, val_y]
    return {"cosine_threshold": threshold, "far": far, "n_validation_faces": int(len(val_y)),
            "validation_accept_rate": float(np.mean(genuine >= threshold)),
            "validation_false_alarm_rate": float(np.mean(impostor >= threshold))}


def _versions() -> dict[str, str]:
    import dlib

    return {"dlibplus": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "dlib": getattr(dlib, "__version__", "?"), "python": platform.python_version()}


def _save_checkpoint(path: Path, trainee, optimizer, scheduler, scaler, best_state, epoch, best_epoch,
                     since_best, history, best_metrics, config) -> None:
    state = {"trainee": trainee.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "best_backbone": best_state,
             "epoch": epoch, "best_epoch": best_epoch, "since_best": since_best,
             "history": json.dumps(history), "best_metrics": json.dumps(best_metrics),
             "config": json.loads(json.dumps(config.to_dict()))}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def write_outputs(output: Path, backbone, head, head_mean: np.ndarray, classes: list[str], meta: dict) -> None:
    """model.dat (dlib loads it), model.pt, head.pt, classes.json, metadata.json — each atomically."""
    from . import dlibnet

    output.mkdir(parents=True, exist_ok=True)
    cpu_backbone = copy.deepcopy(backbone).float().cpu().to(memory_format=torch.contiguous_format)
    dlibnet.save_dat(cpu_backbone, output / MODEL_DAT)
    with atomic_path(output / MODEL_PT) as tmp:
        torch.save(cpu_backbone.state_dict(), tmp)
    with atomic_path(output / HEAD_PT) as tmp:
        torch.save({"name": meta["config"]["head"], "options": meta["config"]["head_options"],
                    "state": {k: v.cpu() for k, v in head.state_dict().items()},
                    "embedding_mean": torch.from_numpy(head_mean).float()}, tmp)
    write_json(output / CLASSES, classes)
    meta = dict(meta, model_dat_sha256=file_sha256(output / MODEL_DAT))
    write_json(output / METADATA, meta)


def summary_lines(result: FinetuneResult, far: float) -> list[str]:
    """The end-of-run table: per-epoch history, then dlib vs fine-tuned on the validation photos."""
    lines = [f"{'epoch':>5} {'loss':>8} {'train acc':>9} {'val 1-NN':>8} {'val AUC':>8} {'s':>6}"]
    for h in result.history:
        lines.append(f"{h['epoch']:>5} {h['loss']:>8.4f} {h['train_acc']:>9.3f} {h['identification_1nn']:>8.3f} "
                     f"{h.get('auc', float('nan')):>8.4f} {h['seconds']:>6.1f}")
    lines.append("")
    keys = ["identification_1nn", "auc", "tar@far=0.01", f"tar@far={far:g}"]
    lines.append(f"{'validation':<22}{'dlib':>10}{'fine-tuned':>12}{'with +flip':>12}")
    for k in dict.fromkeys(keys):
        a, b, c = result.dlib_val.get(k), result.finetuned_val.get(k), result.finetuned_flip_val.get(k)
        fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")
        lines.append(f"{k:<22}{fmt(a):>10}{fmt(b):>12}{fmt(c):>12}")
    cal = result.calibration
    if cal.get("threshold") is not None:
        lines.append(f"calibration: distance 0.6 now sits at validation FAR {cal['far']:.2g} "
                     f"(raw threshold {cal['threshold']:.3f}, scale {cal['scale']:.3f})" +
                     (f" [{cal['note']}]" if cal.get("note") else ""))
    if result.better:
        lines.append(f"the fine-tuned model is better than dlib on the validation photos (best epoch "
                     f"{result.best_epoch}); wrote {result.output}")
    else:
        lines.append("WARNING: the fine-tuned model is NOT better than dlib on the validation photos; "
                     "keep using dlib (or add photos / try another head). The model was written to "
                     f"{result.output} anyway.")
    return lines
