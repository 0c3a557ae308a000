"""Direct tests for bugs a mutation pass planted that no test caught (issue 14, item 8):
each test below fails on its planted bug, named in its docstring. Values are asymmetric
on purpose (thresholds that are not the default, boxes with x != y, ids that do not follow
the objects' order in the frame) so a swapped or ignored value cannot pass by symmetry.
Real emulator over HTTP, real MongoDB, real videos."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest

from sam_backend import masks as mask_ops
from sam_backend import video
from sam_backend.backends.base import CancelToken, VideoSource
from sam_backend.backends.fal import FalBackend
from sam_backend.backends.fal.journal import RequestState
from sam_backend.coords import pixel_box, relative_box
from sam_backend.emulator import EmulatorConfig, EmulatorServer, FaultPlan, FaultRule
from sam_backend.emulator.faults import http_error
from sam_backend.errors import Cancelled
from sam_backend.fiftyone_io.runs import resume
from sam_backend.fiftyone_io.segment import segment_videos
from sam_backend.fiftyone_io.writer import FrameLabelWriter
from sam_backend.types import FrameResult, SegmentRequest, TrackedObject
from test_fal_faults import R, clips, fal_config, run_all  # noqa: F401  (clips is a fixture)


def _full_mask(det: fo.Detection, width: int, height: int) -> np.ndarray:
    x0, y0, x1, y1 = pixel_box(det.bounding_box, width, height)
    full = np.zeros((height, width), bool)
    full[y0:y1, x0:x1] = det.mask
    return full


# --------------------------------------------------------------------------- (a) cancel


def test_a_cancel_after_some_frames_arrived_writes_nothing(fal_backend: FalBackend, make_dataset, small_video) -> None:
    """Planted bug: the backend checks cancel only before its first frame, so a cancel
    landing mid-stream ends the stream early and the writer publishes the partial video."""
    path, _ = small_video
    ds = make_dataset(path)
    info = video.probe(path)
    cancel = CancelToken()
    run = fal_backend.segment(VideoSource(info=info, path=path), SegmentRequest.build(prompt="red ball"), cancel=cancel)
    arrived: list[int] = []

    def frames() -> Iterator[FrameResult]:
        for frame in run:
            arrived.append(frame.frame_index)
            if len(arrived) == 5:
                cancel.cancel()  # the user cancels while frames stream into the writer
            yield frame

    with pytest.raises(Cancelled):
        FrameLabelWriter(ds, "sam").write_sample(ds.first().id, frames(), info)
    assert arrived == [0, 1, 2, 3, 4]
    assert not ds.has_frame_field("sam") and ds.count("frames") == 0


# --------------------------------------------------------------------------- (b) threshold


def test_a_non_default_threshold_reaches_every_request_and_is_applied(emulator: EmulatorServer, fal_backend: FalBackend,
                                                                     make_dataset, small_video) -> None:
    """Planted bug: the wire request always carries the default detection_threshold (0.5).
    0.97 is above the emulator's score (0.95): the text concept must find nothing, while
    the clicked object (visual prompts are not thresholded) is kept."""
    path, truth = small_video
    ds = make_dataset(path)
    cx, cy = truth.scene.shape("blue box").centre(0)
    before = len(emulator.stats.submits)
    report = segment_videos(ds, prompt="red ball", detection_threshold=0.97, label_field="thr", backend=fal_backend,
                            point_prompts=[{"x": int(cx), "y": int(cy), "label": 1, "object_id": 4, "frame_index": 0}])
    assert report.failed == {}
    bodies = [body for _, body in emulator.stats.submits[before:]]
    assert len(bodies) == 2 and [b["detection_threshold"] for b in bodies] == [0.97, 0.97]
    labels = {d.label for f in ds.first().frames.values() for d in f.thr.detections}
    assert labels == {"object_4"}


# --------------------------------------------------------------------------- (f) harvest


def test_resume_fetches_every_finished_result_before_working_on_samples(make_dataset, clips, tmp_path: Path) -> None:  # noqa: F811
    """Planted bug: ``harvest`` on resume does nothing, so results fal finished while no
    one watched wait until a worker reaches their sample (by then fal may have dropped
    them: large results live minutes). Here a status outage fails a first run with every
    request journaled as submitted; on resume, before the first sample is worked on, every
    result must already be in the journal, and nothing is submitted again."""
    ds = make_dataset(*[p for p, _ in clips])
    with EmulatorServer(EmulatorConfig(queue_steps=0, workers=9)) as emu:
        emu.set_faults(FaultPlan(FaultRule("status", http_error(503))))
        config = fal_config(emu, status_outage_s=0.3, journal_path=tmp_path / "journal.sqlite3")
        with FalBackend(config) as backend:
            first = run_all(ds, backend, concurrency=3)
            assert len(first.failed) == 3
            entries = backend.journal.entries()
            assert len(entries) == 3 * R and {e.state for e in entries} == {RequestState.SUBMITTED}
            deadline = time.monotonic() + 60
            while emu.stats.jobs_completed < 3 * R:  # fal finishes them while nobody polls
                assert time.monotonic() < deadline, "the emulator did not finish the jobs"
                time.sleep(0.05)
            emu.set_faults(FaultPlan())
            at_first_progress: list[list[tuple[RequestState, bool]]] = []

            def on_progress(_) -> None:
                if not at_first_progress:
                    at_first_progress.append([(e.state, e.has_result) for e in backend.journal.entries()])

            report = resume(ds, backend=backend, progress=on_progress)
        assert report.failed == {} and len(emu.stats.submits) == 3 * R
        assert at_first_progress[0] == [(RequestState.COMPLETED, True)] * (3 * R)


# --------------------------------------------------------------------------- (h) ids and boxes


def test_track_ids_follow_the_objects_not_their_place_in_the_frame(fal_backend: FalBackend, make_dataset,
                                                                  scene_video) -> None:
    """Planted bug: ids assigned by position in the frame instead of by track. The red
    ball (first in the scene, starting on the left) gets id 9 and the blue box id 3; they
    cross, so their order in the frame flips mid-video and never matches id order."""
    path, truth = scene_video
    scene = truth.scene
    ds = make_dataset(path)
    ids = {"red ball": 9, "blue box": 3}
    prompts = []
    for name, oid in ids.items():
        cx, cy = scene.shape(name).centre(0)
        prompts.append({"x": int(cx), "y": int(cy), "label": 1, "object_id": oid, "frame_index": 0})
    report = segment_videos(ds, point_prompts=prompts, label_field="ids", backend=fal_backend)
    assert report.failed == {}
    red_left = set()
    for number, frame in ds.first().frames.items():
        index = number - 1
        got = {d.index: d for d in frame.ids.detections}
        visible = {n: oid for n, oid in ids.items() if truth.mask(n, index) is not None}
        assert sorted(got) == sorted(visible.values()), number
        for name, oid in visible.items():
            det = got[oid]
            assert det.label == f"object_{oid}"
            assert mask_ops.iou(_full_mask(det, scene.width, scene.height), truth.mask(name, index)) >= 0.9, (name, number)
        if len(visible) == 2:
            red_left.add(scene.shape("red ball").centre(index)[0] < scene.shape("blue box").centre(index)[0])
    assert red_left == {True, False}  # the scene really swaps their order


def test_the_writer_keeps_each_objects_own_id_whatever_its_position(make_dataset, small_video) -> None:
    """Planted bug: the writer numbers detections by their position in the frame. Objects
    arrive unsorted (id 7 before id 2), with ids that are not 0/1/2."""
    path, _ = small_video
    info = video.probe(path)
    ds = make_dataset(path)
    left = np.zeros((info.height, info.width), bool)
    left[10:20, 5:45] = True  # wide and short
    right = np.zeros((info.height, info.width), bool)
    right[30:100, 120:140] = True  # narrow and tall
    frames = [FrameResult(0, [TrackedObject(7, "right", 0.6, right, mask_ops.tight_box(right)),
                              TrackedObject(2, "left", 0.8, left, mask_ops.tight_box(left))]),
              FrameResult(1, [TrackedObject(2, "left", 0.8, left, mask_ops.tight_box(left)),
                              TrackedObject(7, "right", 0.6, right, mask_ops.tight_box(right))])]
    FrameLabelWriter(ds, "w").write_sample(ds.first().id, iter(frames), info)
    for number, frame in ds.first().frames.items():
        got = {d.index: (d.label, d.confidence) for d in frame.w.detections}
        assert got == {7: ("right", 0.6), 2: ("left", 0.8)}, number


def test_relative_boxes_keep_x_and_y_apart() -> None:
    """Planted bug: relative box with x and y swapped. A 200x120 frame and a box whose x,
    y, width and height all differ (a square box on a square frame hides the swap)."""
    assert relative_box((10, 30, 50, 90), 200, 120) == pytest.approx([0.05, 0.25, 0.2, 0.5])
    assert pixel_box([0.05, 0.25, 0.2, 0.5], 200, 120) == (10, 30, 50, 90)


def test_stored_boxes_and_masks_keep_x_and_y_apart(make_dataset, small_video) -> None:
    """The same swap seen where a user meets it: the stored fo.Detection of a wide, short
    object near the top-left of a 160x120 video."""
    path, _ = small_video
    info = video.probe(path)
    ds = make_dataset(path)
    mask = np.zeros((info.height, info.width), bool)
    mask[30:42, 16:96] = True  # x 16..96, y 30..42
    FrameLabelWriter(ds, "xy").write_sample(ds.first().id, iter([FrameResult(0, [
        TrackedObject(1, "bar", 0.9, mask, mask_ops.tight_box(mask))])]), info)
    [det] = ds.first().frames[1].xy.detections
    assert det.bounding_box == pytest.approx([16 / 160, 30 / 120, 80 / 160, 12 / 120])
    assert det.mask.shape == (12, 80) and det.mask.all()
