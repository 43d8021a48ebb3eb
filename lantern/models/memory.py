"""How much memory the KV cache may still take, so that a growing sequence ends with a clean
error instead of meeting the system's out-of-memory killer.

A 128k-token context is legitimate (Phi-3-mini-128k), so the context length alone is never
refused; the cache grows as it is used and asks here before each growth. What is available is
the smallest of the system's `MemAvailable`, the cgroup's room (a container's `memory.max` less
`memory.current`) and, on Windows, the physical memory free; where none can be read (macOS
without extra packages), None: no check.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

# Left free for everything else (the allocator, Python, the OS): a cache growth that would leave
# less is refused.
HEADROOM = 256 << 20


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), or v1's limit - usage."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        base = Path("/sys/fs/cgroup") / parts[2].lstrip("/")
        pairs = [(base / "memory.max", base / "memory.current"),
                 (Path("/sys/fs/cgroup/memory") / parts[2].lstrip("/") / "memory.limit_in_bytes",
                  Path("/sys/fs/cgroup/memory") / parts[2].lstrip("/") / "memory.usage_in_bytes")]
        for limit_file, usage_file in pairs:
            try:
                limit = limit_file.read_text().strip()
                usage = int(usage_file.read_text().strip())
            except (OSError, ValueError):
                continue
            if limit == "max" or int(limit) >= 1 << 60:
                return None
            return max(int(limit) - usage, 0)
    return None


def _windows_available() -> int | None:
    class MemoryStatus(ctypes.Structure):
        _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong), ("total_phys", ctypes.c_ulonglong),
                    ("avail_phys", ctypes.c_ulonglong), ("total_page", ctypes.c_ulonglong),
                    ("avail_page", ctypes.c_ulonglong), ("total_virtual", ctypes.c_ulonglong),
                    ("avail_virtual", ctypes.c_ulonglong), ("avail_extended", ctypes.c_ulonglong)]

    status = MemoryStatus(length=ctypes.sizeof(MemoryStatus))
    if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        return int(status.avail_phys)
    return None


def _resident_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def available_bytes() -> int | None:
    """Bytes this process may still take for its caches, or None where it cannot be told: what
    the system and the cgroup have free, less HEADROOM, and under LANTERN_MEMORY_LIMIT (bytes:
    the most this process may hold, for users who share a machine) what is left of it."""
    readings = []
    if sys.platform == "win32":
        readings.append(_windows_available())
    else:
        readings += [_meminfo_available(), _cgroup_room()]
    readings = [r - HEADROOM for r in readings if r is not None]
    limit = os.environ.get("LANTERN_MEMORY_LIMIT")
    if limit:
        resident = _resident_bytes()
        try:
            readings.append(int(limit) - (resident or 0))
        except ValueError:
            pass
    return max(min(readings), 0) if readings else None
