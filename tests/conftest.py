"""Shared fixtures: the real labelled photos in ../shared/data/faces (or $DLIBPLUS_FACES)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def faces_root() -> Path:
    env = os.environ.get("DLIBPLUS_FACES")
    return Path(env) if env else REPO.parent / "shared" / "data" / "faces"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """Root of the labelled photo sets: ``<set>/<person>/<image>``."""
    root = faces_root()
    if not root.is_dir():
        pytest.fail(f"face photos not found at {root}; set DLIBPLUS_FACES")
    return root


def link_people(folder: Path, faces_dir: Path, set_name: str, people: list[str], per_person: int) -> Path:
    """``folder`` (made if missing) made a people folder: each named person of ``set_name``, their first
    ``per_person`` photos in sorted order as symlinks (the photos are never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for person in people:
        (folder / person).mkdir()
        for src in sorted((faces_dir / set_name / person).iterdir())[:per_person]:
            os.symlink(src, folder / person / src.name)
    return folder


def whole_face_chips(folder: Path, faces_dir: Path, people: list[str], per_person: int):
    """The :class:`~dlibplus.finetune_data.ChipSet` of the named kpop_idols15 people's first ``per_person`` photos
    (cropped faces: ``--face-box whole``), read through a people folder :func:`link_people` makes in ``folder``."""
    from dlibplus.faces import FaceSettings
    from dlibplus.finetune_data import load_chipset

    root = link_people(folder, faces_dir, "kpop_idols15", people, per_person)
    return load_chipset(root, FaceSettings(face_box="whole"), jobs=1, progress=False)[0]


def person_images(root: Path, set_name: str, per_person: int | None = None) -> list[tuple[str, Path]]:
    """Sorted ``(person, path)`` pairs of one set, at most ``per_person`` images each."""
    pairs = []
    for person_dir in sorted((root / set_name).iterdir()):
        if not person_dir.is_dir() or person_dir.name.startswith("_"):
            continue
        files = sorted(p for p in person_dir.iterdir() if p.is_file())
        pairs += [(person_dir.name, p) for p in files[:per_person]]
    return pairs


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests compute everything for real: a fresh, private encoding cache for the session."""
    os.environ["DLIBPLUS_CACHE"] = str(tmp_path_factory.mktemp("dlibplus-cache"))
    yield
