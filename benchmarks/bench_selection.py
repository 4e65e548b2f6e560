"""Which selection rule keeps a user's recognition at or above dlib's? Record once, replay every rule.

``finetune`` ends by choosing dlib, an interpolation or the fine-tuned weights (:mod:`dlibplus.selection`).
Trying a new rule with ``bench_suite.py`` retrains every row. This script splits the work:

``record``: the suite's rows (same sets, seeded splits, default settings), each run with ``keep=finetuned`` so
the network on every photo is always trained (the training does not depend on the choice: ``keep`` enters
only ``select``, so the folds' runs, their best epochs and the last run are the same whichever candidate is
kept). For each row it saves, as ``<set>-<count>-<seed>.npz``: every candidate's encodings of the training and
validation photos the selection judged (per fold), and the final network's raw encodings of the whole set at
each alpha (0 = dlib).

``replay``: for each rule (:data:`RULES`), the candidate it chooses from the recorded judgements, and that
candidate's train-knn + predict accuracy on the suite's test photos at 0.6 (its scale from the pooled
calibration, as ``finetune`` writes it), against dlib on the same photos, with TAR@1e-3 and the share of
different-person test pairs within 0.6 of the chosen networks. The rule "current" is ``finetune``'s own.

``forecast``: how well a judgement predicts each candidate's gain over dlib on the test photos (bias and mean
absolute error over every row and alpha): on the trained gallery (``finetune``'s), the grown one, and the
gallery projection defined here (each photo's naming extended to the user's gallery size from its naming with
half the gallery).

    OMP_NUM_THREADS=1 python benchmarks/bench_selection.py record --sets kpop_idols15 --counts 7 all \\
        --seeds 0 1 2 3 4 --out /tmp/sel
    python benchmarks/bench_selection.py replay '/tmp/sel/*.npz'
    python benchmarks/bench_selection.py forecast '/tmp/sel/*.npz'
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import bench_suite
from dlibplus import crossfit, finish, selection
from dlibplus.calibration import knn_correct, operating_point, probe_pairs
from dlibplus.data import split_per_person
from dlibplus.encoders import TorchEncoder
from dlibplus.finetune import finetune
from dlibplus.finetune_data import FinetuneData
from dlibplus.knn import FaceKNN
from dlibplus.selection import ALPHAS, Assessment, assess, bootstrap_gain, interpolate, select
from dlibplus.train_config import FinetuneConfig

ALL_ALPHAS = (0.0, *ALPHAS)


# --- the gallery projection (an experiment of this script: it did not help, BENCHMARKS.md) -----------------

PART_DRAWS = 5  # seeded half galleries whose naming knn_correct_half averages


def half_gallery(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of a seeded half of each person's photos in ``labels`` (rounded down, at least one)."""
    labels = np.asarray(labels)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == person))[:max(1, n // 2)]
                                   for person, n in zip(*np.unique(labels, return_counts=True))]))


