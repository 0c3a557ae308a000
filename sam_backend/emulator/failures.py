"""How a job fails, in fal's two error shapes, kept in one table-like module.

fal answers model errors (bad input found while running) with
``{"detail": [{"loc", "msg", "type", "url", ...}]}`` and request errors (timeouts,
cancellation, crashes) with ``{"detail": "<text>", "error_type": "<category>"}`` plus an
``X-Fal-Error-Type`` header. The status route reports both as COMPLETED with ``error``
and ``error_type``; the result route returns the body below with ``status_code``.

The error type names are the emulator's best guess at fal's (``file_download_error`` is
documented by fal; the others are plausible stand-ins): change them here only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .schema import error_item

FILE_DOWNLOAD_ERROR = "file_download_error"
UNSUPPORTED_VIDEO = "unsupported_video_format"
VALIDATION_ERROR = "value_error"
CANCELLED = "request_cancelled"
INTERNAL_ERROR = "internal_server_error"

# fal's queue has no documented code for a cancelled request's result; 499 ("client
# closed request") keeps it apart from 400 ("still in progress") and from real errors.
CANCELLED_STATUS = 499


@dataclasses.dataclass(eq=False)  # eq=False keeps it hashable, as exceptions should be
class JobFailure(Exception):
    """A job that ended without output. ``detail`` is the result route's ``detail``."""

    status_code: int
    detail: str | list[dict[str, Any]]
    error: str
    error_type: str
    request_error: bool = False  # True: flat body with error_type (+ X-Fal-Error-Type)

    def body(self) -> dict[str, Any]:
        if self.request_error:
            return {"detail": self.detail, "error_type": self.error_type}
        return {"detail": self.detail}

    def __str__(self) -> str:
        return self.error


def download_error(url: str, reason: str) -> JobFailure:
    shown = url if len(url) <= 200 else url[:200] + "..."
    msg = f"File download error: {reason}"
    return JobFailure(422, [error_item(["body", "video_url"], msg, FILE_DOWNLOAD_ERROR, input=shown)], msg, FILE_DOWNLOAD_ERROR)


def unsupported_video(reason: str) -> JobFailure:
    msg = f"Unsupported video: {reason}"
    return JobFailure(422, [error_item(["body", "video_url"], msg, UNSUPPORTED_VIDEO)], msg, UNSUPPORTED_VIDEO)


def invalid_input(items: list[dict[str, Any]]) -> JobFailure:
    msg = "; ".join(f"{'.'.join(str(p) for p in i['loc'])}: {i['msg']}" for i in items)
    return JobFailure(422, items, msg, VALIDATION_ERROR)


def app_not_found(app_id: str) -> JobFailure:
    """The body fal gives a missing app on submit, here on the result route instead."""
    msg = f"Application '{app_id}' not found"
    return JobFailure(404, msg, msg, "app_not_found")


def cancelled() -> JobFailure:
    msg = "Request was cancelled by the client"
    return JobFailure(CANCELLED_STATUS, msg, msg, CANCELLED, request_error=True)


def internal(reason: str) -> JobFailure:
    msg = f"Internal error in the emulated app: {reason}"
    return JobFailure(500, msg, msg, INTERNAL_ERROR, request_error=True)
