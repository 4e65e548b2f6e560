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
from dlibplus.annotate import annotate_image
from dlibplus.data import image_paths


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
    for path, faces, error in knn.predict_images(image_paths([args.test]), classifier, progress=False):
        if error is not None:
            print(f"- skipped {path.name}: {error}")
            continue
        for face in faces:
            top, right, bottom, left = face.box
            print(f"- Found {face.name} at ({left}, {top}) in {path.name} (distance {face.distance:.2f})")
        if args.annotate:
            print(f"  annotated copy: {annotate_image(path, faces, args.annotate)}")


if __name__ == "__main__":
    main()