def projection_weights(gallery_y: np.ndarray, probe_y: np.ndarray, user_counts: np.ndarray) -> np.ndarray:
    """(p,) ``log(n / g) / log(g / h)`` for each probe: ``g`` photos of its person in the judged gallery, ``h``
    in a half of it, ``n`` (``user_counts``) in the user's; 0 where the gallery cannot be halved or already
    holds the user's photos. Extending a probe's naming ``c`` along the line through its naming with half the
    gallery, ``c + w (c - c_half)``, assumes accuracy grows linearly in the log of the gallery's size."""
    gallery_y, probe_y = np.asarray(gallery_y), np.asarray(probe_y)
    people, counts = np.unique(gallery_y, return_counts=True)
    g = np.zeros(len(probe_y))
    known = np.isin(probe_y, people)
    g[known] = counts[np.searchsorted(people, probe_y[known])]
    h = np.maximum(1, g // 2)
    n = np.asarray(user_counts, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((g > h) & (n > g), np.log(n / g) / np.log(g / h), 0.0)


def knn_correct_half(gallery_emb, gallery_y, probe_emb, probe_y, thresholds, seed: int) -> np.ndarray:
    """(p,) float64: the share of PART_DRAWS seeded half galleries with which knn_correct names each probe."""
    gallery_y = np.asarray(gallery_y)
    rng = np.random.default_rng(seed)
    thresholds = np.broadcast_to(np.asarray(thresholds, np.float64), (len(probe_y),))
    named = np.zeros(len(probe_y))
    for _ in range(PART_DRAWS):
        rows = half_gallery(gallery_y, rng)
        named += knn_correct(gallery_emb[rows], gallery_y[rows], probe_emb, probe_y, thresholds)[0]
    return named / PART_DRAWS


# --- record ------------------------------------------------------------------------------------------------

class Recorder:
    """Wraps :func:`dlibplus.finish.assess` and :func:`~dlibplus.finish.conclude` to keep what they saw."""

    def __init__(self):
        self.judged: list[dict] = []  # one per assess call: train/val encodings and labels, alpha
        self.final: tuple[dict, dict] | None = None  # (dlib's state, the last run's fine-tuned state)
        self._assess, self._conclude = finish.assess, finish.conclude

    def __enter__(self):
        def assess_recorded(train_emb, train_y, val_emb, val_y, *, alpha, **kw):
            self.judged.append({"train_emb": train_emb, "train_y": train_y, "val_emb": val_emb, "val_y": val_y,
                                "alpha": alpha})
            return self._assess(train_emb, train_y, val_emb, val_y, alpha=alpha, **kw)

        def conclude_recorded(run, state, *args, **kw):
            self.final = (copy.deepcopy(run.base_state), copy.deepcopy(state.best_backbone))
            return self._conclude(run, state, *args, **kw)

        finish.assess = assess_recorded
        finish.conclude = crossfit.conclude = conclude_recorded
        return self

    def __exit__(self, *exc):
        finish.assess, finish.conclude, crossfit.conclude = self._assess, self._conclude, self._conclude


def record_row(name: str, sp: bench_suite.Split, seed: int, count: str, out: Path) -> None:
    from dlibplus import dlibnet
    from dlibplus.models import FACE_RECOGNITION_MODEL, model_path

    data = sp.data
    train_set = data.subset(sp.train)
    config = FinetuneConfig(seed=seed, device="cpu", keep="finetuned")
    inner_train, inner_val = split_per_person(train_set.labels, config.val_fraction, seed)
    fdata = FinetuneData(train_set.subset(inner_train), train_set.subset(inner_val), people=None,
                         folder=f"{name} (selection record)")
    with tempfile.TemporaryDirectory() as tmp, Recorder() as rec:
        result = finetune(fdata, Path(tmp) / "ft", config, progress=False, overwrite=True, echo=lambda m: None)
    base, tuned = rec.final
    model = dlibnet.load_dat(model_path(FACE_RECOGNITION_MODEL))
    final = []
    for alpha in ALL_ALPHAS:
        model.load_state_dict(interpolate(base, tuned, alpha))
        final.append(TorchEncoder(model, device="cpu").encode(data.chips))
    arrays = {"final": np.stack(final).astype(np.float32), "labels": data.labels, "train": sp.train,
              "test": sp.test, "judged_alpha": np.array([j["alpha"] for j in rec.judged])}
    for i, j in enumerate(rec.judged):
        for key in ("train_emb", "train_y", "val_emb", "val_y"):
            arrays[f"j{i}_{key}"] = np.asarray(j[key])
    meta = {"set": name, "count": count, "seed": seed, "folds": result.cross_fit.get("folds", 1),
            "wall_seconds": result.wall_seconds}
    path = out / f"{name}-{count}-{seed}.npz"
    np.savez_compressed(path.with_suffix(".tmp.npz"), meta=json.dumps(meta), **arrays)
    path.with_suffix(".tmp.npz").replace(path)
    print(json.dumps(meta), flush=True)


def record(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        data = bench_suite.load_set(name, progress=False)
        for count in args.counts:
            per_person = args.max_per_person if count == "all" else int(count)
            for seed in args.seeds:
                if (args.out / f"{name}-{count}-{seed}.npz").is_file():
                    continue
                sp = bench_suite.split(data, per_person, seed)
                if np.bincount(data.labels[sp.train]).min() < 2:
                    print(f"skip {name} at {count}: a person has fewer than 2 training photos", file=sys.stderr)
                    continue
                record_row(name, sp, seed, count, args.out)


# --- replay ------------------------------------------------------------------------------------------------

class Row:
    """One recorded row: its judgements per fold and alpha, and the final network's encodings."""

    def __init__(self, path: Path):
        z = np.load(path)
        self.meta = json.loads(str(z["meta"]))
        self.final, self.labels, self.train, self.test = z["final"], z["labels"], z["train"], z["test"]
        alphas = z["judged_alpha"]
        self._named: dict[tuple[float, float], np.ndarray] = {}  # test_correct by (alpha, scale)
        self.folds = [[{k: z[f"j{i}_{k}"] for k in ("train_emb", "train_y", "val_emb", "val_y")}
                       for i in range(start, start + len(ALL_ALPHAS))]
                      for start in range(0, len(alphas), len(ALL_ALPHAS))]
        assert all(tuple(alphas[s:s + len(ALL_ALPHAS)]) == ALL_ALPHAS for s in range(0, len(alphas), len(ALL_ALPHAS)))

    @property
    def name(self) -> str:
        return f"{self.meta['set']} {self.meta['count']} s{self.meta['seed']}"

    def test_pairs(self, alpha: float, scale: float) -> tuple[float, float]:
        """(TAR at FAR 1e-3, share of different-person pairs within 0.6) over the test photos' pairs."""
        from dlibplus import metrics

        emb = self.final[ALL_ALPHAS.index(alpha)].astype(np.float64) * scale
        dist, same = metrics.pair_distances(emb[self.test], self.labels[self.test])
        tar = metrics.tar_at_far(dist, same, (1e-3,))[0].tar  # None: too few different-person pairs
        return np.nan if tar is None else tar, float(np.mean(dist[~same] <= 0.6))

    def test_correct(self, alpha: float, scale: float) -> np.ndarray:
        """(t,) bool: each test photo named rightly by train-knn + predict at 0.6 with the network at ``alpha``
        (rules that choose the same candidate share one train-knn fit)."""
        if (alpha, scale) not in self._named:
            emb = self.final[ALL_ALPHAS.index(alpha)].astype(np.float64) * scale
            names = self.labels.astype(str)
            knn = FaceKNN().fit(emb[self.train], names[self.train])
            self._named[alpha, scale] = knn.predict(emb[self.test]) == names[self.test]
        return self._named[alpha, scale]


@dataclasses.dataclass
class Judged:
    """One fold's candidate judged on the trained gallery, on the grown one, and what the projection needs."""

    assessment: Assessment
    grown: Assessment  # judged as FinetuneConfig(judge_gallery="grown") judges
    half: np.ndarray  # (p,) knn_correct_half
    weight: np.ndarray  # (p,) projection_weights

    def projected(self, damping: float) -> Assessment:
        """The assessment with each probe's naming projected (a float score in place of ``correct``)."""
        c = self.assessment.correct.astype(np.float64)
        return dataclasses.replace(self.assessment, correct=c + damping * self.weight * (c - self.half))


def judge_folds(row: Row, seed: int) -> list[list[Judged]]:
    """Every fold's candidates (dlib first) as ``finetune`` judges them on the trained gallery and on the grown
    one, with the half galleries' naming that the projection needs."""
    out = []
    for fold in row.folds:
        judged = []
        for alpha, j in zip(ALL_ALPHAS, fold):
            a, grown = (assess(j["train_emb"], j["train_y"], j["val_emb"], j["val_y"], alpha=alpha,
                               calibrate=alpha > 0, target_far=None, seed=seed, grown=g) for g in (False, True))
            _, thresholds = operating_point(probe_pairs(j["train_emb"], j["train_y"], j["val_emb"], j["val_y"]),
                                            calibrate=alpha > 0, target_far=None, seed=seed)
            people, counts = np.unique(np.concatenate([j["train_y"], j["val_y"]]), return_counts=True)
            user = counts[np.searchsorted(people, j["val_y"])]
            judged.append(Judged(a, grown, knn_correct_half(j["train_emb"], j["train_y"], j["val_emb"], j["val_y"],
                                                     thresholds, seed),
                                 projection_weights(j["train_y"], j["val_y"], user)))
        out.append(judged)
    return out


def pooled(folds: list[list[Assessment]]) -> tuple[Assessment, list[Assessment]]:
    """dlib and the candidates pooled over folds as ``finetune`` pools them."""
    both = folds[0] if len(folds) == 1 else [crossfit.pool([f[i] for f in folds]) for i in range(len(ALL_ALPHAS))]
    return both[0], both[1:]


def judged_as(folds: list[list[Judged]], *, damping: float | None = None, grown: bool = False
              ) -> tuple[Assessment, list[Assessment]]:
    """dlib and the candidates, pooled, as one judgement sees them: the trained gallery (``finetune``'s), the
    grown one, or the projected naming with ``damping`` times the weights."""
    if grown:
        return pooled([[j.grown for j in fold] for fold in folds])
    return pooled([[j.assessment if damping is None else j.projected(damping) for j in fold] for fold in folds])


def rule(damping: float | None, margin_rule: bool = True):
    """Select on the trained gallery (``damping`` None) or the projected naming (``damping`` times the weights);
    without ``margin_rule`` a candidate is kept only on an accuracy gain with confidence."""
    def choose(folds: list[list[Judged]], val_y: np.ndarray, seed: int) -> Assessment:
        dlib, candidates = judged_as(folds, damping=damping)
        sel = select(candidates, dlib, val_y, seed=seed)
        sure = sel.gain > 0 and sel.gain_low > 0
        return sel.chosen if margin_rule or sure else dlib
    return choose


def bonferroni(choose):
    """``choose`` with each one-sided bound at ``1 - (1 - CONFIDENCE) / 4``: the bound is read for the best of
    four candidates, so it needs the confidence of four comparisons (the winner's curse)."""
    def chosen(folds, val_y, seed):
        level = selection.CONFIDENCE
        selection.CONFIDENCE = 1 - (1 - level) / len(ALPHAS)
        try:
            return choose(folds, val_y, seed)
        finally:
            selection.CONFIDENCE = level
    return chosen


def only_alpha(alpha: float):
    """The current rule with one candidate, the fine-tuned weights at ``alpha`` (WiSE-FT's usual 0.5)."""
    def choose(folds: list[list[Judged]], val_y: np.ndarray, seed: int) -> Assessment:
        dlib, candidates = judged_as(folds)
        return select([c for c in candidates if c.alpha == alpha], dlib, val_y, seed=seed).chosen
    return choose


def grown_rule(folds: list[list[Judged]], val_y: np.ndarray, seed: int) -> Assessment:
    """The current rule on the grown gallery (``FinetuneConfig(judge_gallery="grown")``)."""
    dlib, candidates = judged_as(folds, grown=True)
    return select(candidates, dlib, val_y, seed=seed).chosen


def keep_dlib(folds: list[list[Judged]], val_y: np.ndarray, seed: int) -> Assessment:
    """dlib always: the baseline's own figures in the summary."""
    return judged_as(folds)[0]


RULES = {"dlib": keep_dlib, "current": rule(None), "projected": rule(1.0), "projected-half": rule(0.5),
         "current-sure": rule(None, margin_rule=False), "projected-sure": rule(1.0, margin_rule=False),
         "bonferroni": bonferroni(rule(None)), "alpha-0.5": only_alpha(0.5), "grown": grown_rule}


def replay(args) -> None:
    rows = [Row(Path(p)) for pattern in args.files for p in sorted(glob.glob(pattern))]
    totals = {rule: [] for rule in args.rules}
    for row in rows:
        seed = row.meta["seed"]
        dlib = row.test_correct(0.0, 1.0)
        names = row.labels[row.test]
        cells = []
        folds = judge_folds(row, seed)
        val_y = np.concatenate([fold[0]["val_y"] for fold in row.folds])
        dlib_val, trained = judged_as(folds)
        validated = {c.alpha: c.accuracy - dlib_val.accuracy for c in trained}  # on the trained gallery
        for rule in args.rules:
            chosen = RULES[rule](folds, val_y, seed)
            correct = row.test_correct(chosen.alpha, chosen.point.scale)
            draws = bootstrap_gain(correct, dlib, names, seed=seed)
            gain = correct.mean() - dlib.mean()
            totals[rule].append((gain, np.quantile(draws, 0.975) < 0,
                                 *row.test_pairs(chosen.alpha, chosen.point.scale), validated.get(chosen.alpha)))
            cells.append(f"{rule}: α{chosen.alpha:g} {gain * 100:+.1f} [{np.quantile(draws, 0.025) * 100:+.1f}, "
                         f"{np.quantile(draws, 0.975) * 100:+.1f}]")
        each = " ".join(f"{c.alpha:g}:{(row.test_correct(c.alpha, c.point.scale).mean() - dlib.mean()) * 100:+.1f}"
                        for c in trained)
        print(f"{row.name:<24} dlib {dlib.mean():.3f} (each α: {each}) | "
              + " | ".join(cells), flush=True)
    for rule, t in totals.items():
        g = np.array([x[0] for x in t])
        print(f"{rule}: {len(g)} rows, total gain {g.sum() * 100:+.1f} points, mean {g.mean() * 100:+.2f}, "
              f"below dlib {int((g < -1e-9).sum())}, below with confidence {sum(x[1] for x in t)}; "
              f"test pairs: TAR@1e-3 {np.nanmean([x[2] for x in t]):.3f}, "
              f"different pairs within 0.6 {np.mean([x[3] for x in t]):.3f}")
        kept = [x for x in t if x[4] is not None]
        if kept:  # the winner's curse: what the kept candidates' validation promised, and what the test gave
            print(f"    kept a fine-tuned candidate in {len(kept)} rows: validated gain (trained gallery) "
                  f"{np.mean([x[4] for x in kept]) * 100:+.2f} points on average, test gain "
                  f"{np.mean([x[0] for x in kept]) * 100:+.2f}")


def forecast(args) -> None:
    """How well each judgement predicts what a candidate gains over dlib on the test photos: for every row
    and alpha, the pooled validation gain judged on the trained gallery, on the grown one, and projected
    (each damping of ``--dampings``), against the test gain; per judgement and photo count, the mean error
    (bias) and the mean absolute error over all (row, alpha)."""
    rows = [Row(Path(p)) for pattern in args.files for p in sorted(glob.glob(pattern))]
    judgements = ["trained", "grown", *(f"projected {d:g}" for d in args.dampings)]
    errors: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        seed = row.meta["seed"]
        folds = judge_folds(row, seed)
        dlib_test = row.test_correct(0.0, 1.0).mean()
        cells = []
        for name in judgements:
            damping = float(name.split()[1]) if name.startswith("projected") else None
            dlib, candidates = judged_as(folds, damping=damping, grown=name == "grown")
            for c in candidates:
                test = row.test_correct(c.alpha, c.point.scale).mean() - dlib_test
                predicted = c.accuracy - dlib.accuracy
                for count in (row.meta["count"], "every"):
                    errors.setdefault((name, count), []).append(predicted - test)
                if name in ("trained", "grown"):
                    cells.append(f"{name[0]}{c.alpha:g}:{predicted * 100:+.1f}/{test * 100:+.1f}")
        print(f"{row.name:<24} predicted/test gain, points: " + " ".join(cells), flush=True)
    for (name, count), e in sorted(errors.items()):
        e = np.array(e) * 100
        print(f"{name:<16} count {count:<6} {len(e):>3} (row, alpha): bias {e.mean():+.2f} points, "
              f"mean abs. error {np.abs(e).mean():.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--sets", nargs="+", default=list(bench_suite.SETS), choices=list(bench_suite.SETS))
    rec.add_argument("--counts", nargs="+", default=["4", "7", "all"])
    rec.add_argument("--max-per-person", type=int, default=10)
    rec.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rec.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("replay")
    rep.add_argument("files", nargs="+", help="glob patterns of recorded .npz files")
    rep.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    fc = sub.add_parser("forecast")
    fc.add_argument("files", nargs="+", help="glob patterns of recorded .npz files")
    fc.add_argument("--dampings", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    args = ap.parse_args()
    {"record": record, "replay": replay, "forecast": forecast}[args.command](args)


if __name__ == "__main__":
    main()
