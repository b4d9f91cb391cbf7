"""models.locking.file_lock: one holder at a time across processes, and a lock file that is never
deleted (deleting it lets a waiter and a newcomer lock two different inodes)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models.locking import LockHeldError, file_lock

REPO = Path(__file__).resolve().parents[1]


def test_a_second_process_fails_fast_naming_the_holder(tmp_path):
    lock = tmp_path / "run" / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from models.locking import file_lock
            with file_lock({str(lock)!r}, what="training run"):
                print("held", flush=True)
                sys.stdin.read()  # until the test closes our stdin
        """)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LockHeldError) as err:
            with file_lock(lock, what="training run"):
                pytest.fail("both processes hold the lock")
        assert str(err.value) == (f"another training run is running here: {lock} is locked by process "
                                  f"{holder.pid}; wait for it to finish or use another output")
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    inode = lock.stat().st_ino
    with file_lock(lock) as path:  # free again once the holder is gone
        assert path == lock and lock.stat().st_ino == inode
    assert lock.exists() and lock.stat().st_ino == inode  # never deleted


def test_two_opens_in_one_process_exclude_each_other(tmp_path):
    with file_lock(tmp_path / "l", what="scan"):
        with pytest.raises(LockHeldError, match="another scan is running here"):
            with file_lock(tmp_path / "l", what="scan"):
                pass
    with file_lock(tmp_path / "l"):
        pass
