"""Does `dlibplus finetune` make a user's recognition better, on every labelled set, at every photo count?

For each set in ``../shared/data/faces`` with enough people and each number of training photos per
person (2, 4, and "all" up to ``--max-per-person``), with a seeded per-person split (half of each
person's photos are the test photos, the training photos are drawn from the other half), in the same run:

- **dlib**: train-knn on the training photos, predict every test photo at tolerance 0.6 (an "unknown"
  counts as wrong), as a user does today; train-knn's default ``--method auto`` (vote or class means by
  leave-one-out), and beside it the example's vote of the k nearest photos (``--method knn``);
- **fine-tuned**: ``finetune`` on the same training photos (library call, default settings: the run picks
  dlib, an interpolation or the fine-tuned weights), then the same train-knn + predict with its encoder;
- for both: 1-NN accuracy, the share of known test photos called "unknown", the share of test photos called
  "unknown" when their own person is left out of train-knn (strangers: what 0.6 lets through in a gallery search,
  where the pairs' rate adds up over every photo held), TAR at FAR 1e-3 and 1e-2
  over all test pairs, same/different pairs accepted at 0.6, a linear SVM and class-mean prototypes on
  the same encodings (what a user might try instead of fine-tuning), and lfw_dev 10-fold verification
  accuracy over people never trained on;
- the test pairs' equal-error rate (EER) of each network, and whether at 0.6 both the share of same-person
  pairs rejected and of different-person pairs let through are within that EER + 1 point;
- the difference in train-knn accuracy with a 95 % bootstrap interval over people, and the wall time;
- with ``--jitters N``, also both networks with dlib's jitter on every photo (``train-knn --jitters N``, scaled
  as it scales them, on a sample of the training photos): what a user would try instead of fine-tuning, and on top of it
  (no lfw figure for the jittered networks: it would cost 10 lfw encodings per split).

    python benchmarks/bench_suite.py --out /tmp/suite                    # every set, counts 2 4 all, seed 0
    python benchmarks/bench_suite.py --sets kpop_idols15 --seeds 0 1 2   # one set, three seeds
    python benchmarks/bench_suite.py --counts 2 4 --jitters 10          # also each network jittered
    python benchmarks/bench_suite.py --set echo=20 --set seed=100       # other settings; another training draw

``--set KEY=VALUE`` sets a ``FinetuneConfig`` field; ``--set seed=N`` trains with seed N (its folds, batches and
jitter) on the splits of ``--seeds``: how far the figures move when only the training's draws change.

Writes ``results.json`` and prints a markdown table. On 2 CPU cores one seed over every set takes about
half an hour (most of it fine-tuning).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchlib import faces_root
from dlibplus import metrics
from dlibplus.encoders import TorchEncoder, with_jitter
from dlibplus.faces import FaceSettings
from dlibplus.finetune_data import ChipSet, FinetuneData, drop_small_classes, load_chipset
from dlibplus.jitter_scale import scale_for
from dlibplus.knn import FaceKNN
from dlibplus.selection import bootstrap_gain
from dlibplus.finetune import finetune
from dlibplus.train_config import FinetuneConfig

FACES = faces_root()
WHOLE, DETECT = FaceSettings(face_box="whole"), FaceSettings()
# set -> (folder, settings, minimum photos per person to take part)
SETS = {
    "kpop_idols15": ("kpop_idols15", WHOLE, 4),
    "glint360k_celeb24": ("glint360k_celeb24", WHOLE, 4),
    "orl_att": ("orl_att", WHOLE, 4),
    "yale_faces": ("yale_faces", DETECT, 4),
    "five_celebrity": ("five_celebrity", WHOLE, 4),
    "deepface_tests": ("deepface_tests", DETECT, 4),
    "lfw_dev4": ("lfw_dev", DETECT, 8),  # lfw_dev people with >= 8 photos (4 test, up to 4 train)
}
LFW_GENERAL_PEOPLE = 300  # lfw_dev people (never trained on) of the generalisation check


@dataclass
class Split:
    """Chips of one set with a seeded split: ``test`` half, ``train`` drawn from the other half."""

    data: ChipSet
    train: np.ndarray
    test: np.ndarray


def folder_split(folder: Path, cache: dict[str, ChipSet]) -> tuple[str, int, Split] | None:
    """The set, seed and split of a folder this script wrote (``<set>-<n_train>-<seed>``), or ``None``.
    ``cache``: sets already loaded, by name (filled here)."""
    m = re.fullmatch(r"(.+)-(\d+)-(\d+)", folder.name)
    if not m or m.group(1) not in SETS:
        return None
    name, n_train, seed = m.group(1), int(m.group(2)), int(m.group(3))
    if name not in cache:
        cache[name] = load_set(name, progress=False)
    found = (split(cache[name], per, seed) for per in (2, 4, 7, 8, 10, None))  # 8: an earlier --max-per-person
    sp = next((s for s in found if len(s.train) == n_train), None)
    return None if sp is None else (name, seed, sp)


def split(data: ChipSet, per_person: int | None, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for person in range(len(data.classes)):
        idx = rng.permutation(np.flatnonzero(data.labels == person))
        half = len(idx) // 2
        test += idx[:half].tolist()
        pool = idx[half:]
        train += pool[:per_person].tolist() if per_person else pool.tolist()
    return Split(data, np.sort(train), np.sort(test))


def strangers_unknown(emb_train, y_train, emb_test, y_test) -> float:
    """Share of test photos called "unknown" at 0.6 by train-knn on the training photos of everyone but their
    own person: each person in turn as a stranger to the gallery (the network may have trained on them; dlib
    has not)."""
    from dlibplus.predict import UNKNOWN

    called = []
    for person in np.unique(y_test):
        others = y_train != person
        names = FaceKNN().fit(emb_train[others], y_train[others]).predict(emb_test[y_test == person])
        called.append(names == UNKNOWN)
    return float(np.mean(np.concatenate(called)))


def user_path(emb_train, y_train, emb_test, y_test) -> dict:
    """train-knn + predict at 0.6 (unknown = wrong), strangers called unknown, 1-NN, SVM, prototypes, pairs at
    0.6, TAR."""
    from sklearn.svm import LinearSVC

    knn = FaceKNN().fit(emb_train, y_train)  # train-knn's default (method auto)
    names, _, people = knn.predict_with_distance(emb_test)
    correct = names == y_test
    vote = FaceKNN(method="knn").fit(emb_train, y_train).predict(emb_test)  # the example's vote
    nearest, _ = metrics.nearest_identity(emb_train, y_train, emb_test)
    classes = np.unique(y_train)
    protos = np.stack([emb_train[y_train == c].mean(0) for c in classes])
    proto_pred = classes[np.argmin(((emb_test[:, None] - protos[None]) ** 2).sum(-1), axis=1)]
    svm_pred = LinearSVC(C=1.0, max_iter=20000).fit(emb_train, y_train).predict(emb_test)
    dist, same = metrics.pair_distances(emb_test, y_test)
    tars = {f"tar@{r.far:g}": r.tar for r in metrics.tar_at_far(dist, same, (1e-3, 1e-2))}
    eer = metrics.eer(dist, same).rate
    rejected, let_through = float(np.mean(dist[same] > 0.6)), float(np.mean(dist[~same] <= 0.6))
    return {"knn_accuracy": float(correct.mean()), "correct": correct, "knn_method": knn.method_,
            "vote_accuracy": float(np.mean(vote == y_test)),
            "unknown_rate": float(np.mean((people == y_test) & (names != y_test))),
            "strangers_unknown": strangers_unknown(emb_train, y_train, emb_test, y_test),
            "1nn_accuracy": float(np.mean(nearest == y_test)), "svm_accuracy": float(np.mean(svm_pred == y_test)),
            "prototype_accuracy": float(np.mean(proto_pred == y_test)),
            "same_at_0.6": 1 - rejected, "different_at_0.6": let_through, "eer": eer,
            # issue 10: at 0.6, both error rates within the network's own equal-error rate + 1 point
            "within_eer_1pt": bool(max(rejected, let_through) <= eer + 0.01), **tars}


def lfw_general(encoder, lfw: ChipSet) -> float:
    """10-fold accuracy over balanced pairs of lfw_dev people never trained on."""
    return balanced_10fold(*metrics.pair_distances(encoder.encode(lfw.chips), lfw.labels))


def balanced_10fold(dist: np.ndarray, same: np.ndarray) -> float:
    """10-fold verification accuracy over every same-person pair and a seeded draw of as many different ones."""
    rng = np.random.default_rng(0)
    diff = rng.choice(np.flatnonzero(~same), int(same.sum()), replace=False)
    pick = np.concatenate([np.flatnonzero(same), diff])
    return float(metrics.kfold_verification(dist[pick], same[pick], folds=10, seed=0).mean)


def load_set(name: str, progress: bool) -> ChipSet:
    folder, settings, minimum = SETS[name]
    data, _ = load_chipset(FACES / folder, settings, progress=progress)
    return drop_small_classes(data, minimum)[0]


def general_lfw(exclude: set[str]) -> ChipSet:
    lfw, _ = load_chipset(FACES / "lfw_dev", DETECT, progress=False)
    keep_people = [i for i, c in enumerate(lfw.classes) if c not in exclude][:LFW_GENERAL_PEOPLE]
    rows = np.flatnonzero(np.isin(lfw.labels, keep_people))
    return drop_small_classes(lfw.subset(rows), 2)[0]


def run_one(name: str, sp: Split, seed: int, config: FinetuneConfig, dlib, lfw, workdir: Path,
            jitters: int = 1, dlib_jittered: "JitteredOnce | None" = None) -> dict:
    """One split: dlib against the default finetune, and with ``jitters`` > 1 both jittered too
    (``dlib_jittered``: dlib's jittered descriptors of ``sp.data``'s chips, each computed once per set)."""
    data = sp.data
    names = np.array(data.classes)[data.labels]
    train_set = data.subset(sp.train)
    from dlibplus.data import split_per_person

    inner_train, inner_val = split_per_person(train_set.labels, config.val_fraction, seed)
    fdata = FinetuneData(train_set.subset(inner_train), train_set.subset(inner_val), people=None,
                         folder=f"{name} (suite)")
    t0 = time.time()
    out = workdir / f"{name}-{len(sp.train)}-{seed}"
    result = finetune(fdata, out, config, progress=False, overwrite=True, echo=lambda m: None)
    wall = time.time() - t0
    tuned = TorchEncoder.from_dat(out / "model.dat", device="cpu")
    rows, correct, plain = {}, {}, {}
    for label, enc in (("dlib", dlib), ("finetuned", tuned)):
        emb = plain[label] = enc.encode(data.chips)
        rows[label] = user_path(emb[sp.train], names[sp.train], emb[sp.test], names[sp.test])
        rows[label]["lfw_10fold"] = lfw_general(enc, lfw)
        correct[label] = rows[label].pop("correct")
    if jitters > 1:  # only the split's photos: a set such as lfw_dev4 holds many more
        used = np.union1d(sp.train, sp.test)
        tuned_jittered = np.zeros((len(data.chips), 128))
        tuned_jittered[used] = with_jitter(tuned, jitters).encode(data.chips[used])
        for label, base, emb in (("dlib_jitter", "dlib", dlib_jittered.get(used)),
                                 ("finetuned_jitter", "finetuned", tuned_jittered)):
            # train-knn's scale with the training photos as its folder
            scale = scale_for(plain[base][sp.train], emb[sp.train], names[sp.train])
            emb = emb * scale
            rows[label] = user_path(emb[sp.train], names[sp.train], emb[sp.test], names[sp.test])
            rows[label]["jitter_scale"] = scale
            correct[label] = rows[label].pop("correct")
    gains = {}
    for new, old in (("finetuned", "dlib"), ("dlib_jitter", "dlib"), ("finetuned_jitter", "dlib_jitter"),
                     ("finetuned", "dlib_jitter")):
        if new in correct and old in correct:
            draws = bootstrap_gain(correct[new], correct[old], names[sp.test], seed=seed)
            gains[f"{new} - {old}"] = [rows[new]["knn_accuracy"] - rows[old]["knn_accuracy"],
                                       float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]
    regime = json.loads((out / "metadata.json").read_text()).get("regime", {})
    return {"set": name, "seed": seed, "n_people": len(data.classes), "n_train": len(sp.train),
            "n_test": len(sp.test), "regime": regime, "kept": result.selection.chosen.name,
            "beats_dlib": result.selection.beats_dlib,
            "wall_seconds": wall, "knn_gain": gains["finetuned - dlib"][0], "knn_gain_ci": gains["finetuned - dlib"][1:],
            "gains": gains, **rows}


class JitteredOnce:
    """An encoder's descriptors of a set's chips, each computed the first time a split asks for it."""

    def __init__(self, encoder, chips: np.ndarray):
        self.encoder, self.chips = encoder, chips
        self.emb, self.done = np.zeros((len(chips), 128)), np.zeros(len(chips), bool)

    def get(self, rows: np.ndarray) -> np.ndarray:
        """(n_chips, 128): the descriptors, computed at least for ``rows`` (the others may be zeros)."""
        todo = rows[~self.done[rows]]
        if len(todo):
            self.emb[todo] = self.encoder.encode(self.chips[todo])
            self.done[todo] = True
        return self.emb


def add_split_options(ap: argparse.ArgumentParser) -> None:
    """The options that pick the suite's splits: ``--sets``, ``--counts``, ``--max-per-person``, ``--seeds``."""
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--counts", nargs="+", default=["2", "4", "all"], help="training photos per person")
    ap.add_argument("--max-per-person", type=int, default=10, help="'all' means at most this many")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])


