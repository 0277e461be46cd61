"""One writer per run directory, study folder and store rank: a lock file naming its holder.

The lock is a file created with ``O_EXCL`` that records the holder's host, pid, process start time and
command. A second process is refused with a message naming the holder. A lock whose holder is gone
(same host, and no live process with that pid and start time) is stale: it is taken over, so a run
killed with ``kill -9`` never blocks the command that resumes it. A lock held on another host cannot
be checked from here; the message says which file to delete once that process is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import LockedError
from .fileio import ensure_dir, guarded_write, write_error

LOCK_NAME = ".igkd.lock"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a recycled pid is not taken for the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = _start_time(pid)
    return start is None or now is None or now == start


class FileLock:
    """``with FileLock(folder, "run directory"):`` holds ``folder/.igkd.lock`` (or ``name``) for the block."""

    def __init__(self, folder: str | Path, what: str, name: str = LOCK_NAME):
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / name
        self.held = False

    def _record(self) -> dict:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}

    def acquire(self) -> FileLock:
        ensure_dir(self.folder)
        for _ in range(3):  # a stale lock removed by another process between our checks: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None or not self._stale(holder):
                    self._refuse(holder)
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as e:
                raise write_error(self.path, e) from None
            try:
                with guarded_write(self.path), os.fdopen(fd, "w") as f:
                    json.dump(self._record(), f)
            except BaseException:  # an empty lock would refuse the next command: leave none
                self.path.unlink(missing_ok=True)
                raise
            self.held = True
            return self
        self._refuse(self._holder())
        raise AssertionError("unreachable")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None  # being written right now, or garbage: treated as held
        return holder if isinstance(holder, dict) else None

    def _stale(self, holder: dict) -> bool:
        if not holder:
            return True  # vanished between the two calls
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        if holder["pid"] == os.getpid() and holder.get("start") == _start_time(os.getpid()):
            return False  # our own lock: a second writer in this process is still a second writer
        return not _alive(holder["pid"], holder.get("start"))

    def _refuse(self, holder: dict | None) -> None:
        if not holder:
            raise LockedError(f"{self.what} {self.folder} is locked by {self.path}, which cannot be read; "
                              "if no igkd process is using it, delete that file")
        where = holder.get("host")
        also = ("" if where == socket.gethostname()
                else f"; that host cannot be checked from here: once that process is gone, delete {self.path}")
        raise LockedError(f"{self.what} {self.folder} is in use by pid {holder.get('pid')} on {where} since "
                          f"{holder.get('since')} ({holder.get('command', '?')}); wait for it or stop it{also}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
