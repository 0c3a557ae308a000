"""The fal backend: journal first, upload once, submit once, poll with backoff, fetch at once.

One unit of work (a sample's video + request + frame range, named by ``work_key``) goes:

1. look it up in the journal: a stored result is decoded again (no HTTP at all); a
   submitted request is polled (a crash or Ctrl-C never costs a second submit); a submit
   that may or may not have reached fal stops with an error naming the entry;
2. otherwise trim the video to the asked frames (so fal bills only those), upload it (or
   reuse an earlier upload of the same bytes), record the intent, submit, record fal's id;
3. poll (fast first, then every ``poll_max_s``) until COMPLETED, fetch the result and any
   mask file it points to at once (fal keeps results >= 10 KB only ~6 minutes) and store
   them in the journal before anything else;
4. decode the payload by its shape and stream the frames with the video's own indices.

The run's :class:`FalSegmentRun` has a ``commit()`` that the writer's caller calls once
the labels are written, which marks the journal entry ``written``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from ... import video as video_ops
from ...cost import fal_cost_usd
from ...errors import BackendUnavailable, Cancelled, InvalidRequest, RemoteFailure, ResultExpired, SamError
from ...types import FrameResult, FrameRange, Progress, SegmentRequest, VideoInfo
from ..base import CancelToken, CostEstimate, ProgressCallback, RunRecord, SegmentRun, VideoSource, report
from .client import (
    Completed,
    EndpointNotFound,
    FalClient,
    InProgress,
    Queued,
    RemoteCancelled,
    RequestGone,
    RequestHandle,
    SubmitUncertain,
)
from .config import FalConfig
from .decoders import MASK_FILE_KEYS, NoLabelsInResponse, decode_output, file_url
from .journal import HAS_RESULT, Entry, Journal, RequestState
from .uploads import FalStorage

log = logging.getLogger(__name__)

# Each poll waits this much longer than the one before (up to poll_max_s): a 2 s job costs
# about 5 status calls, a 10 min one about 400 instead of fal-client's 6,000.
POLL_GROWTH = 1.5


class FalSegmentRun(SegmentRun):
    """A :class:`SegmentRun` whose ``commit()`` records in the journal that the frames
    were written (callers that do not commit lose nothing: a rerun re-writes from the
    stored result without a new charge)."""

    def __init__(self, frames: Iterator[FrameResult], record: RunRecord, commit: Callable[[], None]) -> None:
        super().__init__(frames, record)
        self._commit = commit

    def commit(self) -> None:
        self._commit()


def request_hash(endpoint: str, request: SegmentRequest, video_identity: str, frames: range | None) -> str:
    """What determines the output: endpoint, request (minus the URL, which changes with
    every upload), the video's content (or its public URL) and the frames sent."""
    doc = {
        "endpoint": endpoint,
        "request": request.model_dump(mode="json", exclude={"video_url"}),
        "video": video_identity,
        "frames": [frames.start, frames.stop, frames.step] if frames is not None else None,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def remap_prompts(request: SegmentRequest, frames: range | None) -> SegmentRequest:
    """Prompts' ``frame_index`` in the trimmed video (position within ``frames``)."""
    if frames is None:
        return request
    position = {f: i for i, f in enumerate(frames)}
    return request.model_copy(update={
        "point_prompts": [p.model_copy(update={"frame_index": position[p.frame_index]}) for p in request.point_prompts],
        "box_prompts": [b.model_copy(update={"frame_index": position[b.frame_index]}) for b in request.box_prompts],
    })


class FalBackend:
    """SAM 3.1 on fal's hosted queue. One instance = one httpx client and one journal,
    shared by every thread that calls :meth:`segment`; use it as a context manager (or
    call close) so connections and the journal are released."""

    name = "fal"

    def __init__(self, config: FalConfig, *, transport: httpx.BaseTransport | None = None,
                 journal: Journal | None = None, **client_options: Any) -> None:
        self.config = config
        self.client = FalClient(config, transport=transport, **client_options)
        self._owns_journal = journal is None
        self.journal = journal if journal is not None else Journal(config.journal_path)
        self.storage = FalStorage(self.client, self.journal)
        self._lock = threading.Lock()
        self._missing_endpoints: set[str] = set()
        self._known_endpoints: set[str] = set()
        # Until one submit to an endpoint succeeded, submits to it go one at a time, so a
        # missing endpoint costs one 404, not one per sample in flight.
        self._first_submit = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **config_overrides: Any) -> FalBackend:
        return cls(FalConfig.from_env(os.environ if environ is None else environ, **config_overrides))

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self._owns_journal:
                self.journal.close()

    def __enter__(self) -> FalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cost ---------------------------------------------------------------------------

    def estimate_cost(self, video: VideoInfo, request: SegmentRequest) -> CostEstimate:
        """Frames x the endpoint's price (``video.frame_count`` is what will be sent: pass
        the trimmed count when segmenting a frame range)."""
        endpoint = self._endpoint()
        usd = fal_cost_usd(endpoint, video.frame_count)
        detail = f"{video.frame_count} frames on {endpoint}"
        return CostEstimate(backend=self.name, frames=video.frame_count, usd=usd, detail=detail)

    # -- segment ------------------------------------------------------------------------

    def segment(
        self,
        video: VideoSource,
        request: SegmentRequest,
        *,
        frames: FrameRange | None = None,
        work_key: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> FalSegmentRun:
        request.check_against(video.info, frames)  # before anything is uploaded or billed
        indices = None
        if frames is not None and not frames.is_whole(video.info.frame_count):
            indices = frames.indices(video.info.frame_count)
            if video.path is None:
                raise InvalidRequest("a frame range is cut from the local video file before upload; this sample has only a URL")
        endpoint = self._endpoint()
        record = RunRecord(backend=self.name, endpoint=endpoint, model=self.config.model_for(endpoint))
        done: dict[str, int] = {}
        run = self._run(video, request, indices, work_key, record, on_progress, cancel or CancelToken(), done)
        return FalSegmentRun(run, record, lambda: self._commit(done))

    def _commit(self, done: dict[str, int]) -> None:
        if "entry" in done:
            self.journal.written(done["entry"])

    def _run(self, video: VideoSource, request: SegmentRequest, indices: range | None, work_key: str | None,
             record: RunRecord, on_progress: ProgressCallback | None, cancel: CancelToken,
             done: dict[str, int]) -> Iterator[FrameResult]:
        cancel.raise_if_cancelled()
        identity = self._video_identity(video, indices)
        rhash = request_hash(self.config.endpoint, request, identity, indices)
        sent_request = remap_prompts(request, indices)
        entry = self._reusable_entry(work_key, rhash)
        if entry is not None and entry.state in HAS_RESULT:
            stored = self.journal.result(entry.id)
            record.warnings.append(f"reused the stored result of fal request {entry.request_id} (no new charge)")
            report(on_progress, Progress("fetch", f"using the stored result of request {entry.request_id}",
                                         request_id=entry.request_id))
        else:
            if entry is None:
                entry, handle = self._upload_and_submit(video, sent_request, indices, work_key, rhash, record, on_progress, cancel)
            else:
                handle = entry.handle()
                report(on_progress, Progress("submit", f"resuming request {handle.request_id} from the journal",
                                             request_id=handle.request_id))
            self._note_endpoint(record, entry)
            stored = self._wait_and_fetch(entry, handle, on_progress, cancel)
        entry = self.journal.get(entry.id)
        self._note_endpoint(record, entry)
        record.billable_units = entry.billable_units
        done["entry"] = entry.id

        info = video.info if indices is None else video.info.model_copy(update={"frame_count": len(indices)})
        decoded = decode_output(stored["payload"], info, sent_request, stored.get("attachments") or {})
        record.outputs.update(decoded.files)
        if decoded.frames is None:
            files = ", ".join(f"{k}: {v}" for k, v in decoded.files.items()) or "nothing"
            raise NoLabelsInResponse(
                f"{entry.endpoint} returned only rendered media ({files}), no per-frame masks: labels need an RLE "
                f"endpoint such as fal-ai/sam-3-1/video-rle (request {entry.request_id})", decoded.files)
        report(on_progress, Progress("decode", "decoding masks", frames_total=info.frame_count, request_id=entry.request_id))
        for frame in decoded.frames():
            cancel.raise_if_cancelled()
            yield frame if indices is None else FrameResult(indices[frame.frame_index], frame.objects)
        report(on_progress, Progress("done", request_id=entry.request_id, frames_total=info.frame_count))

    # -- journal ------------------------------------------------------------------------

    def _reusable_entry(self, work_key: str | None, rhash: str) -> Entry | None:
        """The journal entry to continue from, or None to submit anew."""
        if work_key is None:
            return None
        entry = self.journal.latest(work_key, rhash)
        if entry is None:
            return None
        if entry.state in HAS_RESULT:
            return entry if entry.has_result else None  # a pruned old result: submit anew
        if entry.state is RequestState.SUBMITTED:
            return entry
        if entry.state in (RequestState.SUBMITTING, RequestState.UNCERTAIN):
            if self.config.resubmit_uncertain:
                self.journal.release(entry.id)
                return None
            raise SubmitUncertain(
                f"an earlier submit of this sample may already be running (and billed) at fal: {entry.describe()} "
                f"in {self.journal.location}, {entry.error or 'the process stopped while the submit was in flight'}. "
                "It was not resent. Check your fal dashboard; to submit it again anyway, resume with "
                "resubmit_uncertain=True (CLI: sam31-video resume --resubmit-uncertain)"
            )
        return None  # failed, rejected, cancelled, expired or abandoned: a new attempt

    def _note_endpoint(self, record: RunRecord, entry: Entry) -> None:
        record.endpoint, record.model = entry.endpoint, self.config.model_for(entry.endpoint)
        record.request_id = entry.request_id
        if entry.endpoint != self.config.endpoint:
            warning = (f"fal has no endpoint {self.config.endpoint}; labels come from {entry.endpoint} "
                       f"({self.config.model_for(entry.endpoint)}) instead")
            if warning not in record.warnings:
                record.warnings.append(warning)

    # -- upload + submit ----------------------------------------------------------------

    def _video_identity(self, video: VideoSource, indices: range | None) -> str:
        if video.url is not None and indices is None:
            return f"url:{video.url}"
        assert video.path is not None
        return f"sha256:{self.storage.sha256(video.path)}"

    @contextlib.contextmanager
    def _input_url(self, video: VideoSource, indices: range | None, cancel: CancelToken,
                   on_progress: ProgressCallback | None) -> Iterator[str]:
        """A URL fal can read the (trimmed) video from: the sample's own public URL when
        there is one and no trimming, else an upload (reused when the bytes were sent before)."""
        if indices is None and video.url is not None:
            yield video.url
            return
        assert video.path is not None
        if indices is None:
            report(on_progress, Progress("upload", f"uploading {video.path.name}"))
            yield self.storage.url_for(video.path, cancel=cancel)
            return
        with tempfile.TemporaryDirectory(prefix="sam31-trim-") as tmp:
            report(on_progress, Progress("upload", f"cutting frames {indices.start}..{indices[-1]} of {video.path.name}"))
            trimmed = Path(tmp) / f"{video.path.stem}_{indices.start}_{indices.stop}_{indices.step}.mp4"
            video_ops.trim_video(video.path, trimmed, indices, video.info, crf=self.config.trim_crf)
            cancel.raise_if_cancelled()
            report(on_progress, Progress("upload", f"uploading {len(indices)} frames of {video.path.name}"))
            yield self.storage.url_for(trimmed, cancel=cancel)

    def _upload_and_submit(self, video: VideoSource, request: SegmentRequest, indices: range | None,
                           work_key: str | None, rhash: str, record: RunRecord,
                           on_progress: ProgressCallback | None, cancel: CancelToken) -> tuple[Entry, RequestHandle]:
        with self._input_url(video, indices, cancel, on_progress) as url:
            cancel.raise_if_cancelled()
            payload = request.to_wire(url)
            entry = self.journal.begin(work_key=work_key, request_hash=rhash, endpoint=self._endpoint(), payload=payload,
                                       webhook_url=self.config.webhook_url,
                                       frame_indices=list(indices) if indices is not None else None)
            handle = self._submit(entry, payload, record)
        report(on_progress, Progress("submit", f"submitted to {handle.endpoint}", request_id=handle.request_id))
        return self.journal.get(entry.id), handle

    def _endpoint(self) -> str:
        """The configured endpoint, or its fallback once fal said it does not exist."""
        endpoint = self.config.endpoint
        with self._lock:
            while endpoint in self._missing_endpoints and endpoint in self.config.fallback_endpoints:
                endpoint = self.config.fallback_endpoints[endpoint]
        return endpoint

    def _submit(self, entry: Entry, payload: dict[str, Any], record: RunRecord) -> RequestHandle:
        with self._lock:
            known = entry.endpoint in self._known_endpoints
        if not known:
            with self._first_submit:
                current = self._endpoint()
                if current != entry.endpoint and entry.endpoint in self._missing_endpoints:
                    self.journal.set_endpoint(entry.id, current)  # another thread found it missing meanwhile
                    entry = self.journal.get(entry.id)
                return self._send_submit(entry, payload, record)
        return self._send_submit(entry, payload, record)

    def _send_submit(self, entry: Entry, payload: dict[str, Any], record: RunRecord) -> RequestHandle:
        try:
            handle = self.client.submit(entry.endpoint, payload, webhook_url=self.config.webhook_url)
        except EndpointNotFound as exc:
            fallback = self.config.fallback_endpoints.get(entry.endpoint)
            if not fallback:
                self.journal.mark(entry.id, RequestState.REJECTED, str(exc))
                raise
            log.warning("fal has no endpoint %s; falling back to %s", entry.endpoint, fallback)
            with self._lock:
                self._missing_endpoints.add(entry.endpoint)
            self.journal.set_endpoint(entry.id, fallback)
            return self._send_submit(self.journal.get(entry.id), payload, record)
        except SubmitUncertain as exc:
            self.journal.mark(entry.id, RequestState.UNCERTAIN, str(exc))
            raise SubmitUncertain(
                f"{exc}. Recorded as {self.journal.get(entry.id).describe()} in {self.journal.location}: a rerun "
                "will not resend it; check your fal dashboard, then resume with resubmit_uncertain=True "
                "(CLI: sam31-video resume --resubmit-uncertain) to submit it again"
            ) from exc
        except SamError as exc:  # fal provably refused it (4xx, or never reached): nothing billed
            self.journal.mark(entry.id, RequestState.REJECTED, str(exc))
            raise
        self.journal.submitted(entry.id, handle)  # before waiting on it
        with self._lock:
            self._known_endpoints.add(handle.endpoint)
        record.request_id = handle.request_id
        return handle

    # -- wait + fetch -------------------------------------------------------------------

    def _wait_and_fetch(self, entry: Entry, handle: RequestHandle, on_progress: ProgressCallback | None,
                        cancel: CancelToken) -> dict[str, Any]:
        """Poll until COMPLETED, then fetch and journal the result at once."""
        delay = self.config.poll_initial_s
        outage_since: float | None = None
        rid = handle.request_id
        while True:
            if cancel.cancelled:
                self._cancel_request(entry, handle)
                raise Cancelled(f"cancelled; asked fal to stop request {rid}")
            try:
                status = self.client.status(handle)
                outage_since = None
            except RequestGone as exc:
                self.journal.mark(entry.id, RequestState.EXPIRED, str(exc))
                raise
            except BackendUnavailable as exc:
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since > self.config.status_outage_s:
                    raise BackendUnavailable(
                        f"{exc}; {entry.describe()} stays in the journal: rerun the same job (or resume it) "
                        "to pick it up without paying again"
                    ) from exc
                status = None
            match status:
                case Queued(position):
                    report(on_progress, Progress("queued", f"in queue at position {position}", queue_position=position, request_id=rid))
                case InProgress(logs):
                    report(on_progress, Progress("running", logs[-1] if logs else "running", logs=logs, request_id=rid))
                case Completed():
                    report(on_progress, Progress("fetch", "fetching result", request_id=rid))
                    return self._fetch(entry, handle)
            if cancel.wait(delay):
                continue
            delay = min(self.config.poll_max_s, delay * POLL_GROWTH)

    def _fetch(self, entry: Entry, handle: RequestHandle) -> dict[str, Any]:
        """Fetch the result and any mask file it points to, and store both in the journal."""
        try:
            result = self.client.result(handle)
        except ResultExpired as exc:
            self.journal.mark(entry.id, RequestState.EXPIRED, str(exc))
            raise
        except RemoteCancelled as exc:
            self.journal.mark(entry.id, RequestState.CANCELLED, str(exc))
            raise
        except (RemoteFailure, InvalidRequest) as exc:  # fal ran it and failed it
            self.journal.mark(entry.id, RequestState.FAILED, str(exc))
            if isinstance(exc, InvalidRequest):
                raise RemoteFailure(f"fal rejected the input while running it: {exc}", request_id=handle.request_id) from exc
            raise
        attachments: dict[str, Any] = {}
        if isinstance(result.payload, dict):
            for key in MASK_FILE_KEYS:
                url = file_url(result.payload.get(key))
                if url is None:
                    continue
                data = self.client.download(url)  # failure leaves the entry 'submitted': a rerun refetches
                try:
                    attachments[key] = json.loads(data)
                except ValueError:
                    attachments[key] = f"not JSON ({len(data)} bytes)"
        stored = {"payload": result.payload, "attachments": attachments}
        self.journal.completed(entry.id, stored, result.billable_units)
        return stored

    def _cancel_request(self, entry: Entry, handle: RequestHandle) -> None:
        """Ask fal to stop; a request that already completed is paid for, so keep its result."""
        try:
            stopping = self.client.cancel(handle)
        except SamError as exc:
            log.warning("could not cancel fal request %s: %s", handle.request_id, exc)
            return
        if stopping:
            self.journal.mark(entry.id, RequestState.CANCELLED, "cancelled by the user")
            return
        with contextlib.suppress(SamError):
            self._fetch(entry, handle)

    # -- optional hooks segment_videos uses when present ---------------------------------

    def harvest(self, work_keys: Iterable[str]) -> int:
        """Fetch (and journal) the results of journaled requests for ``work_keys`` that
        fal has finished, before a resumed run gets to them: results of 10 KB or more
        are only kept for minutes. Returns how many were fetched."""
        fetched = 0
        for entry in self.journal.entries(states=[RequestState.SUBMITTED], work_keys=list(work_keys)):
            try:
                if isinstance(self.client.status(entry.handle(), logs=False), Completed):
                    self._fetch(entry, entry.handle())
                    fetched += 1
            except RequestGone as exc:
                self.journal.mark(entry.id, RequestState.EXPIRED, str(exc))
            except SamError as exc:
                log.warning("could not fetch %s now: %s", entry.describe(), exc)
        return fetched

    def cancel_inflight(self, work_keys: Iterable[str]) -> int:
        """Send cancel for every journaled request of ``work_keys`` still in flight (e.g.
        after a cancelled run whose workers never got to them). Returns how many."""
        count = 0
        for entry in self.journal.entries(states=[RequestState.SUBMITTED], work_keys=list(work_keys)):
            self._cancel_request(entry, entry.handle())
            count += 1
        return count
