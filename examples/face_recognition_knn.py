"""face_recognition's KNN example, rewritten on dlibplus.

The original (face_recognition/examples/face_recognition_knn.py) encodes a ``train/<person>/<image>``
folder one image at a time, picks k = round(sqrt(n)), pickles the scikit-learn classifier, and draws
labels with ``ImageDraw.textsize`` (gone in Pillow 10). Here the same two functions run on all cores
with an encoding cache, choose k by leave-one-out, save a pickle-free model, decide "unknown" on the
predicted person's own distance, and draw with Pillow >= 10.

Usage, with the photos of face_recognition's own example (``../shared/data/faces/face_recognition``
holds them, one folder per person)::

    python examples/face_recognition_knn.py ../shared/data/faces/face_recognition \\
        ../shared/data/faces/face_recognition/_multi_or_unlabelled --annotate /tmp/knn-annotated

The same from the shell: ``dlibplus train-knn TRAIN -o model.npz && dlibplus predict model.npz TEST``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dlibplus import knn
from dlibplus.annotate import AnnotationPlan
from dlibplus.data import image_paths
from dlibplus.predict import predict_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train_dir", type=Path, help="a folder of <person>/<image> files")
    parser.add_argument("test", type=Path, help="an image or a folder of images to recognise")
    parser.add_argument("--model", type=Path, default=Path("trained_knn_model.npz"))
    parser.add_argument("--annotate", type=Path, help="write annotated copies of the test images here")
    args = parser.parse_args()

    print("Training KNN classifier...")
    classifier = knn.train(args.train_dir, model_save_path=args.model, verbose=True, progress=True)
    print(f"Training complete: k = {classifier.k_}, model saved to {args.model}")

    # knn.predict(path, model_path=...) is the example's one-image function; predict_images does many at once
    paths = image_paths([args.test])
    plan = AnnotationPlan(paths, args.annotate) if args.annotate else None
    for result in predict_images(paths, classifier, progress=False):
        if result.error is not None:
            print(f"- skipped {result.path.name}: {result.error}")
            continue
        for face in result.faces:
            top, right, bottom, left = face.box
            print(f"- Found {face.name} at ({left}, {top}) in {result.path.name} (distance {face.distance:.2f})")
        if plan is not None:
            print(f"  annotated copy: {plan.write(result.path, result.faces)}")


if __name__ == "__main__":
    main()
