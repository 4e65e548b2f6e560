"""Would a shorter ``--patience`` have kept the same epochs? Replayed on finished cross-fitted runs.

Each fold of a cross-fitted ``finetune`` writes its epochs into ``metadata.json`` (``cross_fit.fold_histories``).
Training does not depend on the patience (the learning-rate schedule spans ``--epochs`` whatever it is), so the
epochs a run with patience P would have run are the first ones of the recorded history, up to the first epoch
that is P epochs past its best so far. This script reads the folders a suite run wrote (``bench_suite.py --out
DIR`` keeps one per split) or any ``finetune`` output folders, and says for each patience how many folds would
have kept another best epoch (then the selection and the last run would differ: only a run can say by how much)
and how many fold epochs would not have been trained.

    python benchmarks/bench_patience.py '/tmp/suite/*' --patience 5 8 10 15

The validation score is ``finetune``'s (:func:`dlibplus.train.validation_score`);
runs with ``--head-epochs`` (whose first epochs are never kept) are not replayed rightly.
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from dlibplus.train import validation_score


def replay(history: list[dict], patience: int) -> tuple[int, int]:
    """``(best epoch, epochs run)``, 1-based, of a fold whose recorded ``history`` had been stopped after
    ``patience`` epochs without a better validation score."""
    best, best_score, since = 0, None, 0
    for row in history:
        if best_score is None or validation_score(row) > best_score:
            best, best_score, since = row["epoch"], validation_score(row), 0
        else:
            since += 1
        if patience and since >= patience:
            return best, row["epoch"]
    return best, len(history)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="finetune output folders (glob patterns welcome)")
    ap.add_argument("--patience", type=int, nargs="+", default=[5, 8, 10, 15])
    args = ap.parse_args()
    folds = []
    for pattern in args.folders:
        for folder in sorted(glob.glob(pattern)):
            meta_path = Path(folder) / "metadata.json"
            if meta_path.is_file():
                meta = json.loads(meta_path.read_text())
                recorded = meta.get("cross_fit", {})
                for history, best in zip(recorded.get("fold_histories", []), recorded.get("best_epochs", [])):
                    # the check of the replay: at the run's own patience it keeps the run's own best epoch
                    if replay(history, meta["config"]["patience"])[0] != best:
                        raise SystemExit(f"{folder}: the replay does not give the recorded best epoch {best}")
                    folds.append((folder, history, best))
    if not folds:
        raise SystemExit("no cross-fitted metadata.json with fold_histories in those folders")
    print(f"{len(folds)} folds from {len({f for f, _, _ in folds})} runs\n")
    print("| patience | folds whose best epoch changes | fold epochs run | saved |")
    print("|---|---|---|---|")
    recorded_epochs = sum(len(h) for _, h, _ in folds)
    for patience in args.patience:
        changed = run = 0
        for _, history, best in folds:
            new_best, epochs = replay(history, patience)
            changed += new_best != best
            run += epochs
        print(f"| {patience} | {changed} of {len(folds)} | {run} | {recorded_epochs - run} "
              f"({(recorded_epochs - run) / recorded_epochs:.0%}) |")


if __name__ == "__main__":
    main()
