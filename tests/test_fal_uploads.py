"""Uploads to fal's storage through our client, against the real emulator: one request
below the threshold, multipart above (parts in parallel, each retried on its own, ETags,
sorted complete), reassembled byte-identical; the lifetime header; the content-hash cache
across runs with its expiry and liveness check. (300 MiB: bench/bench_fal_multipart.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sam_backend.backends.fal import FalConfig
from sam_backend.backends.fal.client import FalClient
from sam_backend.backends.fal.journal import Journal
from sam_backend.backends.fal.uploads import FalStorage, lifecycle_headers, reusable_until
from sam_backend.emulator import EmulatorServer, FaultPlan, FaultRule
from sam_backend.emulator.faults import dropped, http_error
from sam_backend.errors import UnexpectedResponse

MiB = 1024 * 1024


@pytest.fixture
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


def config(emu: EmulatorServer, **overrides) -> FalConfig:
    return FalConfig(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url,
                     retry_cap_s=0.1, **overrides)


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_multipart_upload_is_reassembled_byte_identical_despite_part_failures(emu: EmulatorServer, tmp_path: Path) -> None:
    path = tmp_path / "big.mp4"
    size = 17 * MiB + 12345  # 4 parts of 5 MiB, the last one short
    digest = random_file(path, size)
    emu.set_faults(FaultPlan(
        FaultRule.nth("multipart_part", 2, action=http_error(503)),
        FaultRule.nth("multipart_part", 4, action=dropped()),
        FaultRule.first("multipart_complete", 1, http_error(500)),
    ))
    cfg = config(emu, multipart_threshold_bytes=1 * MiB, multipart_part_bytes=5 * MiB, multipart_concurrency=3,
                 upload_lifetime_s=600)
    with FalClient(cfg) as client:
        storage = FalStorage(client)
        url = storage.upload(path)
    stored = emu.stored_file(url)
    assert stored is not None and stored.size == size and stored.sha256() == digest
    assert stored.file_name == "big.mp4" and stored.content_type == "video/mp4"
    assert stored.lifecycle == {"expiration_duration_seconds": 600}
    stats = emu.stats
    assert stats.multipart_uploads == 1 and stats.multipart_parts == 4  # each part stored once
    assert stats.calls_by_route["multipart_part"] == 6 and stats.calls_by_route["multipart_complete"] == 2
    assert storage.multipart_uploads == 1 and client.stats["retries"] == 3


def test_small_files_go_in_one_request_with_a_lifetime(emu: EmulatorServer, tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    digest = random_file(path, 300_000)
    with FalClient(config(emu)) as client:
        url = FalStorage(client).upload(path)
    stored = emu.stored_file(url)
    assert stored.sha256() == digest and stored.lifecycle == {"expiration_duration_seconds": 3600}
    assert emu.stats.multipart_uploads == 0 and emu.stats.uploads == 1
    assert lifecycle_headers(None) == {}


def test_upload_cache_by_content_across_processes_with_expiry(emu: EmulatorServer, tmp_path: Path) -> None:
    path, copy = tmp_path / "a.mp4", tmp_path / "b.mp4"
    random_file(path, 200_000)
    copy.write_bytes(path.read_bytes())  # same bytes, other name: no second upload
    journal_path = tmp_path / "journal.sqlite3"
    with FalClient(config(emu)) as client, Journal(journal_path) as journal:
        storage = FalStorage(client, journal)
        url = storage.url_for(path)
        assert storage.url_for(copy) == url and storage.reused == 1
    with FalClient(config(emu)) as client, Journal(journal_path) as journal:  # a later run
        storage = FalStorage(client, journal)
        assert storage.url_for(path) == url
        emu.expire_file(url)  # fal deleted it (its lifetime ran out): HEAD says 404
        fresh = storage.url_for(path)
        assert fresh != url and emu.stored_file(fresh) is not None
    assert emu.stats.uploads == 2


def test_reuse_window_leaves_time_for_the_queue() -> None:
    assert reusable_until(1000.0, 3600) == 1000 + 3600 - 900
    assert reusable_until(1000.0, 60) == 1000 + 30  # short lifetimes: half of it
    assert reusable_until(1000.0, None) == 1000 + 24 * 3600 - 900


def test_data_uri_only_when_asked_and_small(emu: EmulatorServer, tmp_path: Path) -> None:
    path = tmp_path / "tiny.mp4"
    path.write_bytes(b"\x00" * 100)
    with FalClient(config(emu, data_uri_max_bytes=1000)) as client:
        assert FalStorage(client).url_for(path).startswith("data:video/mp4;base64,")
    assert emu.stats.uploads == 0


def test_a_part_answered_without_etag_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * (6 * MiB))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/storage/auth/token"):
            return httpx.Response(200, json={"token": "t", "token_type": "Bearer", "base_url": "https://cdn.test",
                                             "expires_at": "2099-01-01T00:00:00+00:00"})
        if request.url.path.endswith("/files/upload/multipart"):
            return httpx.Response(200, json={"access_url": "https://cdn.test/files/k/big.bin", "uploadId": "u"})
        return httpx.Response(200)  # a part, but no ETag

    cfg = FalConfig(key="k:s", queue_url="https://queue.test", rest_url="https://rest.test", cdn_url="https://cdn.test",
                    multipart_threshold_bytes=MiB, multipart_part_bytes=5 * MiB)
    with FalClient(cfg, transport=httpx.MockTransport(handler), sleep=lambda s: None, rng=random.Random(0)) as client:
        with pytest.raises(UnexpectedResponse, match="without an ETag"):
            FalStorage(client).upload(path)


def test_multipart_complete_lists_the_parts_in_ascending_order_with_their_own_etags(tmp_path: Path) -> None:
    """fal's storage (S3-style) wants the parts of ``complete`` in ascending part order,
    each with the ETag its PUT answered. The emulator reassembles by number whatever the
    order, so this checks the request our client sends. Parts finish out of order (the
    first one is answered last) and each ETag differs."""
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(4 * 5 * MiB + 123))  # 5 parts of 5 MiB, the last one short
    completes: list[dict] = []
    first_part_may_answer = threading.Event()
    answered: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        url = request.url.path
        if url.endswith("/storage/auth/token"):
            return httpx.Response(200, json={"token": "t", "token_type": "Bearer", "base_url": "https://cdn.test",
                                             "expires_at": "2099-01-01T00:00:00+00:00"})
        if url.endswith("/files/upload/multipart"):
            return httpx.Response(200, json={"access_url": "https://cdn.test/files/k/big.bin", "uploadId": "u"})
        if url.endswith("/complete"):
            completes.append(json.loads(request.content))
            return httpx.Response(200, json={"access_url": "https://cdn.test/files/k/big.bin"})
        number = int(url.rsplit("/", 1)[1])
        if number == 1:
            first_part_may_answer.wait(10)  # part 1 answers after all the others
        answered.append(number)
        if len(answered) == 4:
            first_part_may_answer.set()
        return httpx.Response(200, headers={"ETag": f'"etag-{number}-{hashlib.sha256(request.content).hexdigest()[:8]}"'})

    cfg = FalConfig(key="k:s", queue_url="https://queue.test", rest_url="https://rest.test", cdn_url="https://cdn.test",
                    multipart_threshold_bytes=MiB, multipart_part_bytes=5 * MiB, multipart_concurrency=5)
    data = path.read_bytes()
    with FalClient(cfg, transport=httpx.MockTransport(handler), sleep=lambda s: None, rng=random.Random(0)) as client:
        FalStorage(client).upload(path)
    assert answered[-1] == 1  # the parts really finished out of order
    expected = [{"partNumber": n, "etag": f'"etag-{n}-{hashlib.sha256(data[(n - 1) * 5 * MiB:n * 5 * MiB]).hexdigest()[:8]}"'}
                for n in range(1, 6)]
    assert completes == [{"parts": expected}]
