"""Fine-tune dlib's face ResNet on a people folder (``dlibplus finetune``), as small steps.

:func:`dlibplus.finetune.finetune` runs them: :func:`build` the network (dlib's weights), a margin head imprinted with
each person's mean embedding, the auxiliary losses, optimizer, schedule and mixed precision;
:func:`fit` the epochs (:func:`train_one_epoch`, then validation; the epoch with the best validation
identification is kept, a :class:`TrainState` checkpoint written after each); then
:func:`dlibplus.finish.finish`: choose between dlib, interpolations and the fine-tuned weights, calibrate,
and write the folder (:mod:`dlibplus.model_folder`). Every validation embedding goes through the encoders users run
(:class:`~dlibplus.encoders.TorchEncoder`, :class:`~dlibplus.encoders.FlipEncoder`).

Runs on CUDA when present, on CPU otherwise, and on several GPUs under ``torchrun`` (DDP: each process
takes a slice of every global batch and augments it with the same per-sample random draws, so N
processes compute what one does).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .calibration import validation_metrics
from .distributed import Dist, gather
from .echo import EchoPool, photo_keys, uses_in_epoch
from .errors import DataFolderError
from .fileio import atomic_path
from .finetune_data import ChipSet
from .mixing import mix_people, plan_mix
from .train_config import FinetuneConfig

log = logging.getLogger(__name__)

POSTFIX_EVERY = 10  # steps between progress-bar updates (each reads the loss back from the device)
# validation keeps the frozen stages' activations of its photos up to this size (with --freeze 3: ~74 KB a photo)
FROZEN_FEATURES_BYTES = 1 << 30


def seed_run(config: FinetuneConfig, device: torch.device) -> None:
    """Seed torch and numpy with ``config.seed`` as a run starts (on the CPU also deterministic kernels and no
    denormals), so that a run, or its steps called one by one, repeat on one machine."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_flush_denormal(True)  # tiny weights/gradients in denormal range slow CPUs 10-100x


# --- the network with its head and losses ---------------------------------------------------------------

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

    def forward(self, x: torch.Tensor, y: torch.Tensor, mixed: torch.Tensor | None = None,
                target: torch.Tensor | None = None, mixed_weight: float = 1.0,
                stages: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, cosines)`` of a batch; nothing leaves the device.

        :param x: (n, 3, 150, 150) float faces, or with ``stages`` > 0 their activations after the network's first
            ``stages`` stages (:meth:`~dlibplus.dlibnet.DlibResNet.features`, kept by :mod:`dlibplus.echo`).
        :param mixed: (m, 3, 150, 150) float faces for the distillation loss
            (:func:`dlibplus.mixing.mix_people`), with ``target`` (m, 128) dlib's descriptors of them;
            ``None``: no distillation. :param mixed_weight: :meth:`dlibplus.mixing.MixPlan.loss_weight`.
        """
        emb = self.backbone.forward_from(x, stages) if stages else self.backbone(x)
        logits = self.head(emb.float() - self.embedding_mean, y)
        loss = F.cross_entropy(logits, y)
        weighted = [(self.center, self.config.center_loss), (self.triplet, self.config.triplet),
                    (self.metric, self.config.metric_loss)]
        if any(module is not None for module, _ in weighted):
            # batch-level losses see the whole global batch, as in one process
            batch_emb, batch_y = gather(emb.float()), gather(y)
            for module, weight in weighted:
                if module is not None:
                    loss = loss + weight * module(batch_emb, batch_y)
        if mixed is not None:
            loss = loss + self.config.distill * mixed_weight * distillation_loss(self.backbone(mixed), target)
        with torch.no_grad():
            cos = self.head.predict(emb.float() - self.embedding_mean)
        return loss, cos


def distillation_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared Euclidean distance between (m, 128) descriptors, in dlib's units (scalar float32)."""
    return ((student.float() - target.float()) ** 2).sum(1).mean()


def encoder_of(backbone: nn.Module, device: torch.device, *, flip: bool = False):
    """The encoder users would run on these weights (a folded inference copy): validation goes through
    the same code as ``--encoder DIR`` (and ``DIR+flip``)."""
    from .encoders import FlipEncoder, TorchEncoder

    encoder = TorchEncoder(backbone, device=str(device), _model_sha256="in-training")
    return FlipEncoder(encoder) if flip else encoder


