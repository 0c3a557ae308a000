"""Where an export is written, and how it replaces an earlier one without a moment in
which ``output_dir`` is missing or half-written.

An export is written into a hidden sibling, ``.<name>.partial-<id>.<owner>``, that names
the process writing it. Publishing renames it to ``output_dir``; replacing an earlier
export swaps the two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``), then
deletes the old one, which now sits at the hidden name. A kill at any moment therefore
leaves ``output_dir`` holding the complete old or the complete new export. Where the
swap is not available (other systems, some file systems) the old folder is renamed aside
first; a kill between the two renames is repaired by the next export to that folder.
Leftovers of killed exports (hidden folders whose process is gone) are swept at the next
export to the same folder.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import uuid
from pathlib import Path

from ...owners import current_owner, owner_alive

logger = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def new_staging(out: Path) -> Path:
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}.{current_owner()}"
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, out: Path) -> None:
    """Make ``staging`` the folder ``out``; an existing ``out`` is replaced atomically."""
    if not out.exists():
        staging.rename(out)
        return
    try:
        _exchange(staging, out)
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV, errno.EPERM):
            raise
        aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}.{current_owner()}"
        out.rename(aside)
        staging.rename(out)
        shutil.rmtree(aside, ignore_errors=True)
        return
    shutil.rmtree(staging, ignore_errors=True)  # the old export, swapped into the hidden name


def sweep(out: Path) -> list[Path]:
    """Remove what killed exports to ``out`` left behind; put back an old export that a
    kill caught renamed aside (only without the atomic swap). Returns what was removed."""
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for kind in ("old", "partial"):  # an old export is restored before partials are judged
        for path in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            tail = path.name.removeprefix(f".{out.name}.{kind}-")  # "<id>.<host>:<pid>"
            owner = tail.partition(".")[2]
            if owner_alive(owner) is not False:  # alive, or on another host: not ours to judge
                continue
            if kind == "old" and not out.exists():
                path.rename(out)
                logger.warning("restored the earlier export %s (an export replacing it was killed)", out)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux >= 3.15, glibc >= 2.28)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(b))
