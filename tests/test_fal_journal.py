"""The request journal (stdlib sqlite3): states, stored results, upload cache, runs,
webhook dedupe, persistence across processes and threads; and the backend's decisions
from it (poll, reuse, or refuse to resend an uncertain submit)."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from sam_backend.backends.base import VideoSource
from sam_backend.backends.fal import FalBackend, FalConfig
from sam_backend.backends.fal.client import RequestHandle, SubmitUncertain
from sam_backend.backends.fal.journal import Journal, RequestState, RunState, SampleState
from sam_backend.types import SegmentRequest, VideoInfo

HANDLE = RequestHandle("fal-ai/sam-3-1/video-rle", "r1", "https://q/s", "https://q/r", "https://q/c")


def test_request_lifecycle_and_stored_result(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with Journal(path) as journal:
        entry = journal.begin(work_key="ds/s1/sam", request_hash="h", endpoint=HANDLE.endpoint,
                              payload={"video_url": "u", "prompt": "red"}, webhook_url="https://hook", frame_indices=[2, 4])
        assert entry.state is RequestState.SUBMITTING and entry.request_id is None
        with pytest.raises(ValueError, match="no request id yet"):
            entry.handle()
        entry = journal.submitted(entry.id, HANDLE)
        assert entry.state is RequestState.SUBMITTED and entry.handle() == HANDLE
        result = {"payload": {"frames": [{"frame_index": 0, "masks": []}] * 500}, "attachments": {}}
        entry = journal.completed(entry.id, result, 96.0)
        assert entry.has_result and entry.billable_units == 96.0
    # a new process sees everything, the result byte for byte
    with Journal(path) as journal:
        again = journal.latest("ds/s1/sam", "h")
        assert again is not None and again.id == entry.id and again.state is RequestState.COMPLETED
        assert again.webhook_url == "https://hook" and again.frame_indices == [2, 4]
        assert journal.result(again.id) == result
        journal.written(again.id)
        assert journal.get(again.id).state is RequestState.WRITTEN
        assert "journal entry #1 (ds/s1/sam" in again.describe() and "fal request r1" in again.describe()


def test_old_written_results_are_pruned(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        old = journal.begin(work_key="ds/a/sam", request_hash="h", endpoint="e", payload={})
        journal.completed(old.id, {"payload": {}}, 1)
        kept = journal.begin(work_key="ds/b/sam", request_hash="h", endpoint="e", payload={})
        journal.completed(kept.id, {"payload": {}}, 1)  # completed, not yet written: never pruned
        journal.written(old.id)
        assert journal.prune(now=time.time() + 31 * 24 * 3600) == 1
        assert not journal.get(old.id).has_result and journal.get(old.id).state is RequestState.WRITTEN
        assert journal.get(kept.id).has_result


def test_reopening_keeps_stored_results_until_their_retention_ends(tmp_path: Path) -> None:
    """Opening a journal prunes only results older than the retention (30 days): a result
    written a minute ago, or 29 days ago, is still there after reopening (a rerun of that
    job then costs nothing); one 31 days old is dropped, its row kept."""
    path = tmp_path / "j.sqlite3"
    result = {"payload": {"frames": [{"frame_index": 3, "objects": [{"track_id": 7, "rle": "5 2"}]}]}, "attachments": {}}
    with Journal(path) as journal:
        ids = []
        for key in ("fresh", "old", "ancient"):
            entry = journal.begin(work_key=f"ds/{key}/sam", request_hash="h", endpoint="e", payload={})
            journal.completed(entry.id, result, 2.0)
            journal.written(entry.id)
            ids.append(entry.id)
        now = time.time()
        journal._execute("UPDATE requests SET updated_at = ? WHERE id = ?", (now - 29 * 24 * 3600, ids[1]))
        journal._execute("UPDATE requests SET updated_at = ? WHERE id = ?", (now - 31 * 24 * 3600, ids[2]))
    with Journal(path) as journal:
        fresh, old, ancient = (journal.get(i) for i in ids)
        assert fresh.has_result and journal.result(fresh.id) == result
        assert old.has_result and journal.result(old.id) == result
        assert not ancient.has_result and ancient.state is RequestState.WRITTEN and ancient.billable_units == 2.0


def test_latest_attempt_wins_and_filters(tmp_path: Path) -> None:
    with Journal(None) as journal:
        a = journal.begin(work_key="ds/s1/sam", request_hash="h", endpoint="e", payload={})
        journal.mark(a.id, RequestState.EXPIRED, "gone")
        b = journal.begin(work_key="ds/s1/sam", request_hash="h", endpoint="e", payload={})
        journal.begin(work_key="ds/s1/sam", request_hash="other", endpoint="e", payload={})
        journal.begin(work_key="other/s9/sam", request_hash="h", endpoint="e", payload={})
        assert journal.latest("ds/s1/sam", "h").id == b.id
        assert [e.id for e in journal.entries(states=[RequestState.EXPIRED])] == [a.id]
        assert len(journal.entries(work_key_prefix="ds/")) == 3
        assert len(journal.entries(work_keys=["other/s9/sam"])) == 1
        with pytest.raises(ValueError, match="not uncertain"):
            journal.release(a.id)
        journal.mark(b.id, RequestState.UNCERTAIN, "lost answer")
        assert journal.release(b.id).state is RequestState.ABANDONED


def test_upload_cache_honours_expiry_and_size() -> None:
    with Journal(None) as journal:
        now = time.time()
        journal.record_upload("abc", 10, "https://cdn/x.mp4", expires_at=now + 60)
        assert journal.cached_upload("abc", 10) == "https://cdn/x.mp4"
        assert journal.cached_upload("abc", 11) is None  # same hash, other size: not trusted
        assert journal.cached_upload("abc", 10, now=now + 61) is None
        journal.forget_upload("abc")
        assert journal.cached_upload("abc", 10) is None


def test_runs_and_sample_states() -> None:
    with Journal(None) as journal:
        run_id = journal.begin_run(dataset="ds", label_field="sam", sample_ids=["a", "b", "c"], spec={"options": {"prompt": "x"}})
        journal.set_sample_state(run_id, "b", SampleState.DONE)
        journal.set_sample_state(run_id, "c", SampleState.FAILED, "boom")
        run = journal.run(run_id)
        assert run.state is RunState.RUNNING and run.spec == {"options": {"prompt": "x"}}
        assert run.pending() == ["a", "c"] and run.errors == {"c": "boom"}
        assert run.counts() == {"pending": 1, "done": 1, "failed": 1}
        journal.set_run_state(run_id, RunState.FAILED)
        other = journal.begin_run(dataset="other", label_field="sam", sample_ids=[], spec={})
        assert [r.run_id for r in journal.runs(dataset="ds")] == [run_id]
        assert [r.run_id for r in journal.runs(states=[RunState.RUNNING])] == [other]
        with pytest.raises(KeyError, match="no run"):
            journal.run("nope")


def test_webhook_dedupe_survives_reopen(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        assert journal.first_delivery("r1") is True
        assert journal.first_delivery("r1") is False
    with Journal(tmp_path / "j.sqlite3") as journal:
        assert journal.first_delivery("r1") is False and journal.first_delivery("r2") is True


def test_many_threads_one_journal(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for k in range(20):
                    e = journal.begin(work_key=f"ds/{i}/sam", request_hash=str(k), endpoint="e", payload={"k": k})
                    journal.submitted(e.id, RequestHandle("e", f"{i}-{k}", "s", "r", "c"))
                    journal.completed(e.id, {"payload": {"i": i, "k": k}}, k)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        entries = journal.entries(states=[RequestState.COMPLETED])
        assert len(entries) == 160 and len({e.request_id for e in entries}) == 160
        assert journal.result(entries[-1].id)["payload"]["k"] == 19


# --------------------------------------------------------------------------- backend decisions


def _backend(handler, journal: Journal) -> FalBackend:
    config = FalConfig(key="k:s", queue_url="https://queue.test", rest_url="https://rest.test", cdn_url="https://cdn.test",
                       poll_initial_s=0.0, poll_max_s=0.0)
    return FalBackend(config, transport=httpx.MockTransport(handler), journal=journal, sleep=lambda s: None,
                      rng=random.Random(0))


INFO = VideoInfo(width=4, height=2, frame_count=2, fps=10, duration=0.2)
VIDEO = VideoSource(info=INFO, url="https://example.test/v.mp4")
REQUEST = SegmentRequest.build(prompt="red")


def test_a_submitted_request_is_polled_not_resubmitted_and_a_stored_result_costs_no_http() -> None:
    calls: list[str] = []
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            return httpx.Response(200, json={"request_id": "r1", "status_url": "https://queue.test/fal-ai/sam-3-1/requests/r1/status",
                                              "response_url": "https://queue.test/fal-ai/sam-3-1/requests/r1",
                                              "cancel_url": "https://queue.test/fal-ai/sam-3-1/requests/r1/cancel"})
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json={"status": "COMPLETED", "logs": None})
        # fal-ai/sam-3/video-rle-objects' shape (S6): fal's track 3 becomes our track 1
        return httpx.Response(200, headers={"x-fal-billable-units": "2"},
                              json={"frames": [{"frame_index": 0, "objects": []},
                                               {"frame_index": 1, "objects": [{"track_id": 3, "rle": "2 2 6 1"}]}],
                                    "width": INFO.width, "height": INFO.height, "num_frames": INFO.frame_count})

    journal = Journal(None)
    with _backend(handler, journal) as backend:
        first = backend.segment(VIDEO, REQUEST, work_key="ds/s/sam")
        frames = list(first)
        assert calls[0].startswith("POST") and len(frames) == 2 and frames[1].objects[0].track_id == 1
        assert frames[1].objects[0].mask.sum() == 3 and frames[0].objects == []
        assert first.record.billable_units == 2
        first.commit()
        assert journal.entries()[0].state is RequestState.WRITTEN

        calls.clear()
        again = list(backend.segment(VIDEO, REQUEST, work_key="ds/s/sam"))
        assert calls == []  # the stored result: no submit, no poll, no fetch
        assert [f.objects[0].mask.tolist() for f in again[1:]] == [f.objects[0].mask.tolist() for f in frames[1:]]

        entry = journal.entries()[0]
        journal.mark(entry.id, RequestState.SUBMITTED)  # as if the result had never been fetched
        calls.clear()
        list(backend.segment(VIDEO, REQUEST, work_key="ds/s/sam"))
        assert [c.split()[0] for c in calls] == ["GET", "GET"]  # status + result, no POST


def test_an_uncertain_submit_is_not_resent_unless_released() -> None:
    posts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(1)
        raise httpx.ReadTimeout("answer lost")

    journal = Journal(None)
    with _backend(handler, journal) as backend:
        with pytest.raises(SubmitUncertain, match=r"journal entry #1 .*not resend"):
            list(backend.segment(VIDEO, REQUEST, work_key="ds/s/sam"))
        with pytest.raises(SubmitUncertain, match=r"may already be running .*journal entry #1"):
            list(backend.segment(VIDEO, REQUEST, work_key="ds/s/sam"))
        assert len(posts) == 1
        backend.config = backend.config.model_copy(update={"resubmit_uncertain": True})
        with pytest.raises(SubmitUncertain):
            list(backend.segment(VIDEO, REQUEST, work_key="ds/s/sam"))
        assert len(posts) == 2
        assert [e.state for e in journal.entries()] == [RequestState.ABANDONED, RequestState.UNCERTAIN]


# --------------------------------------------------------------------------- CLI


def test_cli_status_resume_and_frame_ranges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from sam_backend.fiftyone_io.cli import _frames, main

    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        run_id = journal.begin_run(dataset="my-videos", label_field="sam", sample_ids=["a", "b"], spec={"options": {}})
        journal.set_sample_state(run_id, "a", SampleState.DONE)
        entry = journal.begin(work_key="my-videos/b/sam", request_hash="h", endpoint="fal-ai/sam-3-1/video-rle", payload={})
        journal.submitted(entry.id, HANDLE)
        journal.set_run_state(run_id, RunState.DONE)
    assert main(["status", "--journal", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}" in out and "done=1" in out and "pending=1" in out
    assert "#1 submitted" in out and "request r1" in out
    assert main(["resume", "my-videos", "--journal", str(path)]) == 2  # that run is finished
    assert "no unfinished run of my-videos" in capsys.readouterr().err
    assert main(["status", "--journal", str(tmp_path / "none.sqlite3")]) == 2
    assert _frames("10:50:2").model_dump() == {"start": 10, "stop": 50, "step": 2}
    assert _frames("100:").stop is None
    with pytest.raises(argparse.ArgumentTypeError):
        _frames("10")


def test_claims_are_atomic_and_name_their_owner(tmp_path) -> None:
    import os
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from sam_backend.backends.fal.journal import owner_id

    path = tmp_path / "j.sqlite3"
    journals = [Journal(path) for _ in range(8)]  # eight connections, as eight processes would have
    try:
        def claim(j: Journal):
            return j.claim(work_key="ds/s/sam", request_hash="h1", endpoint="e", payload={"n": 1})

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(claim, journals))
        winners = [entry for entry, mine in results if mine]
        assert len(winners) == 1 and winners[0].owner == owner_id()  # exactly one may submit
        assert {entry.id for entry, _ in results} == {winners[0].id}  # the others got that entry
        assert winners[0].owner_alive()

        journals[0].mark(winners[0].id, RequestState.REJECTED, "fal refused it")
        again, mine = claim(journals[1])
        assert mine and again.id != winners[0].id  # a refused submit may be claimed anew

        dead = dataclasses.replace(again, owner=f"{socket.gethostname()}:{2**22 + 12345}")
        far = dataclasses.replace(again, owner="elsewhere:1", updated_at=time.time() - 3600)
        near = dataclasses.replace(again, owner="elsewhere:1", updated_at=time.time())
        assert not dead.owner_alive() and not far.owner_alive() and near.owner_alive()
        assert os.getpid() == int(again.owner.rsplit(":", 1)[1])
    finally:
        for j in journals:
            j.close()


def test_an_old_journal_gets_the_owner_column(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the schema before claims existed
        db.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, work_key TEXT, request_hash TEXT NOT NULL,"
                   " endpoint TEXT NOT NULL, state TEXT NOT NULL, request_id TEXT, status_url TEXT, response_url TEXT,"
                   " cancel_url TEXT, payload TEXT NOT NULL, webhook_url TEXT, frame_indices TEXT, result BLOB,"
                   " billable_units REAL, error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL)")
        db.execute("INSERT INTO requests (work_key, request_hash, endpoint, state, payload, created_at, updated_at)"
                   " VALUES ('k', 'h', 'e', 'submitted', '{}', 1, 1)")
    with Journal(path) as journal:
        [entry] = journal.entries()
        assert entry.owner is None and entry.state is RequestState.SUBMITTED
        _, mine = journal.claim(work_key="k", request_hash="h", endpoint="e", payload={})
        assert not mine  # the old in-flight request is followed, not resubmitted
