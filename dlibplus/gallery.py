"""A gallery of face encodings that answers nearest-neighbour queries fast: exact, or approximate with a
measured recall, on faiss, and opened from disk in milliseconds.

- **Exact** (``kind="exact"``, the default up to :data:`EXACT_MAX` faces): faiss's brute-force L2 kernel
  (the one behind ``IndexFlatL2``, called through ``faiss.knn`` on the stored array itself, so a
  memory-mapped gallery is never copied), then the candidates are re-ranked with Euclidean distances
  computed in float64. The result is scikit-learn's ``NearestNeighbors(algorithm="brute")``: same
  neighbours, same distances (to ~1e-7). Equal distances (duplicate faces) are ordered by gallery row,
  where scikit-learn's order is arbitrary. Without faiss the same search runs on numpy.
- **Approximate**, the default above :data:`EXACT_MAX`: ``kind="hnsw"`` (faiss ``IndexHNSWFlat``, ``M``
  links per face from the gallery size, :func:`hnsw_m`), or ``kind="ivf"`` (``IndexIVFFlat``, about 4·√n
  lists, :func:`ivf_nlist`: faster to build, slower to search at high recall). The search breadth
  (HNSW's ``efSearch``, IVF's ``nprobe``) is tuned at build time: the smallest value whose recall@1
  against exact search reaches ``recall_target`` on a sample of gallery faces used as queries. The
  sample is inserted into the index last, after the measurement, so its faces are queried as new
  photos would be (a face already in an HNSW graph is found through its own links: measured that way,
  recall is flattered). A neighbour at the same distance as the exact one counts as found. The
  measured recall is kept in :attr:`GalleryIndex.info`. Candidates are re-ranked like exact ones,
  so the distances returned are exact Euclidean distances whatever the index. HNSW is the default
  because face encodings need a large share of an IVF's lists probed for recall 0.99 (measured in
  benchmarks/bench_gallery.py), while HNSW reaches it visiting a few thousand faces per query.

``add(X)`` appends rows (ids continue from ``len(index)``): an exact gallery just grows, an HNSW graph
links the new faces in, an IVF assigns them to its trained lists; nothing is retrained or rebuilt,
and the kind never changes. ``info["trained_on"]`` says how many faces the index was built on, so a
caller can rebuild when the gallery has grown far beyond that (:meth:`GalleryIndex.needs_rebuild`).

Files (:meth:`GalleryIndex.save` writes a folder, never a pickle)::

    gallery.json              format tag, sizes, file names, info (what load checks first)
    encodings-<token>.npy     (n, d) float32, opened with np.load(mmap_mode="r", allow_pickle=False)
    ann-<token>.faiss         approximate galleries only: faiss.write_index's own binary format
    ann-rows-<token>.npy      its faiss id → gallery row map, (n,) int64 (the recall sample went in last)

The approximate index is stored with faiss's serialisation rather than rebuilt at load: rebuilding
means building the HNSW graph (or k-means) over every face again, minutes for 1M faces on two cores,
against milliseconds to open the stored one memory-mapped (``IO_FLAG_MMAP_IFC`` for HNSW: vectors and
graph are paged in as queries touch them; ``IO_FLAG_MMAP`` for IVF lists). faiss's format is plain
arrays and headers, not pickle: reading it cannot run code. (Like any C++ reader, faiss trusts the
sizes in the file: open galleries you made, as with any model file.) The encodings are kept as an
.npy beside it because exact re-ranking, recall measurement and rebuilding need them as an array.

Saving is atomic: new files get a fresh token, ``gallery.json`` is replaced in one step (the commit
point), then the previous token's files are deleted. A crash leaves the old gallery intact.

faiss is optional (``pip install dlibplus[scale]``, i.e. ``faiss-cpu``): without it exact search works
(numpy) and anything approximate raises :class:`FaissMissingError`. With ``faiss-gpu`` and a visible GPU,
``device="auto"`` runs exact and IVF searches on the GPU (a resident copy); HNSW stays on the CPU.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DlibplusError, ModelFileError
from .fileio import atomic_path

FORMAT = "dlibplus-gallery"
FORMAT_VERSION = 1
META_FILE = "gallery.json"
EXACT_MAX = 100_000
"""Largest gallery built exact by default. Exact search costs about 2·n·d flops per query: at 100k faces
about 1 ms a query on two cores (bench_gallery.py), small beside the tens of ms it takes to encode the
face; above it HNSW answers in a fraction of a millisecond at recall@1 above 0.99."""
RECALL_TARGET = 0.99
"""Build-time recall@1 (on held-out gallery faces) that picks the search breadth. The held-out sample is
harder than new photos of known people: on the 1M gallery of bench_gallery.py it gave 0.9905 at
efSearch 128 where 1,000 new faces gave 0.997 (0.38 ms a query); a target of 0.995 picked efSearch 192,
three times slower for 0.999."""
HNSW_EF_SEARCH = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
"""efSearch values tried at build time, smallest first (32 costs ~0.1-0.25 ms a query at any size)."""
RECALL_SAMPLE = 2000
"""Gallery faces used as queries to measure recall at build time."""
KINDS = ("auto", "exact", "hnsw", "ivf")
APPROXIMATE = ("hnsw", "ivf")
_BREADTH = {"hnsw": "ef_search", "ivf": "nprobe"}  # the search-time knob tuned per kind
_QUERY_BATCH = 1024  # queries per block: bounds the re-ranking buffers to a few tens of MB
_NUMPY_CHUNK = 65536  # gallery rows per block in the numpy fallback


class FaissMissingError(DlibplusError, ImportError):
    """faiss is needed (an approximate index, or opening one) and is not installed."""

    def __init__(self, purpose: str):
        super().__init__(f"{purpose} needs faiss: pip install dlibplus[scale] (or pip install faiss-cpu)")


def _faiss(required_for: str | None = None):
    """The faiss module, or ``None`` (``required_for`` given: raise :class:`FaissMissingError`)."""
    try:
        import faiss
    except ImportError:
        if required_for:
            raise FaissMissingError(required_for) from None
        return None
    return faiss


def faiss_available() -> bool:
    return _faiss() is not None


def gpu_available() -> bool:
    """Whether faiss can search on a GPU here (a faiss-gpu build and a visible device)."""
    faiss = _faiss()
    return bool(faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)


def choose_kind(n: int, exact_max: int = EXACT_MAX) -> str:
    """``"exact"`` up to ``exact_max`` faces, ``"hnsw"`` above."""
    return "exact" if n <= exact_max else "hnsw"


def hnsw_m(n: int) -> int:
    """HNSW links per face for ``n`` faces: 32 up to 5M faces, 48 above.

    Face encodings need many links: on 200k faces made as in bench_gallery.py, M=16 stayed below
    recall@1 0.97 even at efSearch 128 while M=32 reached 0.99 at efSearch 32; bigger graphs need more.
    """
    return 32 if n <= 5_000_000 else 48


def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` faces: the power of two nearest 4·√n, at most 65536 and at most n/64.

    About 4·√n keeps both the coarse step (nlist distances) and the scan (nprobe·n/nlist faces) small;
    n/64 leaves k-means at least 64 faces per list (faiss warns below 39).
    """
    nlist = 2 ** int(round(math.log2(4.0 * math.sqrt(max(n, 1)))))
    cap = 2 ** int(math.floor(math.log2(max(n // 64, 1))))
    return int(max(1, min(nlist, cap, 65536)))


def _as_encodings(X, dim: int | None = None, what: str = "encodings") -> np.ndarray:
    """(n, d) C-contiguous float32 without NaN/inf; one vector (d,) is taken as (1, d)."""
    arr = np.asarray(X)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be an (n, d) array, not shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} have {arr.shape[1]} columns, the gallery {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return arr


# --- exact search kernels ---------------------------------------------------------------------------

def _knn_sq_numpy(Q: np.ndarray, X: np.ndarray, norms: np.ndarray, c: int) -> np.ndarray:
    """Ids (m, c) of the ``c`` nearest rows of X (n, d) for Q (m, d), squared L2 in float32, by blocks."""
    m = len(Q)
    best_d = np.full((m, 0), np.inf, np.float32)
    best_i = np.zeros((m, 0), np.int64)
    for start in range(0, len(X), _NUMPY_CHUNK):
        block = np.asarray(X[start:start + _NUMPY_CHUNK], np.float32)
        d2 = norms[start:start + len(block)][None, :] - 2.0 * (Q @ block.T)  # + |q|², the same for a row
        cand_d = np.concatenate([best_d, d2], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(block)), d2.shape)], axis=1)
        keep = min(c, cand_d.shape[1])
        part = np.argpartition(cand_d, keep - 1, axis=1)[:, :keep]
        best_d = np.take_along_axis(cand_d, part, 1)
        best_i = np.take_along_axis(cand_i, part, 1)
    return best_i


@contextlib.contextmanager
def _blas_blocks(faiss):
    """faiss's brute force, as ``IndexFlatL2`` runs it, tuned for batches of queries against a large
    gallery: BLAS from 20 queries (this faiss's default threshold is far higher, and its per-pair SIMD
    path is several times slower than one matrix product) in blocks of 256 queries × 65536 faces
    (64 MB of products; the default 1024-face blocks spend more time on reductions than on BLAS).
    These are faiss globals: set around the call, then restored."""
    cv = faiss.cvar
    names = ("distance_compute_blas_threshold", "distance_compute_blas_query_bs",
             "distance_compute_blas_database_bs")
    saved = [getattr(cv, n) for n in names]
    for n, v in zip(names, (20, 256, 65536)):
        setattr(cv, n, v)
    try:
        yield
    finally:
        for n, v in zip(names, saved):
            setattr(cv, n, v)


def _knn_candidates(Q: np.ndarray, X: np.ndarray, norms: np.ndarray, c: int) -> np.ndarray:
    """Row ids (m, c) of the ``c`` nearest rows of X (squared L2 in float32, faiss when present); -1 pads.

    :param norms: (n,) float32 squared norms of X's rows (computed once per gallery).
    """
    if len(X) == 0:
        return np.full((len(Q), c), -1, np.int64)
    c_eff = min(c, len(X))
    faiss = _faiss()
    if faiss is not None:
        X = np.ascontiguousarray(X)  # a memory map stays one (no copy)
        D = np.empty((len(Q), c_eff), np.float32)
        ids = np.empty((len(Q), c_eff), np.int64)
        with _blas_blocks(faiss):
            faiss.knn_L2sqr(faiss.swig_ptr(Q), faiss.swig_ptr(X), X.shape[1], len(Q), len(X), c_eff,
                            faiss.swig_ptr(D), faiss.swig_ptr(ids), faiss.swig_ptr(norms))
    else:
        ids = _knn_sq_numpy(Q, X, norms, c_eff)
    if c_eff < c:
        ids = np.concatenate([ids, np.full((len(Q), c - c_eff), -1, np.int64)], axis=1)
    return ids


def _sq_norms(X: np.ndarray) -> np.ndarray:
    """(n,) float32 squared row norms of (n, d) X, in blocks (a memory map is read once)."""
    out = np.empty(len(X), np.float32)
    for start in range(0, len(X), 1 << 18):
        block = np.asarray(X[start:start + (1 << 18)], np.float32)
        out[start:start + len(block)] = np.einsum("ij,ij->i", block, block)
    return out


def _margin(k: int) -> int:
    """Candidates fetched for the top ``k``: a few more, re-ranked in float64 (float32 rounding near ties)."""
    return k + max(8, k // 4)


# --- the index -------------------------------------------------------------------------------------------

class GalleryIndex:
    """Nearest-neighbour search over face encodings (n, d) float32, Euclidean distances.

    Build with :meth:`build`, grow with :meth:`add`, query with :meth:`search`, persist with
    :meth:`save` / :meth:`load`. Row ``i`` of the gallery has id ``i``, in the order given.

    :param dim: encoding length (128 for dlib's network).
    :param device: ``"auto"`` (GPU when faiss-gpu sees one), ``"cpu"`` or ``"gpu"``.
    """

    def __init__(self, dim: int = 128, *, device: str = "auto"):
        if device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', not {device!r}")
        self.dim = int(dim)
        self.device = device
        self._base = np.zeros((0, self.dim), np.float32)  # may be a read-only memmap
        self._tail = np.zeros((0, self.dim), np.float32)  # rows added since build/load, in memory
        self._base_norms: np.ndarray | None = None  # squared norms of _base, on first exact search
        self._ann = None  # faiss HNSW or IVF index over every row, or None for an exact gallery
        self._ann_mmapped = False
        self._ann_path: Path | None = None
        self._ann_rows = np.zeros(0, np.int64)  # faiss id -> gallery row (held-out rows went in last)
        self._gpu = None  # (resources, index) resident on the GPU, made on first search
        self._info: dict[str, Any] = {"kind": "exact", "metric": "euclidean"}

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, encodings, kind: str = "auto", *, exact_max: int = EXACT_MAX, hnsw_m: int | None = None,
              ef_construction: int = 40, ef_search: int | None = None, nlist: int | None = None,
              nprobe: int | None = None, recall_target: float = RECALL_TARGET, recall_sample: int = RECALL_SAMPLE,
              seed: int = 0, device: str = "auto") -> "GalleryIndex":
        """An index over ``encodings`` (n, d), any float dtype (stored as float32).

        :param kind: ``"auto"`` (exact up to ``exact_max`` faces, else HNSW), ``"exact"``, ``"hnsw"``
            or ``"ivf"``.
        :param hnsw_m: HNSW links per face (default :func:`hnsw_m`); ``ef_construction``: its build breadth.
        :param nlist: IVF lists (default :func:`ivf_nlist`).
        :param ef_search: HNSW search breadth, ``nprobe``: IVF lists visited per query; by default the
            smallest reaching ``recall_target`` on ``recall_sample`` gallery faces.
        :param seed: seeds k-means and the recall sample. (A multi-threaded HNSW build is not
            bit-reproducible; its recall is measured on the graph it built.)
        :raises FaissMissingError: an approximate index without faiss installed.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        X = _as_encodings(encodings)
        index = cls(X.shape[1], device=device)
        index._base = X
        if kind == "auto":
            kind = choose_kind(len(X), exact_max)
        t0 = time.perf_counter()
        if kind == "exact":
            index._info.update(kind="exact", recall_at_1=1.0, recall_queries=0)
        else:
            held = index._held_out_sample(recall_sample, seed)
            first = np.setdiff1d(np.arange(len(X)), held)
            if kind == "hnsw":
                index._build_hnsw(hnsw_m or globals()["hnsw_m"](len(X)), ef_construction, first)
                breadths = [ef_search] if ef_search else list(HNSW_EF_SEARCH)
            else:
                index._build_ivf(nlist or ivf_nlist(len(X)), seed, first)
                n_lists = index._info["nlist"]
                breadths = [nprobe] if nprobe else [p for p in (2 ** i for i in range(17)) if p < n_lists] + [n_lists]
            index._tune(held, breadths, recall_target)
            index._add_to_ann(held)
        index._info.update(trained_on=int(len(X)), build_seconds=round(time.perf_counter() - t0, 3), seed=seed)
        return index

    def _held_out_sample(self, sample: int, seed: int) -> np.ndarray:
        """Rows (sorted) kept out of the approximate index until its recall is measured on them: at
        most ``sample``, at most a fifth of the gallery."""
        n = len(self._base)
        size = min(int(sample), max(n // 5, 1))
        return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))

    def _add_to_ann(self, rows: np.ndarray) -> None:
        """Insert gallery rows into the approximate index, in blocks; faiss ids map back to rows."""
        for start in range(0, len(rows), 1 << 18):
            block = rows[start:start + (1 << 18)]
            self._ann.add(np.ascontiguousarray(self._base[block]))
        self._ann_rows = np.concatenate([self._ann_rows, rows.astype(np.int64)])

    def _build_hnsw(self, m: int, ef_construction: int, rows: np.ndarray) -> None:
        faiss = _faiss(required_for="an approximate (HNSW) gallery index")
        hnsw = faiss.IndexHNSWFlat(self.dim, int(m), faiss.METRIC_L2)
        hnsw.hnsw.efConstruction = int(ef_construction)
        self._ann = hnsw
        self._ann_rows = np.zeros(0, np.int64)
        self._add_to_ann(rows)
        self._info.update(kind="hnsw", hnsw_m=int(m), ef_construction=int(ef_construction))

    def _build_ivf(self, nlist: int, seed: int, rows: np.ndarray) -> None:
        faiss = _faiss(required_for="an approximate (IVF) gallery index")
        if len(rows) < nlist:
            raise ValueError(f"an IVF index with {nlist} lists needs at least {nlist} faces, not {len(rows)}")
        quantizer = faiss.IndexFlatL2(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_L2)
        ivf.own_fields = True
        quantizer.this.disown()
        ivf.cp.seed = seed
        ivf.cp.niter = 10  # k-means converges well before faiss's default 25 for list assignment
        ivf.cp.max_points_per_centroid = 64  # train on <= 64·nlist faces (a sample): build time, not recall
        ivf.cp.verbose = False
        train = rows
        if len(rows) > 64 * nlist:
            train = np.sort(np.random.default_rng(seed).choice(rows, 64 * nlist, replace=False))
        ivf.train(np.ascontiguousarray(self._base[train]))
        self._ann = ivf
        self._ann_rows = np.zeros(0, np.int64)
        self._add_to_ann(rows)
        self._info.update(kind="ivf", nlist=int(nlist))

    def _set_breadth(self, value: int) -> None:
        if self.kind == "hnsw":
            self._ann.hnsw.efSearch = int(value)
        else:
            self._ann.nprobe = int(value)
        self._gpu = None

    def _breadth(self) -> int | None:
        if self._ann is None:
            return None
        return int(self._ann.hnsw.efSearch if self.kind == "hnsw" else self._ann.nprobe)

    def _in_memory_ann(self):
        """The approximate index with nothing memory-mapped: a mapped one cannot grow (faiss aborts the
        process, it does not raise). IVF lists are copied from the mapping; HNSW is read again."""
        if self.kind == "ivf":
            return _writable_ivf(self._ann)
        faiss = _faiss(required_for="adding to an HNSW gallery")
        if not self._ann_path.is_file():
            raise ModelFileError(self._ann_path, "was replaced since the gallery was opened: load it again")
        ann = faiss.read_index(str(self._ann_path))
        ann.hnsw.efSearch = self._ann.hnsw.efSearch
        return ann

    def _tune(self, held: np.ndarray, breadths: list[int], target: float) -> None:
        """Set the search breadth: the first of ``breadths`` whose recall@1 on the ``held`` rows (not
        yet in the approximate index: new faces to it) reaches ``target``; record the curve."""
        truth = self._nearest_outside(held)
        queries = self._rows(held)
        curve = {}
        for value in breadths:
            self._set_breadth(value)
            found = self.search(queries, 1, exact=False)
            curve[int(value)] = _recall(truth, (found[0][:, 0], found[1][:, 0]))
            if curve[int(value)] >= target:
                break
        name = _BREADTH[self.kind]
        self._info.update({name: int(value), "recall_at_1": curve[int(value)], "recall_queries": int(len(held)),
                           "recall_target": target, f"recall_by_{name}": {str(k): v for k, v in curve.items()}})

    def _nearest_outside(self, held: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(distance, row) of each held-out row's exact nearest row among those not held out."""
        D, I = self.search(self._rows(held), min(k, len(self)), exact=True)
        outside = ~np.isin(I, held) & (I >= 0)
        first = np.argmax(outside, axis=1)  # a row with none outside (never seen) keeps column 0
        pick = np.arange(len(held))
        return D[pick, first], I[pick, first]

    # -- growing ---------------------------------------------------------------------------------------
    def add(self, encodings) -> np.ndarray:
        """Append faces; returns their ids (n_old … n_new-1), int64. Nothing already there is rebuilt.

        HNSW links them into its graph, IVF assigns them to its trained lists; the search breadth and
        the recorded recall stay as measured at build (:meth:`measure_recall` measures again). A
        memory-mapped approximate index is first read into memory (faiss cannot grow a mapped one).
        """
        X = _as_encodings(encodings, self.dim)
        start = len(self)
        if len(X) == 0:
            return np.zeros(0, np.int64)
        if self._ann is not None:
            if self._ann_mmapped:
                self._ann = self._in_memory_ann()
                self._ann_mmapped = False
            self._ann.add(X)
            self._ann_rows = np.concatenate([self._ann_rows, np.arange(start, start + len(X), dtype=np.int64)])
        self._tail = np.concatenate([self._tail, X]) if len(self._tail) else X.copy()
        if self._gpu is not None:
            try:
                self._gpu[1].add(X)
            except Exception:  # noqa: BLE001 - a GPU copy that cannot grow is simply remade
                self._gpu = None
        return np.arange(start, start + len(X), dtype=np.int64)

    # -- searching -------------------------------------------------------------------------------------
    def search(self, queries, k: int = 1, *, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest gallery faces of each query.

        :param queries: (m, d) or (d,) float.
        :param exact: ``None``: the index's own kind; ``True``: brute force even on an approximate
            gallery; ``False``: the approximate index (an error on an exact gallery).
        :return: ``(distances (m, k) float32, ids (m, k) int64)``: Euclidean (not squared) distances,
            nearest first, equal distances by ascending id; rows beyond the gallery size are ``inf``/-1.
        """
        Q = _as_encodings(queries, self.dim, "queries")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        if exact is False and self._ann is None:
            raise ValueError("this gallery is exact: it has no approximate index to search")
        use_ann = self._ann is not None and exact is not True
        D = np.empty((len(Q), k), np.float32)
        I = np.empty((len(Q), k), np.int64)
        for s in range(0, len(Q), _QUERY_BATCH):
            q = Q[s:s + _QUERY_BATCH]
            cand = self._candidates(q, _margin(k), use_ann)
            D[s:s + len(q)], I[s:s + len(q)] = self._rerank(q, cand, k)
        return D, I

    def _candidates(self, Q: np.ndarray, c: int, use_ann: bool) -> np.ndarray:
        """Candidate ids (m, c) (-1 pads) from the approximate index or brute force (GPU when enabled)."""
        gpu = self._gpu_index(use_ann)
        if gpu is not None:
            ids = gpu.search(Q, min(c, 2048))[1].astype(np.int64)  # faiss-gpu's largest k
            return np.where(ids >= 0, self._ann_rows[np.maximum(ids, 0)], -1) if use_ann else ids
        if use_ann:
            ids = self._ann.search(Q, c)[1].astype(np.int64)
            return np.where(ids >= 0, self._ann_rows[np.maximum(ids, 0)], -1)
        if self._base_norms is None:
            self._base_norms = _sq_norms(self._base)
        ids = _knn_candidates(Q, self._base, self._base_norms, c)
        if len(self._tail):
            tail = _knn_candidates(Q, self._tail, _sq_norms(self._tail), c)
            ids = np.concatenate([ids, np.where(tail >= 0, tail + len(self._base), -1)], axis=1)
        return ids

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Gallery rows (len(ids), d) float32 of valid ids (1-D); a memory map reads only those rows."""
        nb = len(self._base)
        if not len(self._tail):
            return np.asarray(self._base[ids])
        out = np.empty((len(ids), self.dim), np.float32)
        in_base = ids < nb
        out[in_base] = self._base[ids[in_base]]
        out[~in_base] = self._tail[ids[~in_base] - nb]
        return out

    def _rerank(self, Q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact float64 distances of the candidates (m, c), sorted by (distance, id), top k.

        One candidate column at a time: no (m, c, d) temporaries, however many neighbours are asked for.
        """
        cand = np.sort(cand, axis=1)  # by id (-1 pads first): the stable sort below then orders ties by id
        valid = cand >= 0
        safe = np.where(valid, cand, 0)
        q64 = Q.astype(np.float64)
        dist = np.empty(cand.shape)
        for j in range(cand.shape[1]):
            diff = self._rows(safe[:, j]) - q64
            dist[:, j] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        dist[~valid] = np.inf
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        d = np.take_along_axis(dist, order, 1)
        i = np.take_along_axis(np.where(valid, cand, -1), order, 1)
        if d.shape[1] < k:
            pad = k - d.shape[1]
            d = np.concatenate([d, np.full((len(d), pad), np.inf)], axis=1)
            i = np.concatenate([i, np.full((len(i), pad), -1, np.int64)], axis=1)
        return d.astype(np.float32), i

    def _gpu_index(self, use_ann: bool):
        """A GPU-resident copy of what ``use_ann`` searches, made on first use; ``None`` on CPU.

        Not exercised by the test-suite (no GPU there); any failure falls back to the CPU with a warning.
        """
        if self.device == "cpu" or (self.device == "auto" and not gpu_available()) or \
                (use_ann and self.kind == "hnsw"):
            return None
        if self._gpu is not None and self._gpu[2] == use_ann:
            return self._gpu[1]
        faiss = _faiss(required_for="GPU search")
        try:
            res = faiss.StandardGpuResources()
            if use_ann:
                if self._ann_mmapped:  # the GPU copy reads the lists; mapped ones may not be readable whole
                    self._ann, self._ann_mmapped = self._in_memory_ann(), False
                gpu = faiss.index_cpu_to_gpu(res, 0, self._ann)
            else:
                gpu = faiss.GpuIndexFlatL2(res, self.dim)
                for start in range(0, len(self._base), 1 << 18):
                    gpu.add(np.ascontiguousarray(self._base[start:start + (1 << 18)]))
                if len(self._tail):
                    gpu.add(self._tail)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"faiss GPU search unavailable ({type(exc).__name__}: {exc}); searching on the CPU")
            self.device = "cpu"
            return None
        self._gpu = (res, gpu, use_ann)
        return gpu

    # -- recall ------------------------------------------------------------------------------------------
    def _recall_queries(self, sample: int, seed: int) -> np.ndarray:
        rows = np.arange(len(self))
        if len(rows) > sample:
            rows = np.sort(np.random.default_rng(seed).choice(len(rows), sample, replace=False))
        return rows

    def _nearest_other(self, rows: np.ndarray, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        """(distance, id) of each gallery row's nearest *other* row (leave-one-out)."""
        D, I = self.search(self._rows(rows), 2, exact=exact)
        first_is_self = I[:, 0] == rows
        pick = np.where(first_is_self, 1, 0)
        return D[np.arange(len(rows)), pick], I[np.arange(len(rows)), pick]

    def measure_recall(self, sample: int = RECALL_SAMPLE, seed: int = 0) -> float:
        """recall@1 of the approximate index against exact search now (after :meth:`add`, say),
        leave-one-out on ``sample`` gallery faces (a hit: the same neighbour, or one as near); 1.0 for
        an exact gallery. Every face is in the index already, which flatters HNSW a little (its
        build-time ``recall_at_1`` is measured on faces not yet inserted). Recorded in ``info`` as
        ``recall_at_1_leave_one_out`` (with ``recall_measured_on``: the gallery size)."""
        if self._ann is None:
            return 1.0
        rows = self._recall_queries(sample, seed)
        r = _recall(self._nearest_other(rows, exact=True), self._nearest_other(rows, exact=False))
        self._info.update(recall_at_1_leave_one_out=r, recall_measured_on=len(self))
        return r

    def needs_rebuild(self, factor: float = 4.0) -> bool:
        """True for an exact gallery grown past :data:`EXACT_MAX`, or an approximate one grown past
        ``factor`` × the faces it was built on (its IVF lists, or its HNSW parameters and tuned breadth,
        were chosen for that size). Rebuild with ``GalleryIndex.build(index.encodings)``."""
        if self._ann is None:
            return len(self) > EXACT_MAX
        return len(self) > factor * self._info.get("trained_on", len(self))

    # -- facts -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._base) + len(self._tail)

    @property
    def kind(self) -> str:
        return self._info["kind"]

    @property
    def encodings(self) -> np.ndarray:
        """Every gallery row (n, d) float32: the memory map itself when nothing was added since load."""
        if not len(self._tail):
            return self._base
        return np.concatenate([self._base, self._tail])

    @property
    def info(self) -> dict[str, Any]:
        """JSON-able facts: kind, n, dim, metric, recall_at_1 (1.0 for exact), recall_queries,
        recall_target, trained_on, build_seconds, seed, faiss version, device; for HNSW hnsw_m,
        ef_construction, ef_search, recall_by_ef_search; for IVF nlist, nprobe, recall_by_nprobe."""
        faiss = _faiss()
        breadth = {_BREADTH[self.kind]: self._breadth()} if self._ann is not None else {}
        return {**self._info, **breadth, "n": len(self), "dim": self.dim,
                "faiss": getattr(faiss, "__version__", None) if faiss else None,
                "device": "gpu" if self._gpu is not None else "cpu"}

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, folder: os.PathLike | str) -> Path:
        """Write the gallery into ``folder`` (created if needed) atomically; returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        old = _read_meta(folder / META_FILE) if (folder / META_FILE).is_file() else None
        token = secrets.token_hex(6)
        files = {"encodings": f"encodings-{token}.npy", "ann": None}
        with atomic_path(folder / files["encodings"]) as tmp:
            self._write_npy(tmp)
        if self._ann is not None:
            files["ann"] = f"ann-{token}.faiss"
            files["ann_rows"] = f"ann-rows-{token}.npy"
            faiss = _faiss(required_for="saving an approximate gallery")
            with atomic_path(folder / files["ann"]) as tmp:
                faiss.write_index(self._ann, str(tmp))
            with atomic_path(folder / files["ann_rows"]) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.asarray(self._ann_rows, np.int64))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "n": len(self), "dim": self.dim,
                "files": files, "info": {k: v for k, v in self.info.items() if k not in ("n", "dim", "device")}}
        with atomic_path(folder / META_FILE) as tmp:
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if old:
            for name in (old.get("files") or {}).values():
                if name and name not in files.values() and "/" not in name:
                    (folder / name).unlink(missing_ok=True)
        return folder

    def _write_npy(self, path: Path) -> None:
        """Stream base then tail into an .npy (never holds a second copy of a memory-mapped base)."""
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(self), self.dim))
        step = 1 << 18
        nb = len(self._base)
        for start in range(0, nb, step):
            out[start:min(start + step, nb)] = self._base[start:start + step]
        out[nb:] = self._tail
        out.flush()
        del out

    @classmethod
    def load(cls, folder: os.PathLike | str, *, mmap: bool = True, device: str = "auto") -> "GalleryIndex":
        """Open a gallery written by :meth:`save`: the encodings memory-mapped (``mmap=False`` reads
        them into memory), an approximate index memory-mapped too. Never unpickles.

        :raises ModelFileError: missing, incomplete, or not a dlibplus gallery.
        :raises FaissMissingError: an approximate gallery without faiss installed.
        """
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise ModelFileError(folder, f"not a dlibplus gallery (no {META_FILE})")
        meta = _read_meta(meta_path)
        files = meta.get("files") or {}
        n, dim = int(meta.get("n", -1)), int(meta.get("dim", -1))
        enc_path = folder / str(files.get("encodings"))
        try:
            X = np.load(enc_path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ModelFileError(enc_path, f"cannot read the gallery's encodings ({exc})") from None
        if X.dtype != np.float32 or X.shape != (n, dim):
            raise ModelFileError(enc_path, f"encodings are {X.dtype} {X.shape}, {META_FILE} says float32 {(n, dim)}")
        index = cls(dim, device=device)
        index._base = X
        info = meta.get("info") or {}
        index._info.update({k: v for k, v in info.items() if k not in ("faiss", *_BREADTH.values())})
        if index.kind in APPROXIMATE:
            if not files.get("ann"):
                raise ModelFileError(meta_path, f"a {index.kind} gallery without its index file")
            index._ann_path = folder / files["ann"]
            index._ann = _read_ann(index._ann_path, index.kind, n, dim, mmap)
            index._ann_mmapped = bool(mmap)
            index._ann_rows = _read_ann_rows(folder / str(files.get("ann_rows")), n, mmap)
            if info.get(_BREADTH[index.kind]):
                index._set_breadth(info[_BREADTH[index.kind]])
        return index


# --- helpers ---------------------------------------------------------------------------------------------

def _recall(exact: tuple[np.ndarray, np.ndarray], approx: tuple[np.ndarray, np.ndarray], tol: float = 1e-6) -> float:
    """Share of queries whose approximate nearest neighbour is the exact one (or as near)."""
    (de, ie), (da, ia) = exact, approx
    hit = (ia == ie) | (da <= de + tol)
    return float(np.mean(hit)) if len(hit) else 1.0


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(path, f"unreadable gallery description ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(path, "not a dlibplus gallery (wrong format tag)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(path, f"written by a newer dlibplus (format {meta['format_version']})")
    return meta


def _read_ann(path: Path, kind: str, n: int, dim: int, mmap: bool):
    """A stored HNSW or IVF index, memory-mapped when ``mmap`` (and this faiss can)."""
    faiss = _faiss(required_for=f"opening the approximate gallery index {path.name}")
    if not path.is_file():
        raise ModelFileError(path, "the gallery's index file is missing")
    mapped = getattr(faiss, "IO_FLAG_MMAP" if kind == "ivf" else "IO_FLAG_MMAP_IFC", 0) if mmap else 0
    flags = mapped | faiss.IO_FLAG_READ_ONLY if mapped else 0
    try:
        ann = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise ModelFileError(path, f"not a readable faiss index ({str(exc).splitlines()[0][:200]})") from None
    if ann.ntotal != n or ann.d != dim:
        raise ModelFileError(path, f"index holds {ann.ntotal} x {ann.d}, the gallery {n} x {dim}")
    return ann


def _read_ann_rows(path: Path, n: int, mmap: bool) -> np.ndarray:
    """The approximate index's id → gallery row map: (n,) int64, a permutation of the rows."""
    try:
        rows = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelFileError(path, f"cannot read the gallery's index row map ({exc})") from None
    if rows.dtype != np.int64 or rows.shape != (n,):
        raise ModelFileError(path, f"row map is {rows.dtype} {rows.shape}, expected int64 ({n},)")
    return rows


def _writable_ivf(ann):
    """Turn a memory-mapped (read-only) IVF's lists into in-memory lists, so faces can be added.

    (Adding to read-only mapped lists would abort the process inside faiss, not raise.)
    """
    faiss = _faiss(required_for="adding to an IVF gallery")
    ivf = faiss.extract_index_ivf(ann)
    old = ivf.invlists
    new = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    for lst in range(ivf.nlist):
        size = old.list_size(lst)
        if size:
            new.add_entries(lst, size, old.get_ids(lst), old.get_codes(lst))
    ivf.replace_invlists(new, True)
    new.this.disown()  # faiss owns the lists now
    return ann
