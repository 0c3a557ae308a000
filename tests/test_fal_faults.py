"""The fal backend under faults, end to end: segment_videos -> FalBackend -> real loopback
emulator (faults injected per route and call) -> real MongoDB, checked against the
synthetic videos' ground truth.

Every fault test asserts the two things a user pays for: the labels are exactly right,
and fal saw exactly one submit per planned request (one per text concept: ``R`` per
sample, ``submit_count_by_payload`` all 1).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fiftyone as fo
import numpy as np
import pytest

from sam_backend import masks as mask_ops
from sam_backend import synthetic
from sam_backend.backends.base import CancelToken
from sam_backend.backends.fal import FalBackend, FalConfig
from sam_backend.backends.fal.journal import Journal, RequestState, RunState
from sam_backend.coords import pixel_box
from sam_backend.emulator import EmulatorConfig, EmulatorServer, FaultPlan, FaultRule
from sam_backend.emulator.faults import cut_short, dropped, http_error, proxy_error, slow
from sam_backend.errors import Cancelled, InvalidRequest
from sam_backend.fiftyone_io.runs import resume, status
from sam_backend.fiftyone_io.segment import segment_videos
from sam_backend.types import FrameRange, PointPrompt

from child_process import kill_when

PROMPT = "red ball, blue box, green ball"
NAMES = ("red ball", "blue box", "green ball")
R = len(NAMES)  # fal requests per sample: one per concept (SAM 3's per-object endpoint)
Clip = tuple[Path, synthetic.GroundTruth]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Clip]:
    """Three different videos (48, 52, 56 frames, 160x120): distinct bytes, so distinct
    uploads and submit payloads, and each with its own ground truth."""
    folder = tmp_path_factory.mktemp("fal_clips")
    out = []
    for n in (48, 52, 56):
        path = folder / f"clip{n}.mp4"
        out.append((path, synthetic.write_video(synthetic.default_scene(frame_count=n, width=160, height=120), path)))
    return out


def fal_config(emu: EmulatorServer, **overrides: Any) -> FalConfig:
    """Fast polling and retries, so fault tests take seconds; real code paths otherwise."""
    base: dict[str, Any] = dict(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url,
                                poll_initial_s=0.02, poll_max_s=0.2, retry_cap_s=0.2, trim_crf=4)
    return FalConfig(**{**base, **overrides})


@pytest.fixture
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(queue_steps=1, workers=4)) as server:
        yield server


@pytest.fixture
def dataset(make_dataset, clips: list[Clip]) -> fo.Dataset:
    return make_dataset(*[p for p, _ in clips])


def truth_by_sample(ds: fo.Dataset, clips: list[Clip]) -> dict[str, synthetic.GroundTruth]:
    by_path = {str(p): t for p, t in clips}
    return {s.id: by_path[s.filepath] for s in ds.select_fields("filepath")}


def assert_labels_exact(sample: fo.Sample, field: str, truth: synthetic.GroundTruth,
                        labels: dict[str, str] | None = None, frames: range | None = None) -> None:
    """Exactly the processed frames exist; on each, one detection per visible object with
    the right label, IoU >= 0.98 against the truth and box within 1 px; one track id per
    object over the whole video."""
    labels = labels or {n: n for n in NAMES}
    scene = truth.scene
    frames = frames or range(scene.frame_count)
    assert sorted(sample.frames.keys()) == [i + 1 for i in frames]
    ids: dict[str, set[int]] = {}
    for number, frame in sample.frames.items():
        index = number - 1
        dets = frame[field].detections
        expected = [n for n in labels if truth.mask(n, index) is not None]
        assert sorted(d.label for d in dets) == sorted(labels[n] for n in expected), f"frame {number}"
        for name in expected:
            [det] = [d for d in dets if d.label == labels[name]]
            x0, y0, x1, y1 = pixel_box(det.bounding_box, scene.width, scene.height)
            full = np.zeros((scene.height, scene.width), bool)
            full[y0:y1, x0:x1] = det.mask
            gt = truth.mask(name, index)
            assert mask_ops.iou(full, gt) >= 0.98, (name, number)
            assert max(abs(a - b) for a, b in zip((x0, y0, x1, y1), mask_ops.tight_box(gt))) <= 1
            ids.setdefault(name, set()).add(det.index)
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({min(v) for v in ids.values()}) == len(ids)


def assert_one_submit_per_sample(emu: EmulatorServer, samples: int) -> None:
    """One submit per planned request: R per sample, never one more."""
    stats = emu.stats
    assert len(stats.submits) == samples * R
    assert sorted(stats.submit_count_by_payload.values()) == [1] * samples * R


def cancel_once_running(cancel: CancelToken, count: int) -> tuple[Any, set[str]]:
    """A progress callback that cancels once ``count`` requests are running at fal, and the
    ids of those it saw running."""
    running: set[str] = set()

    def on_progress(p) -> None:
        if p.backend.stage == "running":
            running.add(p.backend.request_id)
        if len(running) == count:
            cancel.cancel()

    return on_progress, running


def run_all(ds: fo.Dataset, backend: FalBackend, **kwargs: Any):
    return segment_videos(ds, prompt=PROMPT, label_field=kwargs.pop("label_field", "sam"), backend=backend, **kwargs)


def check_all(ds: fo.Dataset, clips: list[Clip], field: str = "sam") -> None:
    truths = truth_by_sample(ds, clips)
    for sample in ds:
        assert_labels_exact(sample, field, truths[sample.id])


# --------------------------------------------------------------------------- faults


FAULTS = {
    # 429 storms on submit (provably refused: resent), token, status and result, with Retry-After.
    "429_storm": FaultPlan(
        FaultRule.first("submit", 4, http_error(429, retry_after=0.05)),
        FaultRule.first("token", 2, http_error(429, retry_after=0.05)),
        FaultRule("status", http_error(429, retry_after=0.02), calls=frozenset({1, 2}), per_request=True),
        FaultRule.first("result", 3, http_error(429, retry_after=0.05)),
    ),
    # 5xx on status and result (and the proxy's own 503 page on submit: nothing forwarded, resent).
    "5xx_status_result": FaultPlan(
        FaultRule.first("submit", 1, proxy_error(503)),
        FaultRule("status", http_error(500), calls=frozenset({1}), per_request=True),
        FaultRule("status", http_error(503), calls=frozenset({2}), per_request=True),
        FaultRule("status", http_error(504), calls=frozenset({3}), per_request=True),
        FaultRule("result", http_error(502), calls=frozenset({1}), per_request=True),
        FaultRule("result", http_error(500), calls=frozenset({2}), per_request=True),
    ),
    # Connections closed without an answer: before the upload is read, after a result
    # was computed (answer lost), on status polls and downloads of stored files.
    "connection_drops": FaultPlan(
        FaultRule.first("upload", 1, dropped()),
        FaultRule("status", dropped(), calls=frozenset({1}), per_request=True),
        FaultRule("result", dropped(when="after"), calls=frozenset({1}), per_request=True),
        FaultRule.first("download", 1, dropped()),
    ),
    # Answers slower than the client's read timeout (0.3 s below): timed out, retried.
    "client_timeouts": FaultPlan(
        FaultRule("status", slow(0.8), calls=frozenset({1}), per_request=True),
        FaultRule("result", slow(0.8), calls=frozenset({1}), per_request=True),
        FaultRule.first("token", 1, slow(0.8)),
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_cost_one_submit_per_sample_and_labels_stay_exact(fault: str, emu: EmulatorServer, dataset: fo.Dataset,
                                                                   clips: list[Clip]) -> None:
    emu.set_faults(FAULTS[fault])
    with FalBackend(fal_config(emu, read_timeout_s=0.3)) as backend:
        report = run_all(dataset, backend)
        retries = backend.client.stats["retries"]
    assert report.failed == {} and len(report.done) == 3
    assert_one_submit_per_sample(emu, 3)
    assert retries >= 3  # the faults really fired and were retried
    assert report.billed_units == R * sum(t.scene.frame_count for _, t in clips)
    check_all(dataset, clips)


def test_expired_result_is_reported_and_a_rerun_resubmits_only_that_sample(emu: EmulatorServer, dataset: fo.Dataset,
                                                                           clips: list[Clip]) -> None:
    expired: list[str] = []

    def expire_first_result(call):  # fal forgot the first result before it was fetched
        if call.route == "result" and not expired:
            expired.append(call.request_id)
            emu.expire(call.request_id)
        return None

    emu.set_faults(expire_first_result)
    with FalBackend(fal_config(emu)) as backend:
        report = run_all(dataset, backend)
        [(lost_sample, message)] = report.failed.items()
        assert expired[0] in message and "no longer has this result" in message
        assert len(report.done) == 2
        # The failed video's other requests were answered (and billed): counted too.
        billed = [e.billable_units for e in backend.journal.entries() if e.billable_units is not None]
        assert len(billed) == 3 * R - 1 and report.billed_units == sum(billed) and report.reused_units is None
        [entry] = backend.journal.entries(states=[RequestState.EXPIRED])
        assert entry.request_id == expired[0] and entry.work_key.endswith(f"/{lost_sample}/sam")

        emu.set_faults(None)
        before = emu.stats.submits
        again = run_all(dataset, backend)
        new_submits = emu.stats.submits[len(before):]
    assert again.failed == {} and len(again.done) == 3
    assert len(new_submits) == 1 and new_submits[0][1] == entry.payload  # only the expired sample, same input
    assert {r.request_id for s, r in again.records.items() if s != lost_sample} == {
        r.request_id for s, r in report.records.items() if s != lost_sample}  # the others reused their results
    check_all(dataset, clips)


@pytest.mark.parametrize("cancel_status", [202, 200])  # fal documents CANCELLATION_REQUESTED and OK
def test_cancel_mid_run_cancels_every_request_and_writes_nothing(cancel_status: int, dataset: fo.Dataset,
                                                                 clips: list[Clip]) -> None:
    with EmulatorServer(EmulatorConfig(queue_steps=0, service_time_s=5.0, workers=4,
                                       cancel_ok_status=cancel_status)) as emu, \
            FalBackend(fal_config(emu)) as backend:
        cancel = CancelToken()
        on_progress, running = cancel_once_running(cancel, 3)  # 9 requests submitted, 4 at most running (emulator workers)

        started = time.monotonic()
        with pytest.raises(Cancelled):
            run_all(dataset, backend, progress=on_progress, cancel=cancel)
        assert time.monotonic() - started < 4.5  # did not wait for the 5 s jobs
        submitted = {e.request_id for e in backend.journal.entries() if e.request_id}
        assert running <= submitted and sorted(emu.stats.cancelled_requests) == sorted(submitted)
        states = {e.state for e in backend.journal.entries()}
        [run] = backend.journal.runs()
    assert states == {RequestState.CANCELLED} and run.state is RunState.CANCELLED
    assert not dataset.has_frame_field("sam") and dataset.count("frames") == 0


def test_cancel_wakes_a_wait_on_retry_after_and_still_cancels_at_fal(make_dataset, clips: list[Clip]) -> None:
    """fal answers every status call 429 with Retry-After: 30. A cancel 1 s in ends the run
    at once (the wait before the next status call ends with it) and the cancel call still
    reaches fal; before, control came back only once every retry had waited its 30 s."""
    ds = make_dataset(clips[0][0])
    with EmulatorServer(EmulatorConfig(queue_steps=0, service_time_s=5.0, workers=4)) as emu, \
            FalBackend(fal_config(emu, retry_cap_s=0.2)) as backend:
        emu.set_faults(FaultPlan(FaultRule("status", http_error(429, retry_after=30))))
        cancel = CancelToken()
        threading.Timer(1.0, cancel.cancel).start()
        started = time.monotonic()
        with pytest.raises(Cancelled, match="asked fal to stop request"):
            run_all(ds, backend, cancel=cancel)
        took = time.monotonic() - started
        submitted = {e.request_id for e in backend.journal.entries() if e.request_id}
        assert took < 6 and len(submitted) == R and sorted(emu.stats.cancelled_requests) == sorted(submitted)
        assert {e.state for e in backend.journal.entries()} == {RequestState.CANCELLED}
    assert not ds.has_frame_field("sam")


@pytest.mark.parametrize("outcome", ["ALREADY_COMPLETED", "NOT_FOUND"])
def test_cancel_answered_already_completed_or_not_found(outcome: str, make_dataset, clips: list[Clip]) -> None:
    """fal's other documented cancel outcomes (reference: fal-sam3-endpoints.md, "Cancel").
    ALREADY_COMPLETED (400): the jobs finished while the cancel was on its way (the cancel
    call is held 2 s, the jobs take 0.5 s, so the emulator itself answers 400): their results
    are paid for, so they are fetched and kept, and a rerun writes them with no new submit.
    NOT_FOUND (404): fal does not know the requests; they are marked expired and a rerun
    submits them again. Either way the cancelled run writes nothing."""
    ds = make_dataset(clips[0][0])
    # The 404 body is unconfirmed (fal's docs name the outcome NOT_FOUND, not its body); the
    # client reads any 404 on cancel as NOT_FOUND.
    action = slow(2.0) if outcome == "ALREADY_COMPLETED" else http_error(404, body={"status": "NOT_FOUND"})
    with EmulatorServer(EmulatorConfig(queue_steps=0, service_time_s=0.5, workers=4,
                                       faults=FaultPlan(FaultRule("cancel", action)))) as emu, \
            FalBackend(fal_config(emu)) as backend:
        cancel = CancelToken()
        on_progress, _ = cancel_once_running(cancel, R)

        with pytest.raises(Cancelled):
            run_all(ds, backend, progress=on_progress, cancel=cancel)
        assert not ds.has_frame_field("sam")
        entries = backend.journal.entries()
        assert emu.stats.calls_by_route.get("cancel") == R
        if outcome == "ALREADY_COMPLETED":
            assert all(e.state is RequestState.COMPLETED and e.has_result for e in entries)
            assert emu.stats.jobs_cancelled == 0
        else:
            assert {e.state for e in entries} == {RequestState.EXPIRED}
        report = run_all(ds, backend)
        submits = len(emu.stats.submits)
    assert report.failed == {} and submits == (R if outcome == "ALREADY_COMPLETED" else 2 * R)
    assert_labels_exact(ds.first(), "sam", clips[0][1])


def test_cancel_after_fetch_keeps_the_paid_result_and_a_rerun_writes_it_for_free(emu: EmulatorServer, make_dataset,
                                                                                  clips: list[Clip]) -> None:
    ds = make_dataset(clips[0][0])
    cancel = CancelToken()
    with FalBackend(fal_config(emu)) as backend:
        with pytest.raises(Cancelled):
            run_all(ds, backend, cancel=cancel, progress=lambda p: p.backend.stage == "decode" and cancel.cancel())
        assert not ds.has_frame_field("sam")
        entries = backend.journal.entries()
        assert len(entries) == R and all(e.state is RequestState.COMPLETED and e.has_result for e in entries)
        report = run_all(ds, backend)
    assert_one_submit_per_sample(emu, 1)
    assert report.failed == {} and "no new charge" in " ".join(report.records[ds.first().id].warnings)
    # Paid by the cancelled run: this one bills nothing, and says what it reused.
    paid = sum(e.billable_units for e in entries)
    assert paid == R * 48 and report.billed_units == 0 and report.reused_units == paid
    assert_labels_exact(ds.first(), "sam", clips[0][1])


def test_not_found_right_after_submit_is_polled_again_never_written_off(emu: EmulatorServer, make_dataset,
                                                                        clips: list[Clip],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A status 404 seconds after fal accepted the request cannot mean its result expired
    (kept >= 6 minutes): polled again, no second submit. When it lasts past status_outage_s
    the video fails, but its entry stays open and a rerun polls it, still without paying.
    A 404 on an old request (its result could have expired) still marks it expired."""
    import sam_backend.backends.fal.backend as fal_backend

    ds = make_dataset(clips[0][0])
    emu.set_faults(FaultPlan(FaultRule("status", http_error(404, body={"detail": "Request not found"}),
                                       calls=frozenset({1, 2}), per_request=True)))
    with FalBackend(fal_config(emu, status_outage_s=0.5)) as backend:
        assert run_all(ds, backend).failed == {} and len(emu.stats.submits) == R
        assert_labels_exact(ds.first(), "sam", clips[0][1])

        other = make_dataset(clips[1][0])
        emu.set_faults(FaultPlan(FaultRule("status", http_error(404, body={"detail": "Request not found"}))))
        [message] = run_all(other, backend).failed.values()
        assert "too soon for its result to expire" in message and "without paying" in message
        mine = f"{other.name}/"
        assert {e.state for e in backend.journal.entries(work_key_prefix=mine)} == {RequestState.SUBMITTED}
        emu.set_faults(None)
        assert run_all(other, backend).failed == {} and len(emu.stats.submits) == 2 * R

        third = make_dataset(clips[2][0])
        monkeypatch.setattr(fal_backend, "RESULT_KEPT_AT_LEAST_S", 0.0)  # as if submitted long ago
        emu.set_faults(FaultPlan(FaultRule("status", http_error(404, body={"detail": "Request not found"}))))
        [message] = run_all(third, backend).failed.values()
        assert "no longer knows request" in message
        assert RequestState.EXPIRED in {e.state for e in backend.journal.entries(work_key_prefix=f"{third.name}/")}


