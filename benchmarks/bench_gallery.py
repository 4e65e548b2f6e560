"""GalleryIndex at 10k, 100k and 1M faces: build time, open time, peak memory on load, top-1 latency
(exact and approximate, queries in batches of 100) and the approximate index's recall@1 against exact.

How the galleries are made (``Population``): dlib encodings of the labelled face of every photo
of every set in ``../shared/data/faces`` (see bench_cluster.encode_set; about 7.5k real faces of 1.1k
people) are kept as they are, and the rest are augmented copies made in encoding space from real
statistics:

- a new person's centre is drawn from a Gaussian with the mean and full 128×128 covariance of the real
  people's mean encodings (between-person variation as real people have it);
- each of their faces is that centre plus a real within-person residual (a real face minus its
  person's mean, scaled by √(m/(m-1)) for a person with m faces, which undoes the shrinkage of a
  mean of m faces), drawn at random from all real faces (within-person variation: pose, light,
  expression, as real photos have it).

Every synthetic person gets 10 faces, so a 1M gallery holds ~100k people. Galleries are nested (the
10k one is the first 10k faces of the 100k one). Queries are 1,000 further faces of people already in
the gallery (a new photo of a known person), and recall@1 is measured on them against exact search.
Images are not jittered through the network: a million dlib encodings would take days on two cores.

Open time and peak memory are measured in a fresh process (``GalleryIndex.load`` of the saved folder:
encodings memory-mapped, HNSW graph and vectors or IVF lists memory-mapped): RSS and peak RSS
(ru_maxrss) before and just after load, then after the first batch of queries (which pages in what it
touches: file-backed pages the OS can drop). Python, numpy and faiss themselves take ~100 MB of that.

    python benchmarks/bench_gallery.py [--sizes 10000,100000,1000000] [--work /tmp/dlibplus-bench-gallery]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, faces_root  # noqa: E402

sys.path.insert(0, str(REPO))

FACES_PER_PERSON = 10
N_QUERIES = 1000
BATCH = 100


def real_faces(sets: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labelled dlib encodings (n, 128) float32 and ``set/person`` names of the photo sets."""
    from bench_cluster import encode_set, labelled_sets

    root = faces_root()
    X, people = [], []
    for name in sets or labelled_sets(root):
        data = encode_set(root, name)
        keep = data["labelled"]
        X.append(data["encodings"][keep])
        people += [f"{name}/{p}" for p in data["people"][keep]]
    return np.concatenate(X), np.array(people)


