"""Encode many photos on a Ray cluster: the results of :func:`dlibplus.data.process_images`, in the same order.

The job is a Ray Data pipeline:

1. the file list becomes a dataset of ``(index, path)`` rows;
2. CPU tasks read each image and find, align and cut its faces (``process_images(..., want="chips")``
   on a few images per task, so the steps and the per-file errors are the single-process ones);
3. encoder actors turn the chips into descriptors: one per GPU with a GPU each where the cluster has
   GPUs (a :class:`~dlibplus.encoders.TorchEncoder` then runs on CUDA), else CPU actors that take no CPU
   reservation (detection is the bottleneck on CPUs; the actor shares the cores with it);
4. the driver puts the results back in input order.

Two outputs: :func:`ray_process_images` gives the list of :class:`~dlibplus.data.ImageFaces` (what
``dlibplus encode --ray`` writes as its usual ``.npz``); :func:`encode_to_parquet` writes Parquet shards of
``shard_size`` images each (one row per face: ``path``, ``image`` (index in the input list), ``box``
(top, right, bottom, left int32), ``encoding`` (128 float32)) for jobs too large for one file, and skips
the shards a previous run already wrote, so an interrupted job resumes where it stopped.

``address=None`` starts a private local cluster of ``num_cpus`` CPUs (shut down at the end); an address
(``"auto"``, ``"host:6379"``, ``"ray://host:10001"``) joins an existing one. Ray is optional:
``pip install dlibplus[ray]``. Start-up costs seconds (measured in BENCHMARKS.md), so Ray pays only on
large jobs or several machines.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .data import ImageFaces, process_images
from .errors import DataFolderError
from .faces import CHIP_SIZE, FaceSettings
from .fileio import atomic_path, write_json
from .optional import require

DESCRIPTOR_SIZE = 128
IMAGES_PER_TASK = 4  # images per detection task: small, so that 2 CPUs stay busy on small jobs
ENCODE_BATCH = 64  # images per encoder-actor call (their faces are encoded in one batch)
PARQUET_FORMAT = "dlibplus-parquet-encodings"
MANIFEST = "manifest.json"


def require_ray():
    """The ``ray`` module (with Ray Data), or :class:`~dlibplus.optional.MissingDependencyError`."""
    require("ray.data", "ray", "--ray (encoding on a Ray cluster)")
    import ray

    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, initialised for the block: a new private local cluster of ``num_cpus`` CPUs when ``address``
    is ``None`` (or ``"local"``), else the cluster at ``address``. A Ray already initialised in this
    process is used as it is and left running; one started here is shut down at the end."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    local = address in (None, "local")
    # a local cluster is the user's foreground job, as process_images' workers are: Ray's default worker
    # niceness (15) would let every other process on the machine go first
    extra = {"_system_config": {"worker_niceness": 0}} if local else {}
    ray.init(address="local" if local else address, num_cpus=num_cpus if local else None,
             include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **extra)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _job_context() -> Iterator[None]:
    """Ray Data settings for the datasets made in the block (each dataset keeps a copy of the context it
    was made in), the process's own restored afterwards: order preserved (results stream back nearly in
    order, so the driver buffers little), no Ray progress bars (ours shows)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


# --- the two stages (run in Ray workers) ------------------------------------------------------------

def chips_stage(batch: dict[str, np.ndarray], settings: FaceSettings) -> dict[str, np.ndarray]:
    """Detection, landmarks and chips for a batch of ``(index, path)`` rows (a Ray Data task).

    Out: ``index``, ``path``, ``error`` (``""`` when none), ``failed`` (bool), ``n_faces``, ``boxes``
    (bytes of (n, 4) int32), ``chips`` (bytes of (n, 150, 150, 3) uint8).
    """
    paths = [str(p) for p in batch["path"]]
    results = process_images(paths, settings, want="chips", jobs=1, use_cache=False, progress=False)
    out = _columns(batch["index"], results)
    out["chips"] = np.array([r.chips.tobytes() if r.chips is not None else b"" for r in results], dtype=object)
    return out


def _columns(indices, results: Sequence[ImageFaces]) -> dict[str, np.ndarray]:
    return {"index": np.asarray(indices, np.int64),
            "path": np.array([str(r.path) for r in results], dtype=object),
            "error": np.array([r.error or "" for r in results], dtype=object),
            "failed": np.array([r.error is not None for r in results]),
            "n_faces": np.array([r.n_faces for r in results], np.int32),
            "boxes": np.array([np.ascontiguousarray(r.boxes, np.int32).tobytes() for r in results], dtype=object)}