def test_a_result_garbled_on_the_way_is_fetched_again_not_kept(emu: EmulatorServer, make_dataset,
                                                                clips: list[Clip]) -> None:
    """A result answered 200 whose bytes are not JSON (a proxy's page, say): fetched again at
    once, labels exact. Garbled every time: the video fails, its entries stay open, and a
    rerun fetches them again (before, the garbage was kept as the result and every rerun
    failed on it without asking fal again). No request is ever submitted twice."""
    garbage = http_error(200, body="<html><body>upstream hiccup</body></html>")
    ds = make_dataset(clips[0][0])
    emu.set_faults(FaultPlan(FaultRule("result", garbage, calls=frozenset({1}), per_request=True)))
    with FalBackend(fal_config(emu)) as backend:
        assert run_all(ds, backend).failed == {} and emu.stats.calls_by_route["result"] == 2 * R
        assert_labels_exact(ds.first(), "sam", clips[0][1])

        other = make_dataset(clips[1][0])
        emu.set_faults(FaultPlan(FaultRule("result", garbage)))
        [message] = run_all(other, backend).failed.values()
        assert "not the JSON object expected" in message and "still not JSON" in message
        assert RequestState.SUBMITTED in {e.state for e in backend.journal.entries(work_key_prefix=f"{other.name}/")}
        emu.set_faults(None)
        assert run_all(other, backend).failed == {} and len(emu.stats.submits) == 2 * R
    assert_labels_exact(other.first(), "sam", clips[1][1])


