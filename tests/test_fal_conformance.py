"""The official ``fal_client`` (PyPI fal-client), unmodified, against the emulator.

Only the four URL globals of ``fal_client.client`` are pointed at the loopback server
(what ``EmulatorServer.fal_client_globals()`` returns); everything else is fal's own code.
If these pass, the emulator speaks fal's protocol, not merely our client's dialect of it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sam_backend import synthetic
from sam_backend.emulator import EmulatorConfig, EmulatorServer
from sam_backend.backends.fal import rle
from sam_backend.masks import iou

fal_client = pytest.importorskip("fal_client")
import fal_client.client as fal_module  # noqa: E402

RLE_APP = "fal-ai/sam-3-1/video-rle"
MiB = 1024 * 1024


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(queue_steps=2, service_time_s=0.4)) as server:
        for name, value in server.fal_client_globals().items():
            monkeypatch.setattr(fal_module, name, value)
        monkeypatch.setenv("FAL_KEY", server.key)
        yield server


@pytest.fixture
def client(emu: EmulatorServer) -> "fal_client.SyncClient":
    return fal_client.SyncClient()  # reads FAL_KEY like any user's client


def test_upload_submit_status_logs_result(emu: EmulatorServer, client, small_video: tuple[Path, synthetic.GroundTruth]) -> None:
    path, truth = small_video
    url = client.upload_file(path)
    assert emu.stored_file(url).read() == path.read_bytes()

    handle = client.submit(RLE_APP, arguments={"video_url": url, "prompt": "red ball"})
    assert handle.request_id
    seen = list(handle.iter_events(with_logs=True, interval=0.05))
    kinds = [type(s).__name__ for s in seen]
    assert kinds[0] == "Queued" and kinds[-1] == "Completed"
    assert "InProgress" in kinds
    assert [s.position for s in seen if isinstance(s, fal_client.Queued)][:2] == [1, 0]
    messages = [line["message"] for s in seen if isinstance(s, (fal_client.InProgress, fal_client.Completed)) for line in (s.logs or [])]
    assert any("Request started" in m for m in messages)

    status = client.status(RLE_APP, handle.request_id, with_logs=True)
    assert isinstance(status, fal_client.Completed)
    output = client.result(RLE_APP, handle.request_id)
    # the union shape of fal-ai/sam-3-1/video-rle: one RLE string per frame, None where empty
    assert len(output["rle"]) == truth.scene.frame_count
    visible = truth.frames_visible("red ball")
    assert [i for i, text in enumerate(output["rle"]) if text] == visible
    for i in visible:
        mask = rle.decode(output["rle"][i], truth.scene.height, truth.scene.width)
        assert iou(mask, truth.mask("red ball", i)) >= 0.98


def test_subscribe_with_queue_updates(emu: EmulatorServer, client, small_video) -> None:
    path, _ = small_video
    url = client.upload_file(path)
    updates: list[object] = []
    enqueued: list[str] = []
    output = client.subscribe(
        "fal-ai/sam-3-1/video", arguments={"video_url": url, "prompt": "blue box"}, with_logs=True,
        on_enqueue=enqueued.append, on_queue_update=updates.append, interval=0.05,
    )
    assert set(output) == {"video", "boundingbox_frames_zip"}
    assert output["video"]["content_type"] == "video/mp4" and output["video"]["url"].startswith(emu.cdn_url)
    assert len(enqueued) == 1 and isinstance(updates[-1], fal_client.Completed)
    assert emu.stats.status_calls_by_request[enqueued[0]] >= 3


def test_cancel_and_errors(emu: EmulatorServer, client, small_video) -> None:
    path, _ = small_video
    url = client.upload_file(path)
    handle = client.submit(RLE_APP, arguments={"video_url": url, "prompt": "red ball"})
    handle.cancel()  # still queued: fal answers 202 CANCELLATION_REQUESTED
    assert emu.stats.cancelled_requests == [handle.request_id]
    assert isinstance(handle.status(), fal_client.Completed)
    with pytest.raises(fal_client.client.FalClientHTTPError):
        handle.get()  # a cancelled request has no result
    # a queue delivers input errors with the result: accepted, then 422 on the result route
    bad = client.submit(RLE_APP, arguments={"video_url": url, "point_prompts": [{"x": 1, "y": 1, "label": 7}]})
    with pytest.raises(fal_client.client.FalClientHTTPError) as info:
        bad.get()
    assert info.value.status_code == 422
    with pytest.raises(fal_client.client.FalClientHTTPError) as info:
        client.status(RLE_APP, "no-such-request")
    assert info.value.status_code == 404


def test_multipart_upload_file(emu: EmulatorServer, client, tmp_path: Path) -> None:
    """Above 100 MiB fal_client switches to multipart: 10 MiB parts, up to 10 at once."""
    path = tmp_path / "big.bin"
    size = fal_module.MULTIPART_THRESHOLD + 5 * MiB + 123
    digest = hashlib.sha256()
    with path.open("wb") as f:
        remaining = size
        while remaining:
            chunk = os.urandom(min(8 * MiB, remaining))
            digest.update(chunk)
            f.write(chunk)
            remaining -= len(chunk)
    url = client.upload_file(path)
    stored = emu.stored_file(url)
    assert stored is not None and stored.size == size and stored.sha256() == digest.hexdigest()
    stats = emu.stats
    assert stats.multipart_uploads == 1 and stats.multipart_parts == -(-size // fal_module.MULTIPART_CHUNK_SIZE)
