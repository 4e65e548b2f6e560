"""Does fine-tuning's gain over dlib depend on the size of the user's gallery?

``finetune`` judges dlib against the fine-tuned candidates with a smaller gallery than the user later has:
cross-fitting's validation gallery is the other fold (half of each person's photos), one split's the 75 %
trained on; the user's train-knn gets every photo. This replays the user's path on the suite's test photos
for networks ``bench_suite.py`` kept (its output folders ``<set>-<n_train>-<seed>``), with the full training
gallery and with a seeded share (``--share``, default half) of each person's training photos, dlib on the same
galleries:

    python benchmarks/bench_gallery_size.py '/tmp/exp/cf2-*/kpop_idols15-*' '/tmp/exp/cf2-*/orl_att-*'

Folders whose network is dlib's own are skipped. Prints one line per folder and the means.
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np

import bench_suite
from dlibplus.encoders import TorchEncoder
from dlibplus.knn import FaceKNN

def accuracy(emb: np.ndarray, names: np.ndarray, gallery: np.ndarray, test: np.ndarray) -> float:
    """train-knn (default method) on ``gallery`` rows, predict ``test`` rows at 0.6; unknown = wrong."""
    knn = FaceKNN().fit(emb[gallery], names[gallery])
    return float(np.mean(knn.predict(emb[test]) == names[test]))


def part_gallery(train: np.ndarray, names: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """``share`` of each person's training rows (rounded down, at least one), drawn with ``rng``."""
    return np.concatenate([rng.permutation(rows)[:max(1, int(len(rows) * share))]
                           for rows in (train[names[train] == p] for p in np.unique(names[train]))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="glob patterns of bench_suite output folders")
    parser.add_argument("--draws", type=int, default=10, help="part galleries drawn per folder")
    parser.add_argument("--share", type=float, default=0.5,
                        help="share of each person's training photos in the part gallery (0.5: what cross-fitting "
                             "judges with; 0.75: one split)")
    args = parser.parse_args()

    dlib = TorchEncoder(device="cpu")
    sets, dlib_emb, rows = {}, {}, []
    for folder in sorted(Path(f) for pattern in args.folders for f in glob.glob(pattern)):
        found = bench_suite.folder_split(folder, sets) if (folder / "model.dat").is_file() else None
        if found is None:
            continue
        name, _, split = found
        if name not in dlib_emb:
            dlib_emb[name] = dlib.encode(sets[name].chips)
        tuned = TorchEncoder.from_dat(folder / "model.dat", device="cpu").encode(sets[name].chips)
        if np.abs(tuned - dlib_emb[name]).max() < 1e-4:
            continue  # the run kept dlib
        names = np.array(sets[name].classes)[sets[name].labels]

        def gain(gallery: np.ndarray) -> float:
            return (accuracy(tuned, names, gallery, split.test)
                    - accuracy(dlib_emb[name], names, gallery, split.test))

        full = gain(split.train)
        rng = np.random.default_rng(0)
        part = float(np.mean([gain(part_gallery(split.train, names, args.share, rng)) for _ in range(args.draws)]))
        rows.append((full, part))
        print(f"{folder.parent.name}/{folder.name}: gain over dlib, full gallery {full * 100:+.1f} points, "
              f"{args.share:g} of it {part * 100:+.1f} (mean of {args.draws} draws)", flush=True)
    if rows:
        r = np.array(rows)
        print(f"{len(r)} networks: mean gain full {r[:, 0].mean() * 100:+.2f}, {args.share:g} of it "
              f"{r[:, 1].mean() * 100:+.2f} points; larger with the part gallery in {int((r[:, 1] > r[:, 0]).sum())} "
              f"of {len(r)}")


if __name__ == "__main__":
    main()
