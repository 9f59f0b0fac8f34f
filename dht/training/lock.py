"""One run per run folder: an exclusive lock held while a run writes its folder.

Two ``dht train`` processes on one ``--output`` would interleave their logs and checkpoints; the second
now stops at once with one line naming the first one's process id. The lock is an ``flock`` on
``FOLDER/.lock`` (released by the kernel when its holder dies, even by ``kill -9``, so a crashed run never
leaves a folder locked). A run that fails before writing anything leaves no folder behind: the folders
the lock created are removed again when nothing but the lock file is in them.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".lock"


class RunInUseError(ValueError):
    """Another process holds the run folder."""


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold the run folder's lock for the body; RunInUseError (a ValueError: exit 2 in the CLI) if another
    process holds it."""
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunInUseError(f"{folder} is in use by process {holder}; wait for it to finish or choose "
                            "another --output") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    try:
        yield
    except BaseException:
        if created and {p.name for p in folder.iterdir()} <= {LOCK_FILE}:
            (folder / LOCK_FILE).unlink()
            for path in created:  # deepest first; a folder something else wrote into stays
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        raise
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