def _lr_lambda(total_steps: int, warmup_steps: int, start: int = 0) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then a cosine decay to 0 at ``total_steps``; 0 before the step
    ``start`` (the network during LP-FT's head-only epochs), the warm-up beginning there."""
    def f(step: int) -> float:
        if step < start:
            return 0.0
        step, total = step - start, total_steps - start
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return f


@dataclass
class Run:
    """Everything a training run updates, built by :func:`build`."""

    config: FinetuneConfig
    device: torch.device
    dist: Dist
    backbone: nn.Module
    head: nn.Module
    trainee: Trainee
    model: nn.Module  # the trainee, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    sampler: Any
    network: list[nn.Parameter]  # the backbone's parameters that train (after freeze and train_only)
    anchors: list  # (parameter, dlib's value) pairs for the L2-SP pull
    frozen: list[str]
    base_state: dict  # dlib's weights, for interpolation
    use_amp: bool
    amp_dtype: torch.dtype
    teacher: nn.Module | None = None  # dlib's network, frozen, for ``config.distill``
    averaged: list[torch.Tensor] = field(default_factory=list)  # ``config.ema``'s average of ``network``
    # validation's activations of the frozen first stages, by id of the chip array (held: its id is not reused)
    frozen_features: dict[int, tuple[np.ndarray, list | None]] = field(default_factory=dict)
    echo: EchoPool | None = None  # the augmented copies' frozen-stage activations (``config.echo``)
    echo_keys: np.ndarray | None = None  # (n,) uint64 of the training photos (:func:`dlibplus.echo.photo_keys`)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @property
    def frozen_stages(self) -> int:
        """How many of the network's first stages are frozen: their activations of a chip never change."""
        names = self.backbone.body_names
        return next((k for k, name in enumerate(names) if name not in self.frozen), len(names))

    def network_trains(self, epoch: int) -> bool:
        """Whether the network trains in ``epoch`` (0-based), or only the head (LP-FT's first epochs)."""
        return epoch >= self.config.head_epochs


def trainable_network(backbone: nn.Module, train_only: str) -> list[nn.Parameter]:
    """The backbone's parameters that train: every unfrozen one, or (``"affine"``) only the unfrozen
    affine layers' scale and shift. The others get ``requires_grad=False``."""
    from .dlibnet.net import Affine

    if train_only == "affine":
        affine = {id(p) for m in backbone.modules() if isinstance(m, Affine) for p in m.parameters()}
        for p in backbone.parameters():
            if id(p) not in affine:
                p.requires_grad_(False)
    return [p for p in backbone.parameters() if p.requires_grad]


def build(train: ChipSet, config: FinetuneConfig, device: torch.device, dist_info: Dist,
          echo: EchoPool | None = None) -> Run:
    """dlib's network, a head imprinted from dlib's embeddings of ``train``, losses and optimizer.

    :param echo: another run's pool of augmented copies (:mod:`dlibplus.echo`) to read and fill, used when this run
        echoes with the same seed, copies and frozen stages; otherwise the run makes its own when it echoes.

    :raises ValueError: ``config.regime`` is still ``auto`` (:func:`dlibplus.finetune.finetune` resolves it).
    """
    if config.regime == "auto":
        raise ValueError("build() needs a named regime; finetune() resolves 'auto' from the user's photos")
    from . import dlibnet
    from .heads import create_head
    from .losses import CenterLoss, DlibMetricLoss, TripletLoss
    from .models import FACE_RECOGNITION_MODEL, model_path
    from .samplers import PKSampler

    backbone = dlibnet.load_dat(model_path(FACE_RECOGNITION_MODEL))
    base_state = copy.deepcopy(backbone.state_dict())
    frozen = backbone.freeze(config.freeze)
    network = trainable_network(backbone, config.train_only)
    backbone = backbone.to(device).to(memory_format=torch.channels_last)
    # --distill's teacher: dlib's network as loaded, frozen (a copy, not a second parse of the .dat)
    teacher = copy.deepcopy(backbone).eval().requires_grad_(False) if config.distill > 0 else None
    dlib_emb = encoder_of(backbone, device).encode(train.chips)

    n_classes = len(train.classes)
    head = create_head(config.head, n_classes, **config.head_options)
    mean = torch.from_numpy(dlib_emb.mean(axis=0)).float()
    head.imprint(torch.from_numpy(dlib_emb).float() - mean, torch.from_numpy(train.labels)).to(device)
    center = CenterLoss(n_classes, 128, alpha=config.center_alpha).to(device) if config.center_loss > 0 else None
    if center is not None:
        center.init_centers(torch.from_numpy(dlib_emb).float().to(device), torch.from_numpy(train.labels).to(device))
    triplet = TripletLoss(config.triplet_margin) if config.triplet > 0 else None
    metric = DlibMetricLoss() if config.metric_loss > 0 else None
    trainee = Trainee(backbone, head, center, triplet, metric, config)
    trainee.embedding_mean.copy_(mean)
    trainee.to(device)
    model: nn.Module = trainee
    if dist_info.active:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(trainee, device_ids=[device.index] if device.type == "cuda" else None)

    groups = [{"params": network, "lr": config.lr},
              {"params": list(head.parameters()), "lr": config.head_lr, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    # L2-SP, decoupled: every step pulls the trainable weights back towards dlib's by lr·anchor of the
    # way, so the network adapts to these people without forgetting the faces it was trained on.
    anchors = [(p, p.detach().clone()) for p in network] if config.anchor > 0 else []
    people_per_batch = min(config.people_per_batch, n_classes)  # a small folder: every person in each batch
    sampler = PKSampler(train.labels, people_per_batch, config.images_per_person, seed=config.seed,
                        rank=0, world_size=1)  # global batches: each process takes its slice
    total_steps, warmup_steps = len(sampler) * config.epochs, round(config.warmup_epochs * len(sampler))
    # the network's schedule starts after the head-only epochs (LP-FT); the head's runs over every epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [_lr_lambda(total_steps, warmup_steps, start=len(sampler) * config.head_epochs),
                    _lr_lambda(total_steps, warmup_steps)])
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    averaged = [p.detach().clone() for p in network] if config.ema > 0 else []
    run = Run(config, device, dist_info, backbone, head, trainee, model, optimizer, scheduler, scaler, sampler,
              network, anchors, frozen, base_state, use_amp, amp_dtype, teacher, averaged)
    run.echo = echo_pool(run, echo)
    run.echo_keys = photo_keys(train.chips) if run.echo is not None else None
    return run


def echo_pool(run: Run, shared: EchoPool | None) -> EchoPool | None:
    """The pool ``run`` keeps its photos' augmented copies in (``config.echo`` a photo): ``shared`` when it holds
    the same copies, else a new one. ``None`` when the run does not echo: ``config.echo`` 0, no augmentation, the
    augmentation on the device (cheap there), no frozen stage, or distillation (it mixes the augmented pixels)."""
    config, stages = run.config, run.frozen_stages
    if not (config.echo and config.augment and not augment_on_device(run) and stages and run.teacher is None):
        return None
    if shared is not None and shared.holds_copies_of(config.echo, stages, config.seed, config.images_per_person):
        return shared
    with torch.no_grad():
        probe = run.backbone.features(torch.zeros(1, 3, 150, 150, device=run.device), stages)
    return EchoPool(config.echo, stages, config.seed, probe.numel() * probe.element_size(), config.images_per_person)


# --- the epochs -----------------------------------------------------------------------------------------

def augment_on_device(run: Run) -> bool:
    """Where the augmentation runs: on the training device (batched tensor ops) or on the host (dlib's
    exact numpy jitter, one chip at a time). ``auto``: the device on CUDA, the host on CPU."""
    where = run.config.augment_on
    return where == "device" or (where == "auto" and run.device.type == "cuda")


def _host_batches(run: Run, train: ChipSet, epoch: int):
    """``(step, idx, rows, x, plan)`` of every step of an epoch: ``idx`` the chips of this process's slice of
    the global batch, ``rows`` the global slots of the chips in ``x`` (the slice, then with ``--distill`` the
    partners held by other processes, see :mod:`dlibplus.mixing`), ``plan`` the mixing (``None`` without
    distillation). ``x``: the chips, or when the run echoes their :class:`~dlibplus.echo.StepCopies`. Gathered
    (and, on the host, augmented) by a background thread while the previous step runs, so the loop never waits
    on numpy."""
    from concurrent.futures import ThreadPoolExecutor

    from . import augment  # looked up per call: tests interrupt a run through it

    config, dist_info = run.config, run.dist
    on_device = config.augment and augment_on_device(run)
    distilling = run.teacher is not None and run.network_trains(epoch)

    def prepare(step: int, batch, uses):
        batch = np.asarray(batch)
        slots = np.arange(len(batch))[dist_info.rank::dist_info.world_size]
        plan = (plan_mix(train.labels[batch], slots, config.seed, epoch, step, config.distill_share)
                if distilling else None)
        if plan is not None and not len(plan.own_row):
            plan = None  # none of this process's faces is mixed in this step
        rows = slots if plan is None else np.concatenate([slots, plan.extra_slots])
        chips = train.chips[batch[rows]]
        if run.echo is not None:  # the copies these uses take, drawn where the pool has none yet
            return step, batch[slots], rows, run.echo.plan(run.echo_keys[batch[rows]], chips, epoch, uses[rows]), plan
        if config.augment and not on_device:
            chips = augment.augment_batch(chips, config.seed, epoch, step, rows)
        x = torch.from_numpy(np.ascontiguousarray(chips))
        return step, batch[slots], rows, (x.pin_memory() if run.device.type == "cuda" else x), plan

    batches = list(enumerate(run.sampler))
    # each global batch's earlier uses of its photos in the epoch: which echoed copy each takes
    uses = uses_in_epoch([np.asarray(b) for _, b in batches]) if run.echo is not None else [None] * len(batches)
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = worker.submit(prepare, *batches[0], uses[0]) if batches else None
        for i in range(len(batches)):
            prepared = pending.result()
            pending = worker.submit(prepare, *batches[i + 1], uses[i + 1]) if i + 1 < len(batches) else None
            yield prepared


def train_one_epoch(run: Run, train: ChipSet, epoch: int, bar, epochs: int | None = None) -> dict[str, float]:
    """One pass of P×K batches; returns the epoch's mean loss, training accuracy and seconds. Nothing is
    read back from the device inside a step (the progress bar reads the sums every few steps). In LP-FT's
    head-only epochs the network's parameters need no gradient: only the head's backward pass runs.
    ``epochs``: the run's epoch count the bar shows (default ``config.epochs``)."""
    config, dist_info = run.config, run.dist
    network_trains = run.network_trains(epoch)
    for p in run.network:
        p.requires_grad_(network_trains)
    run.trainee.train()
    run.sampler.set_epoch(epoch)
    device_aug = config.augment and augment_on_device(run)
    t_epoch, seen = time.time(), 0
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    stages = run.echo.stages if run.echo is not None else 0
    for step, idx, rows, chips, plan in _host_batches(run, train, epoch):
        if run.echo is not None:  # the step's activations after the frozen stages, from the pool or computed now
            faces = run.echo.features(chips, run.backbone, run.device)
        elif device_aug:
            from .device_augment import augment_on_device as device_augment

            faces = device_augment(chips.to(run.device, non_blocking=True), config.seed, epoch, step, rows)
        else:
            chips = chips.to(run.device, non_blocking=True)  # uint8: a quarter of float32's bytes to copy
            faces = chips.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
        x = faces[:len(idx)]
        y = torch.from_numpy(train.labels[idx]).to(run.device, non_blocking=True)
        with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
            if plan is not None:
                mixed = mix_people(faces, plan)
                with torch.no_grad():
                    target = run.teacher(mixed)
                loss, cos = run.model(x, y, mixed, target, plan.loss_weight(dist_info.world_size))
            else:
                loss, cos = run.model(x, y, stages=stages)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if config.grad_clip > 0:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.params, config.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.anchors and network_trains:
            pull = min(1.0, run.scheduler.get_last_lr()[0] * config.anchor)
            with torch.no_grad():
                torch._foreach_lerp_([p for p, _ in run.anchors], [p0 for _, p0 in run.anchors], pull)
        if run.averaged and network_trains:
            with torch.no_grad():
                torch._foreach_lerp_(run.averaged, [p.detach() for p in run.network], 1.0 - config.ema)
        run.scheduler.step()
        run.head.step()
        seen += len(idx)
        loss_sum += loss.detach() * len(idx)
        correct += (cos.argmax(1) == y).sum()
        bar.update(1)
        if (step + 1) % POSTFIX_EVERY == 0:
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs or config.epochs}", loss=f"{float(loss_sum) / seen:.3f}",
                            acc=f"{int(correct) / seen:.2f}", lr=f"{run.scheduler.get_last_lr()[0]:.1e}",
                            img_s=f"{seen * dist_info.world_size / (time.time() - t_epoch):.0f}")
    seen = max(seen, 1)
    return {"loss": float(loss_sum) / seen, "train_acc": int(correct) / seen, "lr": run.scheduler.get_last_lr()[0],
            "seconds": time.time() - t_epoch, "images_per_second": seen * dist_info.world_size /
            max(time.time() - t_epoch, 1e-9)}