def test_a_result_cut_off_mid_body_is_read_again_in_the_same_run(emu: EmulatorServer, make_dataset,
                                                                   clips: list[Clip]) -> None:
    """A result's connection breaks half-way (fal keeps big results ~6 minutes: waiting for a
    rerun could lose it). Cut once: read again at once, labels exact. Cut every time: the
    video fails naming its journal entry, which stays open; a rerun reads it, no new submit."""
    ds = make_dataset(clips[0][0])
    emu.set_faults(FaultPlan(FaultRule("result", cut_short(0.5), calls=frozenset({1}), per_request=True)))
    with FalBackend(fal_config(emu)) as backend:
        report = run_all(ds, backend)
        assert report.failed == {} and len(emu.stats.submits) == R and emu.stats.result_calls == 2 * R
        assert_labels_exact(ds.first(), "sam", clips[0][1])

        other = make_dataset(clips[1][0])
        emu.set_faults(FaultPlan(FaultRule("result", cut_short(0.3))))
        [message] = run_all(other, backend, label_field="cut").failed.values()
        assert "connection broke while reading the result" in message and "7 times" in message
        assert "a rerun reads it again without paying" in message
        assert {e.state for e in backend.journal.entries(work_key_prefix=f"{other.name}/")} == {RequestState.SUBMITTED}
        emu.set_faults(None)
        submits = len(emu.stats.submits)
        assert run_all(other, backend, label_field="cut").failed == {} and len(emu.stats.submits) == submits
    assert_labels_exact(other.first(), "cut", clips[1][1])


