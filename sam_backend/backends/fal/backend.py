"""The fal backend: plan, journal first, upload once, submit each request once, fetch at once.

One video (a sample's video + request + frame range, named by ``work_key``) becomes
several fal requests (``planner.py``: one per visual object, one per text concept), all
run at once under the backend-wide bound ``max_concurrent_requests``. Each request goes:

1. look it up in the journal: a stored result is decoded again (no HTTP at all); a
   submitted request is polled (a crash or Ctrl-C never costs a second submit); a submit
   that may or may not have reached fal stops the video with an error naming the entry
   before anything else is sent;
2. otherwise trim the video to the asked frames (so fal bills only those) and upload it,
   once per video (or reuse an earlier upload of the same bytes), record the intent, submit,
   record fal's id;
3. poll (fast first, then every ``poll_max_s``) until COMPLETED, fetch the result and any
   RLE file it points to at once (fal keeps results >= 10 KB only ~6 minutes) and store
   them in the journal before anything else. fal answering that the endpoint does not
   exist (at submit, or only at result) moves the request to the next endpoint of its
   fallback chain: nothing was billed for the missing one.

Results stream: fetched bytes go to the journal as they arrive (over
``max_result_bytes`` the request fails, named, and is never resubmitted), and only when
every request of the video has its result are they read back, checked and decoded
(``decoders.py``) frame by frame, merged into frames with the video's own indices: memory
is a frame, not a video, and a video is written whole or not at all. The run's :class:`FalSegmentRun` has a ``commit()`` that the writer's caller calls
once the labels are written, which marks the video's journal entries ``written``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
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
from ...errors import (BackendUnavailable, Cancelled, InvalidRequest, RemoteFailure, ResultExpired, SamError,
                      UnexpectedResponse)
from ...types import FrameRange, FrameResult, Progress, SegmentRequest, TrackedObject, VideoInfo
from ..base import CancelToken, CostEstimate, ProgressCallback, RunRecord, SegmentRun, VideoSource, report, wait_all
from . import endpoints as endpoint_table
from .endpoints import plan_cost
from .client import (
    CancelOutcome,
    Completed,
    EndpointNotFound,
    FalClient,
    InProgress,
    Queued,
    RemoteCancelled,
    RequestGone,
    RequestHandle,
    ResultInterrupted,
    ResultTooLarge,
    SubmitUncertain,
)
from .config import FalConfig
from . import jsonstream
from .decoders import (STREAMED, DecodedResult, ResultNotJson, decode_stream, files_to_download, frames_together,
                       read_attachment)
from .journal import HAS_RESULT, Entry, Journal, RequestState, ResultSpool, StoredResult
from .planner import PlannedRequest, instance_ids, plan
from .rle import DEFAULT_LAYOUT, RleLayout
from .uploads import FalStorage

log = logging.getLogger(__name__)

# How long to wait for another process's submit of the same request (same journal) to
# be answered: a submit takes seconds; longer means that process is stuck.
OTHER_SUBMIT_WAIT_S = 120.0
# Each poll waits this much longer than the one before (up to poll_max_s): a 2 s job costs
# about 5 status calls, a 10 min one about 400 instead of fal-client's 6,000.
POLL_GROWTH = 1.5


class FalSegmentRun(SegmentRun):
    """A :class:`SegmentRun` whose ``commit()`` records in the journal that the frames
    were written (callers that do not commit lose nothing: a rerun re-writes from the
    stored results without a new charge)."""

    def __init__(self, frames: Iterator[FrameResult], record: RunRecord, commit: Callable[[], None]) -> None:
        super().__init__(frames, record)
        self._commit = commit

    def commit(self) -> None:
        self._commit()


def request_hash(planned: PlannedRequest, video_identity: str, frames: range | None, *,
                 with_position: bool = False) -> str:
    """What determines one request's output: its fields, the endpoints it may use, the
    video's content (or its public URL) and the frames sent. Not its place in the plan
    (concepts reordered or dropped are the same requests, already paid for), nor the URL
    of an upload, which changes with every upload. ``with_position``: the hash journals
    written before 2026-12-03 used (position included), still looked up so their paid
    requests are not paid again."""
    doc = {
        **({"key": planned.key} if with_position else {}),
        "fields": planned.fields,
        "endpoints": list(planned.endpoints),
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


# fal keeps a result about 6 minutes after completion when 10 KB or larger, an hour
# otherwise (../shared/reference/fal-queue-protocol.md): a request submitted more recently
# than this cannot have expired.
RESULT_KEPT_AT_LEAST_S = 300.0


@dataclasses.dataclass
class _Request:
    """One planned request of the video being run, and where it stands."""

    planned: PlannedRequest
    rhash: str
    older_hash: str | None = None  # the same request in an older journal (see request_hash)
    entry: Entry | None = None
    stored: StoredResult | None = None
    fresh: bool = False  # submitted (and paid for) by this run, not taken from the journal


class FalBackend:
    """SAM 3 / 3.1 on fal's hosted queue. One instance = one httpx client and one journal,
    shared by every thread that calls :meth:`segment`; use it as a context manager (or
    call close) so connections and the journal are released."""

    name = "fal"

    def __init__(self, config: FalConfig, *, transport: httpx.BaseTransport | None = None,
                 journal: Journal | None = None, stored_only: bool = False, **client_options: Any) -> None:
        self.config = config
        self.client = FalClient(config, transport=transport, **client_options)
        self._owns_journal = journal is None
        self.journal = journal if journal is not None else Journal(config.journal_path)
        self.storage = FalStorage(self.client, self.journal)
        # stored_only: decode journaled results, never upload or submit (sam31-video redecode).
        self.stored_only = stored_only
        self._lock = threading.Lock()
        self._missing_endpoints: set[str] = set()
        self._known_endpoints: set[str] = set()
        # Until one submit to an endpoint succeeded, submits to it go one at a time, so a
        # missing endpoint costs one 404, not one per request in flight.
        self._first_submit = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.max_concurrent_requests)

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

    # -- plan + cost ----------------------------------------------------------------------

    def plan(self, request: SegmentRequest) -> list[PlannedRequest]:
        """The fal requests one video with ``request`` becomes (see planner.py)."""
        c = self.config
        return plan(request, visual_endpoint=c.endpoint, objects_endpoints=c.objects_endpoints, text_mode=c.text_mode,
                    fallbacks=c.fallback_endpoints, render=c.render_overlay)

    def estimate_cost(self, video: VideoInfo, request: SegmentRequest) -> CostEstimate:
        """Every planned request x frames x its endpoint's price (``video.frame_count`` is
        what will be sent: pass the trimmed count when segmenting a frame range). Refuses
        what no planned endpoint takes (e.g. a threshold below its minimum), so a run that
        estimates first is refused before its first video."""
        planned = self.plan(request)
        _check_planned(planned, frame_indices=False)
        usd, detail = plan_cost(planned, video.frame_count,
                                lambda p: self._endpoint_for(p.endpoints, raise_missing=False))
        return CostEstimate(backend=self.name, frames=video.frame_count, usd=usd, detail=detail)

    def stored_usd(self, video: VideoSource, request: SegmentRequest, *, frames: FrameRange | None = None,
                   work_key: str | None = None) -> float:
        """What :meth:`estimate_cost` counts for this video that a run will not pay again:
        planned requests whose result the journal holds, or that are still running at fal
        (a run takes or follows them). Hashes a local file only when the journal has
        entries for ``work_key`` (the hash is remembered for the upload)."""
        if work_key is None or not self.journal.entries(work_keys=[work_key]):
            return 0.0
        indices, planned = self._planned(video, request, frames)
        count = len(indices) if indices is not None else video.info.frame_count
        usd = 0.0
        for r in self._requests(planned, self._video_identity(video, indices), indices):
            entry = self._latest(work_key, r.rhash, r.older_hash)
            if entry is not None and ((entry.state in HAS_RESULT and entry.has_result)
                                      or entry.state is RequestState.SUBMITTED):
                usd += endpoint_table.endpoint(entry.endpoint).cost_usd(count) or 0.0
        return usd

    def _planned(self, video: VideoSource, request: SegmentRequest,
                 frames: FrameRange | None) -> tuple[range | None, list[PlannedRequest]]:
        """The frames cut from the video (None: all of it) and the requests it becomes."""
        indices = None
        if frames is not None and not frames.is_whole(video.info.frame_count):
            indices = frames.indices(video.info.frame_count)
        return indices, self.plan(remap_prompts(request, indices))

    @staticmethod
    def _requests(planned: list[PlannedRequest], identity: str, indices: range | None) -> list[_Request]:
        """Each planned request with its journal hashes (today's, and the older positional one)."""
        return [_Request(p, request_hash(p, identity, indices), request_hash(p, identity, indices, with_position=True))
                for p in planned]

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
        indices, planned = self._planned(video, request, frames)
        if indices is not None and video.path is None:
            raise InvalidRequest("a frame range is cut from the local video file before upload; this sample has only a URL")
        _check_planned(planned)
        first = endpoint_table.endpoint(planned[0].endpoints[0])
        record = RunRecord(backend=self.name, endpoint=first.id, model=first.model)
        done: list[int] = []
        run = self._run(video, planned, indices, work_key, record, on_progress, cancel or CancelToken(), done)
        return FalSegmentRun(run, record, lambda: self._commit(done))

    def _commit(self, done: list[int]) -> None:
        for entry_id in done:
            self.journal.written(entry_id)

    def _run(self, video: VideoSource, planned: list[PlannedRequest], indices: range | None, work_key: str | None,
             record: RunRecord, on_progress: ProgressCallback | None, cancel: CancelToken,
             done: list[int]) -> Iterator[FrameResult]:
        cancel.raise_if_cancelled()
        identity = self._video_identity(video, indices)
        requests = self._requests(planned, identity, indices)
        for r in requests:  # every uncertain submit stops the video before anything is sent
            r.entry = self._reusable_entry(work_key, r.rhash, r.older_hash)
            if self.stored_only and (r.entry is None or r.entry.state not in HAS_RESULT):
                raise InvalidRequest(f"{r.planned.key}: no stored fal result for this video in {self.journal.location} "
                                     "(redecode only reads results a run already paid for)")
        try:
            with contextlib.ExitStack() as stack:
                get_url = self._lazy_input_url(video, indices, cancel, on_progress, stack)
                self._run_requests(requests, get_url, work_key, record, on_progress, cancel)
        except BaseException:
            # A failed video may still have paid for some requests: the report counts them
            # (best effort: never hide the error that stopped the video).
            try:
                for r in requests:
                    if r.entry is not None:
                        r.entry = self.journal.get(r.entry.id)
                self._record(record, requests)
            except Exception:  # noqa: BLE001
                log.exception("could not record the requests of a failed video")
            raise
        info = video.info if indices is None else video.info.model_copy(update={"frame_count": len(indices)})
        decoded = []
        for r in requests:
            assert r.entry is not None and r.stored is not None
            r.entry = self.journal.get(r.entry.id)
            done.append(r.entry.id)
            decoded.append(self._decode_or_fetch_again(r, info))
        self._record(record, requests)
        for d in decoded:
            record.outputs.update(d.files)
        rid = ", ".join(r.entry.request_id or "-" for r in requests if r.entry is not None)
        report(on_progress, Progress("decode", "decoding masks", frames_total=info.frame_count, request_id=rid))
        for frame in merge(requests, decoded, info.frame_count):
            cancel.raise_if_cancelled()
            yield frame if indices is None else FrameResult(indices[frame.frame_index], frame.objects)
        report(on_progress, Progress("done", request_id=rid, frames_total=info.frame_count))

    def _decode_or_fetch_again(self, r: _Request, info: VideoInfo) -> DecodedResult:
        """Decode; a stored result that is not JSON at all was garbled on the way: fetch it
        again once (paid for, and fal keeps it minutes to an hour). Still garbled, or a
        redecode (which sends nothing): the entry is left to be fetched by a rerun."""
        assert r.entry is not None
        try:
            return self._decode(r, info)
        except ResultNotJson as exc:
            self.journal.mark(r.entry.id, RequestState.SUBMITTED, str(exc))
            if self.stored_only:
                raise ResultNotJson(f"{exc}; it will be fetched again by a rerun") from None
            first = exc
        r.stored = self._fetch(r.entry, r.entry.handle())
        r.entry = self.journal.get(r.entry.id)
        try:
            return self._decode(r, info)
        except ResultNotJson as exc:
            self.journal.mark(r.entry.id, RequestState.SUBMITTED, str(exc))
            raise ResultNotJson(f"{first}; fetched again, still not JSON. {r.entry.describe()} stays in the journal: "
                                "a rerun fetches it again, without paying") from None

    def _decode(self, r: _Request, info: VideoInfo) -> DecodedResult:
        assert r.entry is not None and r.stored is not None
        spec = endpoint_table.endpoint(r.entry.endpoint)
        return decode_stream(r.stored.chunks, r.stored.attachments, spec, layout=self.layout_for(spec.id),
                             frame_count=info.frame_count, height=info.height, width=info.width,
                             request_id=r.entry.request_id or f"entry #{r.entry.id}")

    def layout_for(self, endpoint: str) -> RleLayout:
        return self.config.rle_layouts.get(endpoint, DEFAULT_LAYOUT)

    def _record(self, record: RunRecord, requests: list[_Request]) -> None:
        entries = [r.entry for r in requests if r.entry is not None]
        used = list(dict.fromkeys(e.endpoint for e in entries))
        record.endpoint = used[0] if used else record.endpoint
        record.model = ",".join(dict.fromkeys(endpoint_table.endpoint(e).model for e in used)) or record.model
        record.request_id = ",".join(e.request_id for e in entries if e.request_id) or None
        units = [e.billable_units for e in entries if e.billable_units is not None]
        record.billable_units = sum(units) if units else None
        reused = [r.entry.billable_units for r in requests
                  if r.entry is not None and not r.fresh and r.entry.billable_units is not None]
        record.reused_units = sum(reused) if reused else None
        record.requests = [{"key": r.planned.key, "endpoint": r.entry.endpoint, "request_id": r.entry.request_id,
                            "billable_units": r.entry.billable_units, "reused": not r.fresh}
                           for r in requests if r.entry is not None]
        for r in requests:
            if r.entry is None:
                continue
            if r.entry.endpoint != r.planned.endpoints[0]:
                warning = (f"{r.planned.key}: fal has no endpoint {r.planned.endpoints[0]}; labels come from "
                           f"{r.entry.endpoint} ({endpoint_table.endpoint(r.entry.endpoint).model}) instead")
                if warning not in record.warnings:
                    record.warnings.append(warning)
            if r.planned.kind == "concept_instances" and endpoint_table.endpoint(r.entry.endpoint).model == "sam3":
                note = "text concepts were tracked as instances by SAM 3 (fal's per-object endpoint)"
                if note not in record.warnings:
                    record.warnings.append(note)

    # -- running the requests of one video -----------------------------------------------

    def _run_requests(self, requests: list[_Request], get_url: Callable[[], str], work_key: str | None,
                      record: RunRecord, on_progress: ProgressCallback | None, cancel: CancelToken) -> None:
        """Every request to its result, all at once; raise the first failure after all stopped
        (results that did arrive stay journaled, so a rerun pays only for what failed)."""
        pending = [r for r in requests if r.entry is None or r.entry.state not in HAS_RESULT]
        for r in requests:
            if r not in pending:
                assert r.entry is not None
                r.stored = self.journal.open_result(r.entry.id)
                record.warnings.append(f"{r.planned.key}: reused the stored result of fal request "
                                       f"{r.entry.request_id} (no new charge)")
                report(on_progress, Progress("fetch", f"{r.planned.key}: using the stored result of request "
                                                      f"{r.entry.request_id}", request_id=r.entry.request_id))
        if not pending:
            return
        # On worker threads even when there is one: a Ctrl-C then lands in wait_all, which
        # cancels the requests at fal (SDK and apply_model callers have no handler of ours).
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(pending), thread_name_prefix="sam31-fal-request") as pool:
            errors, interrupted = wait_all(
                [pool.submit(self._one_request, r, get_url, work_key, on_progress, cancel) for r in pending], cancel)
        if interrupted is not None:
            raise interrupted
        if errors:
            raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])

    def _one_request(self, r: _Request, get_url: Callable[[], str], work_key: str | None,
                     on_progress: ProgressCallback | None, cancel: CancelToken) -> None:
        with self._slots, self.client.cancellable(cancel):  # retry waits end at a cancel
            while True:
                cancel.raise_if_cancelled()
                entry = r.entry
                if entry is not None and entry.state is RequestState.SUBMITTING:
                    entry = r.entry = self._await_other_submit(entry, r.planned.key, on_progress, cancel)
                if entry is not None and entry.state in HAS_RESULT and entry.has_result:
                    r.stored = self.journal.open_result(entry.id)
                    return
                if entry is not None and entry.state is RequestState.SUBMITTED:
                    handle = entry.handle()
                    report(on_progress, Progress("submit", f"{r.planned.key}: following request {handle.request_id} "
                                                           "from the journal", request_id=handle.request_id))
                else:
                    r.entry, handle = self._submit_new(r, get_url(), work_key, cancel)
                    if handle is None:  # another process holds this request: follow its entry
                        continue
                    r.fresh = True
                    report(on_progress, Progress("submit", f"{r.planned.key}: submitted to {handle.endpoint}",
                                                 request_id=handle.request_id))
                assert r.entry is not None
                try:
                    r.stored = self._wait_and_fetch(r.entry, handle, r.planned.key, on_progress, cancel)
                    return
                except EndpointNotFound as exc:  # accepted, then "no such app" at status/result
                    self._endpoint_missing(r.entry, exc)
                    r.entry = None

    def _await_other_submit(self, entry: Entry, key: str, on_progress: ProgressCallback | None,
                            cancel: CancelToken) -> Entry:
        """Another live process is submitting this very request (same journal): wait for
        its answer instead of paying again, and return the entry as it then stands."""
        report(on_progress, Progress("submit", f"{key}: another process is submitting this request; waiting for it"))
        deadline = time.monotonic() + OTHER_SUBMIT_WAIT_S
        while entry.state is RequestState.SUBMITTING and entry.owner_alive() and time.monotonic() < deadline:
            if cancel.wait(0.2):
                cancel.raise_if_cancelled()
            entry = self.journal.get(entry.id)
        if entry.state in (RequestState.SUBMITTING, RequestState.UNCERTAIN):
            raise SubmitUncertain(
                f"another process claimed this request and did not get fal's answer: {entry.describe()} in "
                f"{self.journal.location}. It was not resent; check your fal dashboard, then resume with "
                "resubmit_uncertain=True (CLI: sam31-video resume --resubmit-uncertain) to submit it again")
        return entry  # submitted or done there: followed; rejected, failed or expired: a new attempt here

    def _endpoint_missing(self, entry: Entry, exc: EndpointNotFound) -> None:
        """fal has no such app: nothing was billed; later requests skip it."""
        self.journal.mark(entry.id, RequestState.REJECTED, str(exc))
        with self._lock:
            self._missing_endpoints.add(entry.endpoint)
        log.warning("fal has no endpoint %s (%s)", entry.endpoint, exc)

    def _endpoint_for(self, chain: Iterable[str], *, raise_missing: bool = True) -> str:
        """The first endpoint of ``chain`` that fal has not said is missing."""
        chain = list(chain)
        with self._lock:
            for e in chain:
                if e not in self._missing_endpoints:
                    return e
        if raise_missing:
            raise EndpointNotFound(chain[-1], detail=f"nor any fallback ({', '.join(chain)})")
        return chain[-1]

    def _submit_new(self, r: _Request, url: str, work_key: str | None,
                    cancel: CancelToken) -> tuple[Entry, RequestHandle | None]:
        """Claim the request in the journal (atomic across processes) and submit it; when
        another process claimed it first, its entry and no handle."""
        while True:
            cancel.raise_if_cancelled()
            current = self._endpoint_for(r.planned.endpoints)
            body = endpoint_table.build_body(endpoint_table.endpoint(current), url, **r.planned.fields)
            entry, mine = self.journal.claim(work_key=work_key, request_hash=r.rhash, endpoint=current, payload=body,
                                             webhook_url=self.config.webhook_url)
            if not mine:
                return entry, None
            try:
                return entry, self._submit(entry, body)
            except EndpointNotFound as exc:
                self._endpoint_missing(entry, exc)

    def _latest(self, work_key: str, *hashes: str | None) -> Entry | None:
        """The newest journal entry of this work under any of ``hashes``."""
        found = [e for h in hashes if h is not None and (e := self.journal.latest(work_key, h)) is not None]
        return max(found, key=lambda e: e.id, default=None)

    def _reusable_entry(self, work_key: str | None, rhash: str, older_hash: str | None = None) -> Entry | None:
        """The journal entry to continue from, or None to submit anew."""
        if work_key is None:
            return None
        entry = self._latest(work_key, rhash, older_hash)
        if entry is None:
            return None
        if entry.state in HAS_RESULT:
            return entry if entry.has_result else None  # a pruned old result: submit anew
        if entry.state is RequestState.SUBMITTED:
            return entry
        if entry.state is RequestState.SUBMITTING and entry.owner_alive():
            return entry  # another process is submitting it right now: wait for it (_one_request)
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

    # -- upload + submit ----------------------------------------------------------------

    def _video_identity(self, video: VideoSource, indices: range | None) -> str:
        if video.url is not None and indices is None:
            return f"url:{video.url}"
        assert video.path is not None
        return f"sha256:{self.storage.sha256(video.path)}"

    def _lazy_input_url(self, video: VideoSource, indices: range | None, cancel: CancelToken,
                        on_progress: ProgressCallback | None, stack: contextlib.ExitStack) -> Callable[[], str]:
        """A function giving a URL fal can read the (trimmed) video from, made on first
        call and reused by every request of the video: the sample's own public URL when
        there is one and no trimming, else one upload (reused when the bytes were sent before)."""
        lock, cache = threading.Lock(), []

        def get() -> str:
            with lock:
                if not cache:
                    cache.append(self._input_url(video, indices, cancel, on_progress, stack))
                return cache[0]

        return get

    def _input_url(self, video: VideoSource, indices: range | None, cancel: CancelToken,
                   on_progress: ProgressCallback | None, stack: contextlib.ExitStack) -> str:
        if indices is None and video.url is not None:
            return video.url
        assert video.path is not None
        if indices is None:
            report(on_progress, Progress("upload", f"uploading {video.path.name}"))
            return self.storage.url_for(video.path, cancel=cancel)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sam31-trim-")))
        report(on_progress, Progress("upload", f"cutting frames {indices.start}..{indices[-1]} of {video.path.name}"))
        trimmed = tmp / f"{video.path.stem}_{indices.start}_{indices.stop}_{indices.step}.mp4"
        video_ops.trim_video(video.path, trimmed, indices, video.info, crf=self.config.trim_crf)
        cancel.raise_if_cancelled()
        report(on_progress, Progress("upload", f"uploading {len(indices)} frames of {video.path.name}"))
        return self.storage.url_for(trimmed, cancel=cancel)

    def _submit(self, entry: Entry, payload: dict[str, Any]) -> RequestHandle:
        with self._lock:
            known = entry.endpoint in self._known_endpoints
        if not known:
            with self._first_submit:
                with self._lock:
                    if entry.endpoint in self._missing_endpoints:  # another thread found it missing meanwhile
                        raise EndpointNotFound(entry.endpoint, detail="found missing by another request")
                return self._send_submit(entry, payload)
        return self._send_submit(entry, payload)

    def _send_submit(self, entry: Entry, payload: dict[str, Any]) -> RequestHandle:
        try:
            handle = self.client.submit(entry.endpoint, payload, webhook_url=self.config.webhook_url)
        except EndpointNotFound:
            with self._lock:  # before _first_submit is released: the next request must not ask again
                self._missing_endpoints.add(entry.endpoint)
            raise
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
        return handle

    # -- wait + fetch -------------------------------------------------------------------

    def _wait_and_fetch(self, entry: Entry, handle: RequestHandle, key: str, on_progress: ProgressCallback | None,
                        cancel: CancelToken) -> StoredResult:
        """Poll until COMPLETED, then fetch and journal the result at once."""
        delay = self.config.poll_initial_s
        outage_since: float | None = None
        rid = handle.request_id
        # Counted from the submit, so a resumed request keeps its original deadline.
        deadline = entry.created_at + self.config.job_timeout_s if self.config.job_timeout_s is not None else None
        while True:
            if cancel.cancelled:
                self._cancel_request(entry, handle)
                raise Cancelled(f"cancelled; asked fal to stop request {rid}")
            if deadline is not None and time.time() > deadline:
                return self._give_up(entry, handle, key)
            try:
                status = self.client.status(handle)
                outage_since = None
            except Cancelled:  # while waiting to retry the status call
                self._cancel_request(entry, handle)
                raise Cancelled(f"cancelled; asked fal to stop request {rid}") from None
            except (RequestGone, BackendUnavailable) as exc:
                age = time.time() - entry.created_at
                if isinstance(exc, RequestGone) and age > RESULT_KEPT_AT_LEAST_S:
                    self.journal.mark(entry.id, RequestState.EXPIRED, str(exc))
                    raise
                # An outage; or a 404 minutes after the submit, too soon for the result to
                # have expired: fal's hiccup (unconfirmed whether fal ever answers so), polled
                # again and never marked expired (which would resubmit it).
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since > self.config.status_outage_s:
                    what = (f"fal answered 'not found' for request {rid} for {self.config.status_outage_s:g} s, "
                            f"{age:.0f} s after it was submitted (too soon for its result to expire)"
                            if isinstance(exc, RequestGone) else str(exc))
                    raise BackendUnavailable(
                        f"{what}; {entry.describe()} stays in the journal: rerun the same job (or resume it) "
                        "to pick it up without paying again"
                    ) from exc
                status = None
            match status:
                case Queued(position):
                    report(on_progress, Progress("queued", f"{key}: in queue at position {position}",
                                                 queue_position=position, request_id=rid))
                case InProgress(logs):
                    report(on_progress, Progress("running", f"{key}: {logs[-1] if logs else 'running'}", logs=logs,
                                                 request_id=rid))
                case Completed():
                    report(on_progress, Progress("fetch", f"{key}: fetching result", request_id=rid))
                    return self._fetch(entry, handle)
            if cancel.wait(delay):
                continue
            delay = min(self.config.poll_max_s, delay * POLL_GROWTH)

    def _give_up(self, entry: Entry, handle: RequestHandle, key: str) -> StoredResult:
        """The job passed job_timeout_s: cancel it at fal; keep a result that beat the cancel."""
        self._cancel_request(entry, handle)
        current = self.journal.get(entry.id)
        if current.state in HAS_RESULT:
            return self.journal.open_result(entry.id)
        message = (f"{key}: fal request {handle.request_id} did not finish within job_timeout_s="
                   f"{self.config.job_timeout_s:g} s of its submit; it was cancelled at fal. For very long videos "
                   "raise it (backend_options={'job_timeout_s': ...}); a rerun submits it again")
        self.journal.mark(entry.id, RequestState.CANCELLED, message)
        raise RemoteFailure(message, request_id=handle.request_id)

    def _fetch(self, entry: Entry, handle: RequestHandle) -> StoredResult:
        """Fetch the result and any RLE file it points to, and store both in the journal.
        The result's bytes go to the journal as they arrive (compressed), never held whole.
        A read whose connection broke is started again (it is paid for, and fal may keep it
        only minutes): up to max_retries times, then the request stays 'submitted'."""
        attempt = 0
        while True:
            try:
                return self._fetch_once(entry, handle)
            except ResultInterrupted as exc:
                if attempt >= self.config.max_retries:
                    raise ResultInterrupted(f"{exc}, {attempt + 1} times; {entry.describe()} stays in the journal: "
                                            "a rerun reads it again without paying") from exc
                self.client.wait_before_retry(attempt)
                attempt += 1

    def _fetch_once(self, entry: Entry, handle: RequestHandle) -> StoredResult:
        try:
            with ResultSpool() as spool:
                with self.client.result_stream(handle, max_bytes=self.config.max_result_bytes) as stream:
                    for chunk in stream.chunks:
                        spool.write(chunk)
                attachments = {}
                if endpoint_table.endpoint(entry.endpoint).output == "union_rle":  # only its 'rle' may be a file
                    # Small top-level members only (the long arrays are skipped): which files to fetch now.
                    small = {k: v for k, v in jsonstream.members(spool.chunks(), STREAMED) if not isinstance(v, Iterator)}
                    attachments = {key: read_attachment(self.client.download(url))  # failure leaves 'submitted'
                                   for key, url in files_to_download(small).items()}
                self.journal.completed_raw(entry.id, spool, attachments, stream.billable_units)
        except EndpointNotFound:
            raise
        except ResultTooLarge as exc:  # paid for and kept by fal for minutes: stay 'submitted', never resubmit
            self.journal.mark(entry.id, RequestState.SUBMITTED, str(exc))
            raise
        except jsonstream.JsonStreamError as exc:
            self.journal.mark(entry.id, RequestState.SUBMITTED, f"unreadable result: {exc}")
            raise UnexpectedResponse(f"fal request {handle.request_id}: the result is not JSON ({exc}); "
                                     "a rerun fetches it again") from None
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
        return self.journal.open_result(entry.id)

    def _cancel_request(self, entry: Entry, handle: RequestHandle) -> None:
        """Ask fal to stop; a request that already completed is paid for, so keep its result."""
        try:
            with self.client.cancellable(None):  # the run is cancelled: this call must still get through
                outcome = self.client.cancel(handle)
        except SamError as exc:
            log.warning("could not cancel fal request %s: %s", handle.request_id, exc)
            return
        if outcome is CancelOutcome.STOPPING:
            self.journal.mark(entry.id, RequestState.CANCELLED, "cancelled by the user")
        elif outcome is CancelOutcome.NOT_FOUND:
            self.journal.mark(entry.id, RequestState.EXPIRED, "fal no longer knows this request (cancel answered 404)")
        else:
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


