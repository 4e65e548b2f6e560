"""Where does 0.6 land on the test photos, for each way of calibrating a fine-tuned network?

Issue 10's target: at 0.6, the share of same-person test pairs rejected and of different-person test
pairs let through should both be no worse than the network's own equal-error rate on those photos plus
1 point. Calibration only scales a network's output, so it can be replayed without fine-tuning again:
this script takes the folders a ``bench_suite.py`` run wrote (``<set>-<n_train>-<seed>/``), rebuilds the
same split, divides the kept network's output by the scale it was written with, and for each rule fits
the threshold on the validation photos' probe pairs (as ``finetune`` does) and reads, on the test photos:
the rejected/let-through shares at 0.6, the EER, and the user's path (train-knn + predict at 0.6, an
"unknown" counting as wrong).

    python benchmarks/bench_calibration.py /tmp/dlibplus-suite /tmp/suite-small ...

Folders whose kept network is dlib (not calibrated) are listed with dlib's figures only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench_suite import folder_split
from dlibplus import metrics
from dlibplus.calibration import TOLERANCE, ProbePairs, balanced_threshold, probe_pairs
from dlibplus.data import split_per_person
from dlibplus.encoders import TorchEncoder
from dlibplus.knn import FaceKNN


def balanced(pairs: ProbePairs) -> float:
    """What ``finetune`` does: best balanced accuracy, ties to the cut closest to equal error."""
    return balanced_threshold(pairs.dist, pairs.same)


def equal_error(pairs: ProbePairs) -> float:
    """The interpolated equal-error threshold of the pairs."""
    return metrics.eer(pairs.dist, pairs.same).threshold


def normal_fit(pairs: ProbePairs) -> float:
    """Equal error of two normal distributions fitted to the same- and different-person distances:
    ``(t - mu_same) / sd_same == (mu_diff - t) / sd_diff``."""
    g, i = pairs.dist[pairs.same], pairs.dist[~pairs.same]
    return float((g.mean() * i.std() + i.mean() * g.std()) / (g.std() + i.std()))


def bagged(pairs: ProbePairs, draws: int = 200) -> float:
    """Median of the balanced thresholds over bootstrap draws of the validation photos (Poisson weights;
    the gallery photos stay fixed)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(draws):
        w = rng.poisson(1.0, int(max(pairs.b.max(), pairs.a.max())) + 1).astype(float)
        w[pairs.n_probes:] = 1.0
        weight = w[pairs.a] * w[pairs.b]
        if weight[pairs.same].sum() > 0 and weight[~pairs.same].sum() > 0:
            out.append(balanced_threshold(pairs.dist, pairs.same, weight))
    return float(np.median(out))


RULES = {"balanced": balanced, "eer": equal_error, "normal": normal_fit, "bagged": bagged}


def rates(dist: np.ndarray, same: np.ndarray, threshold: float) -> tuple[float, float]:
    """(same-person pairs rejected, different-person pairs accepted) at ``threshold``."""
    accept = dist <= threshold
    return float(1 - accept[same].mean()), float(accept[~same].mean())


def user_accuracy(train_emb, train_y, test_emb, test_y) -> tuple[float, float]:
    # the example's vote: the replay recorded in BENCHMARKS.md predates train-knn's --method auto
    names, _, people = FaceKNN(method="knn").fit(train_emb, train_y).predict_with_distance(test_emb)
    return float(np.mean(names == test_y)), float(np.mean((people == test_y) & (names != test_y)))


def replay(folder: Path, cache: dict) -> dict | None:
    found = folder_split(folder, cache)
    if found is None:
        return None
    name, seed, sp = found
    n_train, data = len(sp.train), sp.data
    meta = json.loads((folder / "metadata.json").read_text())
    names = np.array(data.classes)[data.labels]
    inner_train, inner_val = split_per_person(data.labels[sp.train], meta["config"]["val_fraction"], seed)
    tr, va = sp.train[inner_train], sp.train[inner_val]
    scale = float(meta["calibration"]["scale"])
    raw = TorchEncoder.from_dat(folder / "model.dat", device="cpu").encode(data.chips) / scale
    test_d, test_s = metrics.pair_distances(raw[sp.test], names[sp.test])
    # the pairs a user's predict meets: each test photo against the gallery and the other test photos
    user = probe_pairs(raw[sp.train], names[sp.train], raw[sp.test], names[sp.test])
    row = {"set": name, "n_train": n_train, "seed": seed, "kept": meta["selection"]["chosen"]["name"],
           "test_eer": metrics.eer(test_d, test_s).rate, "probe_eer": metrics.eer(user.dist, user.same).rate}
    pairs = probe_pairs(raw[tr], names[tr], raw[va], names[va])
    for rule, fit in RULES.items():
        t = fit(pairs) if meta["selection"]["chosen"]["alpha"] > 0 else TOLERANCE
        emb = raw * (TOLERANCE / t)
        frr, far = rates(test_d * (TOLERANCE / t), test_s, TOLERANCE)
        pfrr, pfar = rates(user.dist * (TOLERANCE / t), user.same, TOLERANCE)
        acc, unknown = user_accuracy(emb[sp.train], names[sp.train], emb[sp.test], names[sp.test])
        row[rule] = {"threshold": t, "frr": frr, "far": far, "accuracy": acc, "unknown": unknown,
                     "probe_frr": pfrr, "probe_far": pfar,
                     "meets": bool(max(frr, far) <= row["test_eer"] + 0.01)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="bench_suite --out folders")
    args = ap.parse_args()
    cache: dict = {}
    rows, seen = [], set()
    for run in args.runs:
        for folder in sorted(p for p in run.iterdir() if (p / "metadata.json").exists()):
            if folder.name in seen:  # the same set, split and seed in two runs: the same deterministic model
                continue
            seen.add(folder.name)
            row = replay(folder, cache)
            if row:
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| set | train photos | seed | kept | test EER / probe EER | " +
          " | ".join(f"{r}: rejected / let through at 0.6 (meets); probe pairs; acc / unknown" for r in RULES) + " |")
    print("|---|---|---|---|---|" + "---|" * len(RULES))
    for r in rows:
        cells = [f"{r[k]['frr']:.3f} / {r[k]['far']:.3f} ({'yes' if r[k]['meets'] else 'no'}) / "
                 f"{r[k]['probe_frr']:.3f} / {r[k]['probe_far']:.3f}; {r[k]['accuracy']:.3f} / {r[k]['unknown']:.3f}"
                 for k in RULES]
        print(f"| {r['set']} | {r['n_train']} | {r['seed']} | {r['kept']} | {r['test_eer']:.3f} / "
              f"{r['probe_eer']:.3f} | " + " | ".join(cells) + " |")

    calibrated = [r for r in rows if r["kept"] != "dlib"]
    print(f"\nover the {len(calibrated)} calibrated networks: rule, how far the larger error rate at 0.6 is above the "
          "test EER (mean, worst), rows within EER + 1 point, user's-path accuracy (mean)")
    for rule in RULES:
        excess = [max(r[rule]["frr"], r[rule]["far"]) - r["test_eer"] for r in calibrated]
        print(f"{rule:>9}: {np.mean(excess):+.3f} {max(excess):+.3f}  {sum(r[rule]['meets'] for r in calibrated)}"
              f"/{len(calibrated)}  {np.mean([r[rule]['accuracy'] for r in calibrated]):.4f}")


if __name__ == "__main__":
    main()