def test_apply_model_reruns_take_the_journaled_requests(emu: EmulatorServer, make_dataset, clips: list[Clip],
                                                       tmp_path: Path) -> None:
    """apply_model twice with the same prompt (or after a crash): the second takes fal's
    journaled results, no new submit; another threshold makes new requests."""
    from sam_backend.fiftyone_io import SamVideoModel

    ds = make_dataset(clips[0][0], clips[1][0])
    with FalBackend(fal_config(emu, journal_path=tmp_path / "journal.sqlite3")) as backend:
        for field in ("first", "again"):
            with SamVideoModel(prompt=PROMPT, backend=backend) as model:
                ds.apply_model(model, label_field=field)
            assert len(emu.stats.submits) == 2 * R
        with SamVideoModel(prompt=PROMPT, detection_threshold=0.6, backend=backend) as model:
            ds.apply_model(model, label_field="other")
        assert len(emu.stats.submits) == 4 * R
        assert {e.state for e in backend.journal.entries()} == {RequestState.WRITTEN}
    truths = truth_by_sample(ds, clips)
    for sample in ds:
        assert_labels_exact(sample, "again", truths[sample.id])


@pytest.mark.parametrize("lost", ["dropped", "proxy_504", "proxy_502"])
def test_lost_submit_answer_is_never_resent_without_consent(lost: str, emu: EmulatorServer, make_dataset,
                                                            clips: list[Clip]) -> None:
    ds = make_dataset(clips[0][0])
    # Accepted, then its answer lost: the connection closed, or the gateway in front of fal
    # gave up waiting (its own 504 / 502 page, no request id) after forwarding it.
    answer = {"dropped": dropped(when="after"), "proxy_504": proxy_error(504, when="after"),
              "proxy_502": proxy_error(502, when="after")}[lost]
    emu.set_faults(FaultPlan(FaultRule.first("submit", 1, answer)))
    with FalBackend(fal_config(emu)) as backend:
        first = run_all(ds, backend)
        [message] = first.failed.values()
        [uncertain] = backend.journal.entries(states=[RequestState.UNCERTAIN])
        assert f"journal entry #{uncertain.id}" in message and "not resent" in message
        second = run_all(ds, backend)  # a plain rerun must not resend it, nor the 2 other requests
        assert f"journal entry #{uncertain.id}" in next(iter(second.failed.values()))
        assert len(emu.stats.submits) == R
        pending = status(backend=backend)
        assert [e.state for e in pending.open_requests] == [RequestState.UNCERTAIN]
        report = resume(ds, backend=backend, resubmit_uncertain=True)  # the user accepts the risk
    assert report.failed == {} and len(emu.stats.submits) == R + 1  # only the uncertain one again
    assert_labels_exact(ds.first(), "sam", clips[0][1])


# --------------------------------------------------------------------------- SIGKILL + resume


CHILD = textwrap.dedent("""
    import sys
    import fiftyone as fo
    from sam_backend.backends.fal import FalBackend, FalConfig
    from sam_backend.fiftyone_io.segment import segment_videos

    name, key, base, journal = sys.argv[1:5]
    config = FalConfig(key=key, queue_url=base + "/queue", rest_url=base + "/rest", cdn_url=base + "/cdn",
                       journal_path=journal, poll_initial_s=0.02, poll_max_s=0.2)
    with FalBackend(config) as backend:
        report = segment_videos(fo.load_dataset(name), prompt=sys.argv[5], label_field="sam", backend=backend,
                                concurrency=2)
    print("finished", report.failed or "")
    raise SystemExit(1 if report.failed else 0)
""")


