"""The layout the README promises: inference never loads the training code, and importing is light."""
from __future__ import annotations

import json
import subprocess
import sys

TRAINING = ("dlibplus.finetune", "dlibplus.train", "dlibplus.finish", "dlibplus.crossfit", "dlibplus.selection", "dlibplus.calibration",
            "dlibplus.finetune_data", "dlibplus.distributed", "dlibplus.heads", "dlibplus.losses")


def loaded_after(code: str) -> list[str]:
    """The modules loaded by ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_inference_never_loads_the_training_code():
    modules = loaded_after("import dlibplus, dlibplus.cli, dlibplus.knn, dlibplus.predict, dlibplus.head_classifier, "
                           "dlibplus.encoders, dlibplus.model_folder, dlibplus.data, dlibplus.people, dlibplus.evaluate")
    assert not [m for m in modules if m in TRAINING]
    assert "torch" not in modules and "dlib" not in modules  # models and torch load on first use


def test_reading_a_fine_tuned_folder_needs_no_torch(tmp_path):
    code = ("from dlibplus import model_folder\n"
            f"try:\n    model_folder.read_metadata({str(tmp_path)!r})\nexcept Exception:\n    pass")
    assert "torch" not in loaded_after(code)
