"""One advisory file lock for every job that must not run twice on one output (training runs,
surface scans).

The lock is ``fcntl.flock`` on a lock file that is never deleted. Deleting it would race: a
waiter that opened the old file before the unlink would lock an inode no longer named by the
path while a newcomer locks a fresh one, and both would hold "the" lock. The kernel drops a
flock when its process dies (SIGKILL included), so a crash never leaves a stale lock; the file
left behind only records the last holder's pid.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LockHeldError", "file_lock"]


class LockHeldError(RuntimeError):
    """Another process (or another open of the same file) holds the lock."""


@contextmanager
def file_lock(path: str | os.PathLike, what: str = "job") -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if missing, never removed) for the block.

    Fails at once, without waiting, with :class:`LockHeldError` naming ``what`` and the holder's
    pid. Yields the lock file's path. Raises OSError (e.g. PermissionError) when the lock file
    cannot be created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            by = f" by process {holder}" if holder.isdigit() else ""
            raise LockHeldError(f"another {what} is running here: {path} is locked{by}; wait for it to "
                                f"finish or use another output") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield path
    finally:
        fh.close()  # closing the descriptor releases the flock
