"""Issue 15 / 14.6: results stream from fal to the journal and back frame by frame, masks
decode straight into their crops, and a result over max_result_bytes fails its request
by name without storing, writing or resubmitting anything. Pure logic and MockTransport."""

from __future__ import annotations

import json
import random

import httpx
import numpy as np
import pytest

from sam_backend.backends.base import VideoSource
from sam_backend.backends.fal import FalBackend, FalConfig
from sam_backend.backends.fal import endpoints as table
from sam_backend.backends.fal import jsonstream, rle
from sam_backend.backends.fal.client import ResultTooLarge
from sam_backend.backends.fal.decoders import decode_result, decode_stream
from sam_backend.backends.fal.journal import Journal, RequestState, ResultSpool
from sam_backend.masks import tight_box
from sam_backend.types import SegmentRequest, TrackedObject, VideoInfo


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


# --------------------------------------------------------------------------- RLE -> crop


def test_decode_crop_equals_decode_then_crop_for_every_layout() -> None:
    rng = np.random.default_rng(0)
    for trial in range(400):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        m = rng.random((h, w)) < rng.random()
        if trial % 4 == 0:  # a full row: runs that wrap onto the next line
            m[:] = False
            m[int(rng.integers(0, h)), :] = True
            m[min(h - 1, int(rng.integers(0, h))), : int(rng.integers(1, w + 1))] = True
        for layout in rle.ALL_LAYOUTS:
            text = rle.encode(m, layout)
            got = rle.decode_crop(text, h, w, layout)
            box = tight_box(m)
            if box is None:
                assert got is None
                continue
            assert got is not None
            crop, got_box = got
            x0, y0, x1, y1 = box
            assert got_box == box and crop.dtype == bool and np.array_equal(crop, m[y0:y1, x0:x1])
            assert np.array_equal(rle.decode(text, h, w, layout), m)


@pytest.mark.parametrize(("text", "message"), [
    ("1 2 3", "odd number"), ("5 3 2 2", "backwards or overlaps"), ("30 2", "ends at pixel 31"),
    ("0 3", "before the first pixel"), ("2 0", "length 0"), ("1 x", "not an integer"), ("1 -2", "not an integer|length"),
])
def test_decode_crop_is_as_strict_as_decode(text: str, message: str) -> None:
    with pytest.raises(rle.RleFormatError, match=message):
        rle.decode_crop(text, 5, 6)


def test_tracked_object_from_crop_builds_the_full_mask_only_when_asked() -> None:
    crop = np.array([[1, 0], [1, 1]], bool)
    obj = TrackedObject.from_crop(3, "a", 0.5, crop, (2, 1, 4, 3), (4, 5))
    assert obj.crop is crop and obj.area == 3 and obj._mask is None
    full = obj.mask
    assert full.shape == (4, 5) and full.sum() == 3 and full[1, 2] and tight_box(full) == obj.box
    assert obj == TrackedObject(3, "a", 0.5, full, (2, 1, 4, 3)) and obj.with_label("b").label == "b"


# --------------------------------------------------------------------------- JSON stream


@pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
def test_members_survive_any_chunk_boundary(size: int) -> None:
    doc = {"width": 640, "frames": [{"frame_index": i, "objects": [{"track_id": 12345, "rle": "1 2 30 4"}]} for i in range(5)],
           "score": -1.5e-3, "ok": True, "none": None, "name": "a \"quoted\" é", "height": 360}
    data = json.dumps(doc, indent=1).encode()
    got = {}
    for key, value in jsonstream.members(_chunks(data, size), {"frames"}):
        got[key] = list(value) if key == "frames" else value
    assert got == doc


def test_members_skip_unread_arrays_and_reject_garbage() -> None:
    data = b'{"frames": [1, 2, [3, 4]], "n": 7}'
    assert [(k, v) for k, v in jsonstream.members(_chunks(data, 4), {"frames"}) if k == "n"] == [("n", 7)]
    for bad in (b'{"a": 1', b'[1, 2]', b'{"a": 1} x', b'{"a" 1}'):
        with pytest.raises(jsonstream.JsonStreamError):
            list(jsonstream.members(_chunks(bad, 3)))