def merge(requests: list[_Request], decoded: list[DecodedResult], frame_count: int) -> Iterator[FrameResult]:
    """The frames of one video from all its requests' answers, read side by side as they
    stream: a visual object's or a union concept's mask takes that request's track id;
    instance tracks get ids unique across concepts (planner.instance_ids), at most
    ``max_tracks`` per concept. Masks stay crops (no full-frame array per object)."""
    fixed = [r.planned.track_id for r in requests if r.planned.track_id is not None]
    instance = [i for i, r in enumerate(requests) if r.planned.kind == "concept_instances"]
    kept = [decoded[i].track_ids()[: requests[i].planned.max_tracks] for i in instance]
    maps = dict(zip(instance, instance_ids(fixed, kept)))
    together = frames_together(decoded, frame_count)
    for index in range(frame_count):
        objects = []
        for i, (r, d, masks) in enumerate(zip(requests, decoded, next(together))):
            shape = (d.height, d.width)
            for cm in masks:
                if r.planned.track_id is not None:
                    track_id = r.planned.track_id
                elif cm.fal_track_id is not None and cm.fal_track_id in maps.get(i, {}):
                    track_id = maps[i][cm.fal_track_id]
                else:
                    continue
                objects.append(TrackedObject.from_crop(track_id, r.planned.label, cm.score, cm.crop, cm.box, shape))
        objects.sort(key=lambda o: o.track_id)
        yield FrameResult(index, objects)


def _check_planned(planned: list[PlannedRequest], *, frame_indices: bool = True) -> None:
    """Refuse planned requests some endpoint of theirs cannot take (see endpoints.problems)."""
    problems = [f"{p.key}: {msg}" for p in planned for e in p.endpoints
                for msg in endpoint_table.problems(endpoint_table.endpoint(e), prompt=p.fields.get("prompt", ""),
                                                   point_prompts=p.fields.get("point_prompts", []),
                                                   box_prompts=p.fields.get("box_prompts", []),
                                                   detection_threshold=p.fields["detection_threshold"],
                                                   frame_indices=frame_indices)]
    if problems:
        raise InvalidRequest(problems)