def suite_splits(name: str, data: ChipSet, args: argparse.Namespace):
    """``(count, seed, split)`` of each split ``args`` asks for on the set ``name``; a split in which someone has
    fewer than 2 training photos is skipped, and said."""
    for count in args.counts:
        per_person = args.max_per_person if count == "all" else int(count)
        for seed in args.seeds:
            sp = split(data, per_person, seed)
            if np.bincount(data.labels[sp.train]).min() < 2:
                print(f"skip {name} at {count}: a person has fewer than 2 training photos", file=sys.stderr)
                continue
            yield count, seed, sp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_options(ap)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dlibplus-suite")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FinetuneConfig fields")
    ap.add_argument("--jitters", type=int, default=1, help="also measure both networks with dlib's jitter (N copies)")
    args = ap.parse_args()
    extra = {}
    for kv in args.set:
        key, value = kv.split("=", 1)  # typed as the field's default: --set train_only=affine --set lr=1e-3
        default = getattr(FinetuneConfig, key)
        extra[key] = json.loads(value) if default is None or value[:1] in "{[" else type(default)(value)
    args.out.mkdir(parents=True, exist_ok=True)
    dlib = TorchEncoder(device="cpu")  # dlib's weights; equals dlib to ~1e-6 (tests/test_encoders.py)
    results = []
    for name in args.sets:
        data = load_set(name, progress=True)
        lfw = general_lfw(set(data.classes) if SETS[name][0] == "lfw_dev" else set())
        dlib_jittered = JitteredOnce(with_jitter(dlib, args.jitters), data.chips) if args.jitters > 1 else None
        for count, seed, sp in suite_splits(name, data, args):
            # the split's seed trains too, unless --set seed=N (another draw of folds, batches and jitter, same split)
            config = FinetuneConfig(**{"seed": seed, "device": "cpu", **extra})
            row = run_one(name, sp, seed, config, dlib, lfw, args.out, args.jitters, dlib_jittered)
            row["count"] = count
            results.append(row)
            print(json.dumps(row), flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    if args.jitters > 1:
        print_jitter_table(results)


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _yes(row: dict) -> str:
    return "yes" if row["within_eer_1pt"] else "no"


def print_table(results: list[dict]) -> None:
    print("\n| set | photos/person | regime | kept | dlib, the example's vote (knn) "
          "| train-knn acc dlib → ft (gain, 95 % CI) | method dlib → ft | unknown dlib → ft | "
          "strangers unknown dlib → ft | 1-NN | SVM dlib → ft | prototypes dlib → ft | TAR@1e-3 | "
          "diff. pairs ≤ 0.6 | same pairs > 0.6 | EER | 0.6 within EER + 1 pt | lfw 10-fold | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        d, f = r["dlib"], r["finetuned"]
        lo, hi = r["knn_gain_ci"]
        regime = r.get("regime", {}).get("regime", "–")
        print(f"| {r['set']} | {r['count']} ({r['n_train']}) | {regime} | {r['kept']} | {d['vote_accuracy']:.3f} | "
              f"{d['knn_accuracy']:.3f} → {f['knn_accuracy']:.3f} ({r['knn_gain']:+.3f}, [{lo:+.3f}, {hi:+.3f}]) | "
              f"{d['knn_method']} → {f['knn_method']} | {d['unknown_rate']:.3f} → "
              f"{f['unknown_rate']:.3f} | {_f(d.get('strangers_unknown'))} → {_f(f.get('strangers_unknown'))} | "
              f"{d['1nn_accuracy']:.3f} → {f['1nn_accuracy']:.3f} | "
              f"{d['svm_accuracy']:.3f} → {f['svm_accuracy']:.3f} | {d['prototype_accuracy']:.3f} → "
              f"{f['prototype_accuracy']:.3f} | {_f(d['tar@0.001'])} → {_f(f['tar@0.001'])} | "
              f"{d['different_at_0.6']:.3f} → {f['different_at_0.6']:.3f} | {1 - d['same_at_0.6']:.3f} → "
              f"{1 - f['same_at_0.6']:.3f} | {d['eer']:.3f} → {f['eer']:.3f} | {_yes(d)} → {_yes(f)} | "
              f"{d['lfw_10fold']:.4f} → "
              f"{f['lfw_10fold']:.4f} | {r['wall_seconds']:.0f} |")


def print_jitter_table(results: list[dict]) -> None:
    """train-knn + predict accuracy of dlib and the fine-tuned output, plain and jittered, with the gains that
    say whether fine-tuning still adds anything once the user jitters."""
    print("\n| set | photos/person | seed | kept | dlib → jittered | fine-tuned → jittered | "
          "ft − dlib (95 % CI) | ft jittered − dlib jittered (95 % CI) | ft − dlib jittered (95 % CI) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        g = r["gains"]
        cell = " | ".join(f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]" for v, lo, hi in
                          (g["finetuned - dlib"], g["finetuned_jitter - dlib_jitter"], g["finetuned - dlib_jitter"]))
        print(f"| {r['set']} | {r['count']} ({r['n_train']}) | {r['seed']} | {r['kept']} | "
              f"{r['dlib']['knn_accuracy']:.3f} → {r['dlib_jitter']['knn_accuracy']:.3f} | "
              f"{r['finetuned']['knn_accuracy']:.3f} → {r['finetuned_jitter']['knn_accuracy']:.3f} | {cell} |")


if __name__ == "__main__":
    main()
