"""`finetune --regime`: the settings each regime gives, and `auto`'s choice from dlib on real photos."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import person_images
from dlibplus.train_config import REGIMES, FinetuneConfig


def test_a_regime_sets_the_defaults_and_given_values_win():
    for name, values in REGIMES.items():
        config = FinetuneConfig(regime=name)
        assert {k: getattr(config, k) for k in values} == values
    assert FinetuneConfig(regime="distill", anchor=300).anchor == 300
    assert FinetuneConfig(regime="distill", anchor=300).distill == REGIMES["distill"]["distill"]
    assert FinetuneConfig().regime == "anchor" and FinetuneConfig().anchor == REGIMES["anchor"]["anchor"]
    auto = FinetuneConfig(regime="auto", anchor=5.0)
    assert auto.distill is None and auto.anchor == 5.0  # resolved by finetune()
    resolved = auto.with_regime("distill")
    assert (resolved.regime, resolved.anchor, resolved.triplet) == ("distill", 5.0, REGIMES["distill"]["triplet"])
    with pytest.raises(ValueError, match="already"):
        resolved.with_regime("anchor")
    with pytest.raises(ValueError, match="regime"):
        FinetuneConfig(regime="loose")
    with pytest.raises(ValueError, match="anchor"):
        FinetuneConfig(regime="distill", anchor=-1)


def test_build_refuses_an_unresolved_regime():
    import torch

    from dlibplus.distributed import Dist
    from dlibplus.finetune_data import ChipSet
    from dlibplus.train import build

    chips = ChipSet(np.zeros((4, 150, 150, 3), np.uint8), np.array([0, 0, 1, 1]), ["a", "b"], ["p"] * 4)
    with pytest.raises(ValueError, match="regime"):
        build(chips, FinetuneConfig(regime="auto"), torch.device("cpu"), Dist())


@pytest.mark.parametrize("set_name, expected", [("kpop_idols15", "distill"), ("five_celebrity", "anchor"),
                                                ("glint360k_celeb24", "anchor")])
def test_auto_moves_further_only_where_dlib_confuses_the_people(faces_dir, tmp_path, set_name, expected):
    """dlib's own descriptors (dlib's C++ network) of 6 photos per person: it puts most different-person
    pairs of East-Asian idols within 0.6 (distill), almost none of the celebrities' (anchor)."""
    from dlibplus.encoders import DlibEncoder
    from dlibplus.faces import FaceSettings
    from dlibplus.finetune_data import load_chipset
    from dlibplus.regime import choose_regime

    people = person_images(faces_dir, set_name, per_person=6)
    for person, path in people:
        (tmp_path / person).mkdir(exist_ok=True)
        (tmp_path / person / path.name).symlink_to(path)
    data, _ = load_chipset(tmp_path, FaceSettings(face_box="whole"), jobs=1, progress=False)
    choice = choose_regime(DlibEncoder().encode(data.chips), data.labels)
    assert choice.regime == expected, choice
    assert (choice.dlib_different_within_tolerance > 0.5) == (expected == "distill")
    assert choice.n_photos == len(data) == len(people)
    assert choice.to_dict()["dlib_different_pairs_within_0.6"] == choice.dlib_different_within_tolerance


def test_sample_photos_caps_the_pairs_measured():
    from dlibplus.regime import sample_photos

    labels = np.arange(5000) % 7
    rows = sample_photos(labels, limit=1000)
    assert len(rows) == len(np.unique(rows)) == 1000 and np.array_equal(rows, sample_photos(labels, limit=1000))
    assert sample_photos(labels[:10]).tolist() == list(range(10))