class Population:
    """Real people plus augmented ones (module docstring), each face a centre plus a real residual."""

    def __init__(self, real: np.ndarray, people: np.ndarray, n_people: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.real = real
        names, self.real_ids = np.unique(people, return_inverse=True)
        sizes = np.bincount(self.real_ids)
        means = np.stack([real[self.real_ids == p].mean(0) for p in range(len(names))]).astype(np.float64)
        m = sizes[self.real_ids]
        multi = m > 1
        self.residuals = ((real - means[self.real_ids]) * np.sqrt(m / np.maximum(m - 1, 1))[:, None])[multi]
        chol = np.linalg.cholesky(np.cov(means.T) + 1e-9 * np.eye(real.shape[1]))
        extra = self.rng.standard_normal((max(n_people, 0), real.shape[1])) @ chol.T + means.mean(0)
        self.centres = np.concatenate([means, extra])  # person id -> centre
        self.n_real_people = len(names)

    def faces(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` faces (n, 128) float32 (the real ones first) and their person ids (n,) int64."""
        head = min(n, len(self.real))
        n_synth = n - head
        ids = np.concatenate([self.real_ids[:head], self.n_real_people + np.arange(n_synth) // FACES_PER_PERSON])
        out = np.empty((n, self.real.shape[1]), np.float32)
        out[:head] = self.real[:head]
        for start in range(head, n, 1 << 18):
            out[start:start + (1 << 18)] = self.new_faces(ids[start:start + (1 << 18)])
        return out, ids

    def new_faces(self, ids: np.ndarray) -> np.ndarray:
        """A new face (float32) of each person in ``ids``: their centre plus a random real residual."""
        picks = self.rng.integers(len(self.residuals), size=len(ids))
        return (self.centres[ids] + self.residuals[picks]).astype(np.float32)


def synthetic_faces(real: np.ndarray, people: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` faces: the real ones, then augmented people of 10 faces each; and their person ids."""
    return Population(real, people, -(-max(n - len(real), 0) // FACES_PER_PERSON), seed).faces(n)


def latency(index, queries: np.ndarray, exact: bool | None, budget_s: float = 20.0) -> float:
    """Median milliseconds per query, top-1, in batches of 100 (at least 2 batches, within ``budget_s``)."""
    times = []
    t_start = time.perf_counter()
    for s in range(0, len(queries), BATCH):
        t0 = time.perf_counter()
        index.search(queries[s:s + BATCH], 1, exact=exact)
        times.append((time.perf_counter() - t0) / BATCH * 1000)
        if len(times) >= 2 and time.perf_counter() - t_start > budget_s:
            break
    return float(np.median(times))


_OPEN_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
import numpy as np
def rss(field="VmRSS"):  # MB; VmHWM is the peak (ru_maxrss would include the parent's, kept across exec)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith(field))
import faiss
from dlibplus.gallery import GalleryIndex
q = np.load(sys.argv[2])
base, peak_base = rss(), rss("VmHWM")
t0 = time.perf_counter()
g = GalleryIndex.load(sys.argv[1])
opened = time.perf_counter() - t0
after_load, peak_load = rss(), rss("VmHWM")
t0 = time.perf_counter()
g.search(q[:100], 1)
first = time.perf_counter() - t0
print(json.dumps({"open_s": opened, "rss_before_mb": base, "peak_rss_before_mb": peak_base,
                  "rss_after_load_mb": after_load,
                  "peak_rss_after_load_mb": peak_load, "first_batch_s": first, "rss_after_search_mb": rss(),
                  "peak_rss_after_search_mb": rss("VmHWM")}))
"""


def open_in_fresh_process(folder: Path, queries_file: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _OPEN_SCRIPT, str(folder), str(queries_file), str(REPO)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_size(n: int, X: np.ndarray, queries: np.ndarray, work: Path, kinds: list[str]) -> dict:
    from dlibplus.gallery import GalleryIndex

    result: dict = {"faces": n}
    qfile = work / f"queries-{n}.npy"
    np.save(qfile, queries)
    exact_ids = None
    for kind in kinds:
        t0 = time.perf_counter()
        index = GalleryIndex.build(X, kind=kind)
        build = time.perf_counter() - t0
        folder = work / f"{kind}-{n}"
        t0 = time.perf_counter()
        index.save(folder)
        save = time.perf_counter() - t0
        del index
        loaded = GalleryIndex.load(folder)
        row = {"build_s": round(build, 2), "save_s": round(save, 2), **open_in_fresh_process(folder, qfile),
               "ms_per_query": latency(loaded, queries, None)}
        info = loaded.info
        if kind == "exact":
            exact_ids = loaded.search(queries, 1)[1][:, 0]
        else:
            if exact_ids is None:
                exact_ids = loaded.search(queries, 1, exact=True)[1][:, 0]
            params = ("hnsw_m", "ef_search") if kind == "hnsw" else ("nlist", "nprobe")
            row.update({p: info[p] for p in params}, build_recall_at_1=info["recall_at_1"],
                       recall_at_1=float(np.mean(loaded.search(queries, 1)[1][:, 0] == exact_ids)))
        result[kind] = row
        print(f"  {kind}: {json.dumps(row)}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--kinds", default="exact,ivf")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dlibplus-bench-gallery"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import faiss

    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    real, people = real_faces()
    print(f"{len(real)} real faces of {len(set(people.tolist()))} people; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads, {os.cpu_count()} cores", flush=True)
    t0 = time.perf_counter()
    population = Population(real, people, -(-max(max(sizes) - len(real), 0) // FACES_PER_PERSON))
    X, ids = population.faces(max(sizes))
    print(f"{len(X)} faces made in {time.perf_counter() - t0:.1f} s", flush=True)
    results = []
    for n in sizes:
        q = population.new_faces(population.rng.choice(np.unique(ids[:n]), N_QUERIES))
        print(f"\n## {n} faces ({len(q)} queries of people in the gallery)", flush=True)
        results.append(bench_size(n, X[:n], q, args.work, args.kinds.split(",")))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
