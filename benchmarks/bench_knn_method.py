"""Which train-knn ``--method`` names the most test photos, with dlib and with the fine-tuned networks?

Replays the user's path (train-knn on the training photos, predict each test photo at 0.6, an
"unknown" counting as wrong) for every method on the folders a ``bench_suite.py`` run wrote
(``<set>-<n_train>-<seed>/``, the same seeded splits), with dlib's encodings and with the kept network's.
``auto`` is train-knn's leave-one-out choice between the vote and the class means, made on the training
photos alone.

    python benchmarks/bench_knn_method.py /tmp/dlibplus-suite /tmp/suite-small ...
    python benchmarks/bench_knn_method.py --seeds 0 1 2 3 4     # dlib only: every set, 2/4/all photos
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench_suite import SETS, folder_split, load_set, split
from dlibplus.encoders import TorchEncoder
from dlibplus.knn import FaceKNN

METHODS = ("knn", "prototype", "svm", "auto")


def accuracies(emb: np.ndarray, names: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict:
    out = {}
    for method in METHODS:
        model = FaceKNN(method=method).fit(emb[train], names[train])
        out[method] = float(np.mean(model.predict(emb[test]) == names[test]))
        if method == "auto":
            out["auto_chose"] = model.method_
    return out


def replay(folder: Path, cache: dict, dlib: TorchEncoder, dlib_cache: dict) -> dict | None:
    found = folder_split(folder, cache)
    if found is None:
        return None
    name, seed, sp = found
    n_train, data = len(sp.train), sp.data
    if name not in dlib_cache:
        dlib_cache[name] = dlib.encode(data.chips)
    dlib_emb = dlib_cache[name]
    meta = json.loads((folder / "metadata.json").read_text())
    names = np.array(data.classes)[data.labels]
    row = {"set": name, "n_train": n_train, "seed": seed, "kept": meta["selection"]["chosen"]["name"],
           "dlib": accuracies(dlib_emb, names, sp.train, sp.test)}
    tuned = dlib_emb if row["kept"] == "dlib" else TorchEncoder.from_dat(folder / "model.dat").encode(data.chips)
    row["finetuned"] = accuracies(tuned, names, sp.train, sp.test)
    return row


def dlib_rows(seeds: list[int], dlib: TorchEncoder):
    """dlib's encodings only, no fine-tuning: every set of the suite at 2, 4 and all (at most 10) photos."""
    for name in SETS:
        data = load_set(name, progress=False)
        emb = dlib.encode(data.chips)
        names = np.array(data.classes)[data.labels]
        for per in (2, 4, 10):
            for seed in seeds:
                sp = split(data, per, seed)
                if np.bincount(data.labels[sp.train]).min() < 2:
                    continue
                yield {"set": name, "n_train": len(sp.train), "seed": seed, "kept": "-",
                       "dlib": accuracies(emb, names, sp.train, sp.test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="bench_suite --out folders")
    ap.add_argument("--seeds", type=int, nargs="+", help="no folders: dlib on every set with these seeds")
    args = ap.parse_args()
    dlib = TorchEncoder(device="cpu")
    cache: dict = {}
    dlib_cache: dict = {}
    rows, seen = [], set()
    if args.seeds:
        rows = list(dlib_rows(args.seeds, dlib))
        print("\n| set | train photos | seed | dlib: knn / prototype / svm / auto (chose) |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['set']} | {r['n_train']} | {r['seed']} | "
                  + " / ".join(f"{r['dlib'][m]:.3f}" for m in METHODS) + f" ({r['dlib']['auto_chose']}) |")
        summarise(rows, ("dlib",))
        return
    for run in args.runs:
        for folder in sorted(p for p in run.iterdir() if (p / "metadata.json").exists()):
            if folder.name not in seen and (row := replay(folder, cache, dlib, dlib_cache)):
                seen.add(folder.name)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| set | train photos | seed | kept | dlib: knn / prototype / svm / auto (chose) | "
          "fine-tuned: knn / prototype / svm / auto (chose) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [" / ".join(f"{r[e][m]:.3f}" for m in METHODS) + f" ({r[e]['auto_chose']})"
                 for e in ("dlib", "finetuned")]
        print(f"| {r['set']} | {r['n_train']} | {r['seed']} | {r['kept']} | {cells[0]} | {cells[1]} |")
    summarise(rows, ("dlib", "finetuned"))


def summarise(rows: list[dict], encoders: tuple[str, ...]) -> None:
    """Mean accuracy of each method, and per set how auto does against the vote (knn)."""
    print(f"\nmean over the {len(rows)} rows:")
    for e in encoders:
        print(e, " ".join(f"{m} {np.mean([r[e][m] for r in rows]):.4f}" for m in METHODS))
        for name in dict.fromkeys(r["set"] for r in rows):
            gain = [r[e]["auto"] - r[e]["knn"] for r in rows if r["set"] == name]
            print(f"   {name}: auto - knn mean {np.mean(gain):+.4f}, worst {min(gain):+.4f}, best {max(gain):+.4f} "
                  f"({len(gain)} rows)")


if __name__ == "__main__":
    main()
