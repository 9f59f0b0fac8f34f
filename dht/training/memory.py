"""Measured training memory (layer_tying.md §5 (b)): how far the process grew past the loaded model.

On the CPU: the peak resident set size since the model, data and optimizer were loaded, minus the
resident size then. On Linux the peak is reset at that moment (``/proc/self/clear_refs``, then
``VmHWM``), so loading's own peak is not counted; elsewhere it is ``getrusage``'s ``ru_maxrss``, the
process's whole life. On a GPU, also ``max_memory_allocated`` since then. A run resumed in a new process
measures only its own part: compare runs made one per process.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

MB = 1e6  # megabytes, as the spec reports them


def resident_bytes() -> int:
    """The process's current resident set size (Linux ``/proc/self/statm``; 0 where unavailable)."""
    statm = Path("/proc/self/statm")
    if not statm.is_file():
        return 0
    return int(statm.read_text().split()[1]) * resource.getpagesize()


def reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux); whether it could."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_resident_bytes(since_reset: bool) -> int:
    """The process's peak resident set size: since ``reset_peak`` (``VmHWM``) when it worked, else over
    its life (``ru_maxrss``: kB on Linux, bytes on macOS)."""
    if since_reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class MemoryMeter:
    """Started once the model, data and optimizer are loaded; ``report()`` at the end of training."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset = reset_peak()
        self.baseline = resident_bytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.cuda_baseline = torch.cuda.memory_allocated(device)

    def report(self) -> dict[str, float]:
        """MB: resident size at the start, peak resident size, and the peak's growth over the start (on a
        GPU also the peak allocated and its growth)."""
        peak = peak_resident_bytes(self.reset)
        result = {"rss_start_mb": round(self.baseline / MB, 1), "rss_peak_mb": round(peak / MB, 1),
                  "rss_peak_growth_mb": round(max(0, peak - self.baseline) / MB, 1),
                  "rss_peak_since": "training start" if self.reset else "process start"}
        if self.device.type == "cuda":
            allocated = torch.cuda.max_memory_allocated(self.device)
            result.update(cuda_peak_mb=round(allocated / MB, 1),
                          cuda_peak_growth_mb=round((allocated - self.cuda_baseline) / MB, 1))
        return result
