"""One exception tree for everything sam_backend raises on purpose.

    SamError
    ├── InvalidRequest        the request or its prompts cannot work on this video; nothing was sent
    ├── OverBudget            the run's estimate is above the max_usd the caller set; nothing was sent
    ├── VideoError            a video cannot be read or probed (missing file, not a video, no ffmpeg)
    ├── AuthError             the backend refused the credentials (fal 401/403, FAL_KEY missing)
    ├── QuotaError            the backend refused for balance/rate reasons that retrying won't fix
    ├── BackendUnavailable    the backend could not be reached or answered with transient errors
    │                         until the retry budget ran out
    ├── RemoteFailure         the backend accepted the job and then failed it (carries request_id)
    ├── ResultExpired         the job finished but its result is gone (fal keeps results briefly)
    ├── UnexpectedResponse    the backend answered with a shape we do not know how to read
    └── Cancelled             the caller cancelled the run

Misuse (wrong argument types, calling methods in the wrong order) stays builtin
(TypeError/ValueError) so that ``except SamError`` can never hide a bug.
"""

from __future__ import annotations


def shorten(value: object, limit: int = 60) -> str:
    """``value`` for an error message: its repr, cut to ``limit`` characters with its full
    length said, so a pasted 100 KB prompt does not come back whole in the message."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    head = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{head}... ({len(text):,} characters)"


def listed(items: list[str], sep: str = ", ", limit: int = 5) -> str:
    """The first ``limit`` of ``items`` joined by ``sep``, then "..." if there are more: a
    message names a few of many videos or runs, not all of them."""
    return sep.join(items[:limit]) + (f"{sep}..." if len(items) > limit else "")


class SamError(Exception):
    """Root of every error raised on purpose by sam_backend."""

    # Set on an error that stopped a run midway: that run's report so far (what it wrote,
    # which requests it had already sent), so a caller can say what is paid and resumable.
    report: object | None = None


class InvalidRequest(SamError):
    """The request cannot work on this video. Raised before anything is sent or written.

    ``problems`` lists every problem found, each naming the field and the bad value.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid request: " + "; ".join(self.problems))


class OverBudget(SamError):
    """The run would cost more than the caller allowed (``max_usd``), or its cost cannot
    be known. Raised before anything is sent."""


class VideoError(SamError):
    """A video cannot be probed or decoded."""


class AuthError(SamError):
    """Credentials are missing or were refused. Not retryable."""


class QuotaError(SamError):
    """The account is locked, out of balance, or over a hard limit. Not retryable."""


class BackendUnavailable(SamError):
    """The backend could not be reached, or kept failing transiently until retries ran out."""


class RemoteFailure(SamError):
    """The backend accepted the job and then reported it failed."""

    def __init__(self, message: str, *, request_id: str | None = None):
        self.request_id = request_id
        suffix = f" (request {request_id})" if request_id else ""
        super().__init__(message + suffix)


class ResultExpired(RemoteFailure):
    """The job completed but its result can no longer be fetched."""


class UnexpectedResponse(SamError):
    """The backend answered with a payload shape we cannot decode."""


class Cancelled(SamError):
    """The run was cancelled by the caller; nothing partial was written."""
