"""Photos with several faces in a person's folder: is the largest face the person the photo is filed under?

The measurement behind ``--multiple-faces largest`` and its 1.5x rule (``dlibplus.people.CLEARLY_LARGER``). For each
set (default HOG settings), every photo with several faces is judged by which person's mean descriptor (dlib's
network through the exact replica, over that person's one-face photos) each of its faces is nearest to; the table
counts, by how much larger the largest box is than the next, the photos whose largest face is nearest the person and
those where another of its faces is.

    python benchmarks/bench_multiple_faces.py                 # lfw_dev, deepface_tests, yale_faces
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from benchlib import faces_root
from dlibplus.data import process_images, scan_people
from dlibplus.encoders import TorchEncoder
from dlibplus.faces import FaceSettings
from dlibplus.people import box_areas

RATIOS = (1.0, 1.5, 2.0)


def judge(folder, encoder) -> tuple[int, int, np.ndarray]:
    """``(photos, photos with several faces, rows)``: per judged photo (area ratio of the largest box to the next,
    the largest face is nearest the person, another face is)."""
    pairs = scan_people(folder)
    results = process_images([p for _, p in pairs], FaceSettings(), want="chips", progress=False)
    single = defaultdict(list)
    for (person, _), r in zip(pairs, results):
        if r.error is None and r.n_faces == 1:
            single[person].append(r.chips[0])
    names = sorted(single)
    means = np.stack([encoder.encode(np.stack(single[p])).mean(axis=0) for p in names])
    several = [(person, r) for (person, _), r in zip(pairs, results) if r.error is None and r.n_faces > 1]
    rows = []
    for person, r in several:
        if person not in single:
            continue
        area = box_areas(r.boxes)
        order = np.argsort(-area, kind="stable")
        nearest = np.linalg.norm(encoder.encode(r.chips[order])[:, None] - means[None], axis=2).argmin(axis=1)
        right = [names[i] == person for i in nearest]
        rows.append((area[order[0]] / area[order[1]], right[0], any(right[1:])))
    return len(pairs), len(several), np.array(rows, dtype=float).reshape(-1, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["lfw_dev", "deepface_tests", "yale_faces"])
    args = ap.parse_args()
    encoder = TorchEncoder(device="cpu")
    print("| set | photos | with several faces | judged | largest box at least | photos | largest is the person | "
          "another face is the person |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        n, several, rows = judge(faces_root() / name, encoder)
        for ratio in RATIOS:
            keep = rows[:, 0] >= ratio
            print(f"| {name} | {n} | {several} | {len(rows)} | {ratio:g} × the next | {int(keep.sum())} | "
                  f"{int(rows[keep, 1].sum())} | {int(rows[keep, 2].sum())} |", flush=True)


if __name__ == "__main__":
    main()
