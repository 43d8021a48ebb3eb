"""Giving the file's pages back once a weight has been converted.

Tensors read from a GGUF file are views of its memory map: every page read while converting a
weight stays resident, and counted in the process's RSS, until the kernel evicts it. After the
conversion nothing reads those bytes again (an embedding that shares them re-reads only the rows
it looks up), so `release_pages` tells the kernel to drop them from this process
(`madvise(MADV_DONTNEED)`: for a clean file mapping the next access simply reloads from the page
cache or the file). Peak RSS then stays near the size of the converted weights.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

import torch

_MADV_DONTNEED = 4
_libc = None


def _madvise():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        except OSError:
            _libc = False
    return _libc.madvise if _libc else None


def release_pages(t: torch.Tensor) -> None:
    """Drop the whole pages under `t` (a read-only memory-mapped CPU tensor) from this process.
    Best effort: does nothing off Linux or for tensors that own their memory."""
    if not sys.platform.startswith("linux") or t.device.type != "cpu" or t.numel() == 0:
        return
    storage = t.untyped_storage()
    # Tensors that own their memory (torch-allocated) must not be touched: only the file map.
    if storage.resizable():
        return
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    if not _read_only_file_mapping(start, end):
        return  # anonymous or writable memory: dropping pages would lose data
    madvise = _madvise()
    if madvise is None:
        return
    page = mmap.PAGESIZE
    first = -(-start // page) * page
    last = end // page * page
    if last > first:
        madvise(ctypes.c_void_p(first), last - first, _MADV_DONTNEED)


def _read_only_file_mapping(start: int, end: int) -> bool:
    """Whether [start, end) lies in one read-only mapping of a file (/proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                if lo <= start < hi:
                    path = fields[5].strip() if len(fields) > 5 else ""
                    return end <= hi and fields[1][1] == "-" and path.startswith("/")
    except (OSError, ValueError, IndexError):
        pass
    return False
