"""Does `dlibplus finetune` beat dlib on kpop_idols15, without hurting people it never saw (lfw_dev)?

Protocol (issue 4): seeded 50/50 per-person split of kpop_idols15 (whole image as the face box).
dlib's KNN (train-knn defaults) is trained on the train half and tested on the test half; then the
network is fine-tuned on the train half only (its own validation split taken from that half), and the
same KNN is trained with the fine-tuned encoder. Verification: TAR at FAR over all test-half pairs.
Generalisation: verification over pairs of lfw_dev people (10-fold accuracy and TAR@FAR), dlib vs
fine-tuned, on the same images. Baseline and fine-tuned are measured in the same run.

    python benchmarks/bench_finetune.py --heads arcface cosface --out /tmp/ft-bench
    python benchmarks/bench_finetune.py --heads arcface cosface --seeds 0 1 2   # run-to-run spread
    python benchmarks/bench_finetune.py --heads arcface --train-fraction 0.5    # fewer photos per person
    python benchmarks/bench_finetune.py --heads arcface --hold-out 3            # 3 people as strangers

``--hold-out K``: K people (seeded by ``--split-seed``) are left out of fine-tuning and of train-knn; their
test-half photos are strangers nobody trained on, and the share train-knn calls "unknown" is reported.

``--seeds``: each seed is one fine-tuning run (its own validation split inside the train half, batches
and augmentation); the kpop train/test split stays the issue's (``--split-seed``). With several seeds the
table gets a mean ± standard deviation row per head.

``--variant NAME [KEY=VALUE ...]`` (repeatable) compares settings in the same run: every seed runs every
variant in turn (the first is the baseline: ``--variant default``), so a run stopped early still holds
paired seeds, and the table gets each variant's mean and its mean paired difference from the first.

    python benchmarks/bench_finetune.py --heads arcface --seeds 0 1 2 --variant default \
        --variant lpft head_epochs=5 --variant affine train_only=affine lr=1e-2 anchor=5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchlib import faces_root
from bench_suite import strangers_unknown
from dlibplus import metrics
from dlibplus.data import split_per_person
from dlibplus.faces import FaceSettings
from dlibplus.encoders import TorchEncoder
from dlibplus.knn import FaceKNN
from dlibplus.predict import UNKNOWN
from dlibplus.finetune_data import FinetuneData, drop_small_classes, load_chipset
from dlibplus.finetune import finetune
from dlibplus.train_config import FinetuneConfig

FACES = faces_root()


def closed_set(encoder, data, train_idx, test_idx, far=1e-3, strangers=None) -> dict:
    """The user's path on ``data``; with ``strangers`` (chips of people in neither ``data`` nor the fine-tuning),
    also the share of them train-knn calls "unknown"."""
    emb = encoder.encode(data.chips)
    names = np.array(data.classes)[data.labels]
    knn = FaceKNN().fit(emb[train_idx], names[train_idx])  # train-knn's default: method auto
    pred, _, _ = knn.predict_with_distance(emb[test_idx])  # names: an "unknown" counts as wrong
    vote = FaceKNN(method="knn").fit(emb[train_idx], names[train_idx]).predict(emb[test_idx])
    nearest, _ = metrics.nearest_identity(emb[train_idx], names[train_idx], emb[test_idx])
    dist, same = metrics.pair_distances(emb[test_idx], names[test_idx])
    tars = {f"tar@{r.far:g}": r.tar for r in metrics.tar_at_far(dist, same, (1e-2, far))}
    held_out = {} if strangers is None else {
        "never_trained_unknown": float(np.mean(knn.predict(encoder.encode(strangers)) == UNKNOWN))}
    return {"knn_accuracy": float(np.mean(pred == names[test_idx])), "knn_k": knn.k_, "knn_method": knn.method_,
            **held_out,
            "strangers_unknown": strangers_unknown(emb[train_idx], names[train_idx], emb[test_idx], names[test_idx]),
            "vote_accuracy": float(np.mean(vote == names[test_idx])),
            "1nn_accuracy": float(np.mean(nearest == names[test_idx])), **tars,
            "different_pairs_at_0.6": float(np.mean(dist[~same] <= 0.6)),
            "same_pairs_at_0.6": float(np.mean(dist[same] <= 0.6))}


def lfw_verification(encoder, lfw, max_people: int) -> dict:
    keep = np.isin(lfw.labels, np.arange(max_people))
    emb = encoder.encode(lfw.chips[keep])
    dist, same = metrics.pair_distances(emb, lfw.labels[keep])
    # LFW's protocol is balanced (as many different-person pairs as same-person ones): every same pair
    # and a seeded sample of as many different pairs, 10-fold accuracy with the threshold chosen on 9 folds
    rng = np.random.default_rng(0)
    diff = rng.choice(np.flatnonzero(~same), int(same.sum()), replace=False)
    pick = np.concatenate([np.flatnonzero(same), diff])
    kf = metrics.kfold_verification(dist[pick], same[pick], folds=10, seed=0)
    tars = {f"tar@{r.far:g}": r.tar for r in metrics.tar_at_far(dist, same, (1e-3, 1e-4))}
    return {"kfold_accuracy": kf.mean, "kfold_std": kf.std, "auc": metrics.auc(dist, same),
            "accuracy_at_0.6": metrics.accuracy_at_threshold(dist, same, 0.6), "n_images": int(keep.sum()),
            "n_pairs": int(len(dist)), **tars}


def parse_fields(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings as FinetuneConfig fields, each typed as its default (JSON for dicts/lists)."""
    fields = {}
    for kv in pairs:
        key, value = kv.split("=", 1)
        default = getattr(FinetuneConfig, key)
        fields[key] = json.loads(value) if default is None or value[:1] in "{[" else type(default)(value)
    return fields


