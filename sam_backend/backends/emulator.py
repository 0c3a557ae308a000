"""The ``emulator`` backend: the real fal backend, pointed at a loopback fal emulator that
this backend starts (and stops on close). For trying the plugin without a FAL_KEY or
money; its toy segmenter only knows the synthetic videos' colours."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..emulator import EmulatorConfig, EmulatorServer
from .fal import FalBackend, FalConfig
from .fal.journal import Entry, RequestState


class EmulatorBackend(FalBackend):
    name = "emulator"

    def __init__(self, server: EmulatorServer, **config_overrides: Any) -> None:
        self.server = server
        config = FalConfig.build(
            key=server.key,
            queue_url=server.queue_url,
            rest_url=server.rest_url,
            cdn_url=server.cdn_url,
            **config_overrides,
        )
        super().__init__(config)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.server.stop()

    # A journal kept across runs (journal_path=...) can name requests that an emulator of an
    # earlier, stopped process accepted: they died with it. The emulator charges nothing, so
    # they are sent again here rather than polled at a port nobody listens on.

    def _gone_elsewhere(self, entry: Entry) -> bool:
        if entry.state is RequestState.SUBMITTED:
            return not (entry.status_url or "").startswith(self.server.queue_url)
        if entry.state is RequestState.SUBMITTING:
            return not entry.owner_alive()
        return entry.state is RequestState.UNCERTAIN

    def _forget_gone(self, entry: Entry | None) -> None:
        if entry is not None and self._gone_elsewhere(entry):
            self.journal.mark(entry.id, RequestState.EXPIRED, "the emulator that accepted it has stopped; sent again "
                                                             "(the emulator charges nothing)")

    def _reusable_entry(self, work_key: str | None, rhash: str, older_hash: str | None = None) -> Entry | None:
        if work_key is not None:
            self._forget_gone(self._latest(work_key, rhash, older_hash))
        return super()._reusable_entry(work_key, rhash, older_hash)

    def _forget_gone_submitted(self, work_keys: list[str]) -> list[str]:
        for entry in self.journal.entries(states=[RequestState.SUBMITTED], work_keys=work_keys):
            self._forget_gone(entry)
        return work_keys

    def harvest(self, work_keys: Iterable[str]) -> int:
        return super().harvest(self._forget_gone_submitted(list(work_keys)))

    def cancel_inflight(self, work_keys: Iterable[str]) -> int:
        return super().cancel_inflight(self._forget_gone_submitted(list(work_keys)))


def BACKEND(emulator: EmulatorConfig | Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None,
            **config_overrides: Any) -> EmulatorBackend:
    """Start an emulator and a fal backend pointed at it (``environ`` is not needed).
    ``emulator`` may be a dict of EmulatorConfig fields, e.g. ``{"service_time_s": 3}`` to
    watch progress and cancel on a slow "remote" model."""
    if isinstance(emulator, Mapping):
        emulator = EmulatorConfig(**emulator)
    server = EmulatorServer(emulator or EmulatorConfig())
    server.start()
    try:
        return EmulatorBackend(server, **config_overrides)
    except BaseException:
        server.stop()
        raise