def test_sigkill_mid_run_then_resume_pays_once_and_labels_everything(make_dataset, clips: list[Clip], tmp_path: Path) -> None:
    """A child process runs 5 samples, 2 at a time; it is SIGKILLed once 2 samples are
    written and 2 are in flight at fal. resume() then polls those 2 (never submits them
    again), submits only the never-submitted 5th, and labels everything exactly."""
    paths = [clips[i % 3][0] for i in range(5)]
    ds = make_dataset(*paths, persistent=True)
    journal_path = tmp_path / "journal.sqlite3"
    # Each request stays IN_PROGRESS for 3 s with a worker for every in-flight request: the
    # kill point (all 6 requests of samples 3 and 4 submitted, none answered) then lasts
    # long enough for this loop to see it on a loaded machine (1 s missed it under CI).
    with EmulatorServer(EmulatorConfig(queue_steps=0, service_time_s=3.0, workers=6)) as emu:
        def at_kill_point() -> bool:
            if not journal_path.exists():
                return False
            with Journal(journal_path) as journal:
                states = [e.state for e in journal.entries()]
            # 2 written, the 2 workers each waiting on a submitted request (the 5th sample
            # waits for a free worker): no submit is in flight, which would leave an entry
            # that may or may not exist at fal.
            return (states.count(RequestState.WRITTEN) == 2 * R and states.count(RequestState.SUBMITTED) == 2 * R
                    and RequestState.SUBMITTING not in states)

        kill_when(CHILD, ds.name, emu.key, emu.base_url, str(journal_path), PROMPT, ready=at_kill_point, timeout_s=90)
        assert len(emu.stats.submits) == 4 * R  # 2 written, 2 in flight, 1 never submitted
        with Journal(journal_path) as journal:
            [run] = journal.runs()
            assert run.state is RunState.RUNNING and run.counts()["done"] >= 2

        with FalBackend(fal_config(emu, journal_path=journal_path)) as backend:
            shown = str(status(ds.name, backend=backend))
            assert run.run_id in shown and "submitted" in shown
            report = resume(ds.name, backend=backend)
        assert report.run_id == run.run_id and report.failed == {}
        assert len(report.done) == 5 - run.counts()["done"]
        # Zero duplicate submits: R per sample, and per video R x the samples showing it
        # (samples 0/3 and 1/4 share a video, so their payloads are identical).
        submits = emu.stats.submits
        assert len(submits) == 5 * R
        per_video = Counter(emu.stored_file(p["video_url"]).sha256() for _, p in submits)
        assert per_video == Counter({k: R * n for k, n in Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths).items()})
        with Journal(journal_path) as journal:
            assert journal.run(run.run_id).state is RunState.DONE
            assert {e.state for e in journal.entries()} == {RequestState.WRITTEN}
    by_path = {str(p): t for p, t in clips}
    for sample in ds:
        assert_labels_exact(sample, "sam", by_path[sample.filepath])
    # the field's run info keeps what the killed process wrote and adds what resume wrote
    info = ds.get_field("frames.sam").info["sam31_video"]
    assert info["run_id"] == run.run_id and sorted(info["request_ids"]) == sorted(ds.values("id"))
    assert sum(info["billable_units"].values()) == R * sum(by_path[p].scene.frame_count for p in ds.values("filepath"))


@pytest.mark.parametrize("newer_run", ["same_journal", "another_journal"])
def test_resume_leaves_out_videos_a_newer_run_labelled(newer_run: str, make_dataset, clips: list[Clip],
                                                       tmp_path: Path) -> None:
    """Run A (the wrong prompt) is cancelled; run B (the right prompt) labels video 1. A later
    resume of A finishes only video 2: video 1 keeps B's labels and no request is paid for it
    again; asked for A again, resume refuses naming B. B's run is known from the shared
    journal, or (another journal, e.g. another machine) from the field's per-video record."""
    ds = make_dataset(clips[0][0], clips[1][0])
    first, second = ds.values("id")
    journal_a = tmp_path / "a.sqlite3"
    journal_b = journal_a if newer_run == "same_journal" else tmp_path / "b.sqlite3"
    with EmulatorServer(EmulatorConfig(queue_steps=0, service_time_s=1.0, workers=6)) as emu:
        with FalBackend(fal_config(emu, journal_path=journal_a)) as backend:
            cancel = CancelToken()
            on_progress, _ = cancel_once_running(cancel, 1)
            with pytest.raises(Cancelled):
                segment_videos(ds, prompt="green ball", label_field="sam", backend=backend, concurrency=1,
                               progress=on_progress, cancel=cancel)
            [run_a] = backend.journal.runs()
        with FalBackend(fal_config(emu, journal_path=journal_b)) as backend:
            run_b = segment_videos(ds.select(first), prompt="red ball", label_field="sam", backend=backend)
        assert run_b.failed == {} and ds.distinct("frames.sam.detections.label") == ["red ball"]
        before = len(emu.stats.submits)
        with FalBackend(fal_config(emu, journal_path=journal_a)) as backend:
            report = resume(ds.name, backend=backend)
            assert report.run_id == run_a.run_id and report.done == [second] and report.failed == {}
            [warning] = [w for w in report.warnings if "left out" in w]
            assert f"(run {run_b.run_id})" in warning and run_a.run_id in warning
            assert len(emu.stats.submits) == before + 1  # "green ball" on video 2 only
            with pytest.raises(InvalidRequest, match=f"nothing to resume: every unfinished video of run {run_a.run_id}"):
                resume(ds.name, run_id=run_a.run_id, backend=backend)
        assert len(emu.stats.submits) == before + 1
    labels = {sid: set(ds.select(sid).distinct("frames.sam.detections.label")) for sid in (first, second)}
    assert labels == {first: {"red ball"}, second: {"green ball"}}


