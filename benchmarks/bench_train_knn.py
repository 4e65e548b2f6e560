"""`dlibplus train-knn` vs face_recognition's KNN example: speed, identical encodings, and accuracy.

One run on one machine, over a people folder (default ``lfw_dev``):

(a) baseline: face_recognition 1.3.0's own sequential loop, as in its ``examples/face_recognition_knn.py``
    ``train()`` (load_image_file, face_locations, skip unless exactly one face,
    face_encodings(image, known_face_locations=boxes)[0], then KNeighborsClassifier(round(sqrt(n)),
    ball_tree, distance weights)), run in this process;
(b) ``python -m dlibplus.cli train-knn`` as a subprocess with a fresh, empty encoding cache
    (``DLIBPLUS_CACHE`` set to a new temporary folder), jobs = all cores unless ``--jobs``;
(c) the same command again, now with the warm cache.

Both rates are "from nothing to a trained model": (a) counts the face_recognition import (it loads the
models), the loop and the fit; (b)/(c) count the whole command (interpreter start, worker start-up,
hashing, encoding, leave-one-out choice of k, writing the model). The loop alone is reported too.

Checks: the same files were skipped by both, and dlibplus's encodings (read from the model file it
wrote) equal face_recognition's: max |difference| over the images both used must be <= 1e-6.
Accuracy: seeded 50/50 per-person split of the people with >= 2 usable photos; the example's
round(sqrt(n_train))-NN vs dlibplus's automatic k vs 1-NN, closed set (the predicted person) and with
the 0.6 "unknown" threshold (as each classifier applies it; "unknown" counts as wrong).

    python benchmarks/bench_train_knn.py --limit-people 10 --out /tmp/bench-knn-tiny.json   # smoke test
    python benchmarks/bench_train_knn.py --out /tmp/bench-knn.json                          # all lfw_dev
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchlib import faces_root, run_dlibplus

TOLERANCE = 1e-6
THRESHOLD = 0.6
EXAMPLE_IMAGE = re.compile(r".*\.(jpg|jpeg|png)", re.IGNORECASE)  # the example's file filter


def people_folder(folder: Path, limit: int | None, tmp: Path) -> Path:
    """``folder`` itself, or a folder of symlinks to its first ``limit`` people (sorted by name)."""
    if not limit:
        return folder
    people = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))[:limit]
    subset = tmp / f"{folder.name}_first{limit}"
    subset.mkdir()
    for p in people:
        (subset / p.name).symlink_to(p.resolve(), target_is_directory=True)
    return subset


def example_files(folder: Path) -> list[tuple[str, Path]]:
    """``(person, path)`` as the example walks a train folder (sorted here, so runs are comparable)."""
    pairs = []
    for person in sorted(os.listdir(folder)):
        d = folder / person
        if not d.is_dir() or person.startswith(("_", ".")):
            continue
        pairs += [(person, d / f) for f in sorted(os.listdir(d)) if EXAMPLE_IMAGE.match(f)]
    return pairs


def key(path: os.PathLike | str) -> str:
    """``person/file``: the same image under the real folder and the symlinked subset."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


# --- (a) face_recognition's KNN example --------------------------------------------------------------------

def run_baseline(folder: Path) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # face_recognition_models' pkg_resources deprecation warning
        import face_recognition
    import_s = time.perf_counter() - t0
    from sklearn.neighbors import KNeighborsClassifier

    pairs = example_files(folder)
    X, y, used, skipped = [], [], [], {}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for person, path in pairs:
        image = face_recognition.load_image_file(path)
        boxes = face_recognition.face_locations(image)
        if len(boxes) != 1:
            skipped[key(path)] = len(boxes)
            continue
        X.append(face_recognition.face_encodings(image, known_face_locations=boxes)[0])
        y.append(person)
        used.append(key(path))
    loop_s, loop_cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    t0 = time.perf_counter()
    knn = KNeighborsClassifier(n_neighbors=int(round(math.sqrt(len(X)))), algorithm="ball_tree", weights="distance")
    knn.fit(X, y)
    fit_s = time.perf_counter() - t0
    n = len(pairs)
    total_s = import_s + loop_s + fit_s
    return {"n_images": n, "n_used": len(used), "n_skipped": len(skipped), "import_s": import_s,
            "loop_s": loop_s, "loop_cpu_s": loop_cpu_s, "fit_s": fit_s, "total_s": total_s,
            "k": knn.n_neighbors, "loop_images_per_s": n / loop_s, "images_per_s": n / total_s,
            "_encodings": np.array(X), "_labels": np.array(y), "_used": used, "_skipped": skipped,
            "_files": [key(p) for _, p in pairs]}


