"""The jitter scale on real photos: estimated on a sample, it brings the share of different-person pairs within
0.6 on the other photos back to what plain encodings give."""
from __future__ import annotations

import numpy as np
import pytest

from dlibplus.encoders import TorchEncoder, with_jitter
from dlibplus.faces import FaceSettings
from dlibplus.finetune_data import load_chipset
from dlibplus.jitter_scale import estimate_scale, sample_rows
from dlibplus.metrics import pair_distances


def test_sample_rows_spreads_over_people_and_is_seeded():
    labels = np.array(["a"] * 10 + ["b"] * 3 + ["c"] * 1)
    rows = sample_rows(labels, limit=7, seed=0)
    assert len(rows) == 7 and np.all(np.diff(rows) > 0)
    assert set(labels[rows]) == {"a", "b", "c"} and (labels[rows] == "b").sum() == 3  # round-robin over people
    assert sample_rows(labels, limit=7, seed=0).tolist() == rows.tolist()
    assert sample_rows(labels, limit=7, seed=1).tolist() != rows.tolist()
    assert sample_rows(labels, limit=100).tolist() == list(range(len(labels)))


def test_estimate_scale_needs_matching_shapes_and_two_people():
    x = np.random.default_rng(0).normal(size=(6, 128))
    assert estimate_scale(x, x * 0.5, np.array(["a"] * 6)) == 1.0  # no different-person pair
    assert estimate_scale(x, x * 0.5, np.array(list("aabbcc"))) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shape"):
        estimate_scale(x, x[:5], np.array(list("aabbcc")))


def test_scale_from_a_sample_keeps_the_share_of_strangers_within_0_6_on_the_other_photos(faces_dir):
    """kpop_idols15 through the exact replica of dlib's network, 4 jittered copies: jitter lets more
    different-person pairs within 0.6; the scale estimated on 100 photos puts the other photos' share back
    near the plain encodings' one."""
    data, _ = load_chipset(faces_dir / "kpop_idols15", FaceSettings(face_box="whole"), progress=False)
    encoder = TorchEncoder(device="cpu")
    plain = encoder.encode(data.chips)
    jittered = with_jitter(encoder, 4).encode(data.chips)
    sample = sample_rows(data.labels)
    scale = estimate_scale(plain[sample], jittered[sample], data.labels[sample])
    assert scale > 1.0
    rest = np.setdiff1d(np.arange(len(data.labels)), sample)

    def strangers_within(emb: np.ndarray) -> float:
        d, same = pair_distances(emb[rest], data.labels[rest])
        return float(np.mean(d[~same] <= 0.6))

    plain_share, jittered_share = strangers_within(plain), strangers_within(jittered)
    scaled_share = strangers_within(jittered * scale)
    assert jittered_share > plain_share + 0.005
    assert abs(scaled_share - plain_share) < abs(jittered_share - plain_share) / 3
