"""Helpers shared by the benchmark scripts (never imported by the package)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def machine_info() -> dict:
    import torch

    from pudrt.system import cpu_has_vnni

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "vnni": cpu_has_vnni(),  # decides INT8's default weight width (pudrt.engine.quantize)
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_before": round(os.getloadavg()[0], 2),
    }


def replace_section(md: Path, heading: str, section: str) -> None:
    """Replace the `heading` section of `md` (up to the next `## `) with `section`, or append it."""
    text = md.read_text() if md.exists() else "# Benchmark results\n\nWritten by the scripts in this folder.\n\n"
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md.write_text(text)