def test_streamed_decoder_reads_frames_in_order_with_gaps() -> None:
    a = np.zeros((4, 6), bool)
    a[1:3, 2:5] = True
    payload = {"width": 6, "height": 4, "num_frames": 4,
               "frames": [{"frame_index": 1, "objects": [{"track_id": 9, "rle": rle.encode(a)}]},
                          {"frame_index": 3, "objects": [{"track_id": 2, "rle": rle.encode(a)}, {"track_id": 9, "rle": ""}]}]}
    data = json.dumps(payload).encode()
    spec = table.endpoint(table.SAM3_VIDEO_RLE_OBJECTS)
    d = decode_stream(lambda: _chunks(data, 5), {}, spec, layout=rle.DEFAULT_LAYOUT, frame_count=4, height=4, width=6,
                      request_id="r")
    frames = list(d.frames())
    assert d.track_ids() == [2, 9] and [[c.fal_track_id for c in f] for f in frames] == [[], [9], [], [2]]
    assert frames[1][0].box == (2, 1, 5, 3) and frames[1][0].crop.all()
    # out of order: still right (gathered in memory)
    payload["frames"].reverse()
    data = json.dumps(payload).encode()
    d = decode_result({"payload": payload}, spec, layout=rle.DEFAULT_LAYOUT, frame_count=4, height=4, width=6, request_id="r")
    assert [[c.fal_track_id for c in f] for f in d.frames()] == [[], [9], [], [2]]


# --------------------------------------------------------------------------- journal + fetch


