"""PNG charts of the numbers in :mod:`dlibplus.metrics` (drawn for ``dlibplus evaluate`` by
:mod:`dlibplus.report`).

matplotlib is imported on first use, and only its Agg canvas: no pyplot, no global backend switch, no window.
Every function writes its PNG atomically (a temporary file in the same folder, then ``os.replace``), so a
reader never sees half a file, and returns the path written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .fileio import atomic_path

_DPI = 120


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: os.PathLike | str) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png")
    return target


def plot_roc(
    curves: Mapping[str, tuple[Any, Any]],
    path: os.PathLike | str,
    title: str = "ROC",
    fars: Sequence[float] = (),
    xlabel: str = "false accept rate (FAR)",
    ylabel: str = "true accept rate (TAR)",
) -> Path:
    """All encoders' ROC curves on one chart: TAR against FAR on a log axis.

    The open-set curve (detection-and-identification rate against false-alarm rate) is drawn the same way,
    with its own axis labels.

    Args:
        curves: name -> ``(far, tar)`` arrays, e.g. from ``metrics.roc_curve_distances`` or a
            ``VerificationReport``'s ``roc_far``/``roc_tar``. Points with FAR = 0 cannot sit on a log axis;
            the axis starts at the smallest positive FAR of all curves.
        path: PNG file to write.
        fars: target FARs to mark with dotted vertical lines (e.g. ``(1e-3,)``).
    """
    if not curves:
        raise ValueError("no curves to plot")
    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot()
    smallest = 1.0
    for name, (far, tar) in curves.items():
        far = np.asarray(far, dtype=np.float64)
        tar = np.asarray(tar, dtype=np.float64)
        if far.shape != tar.shape or far.ndim != 1:
            raise ValueError(f"curve {name!r}: far and tar must be 1-d of equal length")
        positive = far > 0
        if positive.any():
            smallest = min(smallest, float(far[positive].min()))
        ax.step(far, tar, where="post", label=str(name))
    ax.set_xscale("log")
    ax.set_xlim(min(smallest, 0.1), 1.0)
    ax.set_ylim(0.0, 1.01)
    for f in fars:
        ax.axvline(f, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_distance_histograms(
    distances: Any,
    same: Any,
    threshold: float | None,
    path: os.PathLike | str,
    title: str = "pair distances",
    bins: int = 60,
) -> Path:
    """Distributions of same-person and different-person pair distances, each normalised to unit area
    (different-person pairs usually outnumber the others by far), with the decision threshold as a line."""
    d = np.asarray(distances, dtype=np.float64)
    s = np.asarray(same).astype(bool)
    if d.ndim != 1 or s.shape != d.shape or d.size == 0:
        raise ValueError("distances and same must be non-empty 1-d arrays of equal length")
    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot()
    edges = np.histogram_bin_edges(d, bins=bins)
    for mask, label, color in ((s, "same person", "tab:green"), (~s, "different people", "tab:red")):
        if mask.any():
            ax.hist(d[mask], bins=edges, density=True, alpha=0.5, color=color, label=f"{label} ({int(mask.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("distance")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(
    matrix: Any,
    classes: Sequence[Any],
    path: os.PathLike | str,
    worst_n: int = 15,
    title: str = "most confused people",
) -> Path:
    """The confusion matrix restricted to the ``worst_n`` people of lowest accuracy (rows: true, columns:
    predicted), with a last column ``other`` counting predictions of anyone outside them. Cells show row
    shares as colour and counts as text."""
    m = np.asarray(matrix)
    names = [str(c) for c in classes]
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(names):
        raise ValueError(f"matrix must be (k, k) with k = len(classes) = {len(names)}, got {m.shape}")
    totals = m.sum(axis=1)
    people = np.nonzero(totals > 0)[0]
    if people.size == 0:
        raise ValueError("the confusion matrix is empty")
    accuracy = np.diag(m)[people] / totals[people]
    errors = totals[people] - np.diag(m)[people]
    order = np.lexsort((-errors, accuracy))  # lowest accuracy first, then most errors
    chosen = people[order[: max(1, worst_n)]]
    sub = m[np.ix_(chosen, chosen)]
    other = m[chosen].sum(axis=1) - sub.sum(axis=1)
    counts = np.c_[sub, other]
    shares = counts / np.maximum(totals[chosen], 1)[:, None]
    labels = [names[i] for i in chosen]

    k = len(chosen)
    size = max(4.0, 0.45 * k + 2.5)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(k + 1), labels + ["other"], rotation=60, ha="right", fontsize=8)
    row_accuracy = np.diag(sub) / np.maximum(totals[chosen], 1)
    ax.set_yticks(range(k), [f"{name} ({acc:.0%})" for name, acc in zip(labels, row_accuracy)], fontsize=8)
    for r in range(k):
        for c in range(k + 1):
            if counts[r, c]:
                ax.text(c, r, str(int(counts[r, c])), ha="center", va="center", fontsize=7,
                        color="white" if shares[r, c] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (accuracy)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the person's probes")
    fig.tight_layout()
    return _save(fig, path)
