"""The settings of a fine-tuning run (no torch import: the CLI reads its defaults from here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

HEAD_NAMES = ("arcface", "cosface", "sphereface", "softmax", "combined")
# auto: dlib, an interpolation or the fine-tuned weights, whichever is best on the validation photos,
# and dlib unless another beats it with confidence; finetuned: the fine-tuned weights, calibrated
KEEP_CHOICES = ("auto", "finetuned")
# which of the network's (unfrozen) parameters train: all, or only the per-channel affine scale and shift
# that stand in for batch norm in dlib's network (7,104 of its 5.6 million parameters)
TRAIN_ONLY_CHOICES = ("all", "affine")
# the gallery the candidates are judged with: "trained" (the photos the run trained on) or "grown" (those plus
# the other validation photos, nearer the gallery the user's train-knn gets: every photo; BENCHMARKS.md)
JUDGE_GALLERIES = ("trained", "grown")
# where 0.6 is put on the user's validation pairs (without target_far): the point of best balanced accuracy, or
# the equal-error point (as many same-person pairs rejected as different-person pairs let through)
CALIBRATIONS = ("balanced", "equal_error")
# How far the network may move from dlib: the defaults of the six settings that decide it (a value
# given explicitly wins). "anchor" pulls the weights towards dlib's (L2-SP) and keeps its first three stages
# (stem, layer1, layer2: 6 % of the weights, 58 % of a forward pass on CPU), for people dlib already tells apart;
# "distill" drops the pull and keeps dlib's descriptors of mixed faces instead, with a heavier, wider triplet
# loss and every stage training: it moves further, for people dlib confuses (measured in BENCHMARKS.md, issue
# 10; the anchor's freeze: as many photos named on the suite, a training epoch 25-40 % shorter).
REGIMES = {
    "anchor": {"anchor": 3000.0, "distill": 0.0, "distill_share": 1.0, "triplet": 1.0, "triplet_margin": 0.2,
               "freeze": 3},
    "distill": {"anchor": 0.0, "distill": 2.0, "distill_share": 0.5, "triplet": 2.0, "triplet_margin": 0.4,
                "freeze": 0},
}
# auto: "distill" when dlib puts more than this share of the user's different-person pairs within 0.6
# (its operating point lets about 1 % through on general faces), else "anchor"; see dlibplus.regime.
# The default is "anchor": auto was measured not to meet "never worse than dlib" on every kpop row.
REGIME_CHOICES = ("auto", *REGIMES)
CONFUSED_SHARE = 0.2
# --folds 0 (auto) cross-fits when the median person has at most this many photos: in the suite (BENCHMARKS.md)
# cross-fitting named more test photos than one split over the 2-, 4-, 7- and 10-photo rows; with ~12 per
# person (kpop 50/50) it did not pay for its time
SMALL_FOLDER = 10
# how cross-fitting makes the network it hands back: "retrain" one more run on every photo for the folds' median
# best epochs; "soup" the mean of the folds' best weights (no further training; see dlibplus.crossfit)
CROSSFIT_NETWORKS = ("retrain", "soup")


@dataclass(frozen=True)
class FinetuneConfig:
    """Every knob of a fine-tuning run; saved as JSON beside the weights.

    Learning rates are per step; ``freeze`` counts stages from the input (stem, layer1..layer5, fc).
    ``target_far``: ``None`` calibrates distance 0.6 to the point of best balanced accuracy on the user's
    photos (what 0.6 means for dlib on general faces); a rate puts 0.6 at that false-accept rate instead
    (a stricter, open-set operating point). ``keep``: see :data:`KEEP_CHOICES`. ``augment_on``: where
    the augmentation runs: ``host`` (dlib's exact numpy jitter, in a background thread), ``device``
    (the same transform as batched tensor ops on the training device, :mod:`dlibplus.device_augment`)
    or ``auto`` (the device on CUDA, the host on CPU). ``head_epochs``: the first epochs train the head
    alone, the network frozen (LP-FT, Kumar et al. 2022), out of ``epochs``; the network's warm-up and
    cosine decay start after them. ``train_only``: see :data:`TRAIN_ONLY_CHOICES` (with ``freeze``, only
    the unfrozen stages' affine layers train). ``folds``: 0 (auto) cross-fits with 2 folds when the
    median person has at most :data:`SMALL_FOLDER` photos, else trains once; 1 trains
    once and validates on a split (``val_fraction``); K >= 2 cross-fits (:mod:`dlibplus.crossfit`): K runs,
    each validated on a K-th of every person's photos, choose and calibrate on all the photos, then one
    run on every photo makes the network handed back (K + 1 trainings). ``distill``: weight of a loss that
    keeps dlib's descriptors of faces nobody trained on, pixel mixes of two of the user's people (squared
    distance between the network's and dlib's 128-d descriptors, dlib units; 0: off); a function-space
    alternative to the ``anchor``. ``distill_share``: the share of each batch's faces mixed for it (fewer:
    cheaper steps). ``regime``: see :data:`REGIMES`; ``anchor``, ``distill``, ``distill_share``, ``triplet``,
    ``triplet_margin`` and ``freeze`` left ``None`` take the regime's values, at once for a named regime, in
    :func:`dlibplus.finetune.finetune` for ``auto`` (:meth:`with_regime`). ``judge_gallery``: see
    :data:`JUDGE_GALLERIES`; "grown" is a measured experiment (BENCHMARKS.md), not a command-line option.
    ``ema``: after every step a moving average of the trained network weights moves ``1 - ema`` of the way to
    them (0: off); validation, the kept epoch and everything after it use the average (Polyak averaging; an
    experiment measured on kpop only, BENCHMARKS.md, not a command-line option).
    ``crossfit_network``: see :data:`CROSSFIT_NETWORKS` (``folds`` >= 2 only); "soup" saves the last run's time
    but named fewer test photos on the benchmark suite (BENCHMARKS.md): an experiment, not a command-line option.
    ``echo``: augmented copies of each photo kept after the frozen stages and used again in later epochs
    (:mod:`dlibplus.echo`; host augmentation with ``freeze`` >= 1 and no distillation; 0: a fresh copy each epoch).
    ``fold_workers``: on the CPU, cross-fitting's folds train side by side, one process each, the torch threads
    shared out, when there are at most this many folds (0: the torch threads; 1: never, one after the other in
    this process; :mod:`dlibplus.folds`). Not with ``echo``, whose folds share one pool of copies.
    """

    head: str = "arcface"
    head_options: dict = field(default_factory=dict)
    center_loss: float = 0.0
    center_alpha: float = 0.5
    triplet: float | None = None  # None: the regime's
    triplet_margin: float | None = None  # None: the regime's
    metric_loss: float = 0.0
    epochs: int = 40
    people_per_batch: int = 8
    images_per_person: int = 4
    optimizer: str = "adamw"
    lr: float = 2e-5
    head_lr: float = 1e-2
    weight_decay: float = 1e-4
    anchor: float | None = None  # None: the regime's
    distill: float | None = None  # None: the regime's
    distill_share: float | None = None  # None: the regime's
    warmup_epochs: float = 2.0
    grad_clip: float = 5.0
    freeze: int | None = None  # None: the regime's
    head_epochs: int = 0
    train_only: str = "all"
    augment: bool = True
    augment_on: str = "auto"
    val_fraction: float = 0.25
    folds: int = 0
    patience: int = 15
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    target_far: float | None = None
    keep: str = "auto"
    regime: str = "anchor"
    judge_gallery: str = "trained"
    calibration: str = "balanced"  # see CALIBRATIONS
    ema: float = 0.0  # decay per step of a moving average of the network's weights (0: off; BENCHMARKS.md)
    crossfit_network: str = "retrain"
    echo: int = 0  # augmented copies a photo, kept after the frozen stages (0: a fresh copy every epoch)
    fold_workers: int = 0  # processes that train cross-fitting's folds side by side (0: auto; 1: none, one by one)

    def __post_init__(self):
        if self.regime not in REGIME_CHOICES:
            raise ValueError(f"regime must be one of {list(REGIME_CHOICES)}, not {self.regime!r}")
        if self.regime != "auto":
            for name, value in REGIMES[self.regime].items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)  # frozen: filled once, here
        if self.head not in HEAD_NAMES:
            raise ValueError(f"unknown head {self.head!r}; choose one of {list(HEAD_NAMES)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if self.epochs < 1 or self.people_per_batch < 2 or self.images_per_person < 1:
            raise ValueError("need epochs >= 1, people_per_batch >= 2, images_per_person >= 1")
        if self.augment_on not in ("auto", "host", "device"):
            raise ValueError(f"augment_on must be 'auto', 'host' or 'device', not {self.augment_on!r}")
        if not 0 <= self.head_epochs < self.epochs:
            raise ValueError(f"head_epochs must be >= 0 and below epochs ({self.epochs}), not {self.head_epochs}")
        if self.train_only not in TRAIN_ONLY_CHOICES:
            raise ValueError(f"train_only must be one of {list(TRAIN_ONLY_CHOICES)}, not {self.train_only!r}")
        if self.judge_gallery not in JUDGE_GALLERIES:
            raise ValueError(f"judge_gallery must be one of {list(JUDGE_GALLERIES)}, not {self.judge_gallery!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {list(CALIBRATIONS)}, not {self.calibration!r}")
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"keep must be one of {list(KEEP_CHOICES)}, not {self.keep!r}")
        if self.target_far is not None and not 0 < self.target_far < 1:
            raise ValueError(f"target_far must be in (0, 1), not {self.target_far}")
        if self.distill_share is not None and not 0 < self.distill_share <= 1:
            raise ValueError(f"distill_share must be in (0, 1], not {self.distill_share}")
        if self.crossfit_network not in CROSSFIT_NETWORKS:
            raise ValueError(f"crossfit_network must be one of {list(CROSSFIT_NETWORKS)}, "
                             f"not {self.crossfit_network!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), not {self.ema}")
        if self.folds < 0:
            raise ValueError(f"folds must be >= 0 (0: auto), not {self.folds}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), not {self.val_fraction}")
        positive = {"lr": self.lr, "head_lr": self.head_lr}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, not {value}")
        non_negative = {"weight_decay": self.weight_decay, "anchor": self.anchor, "distill": self.distill,
                        "warmup_epochs": self.warmup_epochs, "grad_clip": self.grad_clip,
                        "center_loss": self.center_loss, "triplet": self.triplet,
                        "metric_loss": self.metric_loss, "triplet_margin": self.triplet_margin,
                        "patience": self.patience, "freeze": self.freeze, "echo": self.echo,
                        "fold_workers": self.fold_workers}
        for name, value in non_negative.items():
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, not {value}")

    def check_head(self) -> None:
        """Build the head once with its options, so a bad margin or scale fails before any work
        (imports torch). :raises ValueError: naming the option."""
        from .heads import create_head

        try:
            create_head(self.head, 2, **self.head_options)
        except TypeError as exc:
            raise ValueError(f"head {self.head}: {exc}") from None

    def with_regime(self, regime: str) -> "FinetuneConfig":
        """This ``auto`` config with the named regime's values for the settings left ``None``."""
        if self.regime != "auto":
            raise ValueError(f"the regime is already {self.regime!r}")
        return dataclasses.replace(self, regime=regime)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