def test_journal_stores_raw_bytes_and_reads_them_back_in_pieces(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import sam_backend.backends.fal.journal as journal_module

    monkeypatch.setattr(journal_module, "READ_CHUNK_BYTES", 100)
    rng = np.random.default_rng(1)
    data = json.dumps({"rle": [" ".join(map(str, rng.integers(0, 10**6, 60).tolist())) for _ in range(40)], "x": 1}).encode()
    with Journal(tmp_path / "j.sqlite") as journal:
        entry = journal.begin(work_key="w", request_hash="h", endpoint="e", payload={})
        with ResultSpool() as spool:
            for chunk in _chunks(data, 333):
                spool.write(chunk)
            journal.completed_raw(entry.id, spool, {"rle": ["a"]}, 2.0)
        stored = journal.open_result(entry.id)
        pieces = list(stored.chunks())
        assert b"".join(pieces) == data and len(pieces) > 2 and stored.attachments == {"rle": ["a"]}
        assert journal.result(entry.id) == {"payload": json.loads(data), "attachments": {"rle": ["a"]}}
        old = journal.begin(work_key="w", request_hash="h2", endpoint="e", payload={})
        journal.completed(old.id, {"payload": {"y": 2}, "attachments": {}}, None)  # the format before streaming
        assert b"".join(journal.open_result(old.id).chunks()) == b'{"y": 2}'
        assert journal.get(entry.id).state is RequestState.COMPLETED and journal.get(entry.id).billable_units == 2.0


def test_inflated_pieces_stay_small_when_the_text_compresses_well(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A union RLE answer compresses ~100x: each stored block must still come back in
    pieces of bounded size (16 requests read side by side, a few pieces ahead each, once
    held whole results in memory)."""
    import sam_backend.backends.fal.journal as journal_module

    monkeypatch.setattr(journal_module, "READ_CHUNK_BYTES", 500)
    monkeypatch.setattr(journal_module, "INFLATE_PIECE_BYTES", 1000)
    data = json.dumps({"rle": ["1 5 641 5 1281 5"] * 20000}).encode()
    with Journal(tmp_path / "j.sqlite") as journal:
        entry = journal.begin(work_key="w", request_hash="h", endpoint="e", payload={})
        with ResultSpool() as spool:
            spool.write(data)
            journal.completed_raw(entry.id, spool, {}, None)
            assert spool.finish() < len(data) // 50  # it did compress that well
            assert max(len(p) for p in spool.chunks()) <= 1000
        pieces = list(journal.open_result(entry.id).chunks())
    assert b"".join(pieces) == data and max(len(p) for p in pieces) <= 1000


def test_a_reader_that_stops_before_the_end_is_not_kept_waiting() -> None:
    """The decoder stops reading a result once it has its array: the read-ahead thread,
    holding a last piece and the end mark for a full queue, must let go."""
    import threading

    from sam_backend.backends.fal.journal import _prefetched

    read_all = threading.Event()

    def blocks():
        yield b"a"
        yield b"b"
        read_all.set()

    pieces = _prefetched(blocks(), depth=1)
    assert next(pieces) == b"a"
    assert read_all.wait(5)  # b"b" queued, the end mark waiting for room
    closer = threading.Thread(target=pieces.close, daemon=True)
    closer.start()
    closer.join(5)
    assert not closer.is_alive()


INFO = VideoInfo(width=6, height=4, frame_count=2, fps=10, duration=0.2)
VIDEO = VideoSource(info=INFO, url="https://example.test/v.mp4")
BIG = {"frames": [{"frame_index": i, "objects": [{"track_id": 1, "rle": "2 2 8 3"}]} for i in range(2)],
       "width": 6, "height": 4, "num_frames": 2, "padding": "x" * 5000}


def _handler(calls: list[str], *, content_length: bool):
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            base = "https://queue.test/fal-ai/sam-3/requests/r1"
            return httpx.Response(200, json={"request_id": "r1", "status_url": f"{base}/status", "response_url": base,
                                              "cancel_url": f"{base}/cancel"})
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json={"status": "COMPLETED", "logs": None})
        body = json.dumps(BIG).encode()
        if content_length:
            return httpx.Response(200, content=body, headers={"content-type": "application/json"})
        return httpx.Response(200, content=iter(_chunks(body, 1000)), headers={"content-type": "application/json"})
    return handler


@pytest.mark.parametrize("content_length", [True, False], ids=["declared", "counted"])
def test_a_result_over_the_limit_fails_by_name_and_is_never_resubmitted(content_length: bool) -> None:
    calls: list[str] = []
    config = FalConfig(key="k:s", queue_url="https://queue.test", rest_url="https://rest.test",
                       cdn_url="https://cdn.test", poll_initial_s=0.0, poll_max_s=0.0, max_result_bytes=4000)
    journal = Journal(None)
    with FalBackend(config, transport=httpx.MockTransport(_handler(calls, content_length=content_length)),
                    journal=journal, sleep=lambda s: None, rng=random.Random(0)) as backend:
        with pytest.raises(ResultTooLarge, match=r"fal request r1: the result is .*max_result_bytes=4,000") as info:
            list(backend.segment(VIDEO, SegmentRequest.build(prompt="red"), work_key="ds/s/sam"))
        assert info.value.request_id == "r1"
        entry = journal.entries()[0]
        assert entry.state is RequestState.SUBMITTED and not entry.has_result and "max_result_bytes" in entry.error
        calls.clear()
        with pytest.raises(ResultTooLarge):  # a rerun follows the same request: no second submit
            list(backend.segment(VIDEO, SegmentRequest.build(prompt="red"), work_key="ds/s/sam"))
        assert [c.split()[0] for c in calls] == ["GET", "GET"]
    big_enough = config.model_copy(update={"max_result_bytes": 1 << 20})
    with FalBackend(big_enough, transport=httpx.MockTransport(_handler(calls, content_length=content_length)),
                    journal=journal, sleep=lambda s: None, rng=random.Random(0)) as backend:
        frames = list(backend.segment(VIDEO, SegmentRequest.build(prompt="red"), work_key="ds/s/sam"))
        assert [f.objects[0].box for f in frames] == [(1, 0, 4, 2)] * 2  # "2 2 8 3": row 0 cols 1-2, row 1 cols 1-3
        assert frames[0].objects[0].crop.sum() == 5


def test_a_frame_decoded_at_once_equals_mask_by_mask() -> None:
    rng = np.random.default_rng(3)
    for trial in range(300):
        h, w = (int(v) for v in rng.integers(2, 20, 2))
        masks = [rng.random((h, w)) < 0.4 for _ in range(int(rng.integers(2, 6)))]
        if trial % 3 == 0:
            masks[0][:] = False
            masks[0][h // 2, :] = True  # wraps: the whole frame goes mask by mask
        for layout in rle.ALL_LAYOUTS:
            texts = [rle.encode(m, layout) for m in masks]
            for got, want in zip(rle.decode_crops(texts, h, w, layout), [rle.decode_crop(t, h, w, layout) for t in texts]):
                assert (got is None) == (want is None)
                if got is not None:
                    assert got[1] == want[1] and np.array_equal(got[0], want[0])
    with pytest.raises(rle.RleFormatError) as info:
        rle.decode_crops(["1 2", "5 3 2 2"], 5, 6)
    assert info.value.index == 1