def validation_score(m: dict[str, Any]) -> tuple:
    """What picks the kept epoch from a row of validation figures: 1-NN identification, then the AUC."""
    return (m["identification_1nn"], m.get("auc", 0.0))


@dataclass
class TrainState:
    """Where a run stands after an epoch: what ``checkpoint.pt`` holds besides the optimiser states."""

    epoch: int = -1  # the last finished epoch, 0-based
    best_epoch: int = -1
    since_best: int = 0
    history: list[dict] = field(default_factory=list)
    best_metrics: dict = field(default_factory=dict)
    best_backbone: dict = field(default_factory=dict)

    @property
    def best_score(self) -> tuple | None:
        return validation_score(self.best_metrics) if self.best_epoch >= 0 else None

    def save(self, path: Path, run: Run) -> None:
        state = {"trainee": run.trainee.state_dict(), "optimizer": run.optimizer.state_dict(),
                 "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
                 "best_backbone": self.best_backbone, "epoch": self.epoch, "best_epoch": self.best_epoch,
                 "since_best": self.since_best, "history": json.dumps(self.history),
                 "best_metrics": json.dumps(self.best_metrics), "config": _config_json(run.config),
                 "averaged": run.averaged}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: Path, run: Run) -> "TrainState":
        """Restore ``run`` from a checkpoint; :raises DlibplusError: missing, damaged or other settings."""
        if not path.is_file():
            raise DataFolderError(f"--resume: no checkpoint at {path}")
        try:
            ckpt = torch.load(path, map_location=run.device, weights_only=True)
        except Exception as exc:
            raise DataFolderError(f"--resume: {path} cannot be read ({type(exc).__name__})") from None
        # a setting added since the checkpoint was written had its default's effect then (in this regime)
        saved = ckpt.get("config")
        defaults = _config_json(FinetuneConfig(regime=run.config.regime))
        if not isinstance(saved, dict) or {**defaults, **saved} != _config_json(run.config):
            raise DataFolderError(f"--resume: {path} was made with other settings; use the same options")
        run.trainee.load_state_dict(ckpt["trainee"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
        if run.averaged:
            torch._foreach_copy_(run.averaged, ckpt["averaged"])
        return cls(ckpt["epoch"], ckpt["best_epoch"], ckpt["since_best"], json.loads(ckpt["history"]),
                   json.loads(ckpt["best_metrics"]), ckpt["best_backbone"])


def _config_json(config: FinetuneConfig) -> dict:
    return json.loads(json.dumps(config.to_dict()))


@contextmanager
def averaged_weights(run: Run):
    """The network holds ``config.ema``'s moving average of its weights inside the block (nothing changes
    without ``ema``); the trained weights come back after it."""
    if not run.averaged:
        yield
        return
    with torch.no_grad():
        trained = [p.detach().clone() for p in run.network]
        torch._foreach_copy_([p.data for p in run.network], run.averaged)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in run.network], trained)


