"""A loopback emulator of fal's queue, storage and CDN, serving a toy SAM 3.1 video model.

It lets the fal client (ours, and the official ``fal_client`` pointed at it) be tested
end to end with real HTTP, real videos and exact ground truth, without network or money:

    with EmulatorServer(EmulatorConfig(queue_steps=2)) as emu:
        ...  # talk to emu.queue_url / emu.rest_url / emu.cdn_url with emu.key

See :mod:`.server` for the routes, :mod:`.segmenter` for what the toy model finds,
:mod:`.faults` for injecting failures.
"""

from .config import DEFAULT_KEY, KNOWN_APPS, AppSpec, EmulatorConfig
from .faults import FaultAction, FaultHook, FaultPlan, FaultRule, RouteCall, cut_short, dropped, http_error, proxy_error, slow
from .server import EmulatorServer
from .stats import EmulatorStats, payload_hash

__all__ = [
    "DEFAULT_KEY",
    "KNOWN_APPS",
    "AppSpec",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorStats",
    "FaultAction",
    "FaultHook",
    "FaultPlan",
    "FaultRule",
    "RouteCall",
    "cut_short",
    "dropped",
    "http_error",
    "proxy_error",
    "payload_hash",
    "slow",
]
