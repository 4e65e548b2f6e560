"""Cross-fitting's fold runs: each trains on the other folds and is judged on its own, in this process one
after the other, or side by side in one process each.

On a CPU the folds are independent runs, and two single-threaded processes get more from 2 cores than one
process with two threads running them in turn: the convolutions scale less than linearly with threads, and
each process's host thread jitters its next batch while the other computes (on 2 cores, two runs side by side
took 0.76-0.78x the time of the two one after the other with two threads; two 300-photo folders took 0.73-0.92x
end to end, BENCHMARKS.md). A worker computes what :func:`train_fold` computes in a process with its
thread count, bit for bit (tests/test_folds.py): the same photos, fold, settings and seed. Only the thread
count, which orders float sums, differs from a run that trains the folds one after the other with every thread.

A worker is a ``spawn`` process (a fork of a process whose torch thread pool has run can hang). It trains and
judges its fold, sends what the selection needs (:class:`FoldOutcome`), then measures the interpolation the
parent chose on its own photos (:meth:`FoldHandle.kept`) and ends when closed.
"""
from __future__ import annotations

import copy
import multiprocessing
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable

import numpy as np
import torch

from .distributed import Dist
from .echo import EchoPool
from .errors import DlibplusError
from .finetune_data import ChipSet
from .finish import KeptFigures, judge, kept_figures, load_scaled
from .selection import Assessment, interpolate
from .train import Run, TrainState, build, fit, seed_run, validate
from .train_config import FinetuneConfig


@dataclass
class FoldOutcome:
    """What a fold's run hands the selection and the run on every photo (picklable: a worker sends it).

    :ivar judged: dlib first, then each interpolation and the fine-tuned weights, on the fold's photos.
    :ivar val_labels: (n,) int64 labels of the fold's photos, in the order of each judgement's arrays.
    :ivar dlib_val: dlib's validation figures on the fold's photos.
    :ivar best_backbone: the best epoch's backbone state dict (uncalibrated, not interpolated).
    :ivar best_epoch: 0-based (-1: no epoch beat dlib's validation figures).
    :ivar history: :attr:`TrainState.history` of the run.
    """

    judged: list[Assessment]
    val_labels: np.ndarray
    dlib_val: dict
    best_backbone: dict
    best_epoch: int
    history: list[dict]


@dataclass
class FoldRun:
    """One fold's run in this process: trained on the other folds, judged on its own."""

    run: Run
    state: TrainState
    train: ChipSet
    val: ChipSet
    outcome: FoldOutcome

    def kept(self, alpha: float, index: int) -> KeptFigures:
        """The figures of the interpolation ``alpha`` (``outcome.judged[index]``'s), scaled by this fold's own
        calibration, on the fold's photos; leaves it loaded in ``run.backbone``."""
        scale = self.outcome.judged[index].point.scale
        load_scaled(self.run.backbone, interpolate(self.run.base_state, self.state.best_backbone, alpha), scale)
        return kept_figures(self.run, alpha, scale, self.train, self.val)[0]


def train_fold(photos: ChipSet, fold: np.ndarray, k: int, config: FinetuneConfig, device: torch.device,
               dist_info: Dist, *, progress: bool, say: Callable[[str], None], echo: EchoPool | None = None,
               on_epoch: Callable[[dict], None] | None = None) -> FoldRun:
    """Fine-tune on the photos whose ``fold`` (an (n,) int array) is not ``k``, judge on those where it is."""
    train, val = photos.subset(np.flatnonzero(fold != k)), photos.subset(np.flatnonzero(fold == k))
    run = build(train, config, device, dist_info, echo)
    dlib_val = validate(run, train, val)
    state = TrainState(best_metrics=dlib_val, best_backbone=copy.deepcopy(run.backbone.state_dict()))
    state = fit(run, train, val, state, None, progress=progress, say=say, on_epoch=on_epoch)
    judged = judge(run, state.best_backbone, train, val)
    return FoldRun(run, state, train, val, FoldOutcome(judged, val.labels, dlib_val, state.best_backbone,
                                                        state.best_epoch, state.history))


