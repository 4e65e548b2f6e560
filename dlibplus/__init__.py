"""dlibplus: face_recognition's API on dlib, and a PyTorch replica of dlib's face ResNet to fine-tune.

``import dlibplus as face_recognition`` gives the seven face_recognition functions with the same
signatures, defaults and results. Importing is instant: models load on first use.
"""
__version__ = "0.1.0"
