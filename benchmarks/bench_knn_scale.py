"""A train-knn model of a million faces: fit, save, open in a fresh process (time, memory), predict latency.

The gallery is bench_gallery.py's (real dlib encodings plus augmented people of 10 faces each; see its
docstring); each person is a class, so a 1M model holds ~100k people. Queries are new faces of people in
the gallery, predicted in batches of 100 (``FaceKNN.predict_with_distance``: neighbours, the vote, and the
exact distance to the predicted person's nearest photo), with k fixed at 1 so the model is comparable
across sizes (the leave-one-out choice of k is timed apart, on its 5,000-face sample).

    python benchmarks/bench_knn_scale.py [--sizes 100000,1000000] [--algorithm exact] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gallery import FACES_PER_PERSON, Population, real_faces  # noqa: E402
from benchlib import REPO  # noqa: E402

sys.path.insert(0, str(REPO))

_OPEN_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
import numpy as np
def rss(field="VmRSS"):  # MB
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith(field))
from dlibplus.knn import FaceKNN
import faiss, sklearn.svm  # imported before the clock: what a command has loaded anyway
q = np.load(sys.argv[2])
base = rss()
t0 = time.perf_counter()
model = FaceKNN.load(sys.argv[1])
opened = time.perf_counter() - t0
after_load, peak_load = rss(), rss("VmHWM")
times = []
for s in range(0, len(q), 100):
    t0 = time.perf_counter()
    model.predict_with_distance(q[s:s + 100])
    times.append((time.perf_counter() - t0) / 100 * 1000)
print(json.dumps({"open_s": opened, "rss_before_mb": base, "rss_after_load_mb": after_load,
                  "peak_rss_after_load_mb": peak_load, "first_batch_ms_per_query": times[0],
                  "ms_per_query": float(np.median(times[1:] or times)),
                  "rss_after_predict_mb": rss(), "peak_rss_after_predict_mb": rss("VmHWM")}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--algorithm", default="exact")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/dlibplus-bench-knn"))
    args = ap.parse_args()
    from dlibplus.knn import FaceKNN, choose_n_neighbors

    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    real, people = real_faces()
    population = Population(real, people, -(-max(max(sizes) - len(real), 0) // FACES_PER_PERSON))
    X, ids = population.faces(max(sizes))
    for n in sizes:
        q = population.new_faces(population.rng.choice(np.unique(ids[:n]), args.queries)).astype(np.float64)
        qfile = args.work / f"queries-{n}.npy"
        np.save(qfile, q)
        names = np.char.add("p", ids[:n].astype(str))
        t0 = time.perf_counter()
        model = FaceKNN(1, args.algorithm, method="knn").fit(X[:n], names)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        k, _ = choose_n_neighbors(None, model.labels_, index=model.index_)
        loo_s = time.perf_counter() - t0
        folder = args.work / f"knn-{args.algorithm}-{n}"
        t0 = time.perf_counter()
        model.save(folder)
        save_s = time.perf_counter() - t0
        proc = subprocess.run([sys.executable, "-c", _OPEN_SCRIPT, str(folder), str(qfile), str(REPO)],
                              capture_output=True, text=True, check=True)
        row = {"faces": n, "people": int(len(model.classes_)), "algorithm": args.algorithm,
               "index": model.index_.info.get("kind"), "fit_s": round(fit_s, 2), "loo_k_s": round(loo_s, 2),
               "loo_k": k, "save_s": round(save_s, 2), **json.loads(proc.stdout.strip().splitlines()[-1])}
        print(json.dumps(row), flush=True)
        del model


if __name__ == "__main__":
    main()
