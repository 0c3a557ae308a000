"""The fault-injection seam: one hook the server asks before (and after) every call.

Why a hook and not flags: the failures worth testing are specific ("the 2nd status call
answers 503", "the submit is accepted but its response is lost", "every upload is
slow"), so the server describes each call (:class:`RouteCall`) and a hook may answer
with a :class:`FaultAction`. :class:`FaultPlan` covers the usual rules; anything odder
is a plain callable. Result expiry is time-based, so it lives in
``EmulatorConfig.result_ttl_s`` instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

Route = Literal[
    "submit", "status", "result", "cancel", "run", "token", "upload", "multipart", "download", "unknown"
]


@dataclasses.dataclass(frozen=True)
class RouteCall:
    """One HTTP call as the hook sees it. ``n`` counts calls to ``route`` from 1,
    including this one, over the server's lifetime."""

    route: Route
    n: int
    method: str
    path: str
    request_id: str | None = None


@dataclasses.dataclass(frozen=True)
class FaultAction:
    """What to do to one call.

    - ``delay_s``: sleep first (a slow response); interrupted when the server stops.
    - ``when="before"``: the call is not handled; with ``status`` it is answered with
      that status and ``body`` (default ``{"detail": "injected fault"}``), with ``drop``
      the connection is closed with no answer.
    - ``when="after"``: the call is handled (a submit is accepted, an upload stored),
      then the real answer is replaced by ``status``/``body`` or lost with ``drop``.
    """

    status: int | None = None
    body: Any = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    when: Literal["before", "after"] = "before"

    def __post_init__(self) -> None:
        if self.drop and self.status is not None:
            raise ValueError("a fault either drops the connection or answers a status, not both")


FaultHook = Callable[[RouteCall], "FaultAction | None"]


@dataclasses.dataclass(frozen=True)
class FaultRule:
    """Apply ``action`` to calls of ``route`` whose number is in ``calls`` (all calls
    when None)."""

    route: Route
    action: FaultAction
    calls: frozenset[int] | None = None

    def matches(self, call: RouteCall) -> bool:
        return call.route == self.route and (self.calls is None or call.n in self.calls)


class FaultPlan:
    """A list of rules; the first that matches a call decides. Stateless, so it is safe
    to share between handler threads (call numbering is the server's job)."""

    def __init__(self, *rules: FaultRule) -> None:
        self.rules = tuple(rules)

    def __call__(self, call: RouteCall) -> FaultAction | None:
        for rule in self.rules:
            if rule.matches(call):
                return rule.action
        return None
