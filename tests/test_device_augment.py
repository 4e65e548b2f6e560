"""dlibplus.device_augment: dlib's jitter and colour perturbation as batched tensor ops, against dlib's own
``jitter_image`` (in a fresh process, where its generator starts as ``DlibRand()``) and the numpy path
(dlibplus.augment, itself tested against dlib) on real 150x150 chips."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, person_images
from dlibplus import augment
from dlibplus import device_augment as D
from dlibplus.align import DlibRand


@pytest.fixture(scope="module")
def chips(faces_dir) -> np.ndarray:
    """24 of dlib's own 150x150 aligned chips (dlib_johns), uint8 (24, 150, 150, 3)."""
    paths = [p for _, p in person_images(faces_dir, "dlib_johns", 5)][:24]
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def as_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).cpu().numpy()


def test_jitter_is_dlibs_jitter_image_pixel_for_pixel(chips, tmp_path):
    """dlib.jitter_image(chip, 6) in a fresh process vs the same six draws of DlibRand() here."""
    chip = chips[3]
    np.save(tmp_path / "chip.npy", chip)
    code = ("import sys, dlib, numpy as np; c = np.load(sys.argv[1]); "
            "np.save(sys.argv[2], np.stack(dlib.jitter_image(c, 6)))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "chip.npy"), str(tmp_path / "dlib.npy")],
                   check=True, cwd=REPO)
    theirs = np.load(tmp_path / "dlib.npy")
    rng = DlibRand()
    params = D.AugmentParams.concatenate([D.params_from_dlib([rng], colours=False) for _ in range(6)])
    assert params.mirror.any() and not params.mirror.all()  # both branches exercised
    ours = as_nhwc(D.jitter(torch.from_numpy(np.stack([chip] * 6)), params))
    assert ours.dtype == np.float32 and np.array_equal(ours, np.floor(ours))
    # measured: max |difference| 0, mean 0 (float64 sample points and blend in dlib's order)
    np.testing.assert_array_equal(ours, theirs)


def test_augmentation_equals_the_numpy_path_with_the_same_draws(chips):
    """Jitter and colours: with dlib's draws (draws="dlib") the device path gives augment_batch's chips."""
    slots = np.arange(len(chips)) * 3 + 1
    theirs = augment.augment_batch(chips, 11, 2, 5, slots)
    ours = as_nhwc(D.augment_on_device(torch.from_numpy(chips), 11, 2, 5, slots, draws="dlib"))
    difference = np.abs(ours - theirs)
    assert difference.max() == 0, (difference.max(), difference.mean())  # measured: max 0, mean 0


def test_colours_alone_are_disturb_colors(chips):
    rngs = [DlibRand(seed) for seed in range(len(chips))]
    draws = [[rng.get_random_double() for _ in range(D.DRAWS_PER_SAMPLE)] for rng in rngs]
    params = D.params_from_uniforms(np.array(draws))
    expected = []
    for chip, row in zip(chips, draws):
        replay = _Replay(row[D.JITTER_DRAWS:])  # disturb_colors reads the colour draws only
        expected.append(augment.disturb_colors(chip, replay))
    ours = as_nhwc(D.disturb_colors(torch.from_numpy(chips), params))
    np.testing.assert_array_equal(ours, np.stack(expected))


class _Replay:
    """A generator that returns given doubles (dlib's get_double_in_range arithmetic)."""

    def __init__(self, values):
        self.values = list(values)

    def get_random_double(self) -> float:
        return self.values.pop(0)

    def get_double_in_range(self, begin: float, end: float) -> float:
        return begin + self.get_random_double() * (end - begin)


def test_identity_and_mirror_are_exact(chips):
    x = torch.from_numpy(chips)
    identity = D.identity_params(len(chips))
    np.testing.assert_array_equal(as_nhwc(D.augment(x, identity)), chips)
    mirrored = D.AugmentParams(**{**identity.__dict__, "mirror": np.ones(len(chips), bool)})
    np.testing.assert_array_equal(as_nhwc(D.augment(x, mirrored)), chips[:, :, ::-1])


def test_a_sample_depends_on_seed_epoch_step_and_slot_only(chips):
    x = torch.from_numpy(chips[:8])
    whole = D.augment_on_device(x, 3, 1, 4, np.arange(8))
    # DDP: two processes each augment their share of the global batch (slots rank::2)
    shares = [D.augment_on_device(x[rank::2], 3, 1, 4, np.arange(8)[rank::2]) for rank in (0, 1)]
    assert torch.equal(whole[0::2], shares[0]) and torch.equal(whole[1::2], shares[1])
    assert torch.equal(D.augment_on_device(x, 3, 1, 4, np.arange(8)), whole)  # resume: same again
    for other in ((4, 1, 4), (3, 2, 4), (3, 1, 5)):
        assert not torch.equal(D.augment_on_device(x, *other, np.arange(8)), whole)
    shifted = D.augment_on_device(x, 3, 1, 4, np.arange(8) + 1)
    assert not torch.equal(shifted, whole)


def test_parameters_follow_dlibs_distributions():
    params = D.sample_params(0, 0, 0, np.arange(3000))
    assert set(np.unique(params.box)) <= set(range(144, 149)) and set(np.unique(params.box)) >= {144, 148}
    assert np.abs(params.shift_x).max() == 3 and np.abs(params.shift_y).max() == 3  # round(±0.02 * 144)
    assert np.abs(np.degrees(params.angle)).max() <= 3 and np.degrees(params.angle).std() > 1.5
    assert 0.45 < params.mirror.mean() < 0.55
    assert np.all((params.gamma >= 2 ** -0.5) & (params.gamma <= 2 ** 0.5))
    np.testing.assert_allclose(params.gains.mean(axis=1), 1.0, atol=1e-12)
    assert np.abs(params.gains - 1).max() <= 1.1 / (2.9 / 3) - 1  # 1 ± 0.1, over their mean


def test_shapes_dtypes_and_layouts(chips):
    nhwc = torch.from_numpy(chips[:4])
    out = D.augment_on_device(nhwc, 0, 0, 0, [0, 1, 2, 3])
    assert out.shape == (4, 3, 150, 150) and out.dtype == torch.float32 and out.device == nhwc.device
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.floor())
    nchw = nhwc.permute(0, 3, 1, 2).contiguous()
    assert torch.equal(D.augment_on_device(nchw, 0, 0, 0, [0, 1, 2, 3]), out)
    assert D.augment_on_device(nhwc[:0], 0, 0, 0, []).shape == (0, 3, 150, 150)
    with pytest.raises(ValueError, match="uint8"):
        D.augment_on_device(nhwc.float(), 0, 0, 0, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="slots"):
        D.augment_on_device(nhwc, 0, 0, 0, [0, 1])
    with pytest.raises(ValueError, match="draws"):
        D.sample_params(0, 0, 0, [0], draws="numpy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu(chips):
    x = torch.from_numpy(chips)
    on_gpu = D.augment_on_device(x.cuda(), 5, 0, 9, np.arange(len(chips)))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), D.augment_on_device(x, 5, 0, 9, np.arange(len(chips))))
