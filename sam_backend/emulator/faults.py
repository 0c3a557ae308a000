"""The fault-injection seam: one hook the server asks before (and after) every call.

Why a hook and not flags: the failures worth testing are specific ("the 2nd status call
answers 503", "the submit is accepted but its response is lost", "every upload is
slow"), so the server describes each call (:class:`RouteCall`) and a hook may answer
with a :class:`FaultAction`. :class:`FaultPlan` covers the usual rules; anything odder
is a plain callable. Knobs, per test:

- status codes on the Nth call of a route, overall or per request id:
  ``FaultRule.nth("status", 2, action=http_error(503), per_request=True)``, storms with
  ``FaultRule.first("submit", 5, http_error(429, retry_after=1))``, every k-th call with
  ``FaultRule(route, action, every=k)``;
- dropped connections, before the call takes effect or after (``dropped(when="after")``:
  a submit accepted whose answer is lost);
- slow answers (``slow(seconds)``), e.g. past a client's read timeout.

Time-based and server-side behaviour lives elsewhere: ``EmulatorConfig`` has service
time, queue steps, workers, result TTL and unavailable apps; ``EmulatorServer.expire``
forgets a request, ``cancel_job`` cancels one from fal's side, ``expire_file`` drops an
upload.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

Route = Literal[
    "submit", "status", "result", "cancel", "run", "token", "upload", "multipart", "multipart_part",
    "multipart_complete", "download", "jwks", "unknown",
]


@dataclasses.dataclass(frozen=True)
class RouteCall:
    """One HTTP call as the hook sees it. ``n`` counts calls to ``route`` from 1,
    including this one, over the server's lifetime; ``n_request`` counts them for this
    ``request_id`` only (None on routes without one), so a rule can hit "the first
    status call of every request" however many run at once."""

    route: Route
    n: int
    method: str
    path: str
    request_id: str | None = None
    n_request: int | None = None


@dataclasses.dataclass(frozen=True)
class FaultAction:
    """What to do to one call.

    - ``delay_s``: sleep first (a slow response); interrupted when the server stops.
    - ``when="before"``: the call is not handled; with ``status`` it is answered with
      that status and ``body`` (default ``{"detail": "injected fault"}``; a ``str`` is sent
      as an HTML page), with ``drop``
      the connection is closed with no answer.
    - ``when="after"``: the call is handled (a submit is accepted, an upload stored),
      then the real answer is replaced by ``status``/``body`` or lost with ``drop``.
    - ``cut_after``: the real answer, cut off after that share of its body.
    """

    status: int | None = None
    body: Any = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    when: Literal["before", "after"] = "before"
    cut_after: float | None = None  # the real answer, its connection closed after this share of the body

    def __post_init__(self) -> None:
        if self.drop and self.status is not None:
            raise ValueError("a fault either drops the connection or answers a status, not both")


FaultHook = Callable[[RouteCall], "FaultAction | None"]


def http_error(status: int, *, retry_after: float | None = None, body: Any = None, when: Literal["before", "after"] = "before") -> FaultAction:
    """Answer ``status`` (e.g. 429 with ``retry_after`` seconds, 500, 503, 504)."""
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return FaultAction(status=status, body=body, headers=headers, when=when)


def proxy_error(status: int, *, when: Literal["before", "after"] = "before") -> FaultAction:
    """``status`` (502, 503, 504) answered by the proxy in front of fal's app: nginx's own
    HTML page and no ``x-fal-request-id`` (how fal-client tells a proxy answer apart,
    ../shared/reference/fal-queue-protocol.md "Retries"). ``when="after"``: the app had
    taken the call (a gateway timeout after a submit was queued)."""
    page = (f"<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n<center><h1>{status}</h1></center>\r\n"
            "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    return FaultAction(status=status, body=page, when=when)


def cut_short(share: float = 0.5) -> FaultAction:
    """The real answer with its full Content-Length, but the connection closes once this
    share of the body is sent (a download broken mid-way)."""
    return FaultAction(cut_after=share)


def dropped(*, when: Literal["before", "after"] = "before") -> FaultAction:
    """Close the connection without an answer (``after``: once the call took effect)."""
    return FaultAction(drop=True, when=when)


def slow(seconds: float) -> FaultAction:
    """Answer normally, but only after ``seconds`` (past a client's read timeout)."""
    return FaultAction(delay_s=seconds)


@dataclasses.dataclass(frozen=True)
class FaultRule:
    """Apply ``action`` to calls of ``route`` whose number is in ``calls`` (all calls
    when None and ``every`` is None; every ``every``-th call otherwise). With
    ``per_request`` the numbers are counted per request id (``RouteCall.n_request``)."""

    route: Route
    action: FaultAction
    calls: frozenset[int] | None = None
    every: int | None = None
    per_request: bool = False

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")

    @classmethod
    def first(cls, route: Route, count: int, action: FaultAction, *, per_request: bool = False) -> FaultRule:
        """The first ``count`` calls of ``route`` (a storm that then clears)."""
        return cls(route, action, calls=frozenset(range(1, count + 1)), per_request=per_request)

    @classmethod
    def nth(cls, route: Route, *numbers: int, action: FaultAction, per_request: bool = False) -> FaultRule:
        """Exactly the calls numbered ``numbers`` (from 1)."""
        return cls(route, action, calls=frozenset(numbers), per_request=per_request)

    def matches(self, call: RouteCall) -> bool:
        if call.route != self.route:
            return False
        n = call.n_request if self.per_request else call.n
        if n is None:
            return False
        if self.calls is not None and n not in self.calls:
            return False
        return self.every is None or n % self.every == 0


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
