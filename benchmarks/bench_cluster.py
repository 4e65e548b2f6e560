"""Clustering quality on every labelled set, and clustering time for 100k faces.

For each set of ``../shared/data/faces`` (or ``$DLIBPLUS_FACES``): every face of every photo is detected
and encoded with dlibplus's pipeline (cached, all cores; tight-crop sets use the whole image as the face
box, as their README says; ``deepface_tests``' multi-megapixel photos are shrunk to 1600 px first) and
clustered. Scores (pairwise precision, recall, F-measure, adjusted Rand index, clusters vs people) are
computed on each photo's *labelled* face, the one whose box centre is nearest the photo's centre (LFW
photos are centred on their person); the other faces in a photo (bystanders, whose identity is not
known) are clustered too, as distractors, but not scored. Unclustered faces count as clusters of one.

Methods: dlib's own ``dlib.chinese_whispers_clustering`` at 0.5 (the baseline of dlib's
``face_clustering.py``), and dlibplus's ``average`` (default), ``chinese-whispers`` and ``dbscan`` at
their default thresholds; ``--sweep`` adds a threshold sweep per method (best thresholds on a set are
an optimistic number: chosen on the data they are scored on).

Time: ``--time-faces N`` clusters N synthetic faces (real encodings plus augmented copies, see
bench_gallery.synthetic_faces) with the default method after encoding, as the issue's "100k faces
clustered in <= 5 minutes".

    python benchmarks/bench_cluster.py [--sets lfw_dev,...] [--encoder dlib --encoder DIR] [--sweep]
        [--time-faces 100000] [--holdout SEED [--write-train-folder DIR]]

A fine-tuned encoder is judged on photos it never saw: ``--holdout 0 --write-train-folder DIR`` links
half of each person's photos of one set into DIR, ``dlibplus finetune DIR -o FT`` trains on them, and
``--holdout 0 --encoder dlib --encoder FT`` clusters the other half of every set with both encoders.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, faces_root  # noqa: E402

sys.path.insert(0, str(REPO))

CROP_SETS = {"dlib_johns", "five_celebrity", "kpop_idols15", "glint360k_celeb24", "orl_att"}
MAX_SIDE = {"deepface_tests": 1600}


def labelled_sets(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def encode_set(root: Path, name: str, encoder: str = "dlib", jobs: int | None = None,
               holdout: int | None = None) -> dict[str, np.ndarray]:
    """Every face of every photo of one labelled set (``holdout``: of the held-out half only, :func:`halves`).

    :return: ``encodings`` (n, 128) float32, ``people`` (n,) person of the photo, ``paths`` (n,),
        ``boxes`` (n, 4) css, ``labelled`` (n,) bool: the face nearest its photo's centre.
    """
    from dlibplus.cli.options import face_settings
    from dlibplus.data import process_images, scan_people
    from dlibplus.encoders import resolve_encoder

    pairs = scan_people(root / name)
    if holdout is not None:
        pairs = halves(pairs, holdout)[1]
    settings = face_settings("hog", 1, "small", "whole" if name in CROP_SETS else "detect", MAX_SIDE.get(name, 0))
    enc, _ = resolve_encoder(encoder)
    results = process_images([p for _, p in pairs], settings, encoder=enc, jobs=jobs, desc=name)
    encs, people, paths, boxes, labelled = [], [], [], [], []
    for (person, path), r in zip(pairs, results):
        if r.error is not None or not r.n_faces:
            continue
        centre = _labelled_face(path, r.boxes)
        for i, (box, e) in enumerate(zip(r.boxes, r.encodings)):
            encs.append(e)
            people.append(person)
            paths.append(str(path))
            boxes.append(box)
            labelled.append(i == centre)
    return {"encodings": np.asarray(encs, np.float32), "people": np.array(people), "paths": np.array(paths),
            "boxes": np.asarray(boxes, np.int32).reshape(-1, 4), "labelled": np.array(labelled)}


def halves(pairs: list, seed: int) -> tuple[list, list]:
    """``(person, path)`` pairs split per person, seeded: (the half to fine-tune on, the half to cluster).
    A person with one photo is in the clustered half."""
    from dlibplus.data import split_per_person

    labels = np.array([person for person, _ in pairs])
    train, test = split_per_person(labels, 0.5, seed)
    return [pairs[i] for i in sorted(train)], [pairs[i] for i in sorted(test)]


def write_train_folder(root: Path, name: str, seed: int, folder: Path) -> int:
    """A people folder of links to the fine-tuning half of a set (:func:`halves`); returns its photo count."""
    from dlibplus.data import scan_people

    train = halves(scan_people(root / name), seed)[0]
    for person, path in train:
        (folder / person).mkdir(parents=True, exist_ok=True)
        link = folder / person / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    return len(train)


def _labelled_face(path: Path, boxes: np.ndarray) -> int:
    """Index of the face whose box centre is nearest the photo's centre (in the EXIF-upright frame)."""
    if len(boxes) == 1:
        return 0
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        w, h = ImageOps.exif_transpose(im).size if im.getexif().get(0x0112, 1) != 1 else im.size
    cy = (boxes[:, 0] + boxes[:, 2]) / 2
    cx = (boxes[:, 1] + boxes[:, 3]) / 2
    return int(np.argmin((cy - h / 2) ** 2 + (cx - w / 2) ** 2))


