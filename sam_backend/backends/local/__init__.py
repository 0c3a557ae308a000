"""The ``local`` backend: SAM 3.1 / SAM 3 on this machine, no per-frame bill.

Engines (``engine=``):
- ``sam3.1`` (default) / ``sam3``: Meta's video predictor from the ``sam3`` package (CUDA
  only; a user-supplied checkpoint: ``checkpoint=`` or ``SAM31_LOCAL_CHECKPOINT``, a file or
  a folder holding ``sam3.1_multiplex.pt`` / ``sam3.pt``). See :mod:`.meta`.
- ``transformers``: SAM 3 through ``transformers`` on CPU or GPU (``model=`` a model id or a
  local folder, or ``SAM31_LOCAL_MODEL``). See :mod:`.hf`.

Long videos run in chunks (``chunk_size``, ``overlap``) with track ids stitched by mask IoU,
so memory does not grow with video length; ``offload=True`` keeps frames and state in CPU
memory. Nothing here imports torch until an engine is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .backend import LocalBackend, PredictorFactory
from .config import LocalConfig
from .errors import EngineUnavailable, LocalOutOfMemory


def BACKEND(*, environ: Mapping[str, str] | None = None, predictor_factory: PredictorFactory | None = None,
            **options: Any) -> LocalBackend:
    """Build the local backend from keyword options (see :class:`LocalConfig`); ``environ``
    (default: the process environment, read now) supplies SAM31_LOCAL_CHECKPOINT /
    SAM31_LOCAL_MODEL / SAM31_LOCAL_DEVICE. ``predictor_factory(config=, max_num_objects=)``
    replaces Meta's predictor builder (tests pass the contract fake)."""
    config = LocalConfig.build(environ, **options)
    return LocalBackend(config, predictor_factory=predictor_factory)


__all__ = ["BACKEND", "EngineUnavailable", "LocalBackend", "LocalConfig", "LocalOutOfMemory"]
