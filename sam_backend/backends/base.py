"""The Backend protocol and the registry that finds backends by name.

A backend turns one video plus a :class:`~sam_backend.types.SegmentRequest` into a stream
of :class:`~sam_backend.types.FrameResult`, one per frame, in frame order, so the writer
can flush in batches and memory stays bounded by a batch rather than by the video.

Adding a backend is one new file: ``sam_backend/backends/<name>.py`` (or a package) that
defines ``BACKEND``, a callable returning a :class:`Backend` from keyword options; it also
accepts ``environ=`` (a mapping to read credentials from instead of the process
environment, e.g. an operator's secrets).
Packages outside this one can register through the ``sam31_video.backends`` entry point.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import importlib.metadata
import logging
import pkgutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, model_validator

from ..errors import Cancelled, InvalidRequest
from ..types import FrameRange, FrameResult, Progress, SegmentRequest, VideoInfo

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress], None]


class VideoSource(BaseModel):
    """The video to segment: a local file, a public URL, or both (URL wins for remote
    backends, the file for local ones), with what a decoder said about it."""

    model_config = ConfigDict(frozen=True)

    info: VideoInfo
    path: Path | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _has_location(self) -> VideoSource:
        if self.path is None and self.url is None:
            raise ValueError("VideoSource needs a path or a url")
        return self


class CancelToken:
    """Set from any thread to stop a run; backends check it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("run cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if cancelled meanwhile (so polling loops wake at once)."""
        return self._event.wait(seconds)


def wait_all(futures: Iterable[concurrent.futures.Future[Any]],
             cancel: CancelToken) -> tuple[list[BaseException], KeyboardInterrupt | None]:
    """Wait for every future: their exceptions in order, and the Ctrl-C that came meanwhile.
    A Ctrl-C (KeyboardInterrupt in the waiting thread: a script or notebook) cancels
    ``cancel``, so the workers cancel their remote requests and stop, and waiting goes on
    until they did; the caller raises it after its own bookkeeping. A second Ctrl-C stops
    waiting at once."""
    errors: list[BaseException] = []
    interrupted: KeyboardInterrupt | None = None
    for future in futures:
        while True:
            try:
                future.result()
            except KeyboardInterrupt as exc:
                if interrupted is not None:
                    raise
                interrupted = exc
                log.warning("interrupted: cancelling every request in flight (Ctrl-C again to stop waiting)")
                cancel.cancel()
                continue
            except BaseException as exc:  # noqa: BLE001 - the caller re-raises, once every worker stopped
                errors.append(exc)
            break
    return errors, interrupted


class CostEstimate(BaseModel):
    """What a run is expected to cost before it starts."""

    model_config = ConfigDict(frozen=True)

    backend: str
    frames: int
    usd: float | None = None  # None: no money (see ``billed``) or no known price
    billed: bool = True  # False where money is not the cost (local GPU)
    detail: str = ""


@dataclasses.dataclass
class RunRecord:
    """What a run did, filled in while it streams: where the labels came from and what
    was billed. Stored with the labels so a user can trace them back."""

    backend: str
    model: str = ""
    endpoint: str | None = None
    request_id: str | None = None
    billable_units: float | None = None
    # Of billable_units, what results paid for by an earlier run account for (taken from the
    # journal: nothing new was charged for them).
    reused_units: float | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)  # e.g. rendered video URL
    # One entry per remote request the video took (key, endpoint, request_id, billable_units).
    requests: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class SegmentRun(Iterator[FrameResult]):
    """The frames of one run, plus its :class:`RunRecord` (complete once exhausted)."""

    def __init__(self, frames: Iterator[FrameResult], record: RunRecord) -> None:
        self._frames = frames
        self.record = record

    def __iter__(self) -> SegmentRun:
        return self

    def __next__(self) -> FrameResult:
        return next(self._frames)

    def close(self) -> None:
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()


@runtime_checkable
class Backend(Protocol):
    """Turns one video + prompts into per-frame tracked objects."""

    name: str

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
        """Stream one FrameResult per processed frame, in order: frame_index 0..N-1, or the
        indices of ``frames`` (the video's own 0-based indices, never renumbered).

        ``work_key`` names this unit of work across runs and processes (e.g.
        "dataset/sample_id/field"); a backend that bills per request uses it to pick up an
        earlier submit instead of paying twice. Implementations validate ``request``
        against ``video.info`` (and ``frames``) in this call, before returning, so before
        anything is spent; do the work while the run is iterated; and raise
        :class:`~sam_backend.errors.Cancelled` promptly once ``cancel`` is set.
        """
        ...

    def estimate_cost(self, video: VideoInfo, request: SegmentRequest) -> CostEstimate: ...

    def close(self) -> None: ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


BackendFactory = Callable[..., Backend]
_ENTRY_POINT_GROUP = "sam31_video.backends"


def available_backends() -> list[str]:
    """Names that :func:`get_backend` accepts."""
    here = Path(__file__).parent
    names = {m.name for m in pkgutil.iter_modules([str(here)]) if m.name != "base" and not m.name.startswith("_")}
    names |= {ep.name for ep in importlib.metadata.entry_points(group=_ENTRY_POINT_GROUP)}
    return sorted(names)


def backend_factory(name: str) -> BackendFactory:
    """The factory registered under ``name`` (imported on demand: no torch unless asked)."""
    for ep in importlib.metadata.entry_points(group=_ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    if name not in available_backends():
        raise InvalidRequest(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    module = importlib.import_module(f"{__package__}.{name}")
    factory = getattr(module, "BACKEND", None)
    if factory is None:
        raise ValueError(f"backend module {module.__name__} defines no BACKEND")
    return factory


def get_backend(name: str, *, environ: Mapping[str, str] | None = None, **options: Any) -> Backend:
    """Build the backend called ``name`` with its own keyword options."""
    return backend_factory(name)(environ=environ, **options)


def report(on_progress: ProgressCallback | None, progress: Progress) -> None:
    if on_progress is not None:
        on_progress(progress)
