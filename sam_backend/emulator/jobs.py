"""fal's queue semantics: job states, queue positions, workers, cancellation.

Like fal's, the queue moves on with time: a job waits IN_QUEUE for ``queue_time_s`` after
its submit, whether anyone polls or not, and is then handed to a worker. For tests that
need the exact same IN_QUEUE -> IN_PROGRESS -> COMPLETED sequence on every run,
``queue_steps`` > 0 instead holds a job for that many status polls (positions counting
down to 0): a test knob, not how fal behaves. A released job waits IN_QUEUE (position = place in the waiting line) until one of
``workers`` threads takes it; it then stays IN_PROGRESS for at least ``service_time_s``.
Everything here is independent of what a job computes: the work is the ``runner``
callable, which returns ``(output, billable_units)`` or raises ``JobFailure``.
"""

from __future__ import annotations

import collections
import heapq
import json
import dataclasses
import enum
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from . import failures
from .config import LARGE_RESULT_BYTES, AppSpec
from .failures import JobFailure


class JobState(str, enum.Enum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


@dataclasses.dataclass(eq=False)
class Job:
    """One submitted request. Mutable fields change only under the manager's lock."""

    request_id: str
    app: AppSpec
    owner_app: str  # "<owner>/<alias>": the part of the app id the request URLs keep
    payload: dict[str, Any]
    webhook_url: str | None
    polls_left: int
    logs: collections.deque[dict[str, Any]]
    created_at: float = dataclasses.field(default_factory=time.time)
    state: JobState = JobState.IN_QUEUE
    released: bool = False
    started_at: float | None = None
    completed_at: float | None = None
    output: dict[str, Any] | None = None
    billable_units: int = 0
    failure: JobFailure | None = None
    output_bytes: int = 0  # size of the result JSON: large results expire sooner
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)

    def log(self, message: str, level: str = "INFO") -> None:
        # deque.append is atomic, so the runner may log without the manager's lock.
        self.logs.append(
            {"message": message, "level": level, "source": "USER", "timestamp": datetime.now(timezone.utc).isoformat()}
        )

    @property
    def inference_time(self) -> float:
        if self.started_at is None or self.completed_at is None:
            return 0.0
        return round(self.completed_at - self.started_at, 6)


Runner = Callable[[Job], "tuple[dict[str, Any], int]"]


