"""sam_backend: segment and track objects in videos with SAM 3.1 (fal or local).

The core (this package minus :mod:`sam_backend.fiftyone_io`) never imports fiftyone.
"""

from .errors import (
    AuthError,
    BackendUnavailable,
    Cancelled,
    InvalidRequest,
    OverBudget,
    QuotaError,
    RemoteFailure,
    ResultExpired,
    SamError,
    UnexpectedResponse,
    VideoError,
)
from .types import BoxPrompt, FrameResult, PointPrompt, SegmentRequest, TrackedObject, VideoInfo

__version__ = "0.1.0"

__all__ = [
    "AuthError", "BackendUnavailable", "BoxPrompt", "Cancelled", "FrameResult", "InvalidRequest", "OverBudget",
    "PointPrompt", "QuotaError", "RemoteFailure", "ResultExpired", "SamError", "SegmentRequest", "TrackedObject",
    "UnexpectedResponse", "VideoError", "VideoInfo",
]
