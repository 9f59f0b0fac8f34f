"""Where a benchmark figure came from: the command, the commit and the machine, written with it.

Every benchmark script (``bench/*.py``) and ``dht bench`` write their JSON through ``write_result``, so
each committed figure carries the command line that made it, the git commit it ran on (with ``+dirty``
when the tree had uncommitted changes), the CPU model, torch's thread count, the torch version and the
device. Default output paths of the bench scripts are resolved from the repository root
(``repo_path``), so a script writes to the same place from any working directory.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def repo_path(relative: str) -> Path:
    """A path under the repository root (bench scripts' default outputs)."""
    return REPO / relative


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def git_commit() -> str:
    """The checkout's commit, ``+dirty`` if tracked files changed; 'unknown' outside a git checkout."""
    try:
        commit = _git("rev-parse", "HEAD")
        return commit + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_version() -> str:
    """The git tree of the ``dht`` package at HEAD, ``+dirty`` if its tracked files changed ('unknown'
    outside a git checkout): what a kept measurement depends on, unlike the commit, which docs move."""
    try:
        tree = _git("rev-parse", "HEAD:dht")
        return tree + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no", "--", "dht") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device | None) -> str:
    """The device in words, as metrics.json and benchmark JSON record it: ``cpu (N threads)`` or
    ``cuda (GPU name)``; None is the CPU. Raises RuntimeError for a string that names no device."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def synchronise(device: str | torch.device) -> None:
    """Wait for a CUDA device's queued work before a clock is read, so the clock measures it (no-op on
    the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def provenance(device: str | torch.device | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """The command line, commit, CPU model, threads, torch version and device of this process."""
    args = sys.argv if argv is None else argv
    return {"command": " ".join([Path(args[0]).name if args else "python", *args[1:]]),
            "commit": git_commit(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "device": device_name(device)}


def write_result(path: Path, result: dict[str, Any] | list, device: str | torch.device | None = None,
                 argv: list[str] | None = None) -> dict[str, Any]:
    """Write ``{"provenance": ..., "result": result}`` as JSON to ``path`` (folders made as needed), by a
    temporary file and a rename so a reader never sees half a file; return what was written."""
    document = {"provenance": provenance(device, argv), "result": result}
    write_atomically(path, json.dumps(document, indent=1) + "\n")
    return document


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, so that an interrupted or
    failed write leaves either the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~umask())  # mkstemp makes it private; the output is an ordinary file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