def validate(run: Run, train: ChipSet, val: ChipSet) -> dict[str, Any]:
    """Validation figures of the current weights, embedded once each through the users' encoder."""
    encoder = encoder_of(run.backbone, run.device)
    return validation_metrics(validation_embeddings(run, encoder, train.chips), train.labels,
                              validation_embeddings(run, encoder, val.chips), val.labels, run.config.target_far or 1e-3)


def validation_embeddings(run: Run, encoder, chips: np.ndarray) -> np.ndarray:
    """(n, 128) float64: ``encoder.encode(chips)``, bit for bit, for an encoder of ``run``'s backbone or of weights
    that share its frozen stages (an interpolation towards dlib's). With the first stages frozen (``--freeze``),
    their activations of ``chips`` are computed on the first call and kept (up to :data:`FROZEN_FEATURES_BYTES`
    for the run), and each later call runs only the stages that train."""
    stages = run.frozen_stages
    if stages == 0:
        return encoder.encode(chips)
    if id(chips) not in run.frozen_features:
        features = encoder.frozen_features(chips, stages)
        held = sum(f.nbytes for _, kept in run.frozen_features.values() for f in kept or [])
        fits = held + sum(f.nbytes for f in features) <= FROZEN_FEATURES_BYTES
        run.frozen_features[id(chips)] = (chips, features if fits else None)
        return encoder.encode_features(features, stages)
    features = run.frozen_features[id(chips)][1]
    return encoder.encode(chips) if features is None else encoder.encode_features(features, stages)