def test_two_processes_segmenting_the_same_field_pay_once(make_dataset, clips: list[Clip], tmp_path: Path) -> None:
    """Two real processes, one journal, the same videos and field, started together: each
    request is claimed in the journal atomically, the second process follows the first's
    requests instead of submitting them again, and both finish with exact labels."""
    ds = make_dataset(*[p for p, _ in clips], persistent=True)
    journal_path = tmp_path / "journal.sqlite3"
    # Slow uploads keep both processes between "nothing journaled yet" and their submits
    # at the same time: the race the journal's claim has to settle.
    slow_uploads = FaultPlan(FaultRule("upload", slow(4.0)))
    with EmulatorServer(EmulatorConfig(service_time_s=1.0, workers=16, faults=slow_uploads)) as emu:
        args = [sys.executable, "-c", CHILD, ds.name, emu.key, emu.base_url, str(journal_path), PROMPT]
        children = [subprocess.Popen(args, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                    for _ in range(2)]
        outputs = [child.communicate(timeout=240) for child in children]
        assert [child.returncode for child in children] == [0, 0], outputs
        assert emu.stats.uploads > len(clips)  # both processes were in the window (each uploaded)
        assert len(emu.stats.submits) == len(clips) * R  # one submit per request, whichever process sent it
        assert sorted(emu.stats.submit_count_by_payload.values()) == [1] * len(clips) * R
    check_all(ds, clips)


# --------------------------------------------------------------------------- features


def test_frame_range_sends_only_those_frames_and_maps_indices_back(emu: EmulatorServer, make_dataset, clips: list[Clip]) -> None:
    path, truth = clips[1]  # 52 frames
    ds = make_dataset(path)
    frames = FrameRange(start=6, stop=40, step=2)  # 17 frames: 2 blocks of 16
    blue_at_10 = truth.mask("blue box", 10)
    ys, xs = np.nonzero(blue_at_10)
    point = PointPrompt(x=int(xs[len(xs) // 2]), y=int(ys[len(ys) // 2]), label=1, object_id=7, frame_index=10)
    with FalBackend(fal_config(emu)) as backend:
        report = segment_videos(ds, prompt="red ball", point_prompts=[point], label_field="sam", backend=backend, frames=frames)
    assert report.failed == {}
    assert report.estimated_usd == pytest.approx(2 * 0.01 + 2 * 0.005)  # the point on SAM 3.1, the text on SAM 3
    [payload] = [p for app, p in emu.stats.submits if app == "fal-ai/sam-3-1/video-rle"]
    assert payload["point_prompts"][0]["frame_index"] == 2  # frame 10 is the 3rd frame sent
    assert len(emu.stats.submits) == 2 and report.billed_units == 2 * 17
    sample = ds.first()
    assert_labels_exact(sample, "sam", truth, {"red ball": "red ball", "blue box": "object_7"},
                        frames=frames.indices(truth.scene.frame_count))
    assert {d.index for f in sample.frames.values() for d in f["sam"].detections if d.label == "object_7"} == {7}
    assert ds.get_field("frames.sam").info["sam31_video"]["frames"] == {"start": 6, "stop": 40, "step": 2}


def test_endpoint_fallback_is_recorded_with_model_and_warning(make_dataset, clips: list[Clip]) -> None:
    ds = make_dataset(clips[0][0], clips[1][0])
    with EmulatorServer(EmulatorConfig(unavailable_apps=frozenset({"fal-ai/sam-3-1/video-rle"}))) as emu, \
            FalBackend(fal_config(emu, text_mode="union")) as backend:
        report = run_all(ds, backend)
        assert report.failed == {}
        assert {app for app, _ in emu.stats.submits} == {"fal-ai/sam-3/video-rle"}
        assert all(body["return_rle"] is True for _, body in emu.stats.submits)  # built for the fallback
        assert emu.stats.calls_by_route["submit"] == 1 + 2 * R  # the missing app was asked once, not per request
    info = ds.get_field("frames.sam").info["sam31_video"]
    assert info["endpoint"] == "fal-ai/sam-3/video-rle" and info["model"] == "sam3"
    assert any("fal has no endpoint fal-ai/sam-3-1/video-rle" in w for w in info["warnings"])
    assert report.estimated_usd == pytest.approx(R * (0.03 + 0.04))  # estimated before the run, at SAM 3.1's price
    check_all(ds, clips)


@pytest.mark.parametrize("where", ["submit", "result"])
def test_missing_objects_endpoint_falls_back_without_paying_twice(where: str, make_dataset, clips: list[Clip]) -> None:
    """A preferred SAM 3.1 objects endpoint (unconfirmed at fal) that does not exist: fal
    may say so at submit or only at the result; either way each request falls back to SAM
    3's, once, and the missing one is never read as an expired result."""
    ds = make_dataset(clips[0][0])
    with EmulatorServer(EmulatorConfig(missing_app_at=where)) as emu, \
            FalBackend(fal_config(emu, preferred_objects_endpoint="fal-ai/sam-3-1/video-rle-objects")) as backend:
        report = run_all(ds, backend)
        apps = Counter(app for app, _ in emu.stats.submits)
        states = Counter((e.endpoint, e.state) for e in backend.journal.entries())
    assert report.failed == {}
    missing = "fal-ai/sam-3-1/video-rle-objects"
    if where == "submit":  # refused at once: asked once, then every request goes to the fallback
        assert emu.stats.calls_by_route["submit"] == 1 + R and apps == {"fal-ai/sam-3/video-rle-objects": R}
    else:  # accepted (not billed), then "not found" at the result: each request moves on once
        assert apps[missing] >= 1 and apps["fal-ai/sam-3/video-rle-objects"] == R
        assert states[(missing, RequestState.REJECTED)] == apps[missing]
        assert not any(s is RequestState.EXPIRED for _, s in states)
    assert states[("fal-ai/sam-3/video-rle-objects", RequestState.WRITTEN)] == R
    info = ds.get_field("frames.sam").info["sam31_video"]
    assert any(f"fal has no endpoint {missing}" in w for w in info["warnings"])
    check_all(ds, clips[:1])


def test_video_only_endpoint_stores_the_rendered_media_and_explains(emu: EmulatorServer, make_dataset, clips: list[Clip]) -> None:
    ds = make_dataset(clips[0][0])
    with FalBackend(fal_config(emu, endpoint="fal-ai/sam-3-1/video")) as backend:
        report = run_all(ds, backend)
    [message] = report.failed.values()
    assert "labels need an RLE endpoint" in message and "fal-ai/sam-3-1/video-rle" in message
    outputs = ds.first()["sam_outputs"]
    assert outputs == report.outputs[ds.first().id] and set(outputs) == {"video", "boundingbox_frames_zip"}
    assert emu.stored_file(outputs["video"]).content_type == "video/mp4"
    assert not ds.has_frame_field("sam")


def test_render_video_keeps_the_overlay_next_to_the_labels_only_when_asked(emu: EmulatorServer, make_dataset,
                                                                             clips: list[Clip]) -> None:
    ds = make_dataset(clips[0][0])
    with FalBackend(fal_config(emu, text_mode="union")) as backend:  # SAM 3.1's RLE endpoint can draw the overlay
        run_all(ds, backend, label_field="plain")
    with FalBackend(fal_config(emu, text_mode="union", render_overlay=True)) as backend:
        report = run_all(ds, backend, label_field="rendered", render_video=True)
    assert not any("render_video" in w for w in report.warnings)
    with FalBackend(fal_config(emu, render_overlay=True)) as backend:  # per instance: SAM 3 renders nothing
        report = run_all(ds, backend, label_field="instances", render_video=True)
    assert any("objects endpoint, which renders nothing" in w for w in report.warnings)
    assert not ds.has_sample_field("instances_outputs")
    sample = ds.first()
    assert not ds.has_sample_field("plain_outputs")
    outputs = sample["rendered_outputs"]
    assert emu.stored_file(outputs["video"]).content_type == "video/mp4"
    check_all(ds, clips[:1], field="rendered")  # the labels are written as well, not instead


def test_uploads_are_reused_across_runs_and_public_urls_never_uploaded(emu: EmulatorServer, make_dataset, clips: list[Clip],
                                                                       tmp_path: Path) -> None:
    path, truth = clips[0]
    ds = make_dataset(path)
    journal = tmp_path / "journal.sqlite3"
    with FalBackend(fal_config(emu, journal_path=journal)) as backend:
        run_all(ds, backend, label_field="a")
    with FalBackend(fal_config(emu, journal_path=journal)) as backend:  # a later process, same journal
        run_all(ds, backend, label_field="b")
    assert emu.stats.uploads == 1 and len(emu.stats.submits) == 2 * R
    urls = {body["video_url"] for _, body in emu.stats.submits}
    [url] = urls  # every request of both runs read the one upload
    assert emu.stored_file(url).lifecycle == {"expiration_duration_seconds": 3600}  # short life on a public CDN

    emu.expire_file(url)  # fal deleted it: the next run uploads again
    with FalBackend(fal_config(emu, journal_path=journal)) as backend:
        run_all(ds, backend, label_field="c")
    assert emu.stats.uploads == 2

    fresh = emu.stats.submits[-1][1]["video_url"]  # a public URL the user already has
    ds.set_values("public_url", [fresh])
    with FalBackend(fal_config(emu)) as backend:
        report = segment_videos(ds, prompt=PROMPT, label_field="d", backend=backend, url_field="public_url")
    assert report.failed == {} and emu.stats.uploads == 2  # the sample's own URL was used
    assert emu.stats.submits[-1][1]["video_url"] == fresh
    assert_labels_exact(ds.first(), "d", truth)


def test_concurrency_overlaps_requests_and_reports_progress_counts(make_dataset, clips: list[Clip]) -> None:
    ds = make_dataset(*[clips[i % 3][0] for i in range(6)])
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def on_progress(p) -> None:
        with lock:
            seen.append((p.done, p.failed))

    with EmulatorServer(EmulatorConfig(queue_steps=0, service_time_s=0.5, workers=8)) as emu, \
            FalBackend(fal_config(emu, max_concurrent_requests=5)) as backend:
        report = run_all(ds, backend, concurrency=3, progress=on_progress)
        stats = emu.stats
    assert report.failed == {} and report.done == list(ds.values("id"))  # reported in sample order
    # 3 videos x 3 requests want to run at once; the backend-wide bound lets 5 through, never more
    assert stats.max_running == 5
    assert max(d for d, _ in seen) >= 4 and all(f == 0 for _, f in seen)


def test_a_request_cancelled_on_fals_side_fails_only_its_sample(make_dataset, clips: list[Clip]) -> None:
    ds = make_dataset(clips[0][0], clips[1][0])
    first = ds.first().id
    with EmulatorServer(EmulatorConfig(queue_steps=0, service_time_s=1.0)) as emu, FalBackend(fal_config(emu)) as backend:
        cancelled: list[str] = []

        def on_progress(p) -> None:
            if p.sample_id == first and p.backend.stage == "running" and not cancelled:
                cancelled.append(p.backend.request_id)
                emu.cancel_job(p.backend.request_id)

        report = run_all(ds, backend, progress=on_progress)
        [entry] = [e for e in backend.journal.entries() if e.request_id == cancelled[0]]
    assert list(report.failed) == [first] and "fal cancelled the request" in report.failed[first]
    assert report.done == [ds.last().id] and entry.state is RequestState.CANCELLED
    assert_labels_exact(ds.last(), "sam", clips[1][1])


def test_a_stuck_job_is_cancelled_at_its_deadline_and_fails_only_its_video(make_dataset, clips: list[Clip]) -> None:
    ds = make_dataset(clips[0][0])
    with EmulatorServer(EmulatorConfig(service_time_s=30.0)) as emu, \
            FalBackend(fal_config(emu, job_timeout_s=1.0)) as backend:
        started = time.monotonic()
        report = segment_videos(ds, prompt="red ball", label_field="sam", backend=backend)
        took = time.monotonic() - started
        [entry] = backend.journal.entries()
        cancelled = emu.stats.cancelled_requests
    [message] = report.failed.values()
    assert "did not finish within job_timeout_s=1 s" in message and entry.request_id in message
    assert took < 10 and cancelled == [entry.request_id] and entry.state is RequestState.CANCELLED
    assert not ds.has_frame_field("sam")


def test_non_ascii_file_names_are_uploaded_and_labelled(emu: EmulatorServer, make_dataset, clips: list[Clip],
                                                        tmp_path: Path) -> None:
    path = tmp_path / "vidéo 東京.mp4"
    path.write_bytes(clips[0][0].read_bytes())
    ds = make_dataset(path)
    with FalBackend(fal_config(emu)) as backend:
        report = segment_videos(ds, prompt=PROMPT, label_field="sam", backend=backend)
    assert report.failed == {}
    [url] = {body["video_url"] for _, body in emu.stats.submits}
    assert url.rsplit("/", 1)[1].startswith("video")  # accents folded, other non-ASCII replaced: headers carry ASCII
    check_all(ds, [(path, clips[0][1])])


def test_an_unexpected_error_fails_one_video_and_the_run_goes_on(make_dataset, clips: list[Clip]) -> None:
    """An error that is not one of ours (here: an id too large for the database, as a
    hostile backend might send) fails that video only; the others are written."""
    from sam_backend.types import FrameResult, TrackedObject

    class HugeIds(FalBackend):
        def segment(self, video, request, **kwargs):
            run = super().segment(video, request, **kwargs)
            if video.path == clips[0][0]:
                inner = run._frames
                run._frames = (FrameResult(f.frame_index, [TrackedObject(2**70, o.label, o.score, o.mask, o.box)
                                                           for o in f.objects]) for f in inner)
            return run

    ds = make_dataset(clips[0][0], clips[1][0])
    with EmulatorServer() as emu, HugeIds(fal_config(emu)) as backend:
        report = segment_videos(ds, prompt="red ball", label_field="sam", backend=backend)
    first, second = ds.values("id")
    assert list(report.failed) == [first] and "unexpected error (OverflowError)" in report.failed[first]
    assert report.done == [second]
    assert ds.count("frames.sam") == clips[1][1].scene.frame_count


CTRL_C_CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import fiftyone as fo
    from sam_backend.backends.emulator import BACKEND
    from sam_backend.fiftyone_io import segment_videos

    name, marker, how = sys.argv[1:4]
    backend = BACKEND({"queue_steps": 0, "service_time_s": 20.0, "workers": 8})
    started, outcome = time.monotonic(), "finished"
    try:
        if how == "segment_videos":
            def progress(p):
                if p.backend.stage == "running":
                    Path(marker).touch()

            segment_videos(fo.load_dataset(name), prompt="red ball, blue box", label_field="sam", backend=backend,
                           progress=progress)
        else:  # apply_model: FiftyOne's loop calls the backend on this (the main) thread
            from sam_backend.fiftyone_io import SamVideoModel

            segment = backend.segment

            def segment_and_mark(*args, **kwargs):
                Path(marker).touch()  # submitted at once; the emulator holds each job 20 s
                return segment(*args, **kwargs)

            backend.segment = segment_and_mark
            with SamVideoModel(prompt="red ball, blue box", backend=backend) as model:
                fo.load_dataset(name).apply_model(model, label_field="sam")
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    stats = backend.server.stats
    print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - started,
                      "submitted": len(stats.submits), "cancelled": sorted(stats.cancelled_requests)}))
    backend.close()
""")


@pytest.mark.parametrize("how", ["segment_videos", "apply_model"])
def test_ctrl_c_in_a_script_cancels_the_requests_in_flight_and_writes_nothing(how: str, make_dataset, clips: list[Clip],
                                                                             tmp_path: Path) -> None:
    """SDK users (scripts, notebooks) get no SIGINT handler of ours: a KeyboardInterrupt
    must cancel the requests at fal like the CLI's Ctrl-C, not wait for every video to be
    answered (paid) and written, and then still be raised."""
    import json
    import signal

    ds = make_dataset(*(path for path, _ in clips), persistent=True)
    marker = tmp_path / "running"
    child = subprocess.Popen([sys.executable, "-c", CTRL_C_CHILD, ds.name, str(marker), how], env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no request ever ran"
            time.sleep(0.05)
        time.sleep(1.0)  # the requests are submitted and running at the emulator
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["outcome"] == "KeyboardInterrupt", err[-2000:]
    assert result["seconds"] < 15  # the 20 s jobs were not waited for
    assert result["submitted"] > 0 and len(result["cancelled"]) == result["submitted"]
    ds.reload()
    assert not ds.has_frame_field("sam") and ds.count("frames") == 0


def test_an_emulator_journal_outlives_its_emulator(make_dataset, clips: list[Clip], tmp_path: Path) -> None:
    """With journal_path, requests an emulator accepted stay 'submitted' when it stops (its
    process killed). The next run's emulator listens on another port: it sends them again
    (the emulator charges nothing) instead of polling a dead port until the outage limit,
    run after run."""
    from sam_backend.backends.emulator import BACKEND

    ds = make_dataset(clips[0][0])
    journal = tmp_path / "journal.sqlite3"
    first = BACKEND({"queue_steps": 0, "service_time_s": 60.0}, journal_path=journal, status_outage_s=0.5,
                    max_retries=1, poll_initial_s=0.05)
    done = threading.Event()

    def run_first() -> None:
        try:
            segment_videos(ds, prompt="red ball", label_field="sam", backend=first)
        finally:
            done.set()

    worker = threading.Thread(target=run_first)
    worker.start()
    deadline = time.monotonic() + 30
    while not first.server.stats.submits:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.server.stop()  # the process that held it is gone
    assert done.wait(60)
    worker.join()
    first.close()
    with Journal(journal) as j:
        assert [e.state for e in j.entries()] == [RequestState.SUBMITTED]
    second = BACKEND({"queue_steps": 0}, journal_path=journal, status_outage_s=60.0)
    try:
        started = time.monotonic()
        report = segment_videos(ds, prompt="red ball", label_field="sam", backend=second)
        assert time.monotonic() - started < 20 and report.failed == {} and len(second.server.stats.submits) == 1
    finally:
        second.close()
    assert ds.count("frames.sam.detections") > 0
    with Journal(journal) as j:
        states = sorted(e.state.value for e in j.entries())
    assert states == sorted([RequestState.EXPIRED.value, RequestState.WRITTEN.value])
