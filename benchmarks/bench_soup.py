"""Cross-fitting's last step: one more run on every photo, or the mean of the folds' weights (a model soup)?

`finetune --folds 2` (the default for small folders) trains two folds, chooses on every photo, then trains a
third time on every photo for the folds' median best epochs: a third of the wall time or more. The mean of the
two folds' best weights is a network that learnt from every photo too, at no training cost. For each suite split
(bench_suite's sets and seeded splits), in the same run: the folds once, then both final networks (each
interpolated and scaled as the folds chose), against dlib, through train-knn + predict at 0.6 (an "unknown"
counted as wrong), with lfw_dev 10-fold accuracy of people never trained on and the seconds of each step.

    python benchmarks/bench_soup.py --sets kpop_idols15 glint360k_celeb24 --counts 2 4 --seeds 0 --out /tmp/soup

Prints one JSON line per split and a table; ``--out`` gets ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import bench_suite as bs
from dlibplus.crossfit import cross_validate, retrained, souped
from dlibplus.data import split_per_person
from dlibplus.distributed import init_distributed, training_device
from dlibplus.encoders import TorchEncoder
from dlibplus.finetune import seed_run
from dlibplus.finetune_data import ChipSet, FinetuneData
from dlibplus.finish import load_scaled
from dlibplus.selection import bootstrap_gain, interpolate
from dlibplus.train import encoder_of
from dlibplus.train_config import FinetuneConfig

NETWORKS = ("retrain", "soup")


def photos_of(sp: bs.Split, config: FinetuneConfig) -> ChipSet:
    """The split's training photos in the order `finetune` pools them (its inner split's training, then
    validation photos, as bench_suite hands them to it), so the folds are dealt as the command deals them."""
    train_set = sp.data.subset(sp.train)
    inner_train, inner_val = split_per_person(train_set.labels, config.val_fraction, config.seed)
    return FinetuneData(train_set.subset(inner_train), train_set.subset(inner_val), people=None).pooled()


def run_split(name: str, sp: bs.Split, seed: int, dlib, lfw) -> dict:
    config = FinetuneConfig(seed=seed, device="cpu", folds=2)
    dist_info = init_distributed(config.device)
    device = training_device(config.device, dist_info)
    seed_run(config, device)
    data = sp.data
    names = np.array(data.classes)[data.labels]
    used = np.union1d(sp.train, sp.test)
    quiet = lambda m: None  # noqa: E731
    t0 = time.time()
    cf = cross_validate(photos_of(sp, config), config, device, dist_info, progress=False, say=quiet)
    seconds = {"folds": time.time() - t0}
    alpha, scale = cf.selection.chosen.alpha, cf.selection.chosen.point.scale
    row = {"set": name, "seed": seed, "n_train": len(sp.train), "n_test": len(sp.test),
           "kept": cf.selection.chosen.name, "best_epochs": cf.best_epochs}
    correct = {}
    encoders = {"dlib": dlib}
    for network in NETWORKS:
        t0 = time.time()
        if network == "soup":
            run, state = souped(cf, config, device, dist_info)
        else:
            run, state = retrained(cf, config, device, dist_info, progress=False, say=quiet)
        load_scaled(run.backbone, interpolate(run.base_state, state.best_backbone, alpha), scale)
        seconds[network] = time.time() - t0
        encoders[network] = encoder_of(run.backbone, device)
    for label, enc in encoders.items():
        emb = np.zeros((len(data.chips), 128))
        emb[used] = enc.encode(data.chips[used])
        measured = bs.user_path(emb[sp.train], names[sp.train], emb[sp.test], names[sp.test])
        correct[label] = measured.pop("correct")
        row[label] = {k: measured[k] for k in ("knn_accuracy", "unknown_rate", "1nn_accuracy", "tar@0.001",
                                               "different_at_0.6", "same_at_0.6", "within_eer_1pt")}
        kept_dlib = alpha == 0 and label != "dlib"  # the same network as dlib: its lfw figure is dlib's
        row[label]["lfw_10fold"] = row["dlib"]["lfw_10fold"] if kept_dlib else bs.lfw_general(enc, lfw)
    for new, old in (("soup", "retrain"), ("soup", "dlib"), ("retrain", "dlib")):
        draws = bootstrap_gain(correct[new], correct[old], names[sp.test], seed=seed)
        row[f"{new} - {old}"] = [row[new]["knn_accuracy"] - row[old]["knn_accuracy"],
                                 float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]
    row["seconds"] = seconds
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bs.add_split_options(ap)
    ap.add_argument("--out", type=Path, default=Path("/tmp/dlibplus-soup"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dlib = TorchEncoder(device="cpu")
    results = []
    for name in args.sets:
        data = bs.load_set(name, progress=False)
        lfw = bs.general_lfw(set(data.classes) if bs.SETS[name][0] == "lfw_dev" else set())
        for count, seed, sp in bs.suite_splits(name, data, args):
            row = run_split(name, sp, seed, dlib, lfw)
            row["count"] = count
            results.append(row)
            print(json.dumps(row), flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print("| set | photos/person | seed | kept | dlib | retrain | soup | soup − retrain (95 % CI) | "
          "lfw 10-fold dlib / retrain / soup | s folds / retrain / soup |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        d = r["soup - retrain"]
        print(f"| {r['set']} | {r['count']} | {r['seed']} | {r['kept']} | {r['dlib']['knn_accuracy']:.3f} | "
              f"{r['retrain']['knn_accuracy']:.3f} | {r['soup']['knn_accuracy']:.3f} | {d[0]:+.3f} [{d[1]:+.3f}, "
              f"{d[2]:+.3f}] | {r['dlib']['lfw_10fold']:.4f} / {r['retrain']['lfw_10fold']:.4f} / "
              f"{r['soup']['lfw_10fold']:.4f} | {r['seconds']['folds']:.0f} / {r['seconds']['retrain']:.0f} / "
              f"{r['seconds']['soup']:.0f} |")
    if results:
        for key in ("dlib", "retrain", "soup"):
            print(key, "mean train-knn acc", np.mean([r[key]["knn_accuracy"] for r in results]),
                  "lfw", np.mean([r[key]["lfw_10fold"] for r in results]))


if __name__ == "__main__":
    main()
