"""Shared fixtures. Every run gets its own MongoDB database, dropped at the end.

FiftyOne reads its settings when first imported, so the environment is set here, before
any test module imports it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["FIFTYONE_DATABASE_NAME"] = f"sam31_test_{uuid.uuid4().hex[:10]}"
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ.pop("FAL_KEY", None)  # tests never use a real key
os.environ.pop("FAL_KEY_ID", None)
os.environ.pop("FAL_KEY_SECRET", None)

from sam_backend import synthetic  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import sys

    if "fiftyone" not in sys.modules:
        return
    import fiftyone.core.odm as foo

    foo.get_db_client().drop_database(os.environ["FIFTYONE_DATABASE_NAME"])


@pytest.fixture(scope="session")
def scene_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synthetic.GroundTruth]:
    """The default synthetic scene (96 frames, 3 objects entering, leaving, crossing)."""
    path = tmp_path_factory.mktemp("videos") / "scene.mp4"
    return path, synthetic.write_video(synthetic.default_scene(), path)


@pytest.fixture(scope="session")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synthetic.GroundTruth]:
    """A short, small clip of the same scene for tests that need speed, not length."""
    path = tmp_path_factory.mktemp("videos") / "small.mp4"
    return path, synthetic.write_video(synthetic.default_scene(frame_count=48, width=160, height=120), path)


@pytest.fixture
def make_dataset() -> Iterator:
    """Factory for video datasets that are deleted after the test."""
    import fiftyone as fo

    made: list = []

    def make(*paths: Path, name: str | None = None, persistent: bool = False) -> fo.Dataset:
        ds = fo.Dataset(name, persistent=persistent)
        ds.add_samples([fo.Sample(filepath=str(p)) for p in paths])
        made.append(ds)
        return ds

    yield make
    for ds in made:
        if not ds.deleted:
            ds.delete()
