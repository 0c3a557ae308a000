"""Which process owns a piece of in-flight work, and whether it is still alive.

Work that outlives a kill (journal claims, staged frame documents, export staging folders)
carries its owner, ``host:pid``, so the next start can tell a crashed owner's leftovers,
which it may sweep, from another live process's work, which it must leave alone.
"""

from __future__ import annotations

import os
import socket


def current_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False for an owner on this host (its pid is checked), None when it runs on
    another host, where only the caller's own lease or age rule can decide."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