class EncoderActor:
    """Encodes the chips of a batch of images (a Ray Data actor; the encoder is loaded once per actor).

    ``encoder``: a spec (``"dlib"``, ``"torch"``, a ``.dat``, a fine-tuned folder, ``+flip``) or an
    encoder object. Encoders that run per image in the single-process pipeline (dlib's) run per image
    here too; the others (torch) get all the batch's faces in one call.
    """

    def __init__(self, encoder: Any, num_jitters: int):
        from .encoders import resolve_encoder, with_jitter

        base = resolve_encoder(encoder)[0] if encoder is None or isinstance(encoder, (str, os.PathLike)) else encoder
        self.encoder = with_jitter(base, num_jitters)
        self.per_image = bool(getattr(self.encoder, "in_workers", False))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = [int(n) for n in batch["n_faces"]]
        chips = [np.frombuffer(c, np.uint8).reshape(n, CHIP_SIZE, CHIP_SIZE, 3) for c, n in zip(batch["chips"], counts)]
        if self.per_image:
            encs = [self._encode(c) for c in chips]
        else:
            flat = self._encode(np.concatenate(chips)) if chips else np.zeros((0, DESCRIPTOR_SIZE))
            encs = np.split(flat, np.cumsum(counts)[:-1]) if counts else []
        out = {k: batch[k] for k in ("index", "path", "error", "failed", "n_faces", "boxes")}
        out["encodings"] = np.array([e.tobytes() for e in encs], dtype=object)
        return out

    def _encode(self, chips: np.ndarray) -> np.ndarray:
        if not len(chips):
            return np.zeros((0, DESCRIPTOR_SIZE))
        return np.asarray(self.encoder.encode(chips), np.float64).reshape(len(chips), DESCRIPTOR_SIZE)


def _to_result(row: dict[str, Any]) -> ImageFaces:
    path = Path(row["path"])
    if row["failed"]:
        return ImageFaces(path, error=str(row["error"]))
    n = int(row["n_faces"])
    boxes = np.frombuffer(row["boxes"], np.int32).reshape(n, 4).copy()
    encodings = np.frombuffer(row["encodings"], np.float64).reshape(n, DESCRIPTOR_SIZE).copy()
    return ImageFaces(path, boxes=boxes, encodings=encodings)


# --- running the pipeline ---------------------------------------------------------------------------

def _encoder_resources(ray) -> tuple[int, dict[str, float]]:
    """``(actors, resources per actor)``: one actor per GPU with a GPU each, else one CPU actor with no
    CPU reserved."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    return 1, {"num_cpus": 0}


def iter_results(paths: Sequence[os.PathLike | str], settings: FaceSettings, *, encoder: Any = "dlib",
                 num_jitters: int = 1, images_per_task: int = IMAGES_PER_TASK,
                 encode_batch: int = ENCODE_BATCH) -> Iterator[tuple[int, ImageFaces]]:
    """``(position, result)`` for every path, in input order, on the Ray this process is connected to."""
    import ray
    import ray.data

    if not paths:
        return
    items = [{"index": i, "path": str(p)} for i, p in enumerate(paths)]
    actors, resources = _encoder_resources(ray)
    with _job_context():
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // images_per_task)))
        ds = ds.map_batches(chips_stage, fn_kwargs={"settings": settings}, batch_size=images_per_task,
                            batch_format="numpy", num_cpus=1)
        ds = ds.map_batches(EncoderActor, fn_constructor_args=(encoder, num_jitters), batch_size=encode_batch,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), **resources)
    pending: dict[int, ImageFaces] = {}
    next_index = 0
    for row in ds.iter_rows():
        pending[int(row["index"])] = _to_result(row)
        while next_index in pending:
            yield next_index, pending.pop(next_index)
            next_index += 1
    if next_index != len(paths):  # never expected: Ray Data lost rows
        raise RuntimeError(f"Ray returned {next_index} of {len(paths)} results")


def ray_process_images(paths: Sequence[os.PathLike | str], settings: FaceSettings, *, encoder: Any = "dlib",
                       num_jitters: int = 1, address: str | None = None, num_cpus: int | None = None,
                       progress: bool = True, **options) -> list[ImageFaces]:
    """What :func:`dlibplus.data.process_images` returns (``want="encodings"``), computed on Ray.

    :param encoder: an encoder spec (``"dlib"``, ``"torch"``, a ``.dat``, a fine-tuned folder, ``+flip``;
        resolved in each actor, so a GPU actor gets a CUDA encoder) or an encoder object.
    :param address: ``None``: a new local cluster of ``num_cpus`` CPUs (default all); else join this one.
    :return: one :class:`~dlibplus.data.ImageFaces` per path, in input order: ``boxes`` (n, 4) int32,
        ``encodings`` (n, 128) float64, ``error`` for a file that could not be used.
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    with ray_cluster(address, num_cpus), tqdm(total=len(paths), desc="encoding (ray)", unit="img",
                                              disable=not progress, leave=False) as bar:
        out = []
        for _, result in iter_results(paths, settings, encoder=encoder, num_jitters=num_jitters, **options):
            out.append(result)
            bar.update(1)
    return out


