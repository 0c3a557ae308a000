"""The fal backend: upload, submit once, poll with backoff, fetch at once, decode."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from ...cost import fal_cost_usd
from ...errors import Cancelled, InvalidRequest, RemoteFailure
from ...types import FrameRange, FrameResult, Progress, SegmentRequest, VideoInfo
from ..base import CancelToken, CostEstimate, ProgressCallback, RunRecord, SegmentRun, VideoSource, report
from .client import Completed, EndpointNotFound, FalClient, FalResult, InProgress, Queued, RequestHandle
from .config import FalConfig
from .decoders import NoLabelsInResponse, decode_output
from .uploads import FalStorage


class FalBackend:
    """SAM 3.1 on fal's hosted queue. One instance = one httpx client; use it as a context
    manager (or call close) so connections are released."""

    name = "fal"

    def __init__(self, config: FalConfig, *, transport: httpx.BaseTransport | None = None, **client_options: Any) -> None:
        self.config = config
        self.client = FalClient(config, transport=transport, **client_options)
        self.storage = FalStorage(self.client)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **config_overrides: Any) -> FalBackend:
        return cls(FalConfig.from_env(os.environ if environ is None else environ, **config_overrides))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> FalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def estimate_cost(self, video: VideoInfo, request: SegmentRequest) -> CostEstimate:
        usd = fal_cost_usd(self.config.endpoint, video.frame_count)
        detail = f"{video.frame_count} frames on {self.config.endpoint}"
        return CostEstimate(backend=self.name, frames=video.frame_count, usd=usd, detail=detail)

    def segment(
        self,
        video: VideoSource,
        request: SegmentRequest,
        *,
        frames: FrameRange | None = None,
        work_key: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentRun:
        request.check_against(video.info, frames)  # before anything is uploaded or billed
        if frames is not None and not frames.is_whole(video.info.frame_count):
            raise InvalidRequest("the fal backend does not trim videos to a frame range yet; segment the whole video")
        record = RunRecord(backend=self.name, endpoint=self.config.endpoint, model=self.config.model_for(self.config.endpoint))
        return SegmentRun(self._run(video, request, record, on_progress, cancel or CancelToken()), record)

    def _run(self, video: VideoSource, request: SegmentRequest, record: RunRecord,
             on_progress: ProgressCallback | None, cancel: CancelToken) -> Iterator[FrameResult]:
        cancel.raise_if_cancelled()
        url = video.url
        if url is None:
            assert video.path is not None
            report(on_progress, Progress("upload", f"uploading {video.path.name}"))
            url = self.storage.url_for(video.path)
        cancel.raise_if_cancelled()
        handle = self._submit(request.to_wire(url), record)
        report(on_progress, Progress("submit", f"submitted to {handle.endpoint}", request_id=handle.request_id))
        result = self._wait(handle, on_progress, cancel)
        record.billable_units = result.billable_units
        decoded = decode_output(result.payload, video.info, request)
        record.outputs.update(decoded.files)
        if decoded.frames is None:
            raise NoLabelsInResponse(
                f"{handle.endpoint} returned only rendered media ({', '.join(decoded.files) or 'nothing'}), "
                "no per-frame masks: labels need an RLE endpoint such as fal-ai/sam-3-1/video-rle "
                f"(request {handle.request_id})"
            )
        report(on_progress, Progress("decode", "decoding masks", frames_total=video.info.frame_count, request_id=handle.request_id))
        yield from decoded.frames()
        report(on_progress, Progress("done", request_id=handle.request_id, frames_total=video.info.frame_count))

    def _submit(self, payload: dict[str, Any], record: RunRecord) -> RequestHandle:
        endpoint = self.config.endpoint
        try:
            handle = self.client.submit(endpoint, payload)
        except EndpointNotFound:
            fallback = self.config.fallback_endpoints.get(endpoint)
            if not fallback:
                raise
            record.warnings.append(f"fal has no endpoint {endpoint}; used {fallback} ({self.config.model_for(fallback)}) instead")
            handle = self.client.submit(fallback, payload)
        record.endpoint, record.model, record.request_id = handle.endpoint, self.config.model_for(handle.endpoint), handle.request_id
        return handle

    def _wait(self, handle: RequestHandle, on_progress: ProgressCallback | None, cancel: CancelToken) -> FalResult:
        """Poll until COMPLETED, then fetch the result at once (fal keeps big ones ~6 min)."""
        delay = self.config.poll_initial_s
        while True:
            if cancel.cancelled:
                self.client.cancel(handle)
                raise Cancelled(f"cancelled; asked fal to stop request {handle.request_id}")
            status = self.client.status(handle)
            match status:
                case Queued(position):
                    report(on_progress, Progress("queued", f"in queue at position {position}", queue_position=position, request_id=handle.request_id))
                case InProgress(logs):
                    report(on_progress, Progress("running", logs[-1] if logs else "running", logs=logs, request_id=handle.request_id))
                case Completed(error=error, error_type=error_type):
                    if error:
                        raise RemoteFailure(f"fal failed the job: {error_type or 'error'}: {error}", request_id=handle.request_id)
                    report(on_progress, Progress("fetch", "fetching result", request_id=handle.request_id))
                    return self.client.result(handle)
            if cancel.wait(delay):
                continue
            delay = min(self.config.poll_max_s, delay * 1.5)