def side_by_side(config: FinetuneConfig, device: torch.device, dist_info: Dist, folds: int) -> int:
    """Torch threads for each fold's worker process, or 0 to train the folds one after the other here: on the
    CPU, outside torchrun, without ``echo`` (its folds share one pool), when there are 2 or more folds and no
    more than ``config.fold_workers`` (0: no more than this process's torch threads)."""
    threads = torch.get_num_threads()
    limit = config.fold_workers or threads
    if device.type != "cpu" or dist_info.active or config.echo or not 2 <= folds <= limit:
        return 0
    return max(1, threads // folds)


def train_folds(photos: ChipSet, fold: np.ndarray, config: FinetuneConfig, device: torch.device, dist_info: Dist, *,
                progress: bool, say: Callable[[str], None]) -> list:
    """Every fold's run (of the folds that hold photos), as :class:`FoldRun` or, side by side, :class:`FoldHandle`
    (:func:`side_by_side`); both give ``outcome`` and ``kept(alpha, index)``. Close handles with :func:`close`."""
    present = [k for k in range(int(fold.max()) + 1) if (fold == k).any()]
    threads = side_by_side(config, device, dist_info, len(present))
    if threads:
        return _train_side_by_side(photos, fold, present, config, threads, progress=progress, say=say)
    runs: list[FoldRun] = []
    for i, k in enumerate(present):
        say(f"fold {i + 1}/{len(present)}: fine-tuning on {int((fold != k).sum())} photos, validating on "
            f"{int((fold == k).sum())}")
        runs.append(train_fold(photos, fold, k, config, device, dist_info, progress=progress, say=say,
                               echo=runs[-1].run.echo if runs else None))
    return runs


def close(folds: list, *, at_once: bool = False) -> None:
    """End the worker processes of :func:`train_folds`' handles (nothing for runs in this process); ``at_once``
    when they may still be training (an error, Ctrl-C)."""
    for f in folds:
        if isinstance(f, FoldHandle):
            f.close(wait_s=0 if at_once else 10.0)


# --- side by side ---------------------------------------------------------------------------------------

class FoldHandle:
    """A fold trained in a worker process: its :class:`FoldOutcome`, and :meth:`kept` asked of the worker."""

    def __init__(self, process, conn, label: str, threads: int):
        self.process, self.conn, self.label, self.threads = process, conn, label, threads
        self.outcome: FoldOutcome | None = None
        self.started = False  # the worker said it runs (its start-up, which imports the main script, is over)

    def kept(self, alpha: float, index: int) -> KeptFigures:
        """As :meth:`FoldRun.kept`, measured by the worker on its fold's photos."""
        self.send(("kept", alpha, index))
        return self._reply("figures")

    def send(self, message: tuple) -> None:
        """Send the worker ``message``. :raises DlibplusError: the worker has ended (as :meth:`receive`)."""
        try:
            self.conn.send(message)
        except (BrokenPipeError, ConnectionResetError):
            while True:  # what it sent before it ended, then the end
                self.receive()

    def _reply(self, kind: str) -> Any:
        message = self.receive()
        if message[0] == "error":
            raise _error(message[1], message[2])
        if message[0] != kind:
            raise RuntimeError(f"{self.label}: expected {kind!r} from the worker, got {message[0]!r}")
        return message[1]

    def receive(self) -> tuple:
        """The worker's next message. :raises DlibplusError: the worker ended without sending one (killed)."""
        try:
            message = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)  # its exit code, once the process is reaped
            if not self.started and (self.process.exitcode or 0) > 0:  # an error, not a signal, as it started
                raise DlibplusError(
                    f"{self.label}: its worker process failed as it started (exit code {self.process.exitcode}; its "
                    "error is above). Python starts it by importing your main script: a script that calls "
                    "finetune() must do so under `if __name__ == \"__main__\":`, or set fold_workers=1 "
                    "(--fold-workers 1) to train the folds one after the other in this process") from None
            raise DlibplusError(f"{self.label}: its worker process ended without a result (exit code "
                                f"{self.process.exitcode}); --fold-workers 1 trains the folds one after the other "
                                "in this process, --folds 1 once on a split") from None
        if message[0] == "started":
            self.started = True
            return self.receive()
        return message

    def close(self, *, wait_s: float = 10.0) -> None:
        """Ask the worker to end (it ends when idle), waiting ``wait_s`` seconds before ending it outright."""
        if self.process.is_alive() and wait_s > 0:
            try:
                self.conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout=wait_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.conn.close()


