"""fal backend: SAM 3.1 on fal's hosted queue API, spoken with httpx.

Modules: ``config`` (FalConfig), ``client`` (queue protocol, retry rules, typed errors),
``uploads`` (storage upload, multipart, upload cache), ``journal`` (SQLite request journal:
resume without paying twice), ``decoders`` (one per response shape), ``backend``
(FalBackend), ``webhooks`` (verifier for signed webhook deliveries).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .backend import FalBackend
from .config import FalConfig
from .journal import Journal


def BACKEND(config: FalConfig | None = None, *, environ: Mapping[str, str] | None = None, **options: Any) -> FalBackend:
    """Registry factory: ``get_backend("fal")`` reads FAL_KEY from ``environ`` (default:
    the process environment); other keyword options override :class:`FalConfig` fields."""
    if config is not None:
        return FalBackend(config.model_copy(update=options) if options else config)
    return FalBackend.from_env(environ, **options)


__all__ = ["BACKEND", "FalBackend", "FalConfig", "Journal"]