# --- Parquet shards -----------------------------------------------------------------------------------

@dataclass
class ParquetResult:
    """What :func:`encode_to_parquet` did.

    :ivar shards: every shard file of the job, in order. :ivar written, skipped: shards written now, and
        found already written. :ivar n_faces: faces in all shards. :ivar failures: ``(path, error)`` of
        files that could not be used; :ivar no_face: images with no face (both over all shards).
    """

    folder: Path
    shards: list[Path] = field(default_factory=list)
    written: int = 0
    skipped: int = 0
    n_faces: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)


def _manifest(paths: Sequence[Path], settings: FaceSettings, encoder_identity: dict, num_jitters: int,
              shard_size: int) -> dict[str, Any]:
    listing = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()
    return {"format": PARQUET_FORMAT, "format_version": 1, "n_images": len(paths), "paths_sha256": listing,
            "shard_size": shard_size, "face_settings": settings.to_dict(), "encoder": encoder_identity,
            "num_jitters": max(num_jitters, 1),
            "columns": {"path": "string", "image": "int64 (index in the input list)",
                        "box": "int32[4] (top, right, bottom, left)", "encoding": "float32[128]"}}


def shard_path(folder: Path, shard: int) -> Path:
    return folder / f"part-{shard:05d}.parquet"


def _shard_schema():
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("image", pa.int64()),
                      ("box", pa.list_(pa.int32(), 4)), ("encoding", pa.list_(pa.float32(), DESCRIPTOR_SIZE))])


def _write_shard(path: Path, first: int, results: Sequence[ImageFaces]) -> dict[str, Any]:
    """One shard, atomically; returns its summary (also stored in the file's schema metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(str(r.path), first + i, box, enc) for i, r in enumerate(results) if r.error is None
            for box, enc in zip(r.boxes, r.encodings)]
    summary = {"first": first, "count": len(results), "n_faces": len(rows),
               "failures": [[str(r.path), r.error] for r in results if r.error is not None],
               "no_face": [str(r.path) for r in results if r.error is None and not r.n_faces]}
    schema = _shard_schema().with_metadata({"dlibplus": json.dumps(summary)})
    boxes = np.array([b for _, _, b, _ in rows], np.int32).reshape(-1)
    encs = np.array([e for _, _, _, e in rows], np.float32).reshape(-1)
    table = pa.table([pa.array([p for p, _, _, _ in rows], pa.string()),
                      pa.array([i for _, i, _, _ in rows], pa.int64()),
                      pa.FixedSizeListArray.from_arrays(pa.array(boxes, pa.int32()), 4),
                      pa.FixedSizeListArray.from_arrays(pa.array(encs, pa.float32()), DESCRIPTOR_SIZE)],
                     schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))
    return summary


def _written_shard(path: Path, first: int, count: int) -> dict[str, Any] | None:
    """The summary of a shard already written for these images, or ``None`` (missing or unreadable)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        meta = pq.read_schema(str(path)).metadata or {}
        summary = json.loads(meta[b"dlibplus"])
    except Exception:  # an unreadable shard is written again
        return None
    return summary if (summary.get("first"), summary.get("count")) == (first, count) else None


def _check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    path = folder / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old != manifest:
            raise DataFolderError(f"{folder} holds Parquet shards of another job (other images, settings or "
                                  "encoder); give an empty folder, or the same job to resume it")
    else:
        if folder.exists() and any(folder.glob("part-*.parquet")):
            raise DataFolderError(f"{folder} holds Parquet shards without a {MANIFEST}; give an empty folder")
        write_json(path, manifest)


