"""Does train-knn's jitter scale keep 0.6's meaning, and jitter's gain? A replay over folders bench_suite wrote.

For each ``<set>-<n_train>-<seed>`` folder (a `finetune` output of one suite split), on that split's photos and
in the same run: dlib and the folder's network, each plain, jittered (``--jitters``, 10 copies) and jittered then
scaled by :func:`dlibplus.jitter_scale.scale_for` on the split's training photos (what
``train-knn --jitters 10`` does since the scale exists). Each through train-knn + predict at 0.6 (bench_suite's
``user_path``): accuracy, different-person test pairs within 0.6, same-person pairs rejected, and the scale.

    python benchmarks/bench_jitter_scale.py /tmp/suite/kpop_idols15-60-0 /tmp/suite/glint360k_celeb24-48-0 ...

Prints one JSON line per folder, then the means; ``--out`` writes them all as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import bench_suite as bs
from dlibplus.encoders import TorchEncoder, with_jitter
from dlibplus.jitter_scale import scale_for

KEYS = ("knn_accuracy", "unknown_rate", "same_at_0.6", "different_at_0.6", "eer", "within_eer_1pt", "tar@0.001")
VARIANTS = ("plain", "jitter", "jitter_scaled")


def replay(folder: Path, dlib, cache: dict, jittered_dlib: dict, jitters: int) -> dict | None:
    found = bs.folder_split(folder, cache)
    if found is None:
        return None
    name, seed, sp = found
    data = sp.data
    names = np.array(data.classes)[data.labels]
    used = np.union1d(sp.train, sp.test)
    if name not in jittered_dlib:
        jittered_dlib[name] = bs.JitteredOnce(with_jitter(dlib, jitters), data.chips)
    chosen = json.loads((folder / "metadata.json").read_text())["selection"]["chosen"]
    tuned = TorchEncoder.from_dat(folder / "model.dat", device="cpu")
    row = {"set": name, "n_train": len(sp.train), "seed": seed, "kept": chosen.get("name", chosen.get("alpha"))}
    for label, encoder in (("dlib", dlib), ("ft", tuned)):
        plain = np.zeros((len(data.chips), 128))
        plain[used] = encoder.encode(data.chips[used])
        if label == "dlib":
            jittered = jittered_dlib[name].get(used)
        else:
            jittered = np.zeros((len(data.chips), 128))
            jittered[used] = with_jitter(encoder, jitters).encode(data.chips[used])
        scale = scale_for(plain[sp.train], jittered[sp.train], names[sp.train])
        for variant, emb in zip(VARIANTS, (plain, jittered, jittered * scale)):
            measured = bs.user_path(emb[sp.train], names[sp.train], emb[sp.test], names[sp.test])
            row[f"{label}_{variant}"] = {k: measured[k] for k in KEYS}
        row[f"{label}_scale"] = scale
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--jitters", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    dlib = TorchEncoder(device="cpu")
    cache, jittered_dlib, rows, seen = {}, {}, [], set()
    for folder in args.folders:
        row = replay(folder, dlib, cache, jittered_dlib, args.jitters)
        if row is None or (row["set"], row["n_train"], row["seed"]) in seen:
            continue
        seen.add((row["set"], row["n_train"], row["seed"]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    for subset, title in ((rows, "every split"), ([r for r in rows if r["kept"] != "dlib"], "a network other than dlib kept")):
        if not subset:
            continue
        print(f"\n{title} ({len(subset)} splits): accuracy / different pairs within 0.6 / same pairs rejected at 0.6")
        for label in ("dlib", "ft"):
            for variant in VARIANTS:
                cell = [np.mean([r[f"{label}_{variant}"][k] for r in subset]) for k in ("knn_accuracy", "different_at_0.6")]
                rejected = np.mean([1 - r[f"{label}_{variant}"]["same_at_0.6"] for r in subset])
                print(f"  {label:4s} {variant:13s} {cell[0]:.3f} / {cell[1]:.3f} / {rejected:.3f}")


if __name__ == "__main__":
    main()
