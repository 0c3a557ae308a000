"""An interrupted fal run (journal on disk) shows up in the segmentation_runs operator and
is resumed from it: every video labelled, no payload submitted twice."""

from __future__ import annotations

from collections.abc import Iterator

import fiftyone.operators as foo
import pytest

from sam_backend.backends.base import CancelToken
from sam_backend.emulator import EmulatorConfig, EmulatorServer
from sam_backend.errors import Cancelled
from sam_backend.fiftyone_io import segment_videos, status


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """Jobs held in the queue for 3 status polls (a test knob): the cancel below always
    reaches a queued job, not one that the toy model already finished."""
    with EmulatorServer(EmulatorConfig(queue_steps=3)) as server:
        yield server


def test_resume_an_interrupted_run_from_the_operator(make_dataset, small_video, scene_video, emulator, tmp_path,
                                                     monkeypatch) -> None:
    ds = make_dataset(small_video[0], scene_video[0], persistent=True)
    start = len(emulator.stats.submits)
    journal = tmp_path / "journal.sqlite3"
    options = {"queue_url": emulator.queue_url, "rest_url": emulator.rest_url, "cdn_url": emulator.cdn_url,
               "journal_path": str(journal), "poll_initial_s": 0.05}
    cancel = CancelToken()

    def stop_on_first_queue(p) -> None:
        if p.backend.stage == "queued":
            cancel.cancel()

    with pytest.raises(Cancelled):
        segment_videos(ds, prompt="red ball", label_field="sam", backend="fal", backend_options=options,
                       secrets={"FAL_KEY": emulator.key}, progress=stop_on_first_queue, cancel=cancel, concurrency=1)
    assert not ds.has_frame_field("sam")
    found = status(ds, journal_path=journal)
    assert found.runs and found.runs[0].state.value == "cancelled"

    monkeypatch.setenv("FAL_KEY", emulator.key)  # the operator reads it as its secret
    foo.get_operator("@sam31/video/segmentation_runs")(ds.view(), found.runs[0].run_id, journal_path=str(journal))
    ds.reload()
    for sample in ds:
        assert {d.label for f in sample.frames.values() for d in f["sam"].detections} == {"red ball"}, sample.filepath
    assert status(ds, journal_path=journal).runs[0].state.value == "done"
    # the first video was submitted, then cancelled at fal before it ran: submitted again on
    # resume; the second was never submitted before: once. Nothing else was sent.
    by_video: dict[str, int] = {}
    for _, payload in emulator.stats.submits[start:]:
        by_video[payload["video_url"]] = by_video.get(payload["video_url"], 0) + 1
    assert sorted(by_video.values()) == [1, 2]
    assert emulator.stats.cancel_calls >= 1
