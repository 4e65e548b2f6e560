"""What ``dlibplus evaluate`` shows: the console table, ``report.md``, ``metrics.json`` and the PNG charts of
an :class:`~dlibplus.evaluate.EvaluationResult`.

Nothing is computed here: every number comes from the result (``metrics.json`` is its ``to_dict()``);
:mod:`dlibplus.plots` draws the charts. Imported by the CLI only.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

from . import plots
from .evaluate import FARS, FOLDS, OPEN_SET_FARS, Comparison, EvaluationResult
from .errors import DataFolderError
from .fileio import atomic_path, write_json
from .metrics import PersonRow
from .people import counted

__all__ = ["check_report_folder", "console_table", "markdown", "write_charts", "write_report"]

PER_PERSON_ROWS = 100  # rows of the per-person table in report.md (metrics.json has them all)
_METRIC_LABELS = {"knn_accuracy": "KNN accuracy", "nn1_accuracy": "1-NN accuracy"}


def _file_part(name: str) -> str:
    """``name`` made safe for a file name (``distances_<name>.png``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "encoder"


def _label(c: Comparison) -> str:
    """The metric compared, as a reader says it: ``'KNN accuracy'``, ``'TAR @ FAR 0.001'``."""
    return f"TAR @ FAR {c.far:g}" if c.far is not None else _METRIC_LABELS.get(c.metric, c.metric)


# ----------------------------------------------------------------------------------------------------------
# Tables


def _f(v: float | None, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals; ``n/a`` for None, NaN or inf."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _signed(v: float | None, digits: int = 3) -> str:
    """:func:`_f` with an explicit sign (differences)."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:+.{digits}f}"


def _rows(result: EvaluationResult) -> list[tuple[str, list[str]]]:
    """``(label, one cell per encoder)`` of the headline numbers, shared by the console and report.md."""
    evs = result.encoders
    rows: list[tuple[str, list[str]]] = [
        ("KNN accuracy", [_f(e.knn_accuracy) for e in evs]),
        ("KNN k", [str(e.k) for e in evs]),
        ("1-NN accuracy", [_f(e.nn1_accuracy) for e in evs]),
    ]
    if any(e.verification for e in evs):
        v = [e.verification for e in evs]
        rows += [
            ("AUC", [_f(x.auc, 4) if x else "n/a" for x in v]),
            ("EER", [_f(x.eer) if x else "n/a" for x in v]),
            (f"accuracy @ {result.threshold:g}", [_f(x.accuracy_at_threshold) if x else "n/a" for x in v]),
            (f"TAR @ {result.threshold:g}", [_f(x.tar_at_threshold) if x else "n/a" for x in v]),
            (f"FAR @ {result.threshold:g}", [_f(x.far_at_threshold, 4) if x else "n/a" for x in v]),
        ]
        for far in FARS:
            rows.append((f"TAR @ FAR {far:g}", [_f(e.tar_at(far)) for e in evs]))
        rows.append((f"{FOLDS}-fold accuracy", [f"{_f(x.kfold.mean)} ± {_f(x.kfold.std)}" if x and x.kfold else "n/a"
                                               for x in v]))
    if any(e.open_set for e in evs):
        for i, t in enumerate(evs[0].open_set.thresholds if evs[0].open_set else []):
            if math.isclose(t, result.threshold):
                rows.append((f"open set DIR @ {t:g}", [_f(e.open_set.dir[i]) if e.open_set else "n/a" for e in evs]))
                rows.append((f"open set false alarms @ {t:g}",
                             [_f(e.open_set.far[i]) if e.open_set else "n/a" for e in evs]))
        for j, f in enumerate(OPEN_SET_FARS):
            rows.append((f"open set DIR @ false alarms {f:g}",
                         [_f(e.dir_at_far[j].dir) if e.dir_at_far else "n/a" for e in evs]))
    if any(e.pairs for e in evs):
        rows.append(("pairs file AUC", [_f(e.pairs.auc, 4) if e.pairs else "n/a" for e in evs]))
        folds = next((e.pairs.kfold.folds for e in evs if e.pairs and e.pairs.kfold), FOLDS)
        rows.append((f"pairs file {folds}-fold accuracy", [f"{_f(e.pairs.kfold.mean)} ± {_f(e.pairs.kfold.std)}"
                                                           if e.pairs and e.pairs.kfold else "n/a" for e in evs]))
    return rows


def _summary_line(result: EvaluationResult) -> str:
    """``FOLDER: gallery … images of … people; probes … known + … unknown``."""
    known = int(result.known.sum())
    return (f"{result.folder}: gallery {counted(len(result.gallery_labels), 'image')} of "
            f"{counted(len(set(result.gallery_labels.tolist())), 'person')}; probes {known} known"
            f" + {len(result.known) - known} unknown")


def console_table(result: EvaluationResult) -> str:
    """A compact side-by-side table of the encoders' headline numbers, then the differences with CIs."""
    rows = _rows(result)
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(9, len(n) + 2, *(len(r[1][i]) + 2 for r in rows)) for i, n in enumerate(result.names)]
    lines = [_summary_line(result), "",
             " " * width + "".join(f"{n:>{w}}" for n, w in zip(result.names, cols))]
    for label, cells in rows:
        lines.append(f"{label:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, cols)))
    if result.comparisons:
        lines.append("")
        for c in result.comparisons:
            lines.append(f"{c.encoder} - {c.baseline}, {_label(c)}: {_signed(c.ci.estimate)} "
                         f"[{_signed(c.ci.low)}, {_signed(c.ci.high)}] (95% CI over people)")
    return "\n".join(lines)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a markdown table (``|`` in cells escaped), then a blank line."""
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")
    return (["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(esc, r)) + " |" for r in rows] + [""])


def _confused(row: PersonRow) -> str:
    """The three people ``row``'s person is most often taken for: ``name ×count, …``."""
    return ", ".join(f"{n} ×{c}" for n, c in row.confused_with[:3]) or "—"


def _per_person_md(result: EvaluationResult) -> list[str]:
    """The per-person table: the baseline's people, worst accuracy (over encoders) first, at most
    ``PER_PERSON_ROWS`` rows."""
    evs = result.encoders
    by_enc = [{r.name: r for r in e.identification.per_person} for e in evs]
    people = sorted(by_enc[0], key=lambda p: (min(b[p].accuracy for b in by_enc if p in b), p))
    header = ["person", "probes"] + [f"{e.name} accuracy" for e in evs] + [f"{e.name} taken for" for e in evs]
    rows = []
    for p in people[:PER_PERSON_ROWS]:
        rows.append([p, str(by_enc[0][p].n)] + [_f(b[p].accuracy) if p in b else "n/a" for b in by_enc]
                    + [_confused(b[p]) if p in b else "" for b in by_enc])
    out = _md_table(header, rows)
    if len(people) > PER_PERSON_ROWS:
        out += [f"({len(people) - PER_PERSON_ROWS} more people in metrics.json)", ""]
    return out


# ----------------------------------------------------------------------------------------------------------
# Files


def write_charts(result: EvaluationResult, outdir: os.PathLike | str) -> dict[str, Path]:
    """Write ``roc.png`` (with verification), ``open_set.png`` (with strangers and known probes),
    ``distances_<encoder>.png`` and ``confusion_<encoder>.png`` into ``outdir``; returns ``{chart: path}``."""
    out = Path(outdir)
    written: dict[str, Path] = {}
    far = result.comparison_far
    curves = {e.name: (e.verification.roc_far, e.verification.roc_tar) for e in result.encoders if e.verification}
    if curves:
        written["roc"] = plots.plot_roc(curves, out / "roc.png", title="ROC over all test-image pairs",
                                        fars=(far,) if far else ())
    open_curves = {e.name: (e.open_set.curve_far, e.open_set.curve_dir) for e in result.encoders
                   if e.open_set is not None and e.open_set.n_unknown and e.open_set.n_known}
    if open_curves:
        written["open_set"] = plots.plot_roc(
            open_curves, out / "open_set.png", title="open set: held-out strangers vs known people",
            xlabel="false-alarm rate (strangers given a name)",
            ylabel="detection and identification rate (known people named right)")
    for e in result.encoders:
        stem = _file_part(e.name)
        if e.distances is not None:
            written[f"distances_{e.name}"] = plots.plot_distance_histograms(
                e.distances, e.same, e.threshold, out / f"distances_{stem}.png",
                title=f"{e.name}: test-image pair distances")
        written[f"confusion_{e.name}"] = plots.plot_confusion(
            e.confusion, e.classes, out / f"confusion_{stem}.png", title=f"{e.name}: most confused people (KNN)")
    return written


def markdown(result: EvaluationResult, charts: Mapping[str, Path] | None = None) -> str:
    """``report.md``: the setup, the side-by-side table, thresholds at target FAR, the differences from the
    baseline, the per-person table, the pairs file, the ``charts`` (``{chart: PNG path}`` as
    :func:`write_charts` returns, linked by file name) and the notes."""
    md = [f"# Face encoder evaluation: {result.folder.name}", ""]
    md += [f"- people folder: `{result.folder}`" + (f", probes from `{result.test_folder}`" if result.test_folder
                                                    else f", {result.test_fraction:g} of each person's images as probes"
                                                    f" (seed {result.seed})"),
           f"- {_summary_line(result).split(': ', 1)[1]}",
           f"- face settings: {', '.join(f'{k}={v}' for k, v in result.settings.to_dict().items())}",
           "- encoders: " + ", ".join(f"**{e.name}** (`{e.spec}`" + (f", jitter {e.num_jitters} scaled by {e.jitter_scale:.3f}"
                                                                    if e.num_jitters > 1 else "") + ")" for e in result.encoders)
           + f"; baseline **{result.baseline.name}**; threshold {result.threshold:g}"]
    if result.holdout_people:
        md.append(f"- held out of the gallery (strangers): {', '.join(result.holdout_people)}")
    md.append("")
    if result.warnings:
        md += ["## Warning", ""] + [f"- **{w}**" for w in result.warnings] + [""]
    md += ["## Side by side", ""]
    md += _md_table(["metric"] + result.names, [[lab] + cells for lab, cells in _rows(result)])
    if result.baseline.verification:
        v = result.baseline.verification
        md.append(f"Verification: all pairs of test images, {v.n_same} same-person and {v.n_different} "
                  f"different-person. KNN: the train-knn classifier (closed set, known probes only).\n")
        md += ["### Thresholds at target FAR", ""]
        md += _md_table(["FAR"] + result.names,
                        [[f"{f:g}"] + [_f(next((t.threshold for t in e.verification.tar_at_far
                                                  if math.isclose(t.far, f)), None), 4) if e.verification else "n/a"
                                       for e in result.encoders] for f in FARS])
    if result.comparisons:
        md += [f"## Differences from {result.baseline.name} (95% CI, bootstrap over people, {result.n_boot} draws)", ""]
        md += _md_table(["encoder", "metric", "value", result.baseline.name, "difference", "95% CI", "draws > 0"],
                        [[c.encoder, _label(c), _f(c.value), _f(c.baseline_value), _signed(c.ci.estimate),
                          f"[{_signed(c.ci.low)}, {_signed(c.ci.high)}]", _f(c.ci.fraction_positive, 2)]
                         for c in result.comparisons])
    md += ["## Per person (KNN, known probes; worst first)", ""] + _per_person_md(result)
    if result.pairs_summary:
        s = result.pairs_summary
        md += ["## Pairs file", "", f"`{result.pairs_file}`: {s['used']} of {s['pairs']} pairs used; folds: "
               f"{s['folds']}.", ""]
    md += ["## Charts", ""]
    md += [f"![{k}]({p.name})" for k, p in (charts or {}).items() if p.suffix == ".png"] + [""]
    if result.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    return "\n".join(md)


MANIFEST = ".dlibplus-report.json"  # the files evaluate runs wrote into a report folder


def report_files(encoder_names: Sequence[str]) -> list[str]:
    """Every file name a report of these encoders may hold (which charts are drawn depends on the data)."""
    charts = [f"{kind}_{_file_part(n)}.png" for n in encoder_names for kind in ("distances", "confusion")]
    return ["report.md", "metrics.json", "roc.png", "open_set.png", *charts]


def _read_manifest(out: Path) -> set[str]:
    """The names of the files earlier evaluate runs wrote into ``out`` (plain names, nothing else)."""
    try:
        names = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(names, list):
        return set()
    return {n for n in names if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")}


def check_report_folder(outdir: os.PathLike | str, encoder_names: Sequence[str]) -> None:
    """Refuse, before any work, a report folder where the report would replace files evaluate did not write.

    :raises DataFolderError: ``outdir`` is a file, or holds a ``report.md``, ``metrics.json`` or chart of
        the same name that no evaluate run wrote.
    """
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise DataFolderError(f"--report {out} is a file: give a folder")
    ours = _read_manifest(out)
    for name in report_files(encoder_names):
        if (out / name).exists() and name not in ours:
            raise DataFolderError(f"--report {out}: {out / name} exists and was not written by dlibplus evaluate; "
                                  "choose an empty or new folder")


def write_report(result: EvaluationResult, outdir: os.PathLike | str) -> dict[str, Path]:
    """Write the charts (:func:`write_charts`), ``metrics.json`` (``result.to_dict()``) and ``report.md``
    (:func:`markdown`) into ``outdir`` (created), each atomically; returns ``{file kind: path}``.

    Charts an earlier run wrote there and this one does not (other encoders, no open set this time) are
    removed, so the folder never mixes two runs; the folder's manifest says which files evaluate wrote, and
    no other file is ever touched.
    """
    out = Path(outdir)
    check_report_folder(out, result.names)
    out.mkdir(parents=True, exist_ok=True)
    previous = _read_manifest(out)
    write_json(out / MANIFEST, sorted(previous | set(report_files(result.names))))  # a crash leaves all listed
    written = write_charts(result, out)
    charts = dict(written)
    write_json(out / "metrics.json", result.to_dict())
    written["metrics"] = out / "metrics.json"
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(result, charts), encoding="utf-8")
    written["report"] = out / "report.md"
    names = {p.name for p in written.values()}
    for stale in sorted(previous - names):
        (out / stale).unlink(missing_ok=True)
    write_json(out / MANIFEST, sorted(names))
    return written