def _train_side_by_side(photos: ChipSet, fold: np.ndarray, present: list[int], config: FinetuneConfig, threads: int,
                        *, progress: bool, say: Callable[[str], None]) -> list[FoldHandle]:
    n = len(present)
    say(f"folds 1-{n} of {n} side by side, one process each with {threads} thread{'s' * (threads > 1)}: "
        f"fine-tuning on {' / '.join(str(int((fold != k).sum())) for k in present)} photos, validating on "
        f"{' / '.join(str(int((fold == k).sum())) for k in present)}")
    context = multiprocessing.get_context("spawn")
    handles: list[FoldHandle] = []
    try:
        for i, k in enumerate(present):
            ours, theirs = context.Pipe()
            # Python writes a process's arguments to it while it starts, and that write never ends if the
            # process fails first (importing an unguarded main script): the photos go through the pipe instead
            process = context.Process(target=_serve, args=(theirs, threads), name=f"dlibplus-fold-{i + 1}",
                                      daemon=True)
            process.start()
            theirs.close()
            handles.append(FoldHandle(process, ours, f"fold {i + 1}/{n}", threads))
        for handle, k in zip(handles, present):
            handle.send(("fold", photos, fold, k, config))
        _follow(handles, config.epochs, progress=progress, say=say)
    except BaseException as exc:
        close(handles, at_once=True)
        if isinstance(exc, KeyboardInterrupt):
            say("\ninterrupted while the folds trained; nothing was written")
        raise
    return handles


def _follow(handles: list[FoldHandle], epochs: int, *, progress: bool, say: Callable[[str], None]) -> None:
    """Relay the workers' messages until every fold has sent its outcome: what they say, and one bar over the
    folds' epochs (a fold that stops early takes its remaining epochs off the total)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs * len(handles), desc="fine-tuning folds", unit="epoch", disable=not progress,
               dynamic_ncols=True)
    done_epochs = [0] * len(handles)
    last_1nn = [""] * len(handles)  # each fold's latest epoch's validation 1-NN accuracy
    waiting = {h.conn: i for i, h in enumerate(handles)}
    try:
        while waiting:
            for conn in wait(list(waiting)):
                i = waiting[conn]
                handle = handles[i]
                message = handle.receive()
                kind = message[0]
                if kind == "epoch":
                    row = message[1]
                    done_epochs[i] += 1
                    last_1nn[i] = f"{row.get('identification_1nn', float('nan')):.3f}"
                    bar.update(1)
                    bar.set_postfix_str("  ".join(f"fold {j + 1}: {done_epochs[j]} ep, val 1-NN {last_1nn[j] or '-'}"
                                                  for j in range(len(handles))))
                elif kind == "say":
                    bar.clear()
                    say(f"{handle.label}: {message[1]}")
                elif kind == "done":
                    handle.outcome = message[1]
                    bar.total -= epochs - done_epochs[i]
                    bar.refresh()
                    del waiting[conn]
                elif kind == "error":
                    raise _error(message[1], message[2])
    finally:
        bar.close()


def _serve(conn, threads: int) -> None:
    """A worker process: say it has started, receive its fold (``photos``, ``fold``, ``k``, ``config``), train and
    judge it with ``threads`` torch threads, send the outcome, then answer the parent's ``kept`` requests until it
    says ``close``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends its workers
    try:
        conn.send(("started",))
        _, photos, fold, k, config = conn.recv()
        torch.set_num_threads(threads)
        device = torch.device("cpu")
        seed_run(config, device)  # as the parent did when the run started
        run = train_fold(photos, fold, k, config, device, Dist(), progress=False,
                         say=lambda text: conn.send(("say", text)), on_epoch=lambda row: conn.send(("epoch", row)))
        conn.send(("done", run.outcome))
        while True:
            request = conn.recv()
            if request[0] != "kept":
                break
            conn.send(("figures", run.kept(*request[1:])))
    except EOFError:  # the parent has gone
        pass
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent, which reports it
        try:
            conn.send(("error", _picklable(exc), traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        conn.close()


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (a :class:`DlibplusError` does), else a RuntimeError naming it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception that cannot cross the pipe is renamed
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _error(exc: BaseException, text: str) -> BaseException:
    """The worker's exception to raise in the parent: a :class:`DlibplusError` as it was (its one line is the
    user's message), anything else as a RuntimeError whose message holds the worker's traceback ``text``."""
    if isinstance(exc, DlibplusError):
        return exc
    return RuntimeError(f"a fold's worker process failed:\n{text}")