def load_sets(split_seed: int = 0, progress: bool = True):
    """``(kpop, train_idx, test_idx, lfw)``: kpop_idols15 chips and its seeded 50/50 per-person split, and
    the lfw_dev chips of people with at least 2 photos."""
    kpop, _ = load_chipset(FACES / "kpop_idols15", FaceSettings(face_box="whole"), progress=False)
    train_idx, test_idx = split_per_person(kpop.labels, 0.5, split_seed)
    lfw, _ = load_chipset(FACES / "lfw_dev", FaceSettings(), progress=progress)
    lfw, _ = drop_small_classes(lfw, 2)
    return kpop, train_idx, test_idx, lfw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", nargs="+", default=["arcface", "cosface", "sphereface", "softmax", "combined"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/dlibplus-bench-finetune"))
    ap.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    ap.add_argument("--lfw-people", type=int, default=300, help="lfw_dev people used for the generalisation check")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one fine-tuning run per seed")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the kpop 50/50 train/test split")
    ap.add_argument("--train-fraction", type=float, default=1.0,
                    help="fine-tune on this share of each person's train-half photos (a learning curve); the "
                         "KNN gallery and the test half stay the same")
    ap.add_argument("--hold-out", type=int, default=0,
                    help="leave this many people (seeded by --split-seed) out of fine-tuning and train-knn; their "
                         "test-half photos are strangers, and the share called unknown is reported")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra FinetuneConfig fields, e.g. --set lr=1e-4 --set freeze=3")
    ap.add_argument("--variant", action="append", nargs="+", default=[], metavar=("NAME", "KEY=VALUE"),
                    help="a named setting to compare in the same run (repeatable; the first is the baseline)")
    args = ap.parse_args()

    extra = parse_fields(args.set)
    variants = {v[0]: {**extra, **parse_fields(v[1:])} for v in args.variant} or {"": extra}

    kpop, train_idx, test_idx, lfw = load_sets(args.split_seed)
    strangers = None
    if args.hold_out:  # people left out of everything but the strangers' test: seeded by the split's seed
        held = np.random.default_rng(args.split_seed).choice(len(kpop.classes), args.hold_out, replace=False)
        strangers = kpop.chips[test_idx[np.isin(kpop.labels[test_idx], held)]]
        print(f"held out of fine-tuning and train-knn: {', '.join(kpop.classes[i] for i in held)} "
              f"({len(strangers)} test photos as strangers)", file=sys.stderr)
        rows = np.flatnonzero(~np.isin(kpop.labels, held))
        new_index = -np.ones(len(kpop.labels), np.int64)
        new_index[rows] = np.arange(len(rows))
        kpop, _ = drop_small_classes(kpop.subset(rows), 1)
        train_idx, test_idx = (new_index[i[new_index[i] >= 0]] for i in (train_idx, test_idx))
    dlib_like = TorchEncoder(device="cpu")  # dlib's weights; equals dlib to ~1e-6 (tests/test_dlibnet.py)
    results = {"dlib": {"kpop": closed_set(dlib_like, kpop, train_idx, test_idx, strangers=strangers),
                        "lfw": lfw_verification(dlib_like, lfw, args.lfw_people)}}
    print(json.dumps({"dlib": results["dlib"]}, indent=1), flush=True)

    half = kpop.subset(train_idx)
    if args.train_fraction < 1:
        kept, _ = split_per_person(half.labels, 1 - args.train_fraction, args.split_seed)
        half = half.subset(np.sort(kept))
        print(f"fine-tuning on {len(kept)} of {len(train_idx)} train-half photos", file=sys.stderr)
    for head in args.heads:
        for seed in args.seeds:
            for variant, fields in variants.items():  # seeds outermost: a stopped run holds paired seeds
                inner_train, inner_val = split_per_person(half.labels, FinetuneConfig.val_fraction, seed)
                config = FinetuneConfig(head=head, epochs=args.epochs, seed=seed, **fields)
                group = f"{head} {variant}".strip()
                name = group if len(args.seeds) == 1 else f"{group} seed {seed}"
                out = args.out / name.replace(" ", "_")
                t0 = time.time()
                data = FinetuneData(half.subset(inner_train), half.subset(inner_val), people=None,
                                    folder="kpop (bench)")
                res = finetune(data, out, config, progress=False, overwrite=True,
                               echo=lambda m: print(m, file=sys.stderr))
                wall = time.time() - t0
                enc = TorchEncoder.from_dat(out / "model.dat", device="cpu")
                results[name] = {"head": head, "variant": variant, "group": group, "seed": seed,
                                 "kpop": closed_set(enc, kpop, train_idx, test_idx, strangers=strangers),
                                 "lfw": lfw_verification(enc, lfw, args.lfw_people),
                                 "wall_seconds": wall, "best_epoch": res.best_epoch, "epochs_run": len(res.history),
                                 "val_better_than_dlib": res.better, "kept": res.selection.chosen.name,
                                 "regime": json.loads((out / "metadata.json").read_text()).get("regime", {})}
                print(json.dumps({name: results[name]}, indent=1), flush=True)

    columns = [("kpop", "knn_accuracy", 3), ("kpop", "strangers_unknown", 3), ("kpop", "1nn_accuracy", 3),
               ("kpop", "tar@0.001", 3), ("kpop", "tar@0.01", 3), ("kpop", "different_pairs_at_0.6", 3),
               ("lfw", "kfold_accuracy", 4), ("lfw", "tar@0.001", 3)]
    held = [("kpop", "never_trained_unknown", 3)] if args.hold_out else []
    columns = columns[:2] + held + columns[2:]
    print("\n| model | KNN acc | strangers unknown | " + "held-out people unknown | " * bool(held) +
          "1-NN acc | TAR@1e-3 | TAR@1e-2 | diff. pairs ≤ 0.6 | LFW 10-fold acc | LFW TAR@1e-3 | regime: kept | "
          "fine-tune wall s |")
    print("|" + "---|" * (len(columns) + 3))
    for name, r in results.items():
        cells = [f"{r[part][key]:.{digits}f}" for part, key, digits in columns]
        kept = f"{r.get('regime', {}).get('regime', '–')}: {r.get('kept', '–')}"
        print(f"| {name} | {' | '.join(cells)} | {kept} | {r.get('wall_seconds', 0):.0f} |")
    groups = list(dict.fromkeys(r["group"] for r in results.values() if "group" in r))
    if len(args.seeds) > 1:
        for group in groups:
            runs = [r for r in results.values() if r.get("group") == group]
            cells = [f"{np.mean([r[part][key] for r in runs]):.{digits}f} ± "
                     f"{np.std([r[part][key] for r in runs], ddof=1):.{digits}f}" for part, key, digits in columns]
            wall = np.mean([r["wall_seconds"] for r in runs])
            print(f"| {group}, mean ± sd of {len(runs)} | {' | '.join(cells)} | | {wall:.0f} |")
    if len(variants) > 1:
        print_paired(results, columns)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


def print_paired(results: dict, columns: list) -> None:
    """Each variant's mean difference from the first variant of its head, over the seeds both ran."""
    print("\n| variant − baseline (same seeds) | seeds | " + " | ".join(key for _, key, _ in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    runs = [r for r in results.values() if "group" in r]
    for head in dict.fromkeys(r["head"] for r in runs):
        mine = [r for r in runs if r["head"] == head]
        base = {r["seed"]: r for r in mine if r["variant"] == mine[0]["variant"]}
        for variant in list(dict.fromkeys(r["variant"] for r in mine))[1:]:
            pairs = [(r, base[r["seed"]]) for r in mine if r["variant"] == variant and r["seed"] in base]
            cells = [f"{np.mean([a[part][key] - b[part][key] for a, b in pairs]):+.{digits}f}"
                     for part, key, digits in columns]
            print(f"| {head} {variant} | {len(pairs)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
