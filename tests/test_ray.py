"""Encoding on a real local Ray cluster (2 CPUs) gives the single-process pipeline's results, in order,
with per-file failures, as arrays, as resumable Parquet shards, and through ``dlibplus encode --ray``."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import person_images

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install dlibplus[ray])")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

from dlibplus.cli.encode import encode as encode_command  # noqa: E402
from dlibplus.data import process_images  # noqa: E402
from dlibplus.encoders import load_encoder  # noqa: E402
from dlibplus.errors import DataFolderError  # noqa: E402
from dlibplus.faces import FaceSettings  # noqa: E402
from dlibplus.ray_encode import encode_to_parquet, ray_process_images, read_parquet  # noqa: E402

SETTINGS = FaceSettings()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own fields


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray of 2 CPUs for the module (the functions use it since it is initialised)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(faces_dir, tmp_path_factory):
    """Real photos (lfw_dev, and one with two faces), a picture with no face and a corrupt file."""
    folder = tmp_path_factory.mktemp("inputs")
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 20)
    blank = folder / "blank.png"
    Image.new("RGB", (120, 90), (90, 140, 200)).save(blank)
    lfw = [p for _, p in person_images(faces_dir, "lfw_dev", per_person=1)[:4]]
    two = faces_dir / "face_recognition" / "_multi_or_unlabelled" / "examples__knn_examples__test__kit_with_rose.jpg"
    return lfw[:2] + [corrupt, two] + lfw[2:3] + [blank] + lfw[3:]


@pytest.fixture(scope="module")
def reference(photos):
    return process_images(photos, SETTINGS, jobs=1, use_cache=False, progress=False)


def assert_same(results, reference, exact: bool = True):
    assert [str(r.path) for r in results] == [str(r.path) for r in reference]
    assert [r.error for r in results] == [r.error for r in reference]
    for r, ref in zip(results, reference):
        if ref.error is None:
            np.testing.assert_array_equal(r.boxes, ref.boxes)
            if exact:
                np.testing.assert_array_equal(r.encodings, ref.encodings)
            else:
                np.testing.assert_allclose(r.encodings, ref.encodings, atol=1e-6)


def test_same_results_in_order_with_failures(cluster, photos, reference):
    results = ray_process_images(photos, SETTINGS, progress=False)
    assert_same(results, reference)  # dlib's encoder: bit for bit
    errors = [r.error for r in results]
    assert errors[2] is not None and sum(e is not None for e in errors) == 1  # the corrupt file, named
    assert results[3].n_faces == 2 and results[5].n_faces == 0 and all(r.n_faces == 1 for r in results[:2])


def test_torch_encoder_in_actors(cluster, photos):
    reference = process_images(photos, SETTINGS, encoder=load_encoder("torch"), jobs=1, use_cache=False,
                               progress=False)
    # batches of faces differ between the two paths: torch's float rounding (~2e-7) may too
    assert_same(ray_process_images(photos, SETTINGS, encoder="torch", progress=False), reference, exact=False)


def arrays_of(results):
    ok = [r for r in results if r.error is None]
    return (np.concatenate([r.encodings for r in ok]).astype(np.float32),
            np.array([str(r.path) for r in ok for _ in range(r.n_faces)]),
            np.concatenate([r.boxes for r in ok]).astype(np.int32))


def test_parquet_shards_resume(cluster, photos, reference, tmp_path):
    out = tmp_path / "shards"
    first = encode_to_parquet(photos, out, SETTINGS, shard_size=3, progress=False)
    assert (first.written, first.skipped, len(first.shards)) == (3, 0, 3)
    encodings, paths, boxes = arrays_of(reference)
    got = read_parquet(out)
    np.testing.assert_array_equal(got["encodings"], encodings)
    np.testing.assert_array_equal(got["paths"], paths)
    np.testing.assert_array_equal(got["boxes"], boxes)
    assert first.n_faces == len(paths)
    assert first.failures == [(str(photos[2]), reference[2].error)] and first.no_face == [str(photos[5])]

    first.shards[1].unlink()  # as if the run had stopped before the second shard
    again = encode_to_parquet(photos, out, SETTINGS, shard_size=3, progress=False)
    assert (again.written, again.skipped) == (1, 2)
    assert again.failures == first.failures and again.n_faces == first.n_faces
    np.testing.assert_array_equal(read_parquet(out)["encodings"], encodings)

    with pytest.raises(DataFolderError, match="another job"):
        encode_to_parquet(photos[:5], out, SETTINGS, shard_size=3, progress=False)


def test_parquet_without_ray_is_the_same(photos, reference, tmp_path):
    encode_to_parquet(photos, tmp_path / "p", SETTINGS, shard_size=4, use_ray=False, jobs=1, progress=False)
    np.testing.assert_array_equal(read_parquet(tmp_path / "p")["encodings"], arrays_of(reference)[0])


def test_cli_encode_ray_writes_the_usual_npz(cluster, photos, reference, tmp_path):
    out = tmp_path / "ray.npz"
    result = CliRunner().invoke(encode_command, [*map(str, photos), "-o", str(out), "--ray", "--jobs", "2"])
    assert result.exit_code == 1, result.output  # the corrupt photo shows in the exit status; the rest is written
    assert f"skipped {photos[2]}" in result.output and f"no face in {photos[5]}" in result.output
    encodings, paths, boxes = arrays_of(reference)
    with np.load(out, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["encodings"], encodings)
        np.testing.assert_array_equal(z["paths"], paths)
        np.testing.assert_array_equal(z["boxes"], boxes)
        assert list(z["failed_paths"]) == [str(photos[2])]


def test_cli_ray_missing_says_how_to_install(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.data", None)  # `import ray.data` now fails as without Ray
    result = CliRunner().invoke(encode_command, [str(photos[0]), "-o", str(tmp_path / "x.npz"), "--ray"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install dlibplus[ray]" in lines[0]
    assert not (tmp_path / "x.npz").exists()


def test_cli_ray_refuses_a_path_as_address(photos, tmp_path):
    result = CliRunner().invoke(encode_command, ["--ray", str(photos[0]), "-o", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "not a cluster address" in result.output


def test_train_knn_on_ray_equals_the_single_process_model(cluster, tmp_path, faces_dir):
    """train-knn --ray: the same encodings, hence the same model, as without Ray."""
    import os

    import numpy as np
    from click.testing import CliRunner

    from dlibplus.cli import main
    from dlibplus.knn import FaceKNN

    people = tmp_path / "people"
    for person in ("Aaron_Peirsol", "Abdullah_Gul"):
        (people / person).mkdir(parents=True)
        for src in sorted((faces_dir / "lfw_dev" / person).iterdir())[:3]:
            os.symlink(src, people / person / src.name)
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    runner = CliRunner()
    assert runner.invoke(main, ["train-knn", str(people), "-o", str(one), "-j", "1", "--no-cache"]).exit_code == 0
    res = runner.invoke(main, ["train-knn", str(people), "-o", str(two), "-j", "2", "--ray"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    a, b = FaceKNN.load(one), FaceKNN.load(two)
    assert np.array_equal(a.classes_, b.classes_) and np.abs(a.encodings_ - b.encodings_).max() == 0


def test_cluster_on_ray_equals_the_single_process_clusters(cluster, photos, tmp_path):
    """cluster --ray: the same faces and the same clusters as without Ray."""
    from dlibplus.cli import main

    one, two = tmp_path / "one", tmp_path / "two"
    runner = CliRunner()
    runner.invoke(main, ["cluster", *map(str, photos), "-o", str(one), "-j", "1", "--no-cache"])
    res = runner.invoke(main, ["cluster", *map(str, photos), "-o", str(two), "-j", "2", "--ray"], catch_exceptions=False)
    assert (two / "clusters.csv").is_file(), res.output
    assert (one / "clusters.csv").read_text() == (two / "clusters.csv").read_text()
