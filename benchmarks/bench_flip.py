"""Test-time flip (``--encoder dlib+flip``): does averaging each face with its mirror image help?
With ``--jitters N``: does dlib's jitter (``train-knn --jitters N``: each face the mean of N jittered copies,
scaled as train-knn scales it on the training half)?

Same protocol as bench_finetune.py: kpop_idols15 seeded 50/50 split (KNN accuracy, TAR at FAR over
the test-half pairs) and 300 lfw_dev people (balanced 10-fold accuracy). Each encoder is measured
plain and inside a FlipEncoder (or a JitterEncoder), in the same run, on the same chips.

    python benchmarks/bench_flip.py                       # dlib's weights (through the exact replica)
    python benchmarks/bench_flip.py /tmp/ftb3/arcface_seed_0   # also fine-tuned model folders
    python benchmarks/bench_flip.py --jitters 10 /tmp/ftb3/arcface_seed_0
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_finetune import closed_set, lfw_verification, load_sets

from dlibplus.encoders import FlipEncoder, TorchEncoder, load_encoder, with_jitter
from dlibplus.jitter_scale import scale_for


def train_knn_scale(encoder, data, train_idx, jitters: int) -> float:
    """The jitter scale ``train-knn --jitters N`` would store for the kpop train half
    (:func:`dlibplus.jitter_scale.scale_for`)."""
    chips, names = data.chips[train_idx], np.array(data.classes)[data.labels[train_idx]]
    return scale_for(encoder.encode(chips), with_jitter(encoder, jitters).encode(chips), names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path, help="fine-tuned model folders to measure besides dlib")
    ap.add_argument("--lfw-people", type=int, default=300)
    ap.add_argument("--jitters", type=int, default=1, help="measure dlib's jitter (N copies) instead of the flip")
    args = ap.parse_args()

    kpop, train_idx, test_idx, lfw = load_sets(progress=False)
    encoders = {"dlib": TorchEncoder(device="cpu")}  # dlib's weights; equals dlib to ~1e-6
    models = {m.name: m for m in args.models}  # a model folder's flip output has its own calibration
    encoders.update({name: load_encoder(m, device="cpu") for name, m in models.items()})
    tta = f"jitter {args.jitters}" if args.jitters > 1 else "flip"
    print(f"| encoder | {tta} | KNN acc | 1-NN acc | TAR@1e-3 | TAR@1e-2 | diff. pairs ≤ 0.6 | lfw 10-fold acc | "
          "lfw acc at 0.6 | lfw TAR@1e-3 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    for name, enc in encoders.items():
        if args.jitters > 1:  # what train-knn --jitters N does: the folder's own calibration, jittered, scaled
            scale = train_knn_scale(enc, kpop, train_idx, args.jitters)
            augmented = with_jitter(enc, args.jitters, scale)
            print(f"{name}: jitter scale {scale:.4f}", flush=True)
        else:
            augmented = load_encoder(f"{models[name]}+flip", device="cpu") if name in models else FlipEncoder(enc)
        for flip, e in (("no", enc), ("yes", augmented)):
            k, l = closed_set(e, kpop, train_idx, test_idx), lfw_verification(e, lfw, args.lfw_people)
            results[f"{name} flip={flip}"] = {"kpop": k, "lfw": l}
            print(f"| {name} | {flip} | {k['knn_accuracy']:.3f} | {k['1nn_accuracy']:.3f} | {k['tar@0.001']:.3f} | "
                  f"{k['tar@0.01']:.3f} | {k['different_pairs_at_0.6']:.4f} | {l['kfold_accuracy']:.4f} | "
                  f"{l['accuracy_at_0.6']:.4f} | {l['tar@0.001']:.3f} |", flush=True)
    Path(f"/tmp/dlibplus-bench-{tta.split()[0]}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
