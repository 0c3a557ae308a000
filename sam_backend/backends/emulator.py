"""The ``emulator`` backend: the real fal backend, pointed at a loopback fal emulator that
this backend starts (and stops on close). For trying the plugin without a FAL_KEY or
money; its toy segmenter only knows the synthetic videos' colours."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..emulator import EmulatorConfig, EmulatorServer
from .fal import FalBackend, FalConfig


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
