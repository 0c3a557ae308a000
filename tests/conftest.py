"""Shared fixtures. Every run gets its own MongoDB database, dropped at the end.

FiftyOne reads its settings when first imported, so the environment is set here, before
any test module imports it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

os.environ["FIFTYONE_DATABASE_NAME"] = f"sam31_test_{uuid.uuid4().hex[:10]}"
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
# The App server and in-process operator runs find the plugin here (a link to this repo).
_plugins = Path(tempfile.mkdtemp(prefix="sam31_plugins_"))
(_plugins / "sam31-video").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
os.environ["FIFTYONE_PLUGINS_DIR"] = str(_plugins)
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="sam31_state_")  # fal journals stay out of $HOME
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="sam31_config_")  # and so do measured RLE layouts
os.environ.pop("FAL_KEY", None)  # tests never use a real key
os.environ.pop("FAL_KEY_ID", None)
os.environ.pop("FAL_KEY_SECRET", None)

from sam_backend import synthetic  # noqa: E402
from sam_backend.backends.fal import FalBackend, FalConfig  # noqa: E402
from sam_backend.emulator import EmulatorServer  # noqa: E402


def pytest_sessionstart(session: pytest.Session) -> None:
    """Start (or join) FiftyOne's database service under a lock shared by every test run on
    this machine. Two runs starting the service at the same instant race: the loser looks
    for mongod on the default port and every database test then fails after a 30 s
    timeout ("localhost:27017: Connection refused"). Under the lock the second run finds
    the first one's service and joins it."""
    import fcntl

    lock_path = Path(tempfile.gettempdir()) / "sam31-fiftyone-service.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            import fiftyone.core.odm as foo

            foo.get_db_conn()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    """One loopback fal emulator for the session (tests read its counters as deltas)."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def fal_backend(emulator: EmulatorServer) -> Iterator[FalBackend]:
    """The real fal backend, pointed at the emulator."""
    config = FalConfig(key=emulator.key, queue_url=emulator.queue_url, rest_url=emulator.rest_url,
                       cdn_url=emulator.cdn_url, poll_initial_s=0.05)
    with FalBackend(config) as backend:
        yield backend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server() -> Iterator[str]:
    """The real FiftyOne App server on loopback, sharing this run's database."""
    import fiftyone.core.odm as foo

    foo.get_db_conn()  # start (or join) the database service here first; the server joins it
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1", "--port", str(port)],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/fiftyone", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("FiftyOne App server did not start")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
