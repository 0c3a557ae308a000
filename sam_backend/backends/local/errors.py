"""Errors of the local backend, as branches of :mod:`sam_backend.errors` a user can act on.

    BackendUnavailable
    └── EngineUnavailable     the engine cannot start here: package missing (with the install
                              line), no CUDA for Meta's predictor, checkpoint or model missing
    RemoteFailure
    └── LocalOutOfMemory      the device ran out of memory mid-run (with what to lower)

Torch errors are translated here, at the boundary, so callers never catch torch types.
"""

from __future__ import annotations

from ...errors import BackendUnavailable, RemoteFailure

# What a user types to get each engine's packages. The Meta package for SAM 3.1 lives only in
# the GitHub repository (the PyPI "sam3" 0.1.x has SAM 3 only and pins numpy<2.4).
INSTALL_META = "pip install 'sam3 @ git+https://github.com/facebookresearch/sam3.git'"
INSTALL_TRANSFORMERS = "pip install 'sam31-video[local]'  (torch + transformers; CPU-only torch: pip install torch --index-url https://download.pytorch.org/whl/cpu)"


class EngineUnavailable(BackendUnavailable):
    """The chosen engine cannot run on this machine as configured; the message says how to fix it."""


class LocalOutOfMemory(RemoteFailure):
    """The device ran out of memory while segmenting; nothing was written for this video."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError (CUDA or CPU allocator) without importing torch."""
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return True
    # torch's CPU allocator raises a plain RuntimeError: "DefaultCPUAllocator: can't allocate memory".
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_message(device: str, first: int, last: int, chunk_size: int, offload: bool, exc: BaseException) -> str:
    smaller = max(16, chunk_size // 2)
    hints = [f"a smaller chunk_size (e.g. chunk_size={smaller}; now {chunk_size})"]
    if not offload:
        hints.append("offload=True (keeps frames and tracking state in CPU memory)")
    hints.append("a smaller max_num_objects")
    first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return (f"out of memory on {device} while segmenting frames {first}-{last}: try " + ", or ".join(hints)
            + f" ({first_line})")