def run_methods(data: dict, sweep: bool) -> list[dict]:
    """Scores of each method (and threshold) on one set; dlib's own chinese whispers first."""
    import dlib

    from dlibplus.cluster import DEFAULT_THRESHOLDS, cluster_faces, neighbor_graph, pairwise_scores, relabel
    from dlibplus.cluster import average_linkage, chinese_whispers, dbscan

    X, keep, truth = data["encodings"], data["labelled"], data["people"][data["labelled"]]
    rows = []

    def score(method: str, threshold: float, labels: np.ndarray, seconds: float) -> None:
        s = pairwise_scores(truth, labels[keep])
        rows.append({"method": method, "threshold": threshold, "seconds": round(seconds, 2), **s.to_dict()})

    t0 = time.perf_counter()
    raw = dlib.chinese_whispers_clustering([dlib.vector(x.astype(np.float64)) for x in X], 0.5)
    score("dlib chinese_whispers_clustering", 0.5, relabel(np.asarray(raw)), time.perf_counter() - t0)
    for method, default in DEFAULT_THRESHOLDS.items():
        t0 = time.perf_counter()
        labels = cluster_faces(X, method, default)
        score(f"{method} (default)", default, labels, time.perf_counter() - t0)
    if sweep:
        graph = neighbor_graph(X, 0.7)
        funcs = {"chinese-whispers": lambda g, t: chinese_whispers(graph=g, threshold=t),
                 "chinese-whispers, dlib's weighting": lambda g, t: chinese_whispers(graph=g, threshold=t,
                                                                                      weighting="dlib"),
                 "average": lambda g, t: average_linkage(X, t, graph=g),
                 "dbscan": lambda g, t: dbscan(graph=g, threshold=t)}
        for method, func in funcs.items():
            for t in np.arange(0.40, 0.66, 0.025):
                sub = graph.copy()
                sub.data[sub.data >= t] = 0
                sub.eliminate_zeros()
                t0 = time.perf_counter()
                score(method, round(float(t), 3), func(sub, float(t)), time.perf_counter() - t0)
    return rows


def time_clustering(n: int, real: np.ndarray, people: np.ndarray) -> dict:
    """Seconds to cluster ``n`` synthetic faces with the default method (graph, then clustering)."""
    from bench_gallery import synthetic_faces

    from dlibplus.cluster import DEFAULT_THRESHOLDS, cluster_faces

    X, _ = synthetic_faces(real, people, n, seed=0)
    t0 = time.perf_counter()
    labels = cluster_faces(X)
    seconds = time.perf_counter() - t0
    return {"faces": n, "seconds": round(seconds, 1), "threshold": DEFAULT_THRESHOLDS["chinese-whispers"],
            "clusters": int(labels.max() + 1), "unclustered": int(np.sum(labels < 0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", help="comma-separated set names (default: every labelled set)")
    ap.add_argument("--encoder", action="append", help="dlib (default) or a fine-tuned folder; repeat to "
                    "compare encoders in the same run")
    ap.add_argument("--holdout", type=int, metavar="SEED",
                    help="cluster only the held-out half of each person's photos (seeded split)")
    ap.add_argument("--write-train-folder", type=Path, metavar="DIR",
                    help="with --holdout and one set: write links to the other half into DIR (to fine-tune on), "
                         "then stop")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--sweep", action="store_true", help="also sweep thresholds per method")
    ap.add_argument("--time-faces", type=int, default=0, help="cluster this many synthetic faces and time it")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    root = faces_root()
    sets = args.sets.split(",") if args.sets else labelled_sets(root)
    encoders = args.encoder or ["dlib"]
    if args.write_train_folder:
        if args.holdout is None or len(sets) != 1:
            ap.error("--write-train-folder needs --holdout and one set")
        n = write_train_folder(root, sets[0], args.holdout, args.write_train_folder)
        print(f"{n} photos of {sets[0]} linked into {args.write_train_folder}")
        return
    out: dict = {"encoders": encoders, "holdout": args.holdout, "sets": {}}
    reals, real_people = [], []
    for name, encoder in ((n, e) for n in sets for e in encoders):
        t0 = time.perf_counter()
        data = encode_set(root, name, encoder, args.jobs, args.holdout)
        n_photos = len(set(data["paths"].tolist()))
        print(f"\n## {name}, encoder {encoder}: {len(data['encodings'])} faces in {n_photos} photos, "
              f"{len(set(data['people'].tolist()))} people (encoded in {time.perf_counter() - t0:.0f} s)")
        rows = run_methods(data, args.sweep)
        print("| method | threshold | precision | recall | F | ARI | clusters | people | unclustered | s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['method']} | {r['threshold']} | {r['precision']:.3f} | {r['recall']:.3f} | "
                  f"{r['f_measure']:.3f} | {r['ari']:.3f} | {r['n_clusters']} | {r['n_people']} | "
                  f"{r['n_unclustered']} | {r['seconds']} |")
        out["sets"].setdefault(name, {})[encoder] = {"faces": int(len(data["encodings"])), "photos": n_photos,
                                                    "results": rows}
        if encoder != encoders[0]:
            continue
        keep = data["labelled"]
        reals.append(data["encodings"][keep])
        real_people += [f"{name}/{p}" for p in data["people"][keep]]
        sys.stdout.flush()
    if args.time_faces:
        t = time_clustering(args.time_faces, np.concatenate(reals), np.array(real_people))
        print(f"\n{t['faces']} faces clustered (default method, threshold {t['threshold']}) in {t['seconds']} s: "
              f"{t['clusters']} clusters, {t['unclustered']} unclustered")
        out["timing"] = t
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