# --- (b), (c) dlibplus train-knn ----------------------------------------------------------------------------

def run_train_knn(folder: Path, model: Path, report: Path, cache: Path, jobs: int) -> dict:
    wall, proc, cmd = run_dlibplus(["train-knn", str(folder), "--output", str(model), "--report", str(report)]
                                   + (["--jobs", str(jobs)] if jobs else []), cache)
    last = [line for line in proc.stderr.splitlines() if line.startswith("trained on")]
    return {"wall_s": wall, "command": f"DLIBPLUS_CACHE={shlex.quote(str(cache))} {shlex.join(cmd)}",
            "summary": last[-1] if last else ""}


def dlibplus_outputs(model: Path, report: Path) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, str]]:
    """Encodings, labels, ``person/file`` keys of the used images, and skipped ``{key: reason}``.

    The model keeps encodings in the order of the scanned images minus the skipped ones; the
    report lists both, so the used images' keys are recovered from it.
    """
    with np.load(model, allow_pickle=False) as z:
        enc, labels = z["encodings"], z["classes"][z["labels"]]
    rep = json.loads(report.read_text())
    from dlibplus.data import scan_people

    skipped = {key(s["path"]): s["reason"] for p in rep["people"].values() for s in p["skipped"]}
    used = [key(path) for _, path in scan_people(rep["folder"]) if key(path) not in skipped]
    if len(used) != len(enc) or [u.split("/")[0] for u in used] != labels.tolist():
        sys.exit("cannot match the model's encodings to image files (report and model disagree)")
    return enc, labels, used, skipped


# --- accuracy -----------------------------------------------------------------------------------------------

def accuracy(enc: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    from sklearn.neighbors import KNeighborsClassifier

    from dlibplus.data import split_per_person
    from dlibplus.knn import FaceKNN

    people, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, people[counts >= 2])
    enc, labels = enc[keep], labels[keep]
    if len(set(labels.tolist())) < 2:
        return {"error": "fewer than 2 people with >= 2 usable photos"}
    tr, te = split_per_person(labels, 0.5, seed=seed)
    Xtr, ytr, Xte, yte = enc[tr], labels[tr], enc[te], labels[te]
    out = {"n_people": int(len(set(labels.tolist()))), "n_train": int(len(tr)), "n_test": int(len(te)),
           "seed": seed}

    # the example: round(sqrt(n)) k, distance weights, ball tree; "unknown" from the nearest training face
    k_sqrt = int(round(math.sqrt(len(tr))))
    clf = KNeighborsClassifier(n_neighbors=k_sqrt, algorithm="ball_tree", weights="distance").fit(Xtr, ytr)
    pred = clf.predict(Xte)
    nearest = clf.kneighbors(Xte, n_neighbors=1)[0][:, 0]
    out["sqrt_knn"] = {"k": k_sqrt, "accuracy": float(np.mean(pred == yte)),
                       "accuracy_unknown_0.6": float(np.mean((pred == yte) & (nearest <= THRESHOLD)))}

    # dlibplus: k by leave-one-out; "unknown" from the nearest training face of the predicted person
    auto = FaceKNN("auto", method="knn").fit(Xtr, ytr)
    names, _, pred = auto.predict_with_distance(Xte, THRESHOLD)
    out["auto_knn"] = {"k": int(auto.k_), "accuracy": float(np.mean(pred == yte)),
                       "accuracy_unknown_0.6": float(np.mean(np.array(names) == yte)),
                       "loo_accuracy": {str(k): v for k, v in auto.loo_scores_.items()}}

    one = KNeighborsClassifier(n_neighbors=1, algorithm="ball_tree").fit(Xtr, ytr)
    dist, idx = one.kneighbors(Xte, n_neighbors=1)
    pred = ytr[idx[:, 0]]
    out["1nn"] = {"k": 1, "accuracy": float(np.mean(pred == yte)),
                  "accuracy_unknown_0.6": float(np.mean((pred == yte) & (dist[:, 0] <= THRESHOLD)))}
    return out


