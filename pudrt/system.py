"""Facts about the machine that several parts of pudrt size themselves by."""

from __future__ import annotations

import os
import platform


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the host's count, which containers overstate)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has an 8-bit dot-product instruction (AVX512-VNNI or AVX-VNNI); None where that
    cannot be read (not Linux) or does not apply (not x86)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags
