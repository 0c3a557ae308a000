"""Backends that turn a video + prompts into tracked objects; see :mod:`.base`."""

from .base import Backend, CancelToken, CostEstimate, RunRecord, SegmentRun, VideoSource, available_backends, get_backend

__all__ = ["Backend", "CancelToken", "CostEstimate", "RunRecord", "SegmentRun", "VideoSource", "available_backends", "get_backend"]