# --- main ---------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, help="people folder (default: <faces>/lfw_dev; faces = "
                    "$DLIBPLUS_FACES or ../shared/data/faces)")
    ap.add_argument("--limit-people", type=int, default=0, metavar="N",
                    help="use only the first N people (sorted by name); default all")
    ap.add_argument("--jobs", type=int, default=0, help="train-knn --jobs (default 0: all cores)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the 50/50 accuracy split (default 0)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/dlibplus-bench-train-knn.json"),
                    help="JSON results (default /tmp/dlibplus-bench-train-knn.json)")
    args = ap.parse_args()
    folder = (args.folder or faces_root() / "lfw_dev").resolve()
    if not folder.is_dir():
        sys.exit(f"people folder not found: {folder}")
    bench_cmd = shlex.join([sys.executable, *sys.argv])
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="dlibplus-bench-knn-") as tmp_name:
        tmp = Path(tmp_name)
        data = people_folder(folder, args.limit_people, tmp)
        from dlibplus.data import scan_people

        dlibplus_files = sorted(key(p) for _, p in scan_people(data))

        base = run_baseline(data)
        if sorted(base["_files"]) != dlibplus_files:
            sys.exit("face_recognition's example and dlibplus see different image files")
        cache = tmp / "cache"
        cold = run_train_knn(data, tmp / "cold.npz", tmp / "cold.json", cache, args.jobs)
        warm = run_train_knn(data, tmp / "warm.npz", tmp / "warm.json", cache, args.jobs)
        enc, labels, used, skipped = dlibplus_outputs(tmp / "cold.npz", tmp / "cold.json")
        warm_enc = dlibplus_outputs(tmp / "warm.npz", tmp / "warm.json")[0]

    n = base["n_images"]
    cold["images_per_s"] = n / cold["wall_s"]
    cold["vs_baseline"] = cold["images_per_s"] / base["images_per_s"]
    cold["vs_baseline_loop_only"] = cold["images_per_s"] / base["loop_images_per_s"]
    warm["images_per_s"] = n / warm["wall_s"]
    warm["speedup_vs_cold"] = cold["wall_s"] / warm["wall_s"]

    # parity: same skips, same encodings for the images both used
    base_index = {k: i for i, k in enumerate(base["_used"])}
    common = [(i, base_index[k]) for i, k in enumerate(used) if k in base_index]
    a = enc[[i for i, _ in common]]
    b = base["_encodings"][[j for _, j in common]]
    max_diff = float(np.abs(a - b).max()) if common else float("nan")
    only_base = sorted(set(base["_skipped"]) - set(skipped))
    only_dlibplus = sorted(set(skipped) - set(base["_skipped"]))
    parity = {"n_compared": len(common), "max_abs_diff": max_diff, "tolerance": TOLERANCE,
              "warm_equals_cold": bool(np.array_equal(warm_enc, enc)),
              "n_skipped_baseline": len(base["_skipped"]), "n_skipped_dlibplus": len(skipped),
              "skipped_only_by_baseline": only_base, "skipped_only_by_dlibplus": only_dlibplus,
              "skipped": {k: skipped[k] for k in sorted(skipped)}}
    parity["ok"] = bool(common and max_diff <= TOLERANCE and not only_base and not only_dlibplus
                        and parity["warm_equals_cold"])

    acc = accuracy(enc, labels, args.seed)

    import dlib
    import sklearn
    from importlib.metadata import version

    import dlibplus

    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(), "dlib": dlib.__version__,
               "face_recognition": version("face_recognition"), "dlibplus": dlibplus.__version__,
               "scikit-learn": sklearn.__version__, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    jobs = args.jobs or os.cpu_count()
    results = {"command": bench_cmd, "folder": str(folder), "limit_people": args.limit_people or None,
               "jobs": jobs, "machine": machine,
               "baseline": {k: v for k, v in base.items() if not k.startswith("_")},
               "train_knn_cold": cold, "train_knn_warm": warm, "parity": parity, "accuracy": acc}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    # --- report ---
    people = len({f.split("/")[0] for f in base["_files"]})
    print(f"## train-knn benchmark: {folder.name}"
          f"{f' (first {args.limit_people} people)' if args.limit_people else ''}, {people} people, {n} images\n")
    print(f"{machine['processor']}, {machine['cpus']} CPUs, load average before/after "
          f"{load_before[0]:.2f}/{machine['loadavg_after'][0]:.2f}; Python {machine['python']}, dlib {dlib.__version__}, "
          f"face_recognition {machine['face_recognition']}, dlibplus {dlibplus.__version__}\n")
    print("| run | seconds | images/s | vs (a) |")
    print("|---|---:|---:|---:|")
    print(f"| (a) face_recognition KNN example, sequential (import {base['import_s']:.1f} s + loop "
          f"{base['loop_s']:.1f} s + fit {base['fit_s']:.2f} s) | {base['total_s']:.1f} | {base['images_per_s']:.2f} | 1.00x |")
    print(f"| (a) loop only ({base['loop_cpu_s'] / base['loop_s']:.2f} CPU-s per s) | {base['loop_s']:.1f} | "
          f"{base['loop_images_per_s']:.2f} | |")
    print(f"| (b) dlibplus train-knn, cold cache, jobs={jobs} | {cold['wall_s']:.1f} | {cold['images_per_s']:.2f} | "
          f"{cold['vs_baseline']:.2f}x ({cold['vs_baseline_loop_only']:.2f}x vs loop only) |")
    print(f"| (c) dlibplus train-knn, warm cache | {warm['wall_s']:.1f} | {warm['images_per_s']:.2f} | "
          f"{warm['images_per_s'] / base['images_per_s']:.2f}x; **{warm['speedup_vs_cold']:.1f}x faster than cold** |")
    print()
    print("| check | result |")
    print("|---|---|")
    print(f"| max abs diff, dlibplus vs face_recognition encodings ({len(common)} images) | {max_diff:.3g} "
          f"(≤ {TOLERANCE:g}: {'yes' if common and max_diff <= TOLERANCE else 'NO'}) |")
    print(f"| skipped images (face_recognition / dlibplus) | {len(base['_skipped'])} / {len(skipped)}; "
          f"{'same files' if not only_base and not only_dlibplus else f'DIFFER: only baseline {only_base}, only dlibplus {only_dlibplus}'} |")
    print(f"| warm-cache encodings equal cold | {'yes' if parity['warm_equals_cold'] else 'NO'} |")
    print()
    if "error" in acc:
        print(f"accuracy: {acc['error']}\n")
    else:
        print(f"KNN accuracy, seeded (seed {acc['seed']}) 50/50 per-person split of the {acc['n_people']} people with "
              f"≥ 2 usable photos: {acc['n_train']} train, {acc['n_test']} test\n")
        print("| classifier | k | accuracy (closed set) | accuracy with 'unknown' beyond 0.6 |")
        print("|---|---:|---:|---:|")
        for name, label in (("sqrt_knn", "face_recognition example, k = round(√n)"),
                            ("auto_knn", "dlibplus train-knn, k auto (leave-one-out)"), ("1nn", "1-NN")):
            r = acc[name]
            print(f"| {label} | {r['k']} | {r['accuracy']:.3f} | {r['accuracy_unknown_0.6']:.3f} |")
        print()
    print(f"benchmark command: `{bench_cmd}`")
    print(f"train-knn command (cold, then again warm): `{cold['command']}`")
    print(f"train-knn said: {cold['summary']}")
    print(f"results written to {args.out}")
    if not parity["ok"]:
        sys.exit("FAIL: dlibplus's encodings or skipped images differ from face_recognition's")


if __name__ == "__main__":
    main()