class JobManager:
    """Owns every job and the worker threads. Thread-safe; start() then stop() once."""

    def __init__(
        self,
        runner: Runner,
        *,
        queue_steps: int,
        queue_time_s: float = 0.0,
        service_time_s: float,
        workers: int,
        result_ttl_s: float | None,
        log_window: int,
        large_result_ttl_s: float | None = None,
        on_finish: Callable[[Job], None] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        self._runner = runner
        self._queue_steps = queue_steps
        self._queue_time_s = queue_time_s
        self._due: list[tuple[float, int, Job]] = []  # (release time, seq, job): time-driven queue
        self._seq = 0
        self._service_time_s = service_time_s
        self._n_workers = workers
        self._result_ttl_s = result_ttl_s
        self._large_result_ttl_s = large_result_ttl_s
        self._log_window = log_window
        self._on_finish = on_finish
        self._on_start = on_start  # called with the number of jobs now IN_PROGRESS
        self._running = 0
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self._n_workers):
            t = threading.Thread(target=self._work, name=f"sam-emulator-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._release_due, name="sam-emulator-queue", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Cancel every unfinished job, wake and join the workers."""
        with self._cond:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel.set()
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        self._threads.clear()
        with self._cond:
            while self._waiting:
                self._finish_locked(self._waiting.popleft(), None, 0, failures.cancelled())
            for job in self._jobs.values():
                if job.state is not JobState.COMPLETED:
                    self._finish_locked(job, None, 0, failures.cancelled())

    # -- queue operations ----------------------------------------------------------------

    def submit(self, app: AppSpec, owner_app: str, payload: dict[str, Any], webhook_url: str | None, *, release_now: bool = False) -> tuple[Job, int]:
        """A new job and the queue position to report in the submit response."""
        job = Job(
            request_id=str(uuid.uuid4()),
            app=app,
            owner_app=owner_app,
            payload=payload,
            webhook_url=webhook_url,
            polls_left=0 if release_now else self._queue_steps,
            logs=collections.deque(maxlen=self._log_window),
        )
        with self._cond:
            if self._stopping:
                raise RuntimeError("emulator is stopping")
            self._jobs[job.request_id] = job
            if job.polls_left == 0 and (release_now or self._queue_time_s <= 0):
                self._release_locked(job)
            elif job.polls_left == 0:
                self._seq += 1
                heapq.heappush(self._due, (time.monotonic() + self._queue_time_s, self._seq, job))
                self._cond.notify_all()
            return job, self._position_locked(job)

    def get(self, request_id: str) -> Job | None:
        """The job, or None if unknown or forgotten after ``result_ttl_s``."""
        with self._cond:
            job = self._jobs.get(request_id)
            if job is not None and self._expired(job):
                del self._jobs[request_id]
                return None
            return job

    def poll(self, job: Job, *, with_logs: bool) -> tuple[int, dict[str, Any]]:
        """One status call: (HTTP status, body). Counts down a queued job's polls."""
        with self._cond:
            logs = list(job.logs) if with_logs else None
            if job.state is JobState.IN_QUEUE:
                position = self._position_locked(job)
                if not job.released:
                    job.polls_left -= 1
                    if job.polls_left <= 0:
                        self._release_locked(job)
                return 202, {"status": "IN_QUEUE", "queue_position": position}
            if job.state is JobState.IN_PROGRESS:
                return 202, {"status": "IN_PROGRESS", "logs": logs}
            body: dict[str, Any] = {"status": "COMPLETED", "logs": logs, "metrics": {"inference_time": job.inference_time}}
            if job.failure is not None:
                body["error"] = job.failure.error
                body["error_type"] = job.failure.error_type
            return 200, body

    def cancel(self, job: Job) -> tuple[int, dict[str, Any]]:
        """Queued: removed and completed as cancelled now. Running: flagged; the worker
        stops at its next frame and completes it as cancelled. Done: 400."""
        with self._cond:
            if job.state is JobState.COMPLETED:
                return 400, {"status": "ALREADY_COMPLETED"}
            job.cancel.set()
            if job.state is JobState.IN_QUEUE:
                if job.released:
                    self._waiting.remove(job)
                job.log("Cancelled while queued")
                self._finish_locked(job, None, 0, failures.cancelled())
            return 202, {"status": "CANCELLATION_REQUESTED"}

    def forget(self, request_id: str) -> bool:
        """Drop a request as if its retention ran out (an unfinished one is cancelled first)."""
        with self._cond:
            job = self._jobs.pop(request_id, None)
            if job is None:
                return False
            if job.state is not JobState.COMPLETED:
                job.cancel.set()
                if job in self._waiting:
                    self._waiting.remove(job)
                if job.state is JobState.IN_QUEUE:
                    self._finish_locked(job, None, 0, failures.cancelled())
            return True

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        return job.done.wait(timeout)

    # -- internals ---------------------------------------------------------------------

    def _expired(self, job: Job) -> bool:
        ttl = self._result_ttl_s
        if job.output_bytes >= LARGE_RESULT_BYTES and self._large_result_ttl_s is not None:
            ttl = self._large_result_ttl_s if ttl is None else min(ttl, self._large_result_ttl_s)
        return ttl is not None and job.completed_at is not None and time.time() - job.completed_at > ttl

    def _position_locked(self, job: Job) -> int:
        if not job.released:
            return max(job.polls_left - 1, 0)
        try:
            return self._waiting.index(job)
        except ValueError:
            return 0

    def _release_locked(self, job: Job) -> None:
        job.released = True
        self._waiting.append(job)
        # notify_all: the queue thread waits on the same condition, and must not swallow the wake-up
        self._cond.notify_all()

    def _release_due(self) -> None:
        """Hand queued jobs to the workers when their queue time is up."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    _, _, job = heapq.heappop(self._due)
                    if job.state is JobState.IN_QUEUE and not job.released and not job.cancel.is_set():
                        self._release_locked(job)
                self._cond.wait(timeout=self._due[0][0] - now if self._due else None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.state = JobState.IN_PROGRESS
                job.started_at = time.time()
                self._running += 1
                if self._on_start is not None:
                    self._on_start(self._running)
            self._process(job)

    def _process(self, job: Job) -> None:
        job.log("Request started")
        output: dict[str, Any] | None = None
        units = 0
        failure: JobFailure | None = None
        try:
            output, units = self._runner(job)
        except JobFailure as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - a crash in the app is a 500 for the client, not a dead worker
            failure = None if job.cancel.is_set() else failures.internal(f"{type(exc).__name__}: {exc}")
        assert job.started_at is not None
        remaining = job.started_at + self._service_time_s - time.time()
        if remaining > 0:
            job.cancel.wait(remaining)  # wakes at once on cancel
        if job.cancel.is_set():
            output, units, failure = None, 0, failures.cancelled()
        if failure is not None:
            job.log(failure.error, level="ERROR")
        with self._cond:
            self._finish_locked(job, output, units, failure)

    def _finish_locked(self, job: Job, output: dict[str, Any] | None, units: int, failure: JobFailure | None) -> None:
        if job.state is JobState.COMPLETED:
            return
        if job.state is JobState.IN_PROGRESS:
            self._running -= 1
        job.state = JobState.COMPLETED
        job.completed_at = time.time()
        job.output, job.billable_units, job.failure = output, units, failure
        job.output_bytes = len(json.dumps(output)) if output is not None else 0
        job.done.set()
        if self._on_finish is not None:
            self._on_finish(job)
