"""What every benchmark records beside its numbers: the machine and how busy it was."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def load() -> tuple[float, float, float]:
    """1/5/15-minute load averages: on a shared 2-core box they explain noisy numbers."""
    return os.getloadavg()


def machine(**extra: Any) -> dict[str, Any]:
    """Cores, CPU model, kernel and Python, plus whatever versions a benchmark depends on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), **extra}
