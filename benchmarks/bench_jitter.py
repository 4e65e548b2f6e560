"""Is dlib's jitter (``train-knn --jitters N``, face_recognition's ``num_jitters``) what a user should try
instead of fine-tuning?

face_recognition's documentation suggests ``num_jitters=100`` for more accurate encodings. For every set and
split of ``bench_suite.py`` (2, 4 and all photos per person, the same seeded halves), this measures on dlib's
own network, in the same run, plain encodings against encodings averaged over ``--jitters`` jittered copies
of each chip (dlib's exact jitter: shift, zoom, rotation, mirror; what ``train-knn --jitters N`` stores and
``predict`` then applies to every photo it names), and, as a cheaper variant no command offers, only the
training photos jittered ("gallery"): train-knn + predict accuracy at 0.6 (an "unknown" is
wrong) with the gain's 95 % bootstrap interval over people, 1-NN accuracy, TAR at FAR 1e-3 over the test
pairs, the share of different-person test pairs within 0.6, and over lfw_dev people never trained on (both
sides jittered) the 10-fold accuracy and, at 0.6, the shares of different-person pairs let through and of
same-person pairs rejected. No training: every number is dlib's network on other inputs.

    python benchmarks/bench_jitter.py --jitters 10 --seeds 0 1 2 3 4

Encodes each set once per setting (jitter N costs N times the plain encoding) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench_suite import SETS, add_split_options, balanced_10fold, general_lfw, load_set, suite_splits, user_path
from dlibplus import metrics
from dlibplus.encoders import TorchEncoder, with_jitter
from dlibplus.selection import bootstrap_gain

COLUMNS = ("knn_accuracy", "1nn_accuracy", "tar@0.001", "different_at_0.6")
LFW = ("lfw_10fold", "lfw_different_at_0.6", "lfw_same_rejected_at_0.6")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_options(ap)
    ap.add_argument("--jitters", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    plain = TorchEncoder(device="cpu")
    jittered = with_jitter(plain, args.jitters)
    rows, lfw_cache = [], {}
    for name in args.sets:
        data = load_set(name, progress=False)
        names = np.array(data.classes)[data.labels]
        t0 = time.time()
        emb = {"plain": plain.encode(data.chips), "jitter": jittered.encode(data.chips)}
        exclude = frozenset(data.classes) if SETS[name][0] == "lfw_dev" else frozenset()
        if exclude not in lfw_cache:  # the same lfw people for every set but lfw_dev's own
            lfw = general_lfw(set(exclude))
            lfw_cache[exclude] = {"plain": lfw_stats(plain, lfw), "jitter": lfw_stats(jittered, lfw)}
        lfw_acc = lfw_cache[exclude]
        print(f"{name}: encoded in {time.time() - t0:.0f} s", flush=True)
        for count, seed, sp in suite_splits(name, data, args):
            got = {k: user_path(e[sp.train], names[sp.train], e[sp.test], names[sp.test]) for k, e in emb.items()}
            gallery = user_path(emb["jitter"][sp.train], names[sp.train], emb["plain"][sp.test], names[sp.test])
            draws = bootstrap_gain(got["jitter"].pop("correct"), got["plain"].pop("correct"), names[sp.test],
                                   seed=seed)
            row = {"set": name, "count": count, "seed": seed, "n_train": len(sp.train),
                   "gain_ci": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))],
                   **{k: {c: got[k][c] for c in COLUMNS} | lfw_acc[k] for k in emb},
                   "gallery": {c: gallery[c] for c in ("knn_accuracy", "1nn_accuracy")}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print_table(rows, args.jitters)


def lfw_stats(encoder, lfw) -> dict:
    """lfw_dev people never trained on: 10-fold accuracy over balanced pairs (as ``bench_suite``), and at
    0.6 the share of all different-person pairs let through and of same-person pairs rejected."""
    dist, same = metrics.pair_distances(encoder.encode(lfw.chips), lfw.labels)
    return {"lfw_10fold": balanced_10fold(dist, same),
            "lfw_different_at_0.6": float(np.mean(dist[~same] <= 0.6)),
            "lfw_same_rejected_at_0.6": float(np.mean(dist[same] > 0.6))}


def print_table(rows: list[dict], jitters: int) -> None:
    print(f"\n| set | photos/person | seeds | train-knn acc plain → jitter {jitters} | rows below plain "
          "(with confidence) | only the gallery jittered | 1-NN | TAR@1e-3 | diff. pairs ≤ 0.6 | lfw 10-fold | "
          "lfw diff. / same pairs wrong at 0.6 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    groups = dict.fromkeys((r["set"], r["count"]) for r in rows)
    for key in [*groups, None]:
        mine = [r for r in rows if key is None or (r["set"], r["count"]) == key]
        mean = {k: {c: _mean([r[k].get(c) for r in mine]) for c in (*COLUMNS, *LFW)} for k in ("plain", "jitter")}
        gallery = _mean([r.get("gallery", {}).get("knn_accuracy") for r in mine])
        below = sum(r["jitter"]["knn_accuracy"] < r["plain"]["knn_accuracy"] for r in mine)
        sure = sum(r["gain_ci"][1] < 0 for r in mine)
        label = "all rows" if key is None else f"{key[0]} | {key[1]}"
        cells = [f"{mean['plain'][c]:.3f} → {mean['jitter'][c]:.3f}" for c in COLUMNS[1:]]
        lfw = " → ".join(f"{mean[k]['lfw_different_at_0.6']:.4f} / {mean[k]['lfw_same_rejected_at_0.6']:.4f}"
                         for k in ("plain", "jitter"))
        print(f"| {label}{' | ' if key is None else ''} | {len(mine)} | {mean['plain']['knn_accuracy']:.3f} → "
              f"{mean['jitter']['knn_accuracy']:.3f} | {below} ({sure}) | {gallery:.3f} | {' | '.join(cells)} | "
              f"{mean['plain']['lfw_10fold']:.4f} → {mean['jitter']['lfw_10fold']:.4f} | {lfw} |")


def _mean(values: list) -> float:
    """Mean of the rows that could measure it (TAR is ``None`` where a split has too few pairs)."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else float("nan")


if __name__ == "__main__":
    main()
