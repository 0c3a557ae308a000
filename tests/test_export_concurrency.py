"""Exports under concurrent writes and kills, with real processes: an export running while
a segment run rewrites the same field is never torn (it is one version, or it refuses);
a SIGKILL while ``overwrite`` replaces an earlier export leaves the complete old or the
complete new export; leftovers of killed exports are swept by the next one."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest

from sam_backend.errors import InvalidRequest
from sam_backend.fiftyone_io.export import export_tracks
from sam_backend.fiftyone_io.export.publish import sweep
from sam_backend.fiftyone_io.writer import STAGING_COLLECTION, FrameLabelWriter, WritePolicy
from sam_backend.types import FrameResult, TrackedObject
from sam_backend.video import encode_rgb_frames, probe

from child_process import kill_when

W, H, FRAMES = 320, 240, 600

# A segment run's writer, in its own process: rewrites frames.sam of the one video over
# and over, version 1 then 2 then 1..., every frame's one track carrying the version as
# its track id, until the stop file appears.
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    import fiftyone as fo
    from sam_backend.fiftyone_io.writer import FrameLabelWriter, WritePolicy
    from sam_backend.types import FrameResult, TrackedObject
    from sam_backend.video import probe

    name, stop, ready = sys.argv[1:4]
    ds = fo.load_dataset(name)
    sample = ds.first()
    info = probe(sample.filepath)
    mask = np.zeros((info.height, info.width), bool)
    mask[30:200, 40:300] = np.random.default_rng(1).random((170, 260)) < 0.5
    writer = FrameLabelWriter(ds, "sam")
    version = 1
    while not Path(stop).exists():
        version = 3 - version
        frames = (FrameResult(i, [TrackedObject(version, "thing", 0.9, mask, (40, 30, 300, 200))]) for i in range(info.frame_count))
        writer.write_sample(sample.id, frames, info, WritePolicy())
        Path(ready).touch()
""")


@pytest.fixture
def long_video(tmp_path: Path) -> Path:
    path = tmp_path / "long.mp4"
    encode_rgb_frames((np.zeros((H, W, 3), np.uint8) for _ in range(FRAMES)), path, width=W, height=H, fps=25)
    return path


def _write_version(ds: fo.Dataset, track_id: int) -> None:
    info = probe(ds.first().filepath)
    mask = np.zeros((H, W), bool)
    mask[30:200, 40:300] = True
    frames = (FrameResult(i, [TrackedObject(track_id, "thing", 0.9, mask, (40, 30, 300, 200))]) for i in range(FRAMES))
    FrameLabelWriter(ds, "sam").write_sample(ds.first().id, frames, info, WritePolicy())


def _mot_track_ids(folder: Path) -> dict[int, int]:
    """track id -> rows in the exported MOT file."""
    [gt] = [p for p in folder.rglob("*.txt") if p.name != "seqmap.txt"]
    ids: dict[int, int] = {}
    for line in gt.read_text().splitlines():
        track = int(line.split(",")[1])
        ids[track] = ids.get(track, 0) + 1
    return ids


def test_export_during_a_segment_run_is_never_torn(make_dataset, long_video: Path, tmp_path: Path) -> None:
    ds = make_dataset(long_video, persistent=True)
    _write_version(ds, 1)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", WRITER, ds.name, str(stop), str(ready)], env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    published, refused = [], 0
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for attempt in range(10):
            out = tmp_path / f"mot{attempt}"
            try:
                export_tracks(ds, "sam", "mot", out)
            except InvalidRequest as exc:
                assert "segment run" in str(exc)
                assert not out.exists()  # nothing published
                refused += 1
                continue
            published.append(_mot_track_ids(out))
        assert child.poll() is None, child.communicate()  # the writer was writing the whole time
    finally:
        stop.touch()
        child.wait(60)
    for ids in published:  # each export is all version 1 or all version 2, never a mix
        assert len(ids) == 1 and sum(ids.values()) == FRAMES, ids


KILLED_EXPORT = textwrap.dedent("""
    import shutil, sys, time
    from pathlib import Path
    import fiftyone as fo
    from sam_backend.fiftyone_io.export import export_tracks
    from sam_backend.fiftyone_io.export import publish

    name, out, marker, mode = sys.argv[1:5]

    def wait_to_be_killed(what):
        Path(marker).write_text(what)
        time.sleep(30)

    if mode == "exchange":
        # the moment after the swap: the old export is being deleted from its hidden name
        real_rmtree = shutil.rmtree
        def slow_rmtree(path, *args, **kwargs):
            wait_to_be_killed(str(path))
            return real_rmtree(path, *args, **kwargs)
        publish.shutil.rmtree = slow_rmtree
    else:
        # no atomic swap: the moment between renaming the old export aside and moving the new one in
        def unsupported(a, b):
            raise OSError(38, "renameat2 is not available")
        publish._exchange = unsupported
        real_rename = Path.rename
        def slow_rename(self, target):
            if ".partial-" in self.name:
                wait_to_be_killed(str(self))
            return real_rename(self, target)
        Path.rename = slow_rename
    export_tracks(fo.load_dataset(name), "sam", "mot", Path(out), overwrite=True)
""")


@pytest.mark.parametrize("mode", ["exchange", "no-exchange"])
def test_kill_while_overwrite_replaces_an_export(make_dataset, long_video: Path, tmp_path: Path, mode: str) -> None:
    ds = make_dataset(long_video, persistent=True)
    out = tmp_path / "export"
    _write_version(ds, 1)
    export_tracks(ds, "sam", "mot", out)
    _write_version(ds, 2)  # the new export would hold track 2
    marker = tmp_path / "deleting"
    kill_when(KILLED_EXPORT, ds.name, str(out), str(marker), mode, ready=marker.exists)
    assert list(tmp_path.glob(".export.*"))  # the kill left a hidden folder behind
    if mode == "exchange":
        # killed after the one-step swap, deleting the old export: the new one is complete
        assert json.loads((out / "sam31_export.json").read_text())["counts"]["frames"] == FRAMES
        assert _mot_track_ids(out) == {2: FRAMES}
    else:
        assert not out.exists()  # the one window the fallback has: old aside, new not yet in
    sweep(out)  # what the next export to this folder does first
    # ... puts the complete old export back; after the swap, the new one stays
    assert _mot_track_ids(out) == ({2: FRAMES} if mode == "exchange" else {1: FRAMES})
    assert not list(tmp_path.glob(".export.*"))
    report = export_tracks(ds, "sam", "mot", out, overwrite=True)  # and the folder works as before
    assert report.frames == FRAMES and _mot_track_ids(out) == {2: FRAMES}


def test_staged_frames_of_a_killed_run_are_swept_and_do_not_block_exports(make_dataset, long_video: Path,
                                                                           tmp_path: Path) -> None:
    ds = make_dataset(long_video, persistent=True)
    _write_version(ds, 1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = f"{os.uname().nodename}:{int(dead.stdout)}"
    staging = fo.core.odm.get_db_conn()[STAGING_COLLECTION]
    staging.insert_one({"run": "killed", "owner": owner, "staged_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                        "_sample_id": ds.first()._id, "_dataset_id": ds._doc.id, "frame_number": 1})
    report = export_tracks(ds, "sam", "mot", tmp_path / "out")  # not "being written": its writer is dead
    assert report.frames == FRAMES
    FrameLabelWriter(ds, "other")  # the next run sweeps it
    assert staging.count_documents({"run": "killed"}) == 0