def encode_to_parquet(paths: Sequence[os.PathLike | str], folder: os.PathLike | str, settings: FaceSettings, *,
                      encoder: Any = "dlib", num_jitters: int = 1, shard_size: int = 10_000, use_ray: bool = True,
                      address: str | None = None, num_cpus: int | None = None, progress: bool = True,
                      **options) -> ParquetResult:
    """Encode every image into Parquet shards of ``shard_size`` images in ``folder``, resumably.

    Shard ``k`` (``part-0000k.parquet``) holds the faces of images ``k*shard_size`` to
    ``(k+1)*shard_size - 1`` in input order; ``manifest.json`` records the job (image list hash, settings,
    encoder), and a shard already written for the same job is skipped. Without ``use_ray`` the shards are
    computed by :func:`~dlibplus.data.iter_images` (same results, one machine).

    :param options: to :func:`iter_results` (``images_per_task``, ``encode_batch``) on Ray, else to
        :func:`~dlibplus.data.iter_images` (``jobs``).
    :raises DataFolderError: ``folder`` holds another job's shards.
    """
    from tqdm.auto import tqdm

    from .encoders import resolve_encoder, with_jitter

    require("pyarrow.parquet", "ray", "Parquet output")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, not {shard_size}")
    paths, folder = [Path(p) for p in paths], Path(folder)
    named = encoder is None or isinstance(encoder, (str, os.PathLike))
    local_encoder = resolve_encoder(encoder)[0] if named else encoder
    _check_manifest(folder, _manifest(paths, settings, with_jitter(local_encoder, num_jitters).identity,
                                      num_jitters, shard_size))
    result = ParquetResult(folder)
    todo: list[int] = []
    for k, first in enumerate(range(0, len(paths), shard_size)):
        count = min(shard_size, len(paths) - first)
        result.shards.append(shard_path(folder, k))
        summary = _written_shard(result.shards[-1], first, count)
        if summary is None:
            todo.append(k)
        else:
            result.skipped += 1
            _add(result, summary)
    todo_paths = [p for k in todo for p in paths[k * shard_size:(k + 1) * shard_size]]
    if todo_paths:
        bar = tqdm(total=len(paths), initial=len(paths) - len(todo_paths), desc="encoding", unit="img",
                   disable=not progress, leave=False)
        with contextlib.ExitStack() as stack:
            stack.enter_context(bar)
            if use_ray:
                stack.enter_context(ray_cluster(address, num_cpus))
                stream = (r for _, r in iter_results(todo_paths, settings, encoder=encoder, num_jitters=num_jitters,
                                                     **options))
            else:
                from .data import iter_images

                stream = iter_images(todo_paths, settings, encoder=local_encoder, num_jitters=num_jitters,
                                     progress=False, **options)
            for k in todo:
                first = k * shard_size
                count = min(shard_size, len(paths) - first)
                shard = [next(stream) for _ in range(count)]
                bar.update(count)
                _add(result, _write_shard(result.shards[k], first, shard))
                result.written += 1
    return result


def _add(result: ParquetResult, summary: dict[str, Any]) -> None:
    result.n_faces += int(summary["n_faces"])
    result.failures += [(str(p), str(e)) for p, e in summary["failures"]]
    result.no_face += [str(p) for p in summary["no_face"]]


def read_parquet(folder: os.PathLike | str) -> dict[str, np.ndarray]:
    """The shards of a folder as ``dlibplus encode``'s arrays: ``encodings`` (n, 128) float32, ``paths``
    (n,) str, ``boxes`` (n, 4) int32, plus ``image`` (n,) int64, in shard order."""
    import pyarrow.parquet as pq

    shards = sorted(Path(folder).glob("part-*.parquet"))
    if not shards:
        return {"encodings": np.zeros((0, DESCRIPTOR_SIZE), np.float32), "paths": np.array([], dtype=str),
                "boxes": np.zeros((0, 4), np.int32), "image": np.zeros(0, np.int64)}
    tables = [pq.read_table(str(s)) for s in shards]
    import pyarrow as pa

    table = pa.concat_tables(tables)
    return {"encodings": table.column("encoding").combine_chunks().flatten().to_numpy().reshape(-1, DESCRIPTOR_SIZE),
            "paths": np.array(table.column("path").to_pylist(), dtype=str),
            "boxes": table.column("box").combine_chunks().flatten().to_numpy().reshape(-1, 4),
            "image": table.column("image").to_numpy()}
