"""Run a Python snippet in a real child process and SIGKILL it at a chosen moment: how the
tests reproduce a user's ``kill -9`` (or a lost machine) between two steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable


def kill_when(script: str, *args: str, ready: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Start ``python -c script args...``; once ``ready()`` is true SIGKILL it. Fails if the
    child exits first (its output is shown) or ``ready()`` stays false for ``timeout_s``."""
    child = subprocess.Popen([sys.executable, "-c", script, *args], env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never reached the kill point"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