def fit(run: Run, train: ChipSet, val: ChipSet | None, state: TrainState, checkpoint: Path | None, *,
        progress: bool = True, say: Callable[[str], None] = print, until: int | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> TrainState:
    """Train from ``state.epoch + 1`` to the end (or early stop), checkpointing each epoch; keeps the
    backbone of the best validation epoch in ``state.best_backbone``. Ctrl-C is re-raised after
    saying where the checkpoint is.

    :param val: ``None`` to train without validation (cross-fitting's last run): the last epoch is kept.
    :param checkpoint: ``None`` to write none.
    :param until: stop after this many epochs (the learning-rate schedule still spans ``config.epochs``).
    :param on_epoch: called with each epoch's row of :attr:`TrainState.history` once it is validated.
    """
    from tqdm.auto import tqdm

    config = run.config
    steps = len(run.sampler)
    last = config.epochs if until is None else min(until, config.epochs)
    bar = tqdm(total=steps * last, initial=(state.epoch + 1) * steps, desc="fine-tuning", unit="step",
               disable=not (progress and run.dist.main), dynamic_ncols=True)
    epoch = state.epoch + 1
    try:
        for epoch in range(state.epoch + 1, last):
            row = {"epoch": epoch + 1, **train_one_epoch(run, train, epoch, bar, last)}
            with averaged_weights(run):  # with --ema, the average is what is validated and kept
                row.update(validate(run, train, val) if val is not None else {})
                state.history.append(row)
                state.epoch = epoch
                if not run.network_trains(epoch):  # LP-FT's head-only epochs: the network is still dlib's
                    pass
                elif val is None or state.best_score is None or validation_score(row) > state.best_score:
                    state.best_epoch, state.since_best = epoch, 0
                    state.best_backbone = copy.deepcopy(run.backbone.state_dict())
                    state.best_metrics = {k: v for k, v in row.items() if k not in ("epoch", "loss", "train_acc",
                                                                                      "lr", "seconds")}
                else:
                    state.since_best += 1
            if on_epoch is not None:
                on_epoch(row)
            if run.dist.main and checkpoint is not None:
                state.save(checkpoint, run)
            if config.patience and state.since_best >= config.patience:
                bar.close()
                say(f"early stop: no better validation accuracy for {config.patience} epochs")
                break
    except KeyboardInterrupt:
        bar.close()
        if run.dist.main:
            say(f"\ninterrupted during epoch {epoch + 1}; " + (
                f"the checkpoint of the last finished epoch is in {checkpoint}: continue with the same command and "
                "--resume" if checkpoint is not None else "nothing was written"))
        raise
    bar.close()
    return state
