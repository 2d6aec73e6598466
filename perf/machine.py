"""Describe the machine and the software versions that a result was measured on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from perf.tools import DCMSEND, STORESCU


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return None


def _version_line(command: list[str]) -> str:
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError as exc:
        return f"not available ({exc.strerror})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0].strip("$ ") if lines else "unknown"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_machine() -> dict[str, Any]:
    """Return the CPU, core counts, memory, kernel and load of this machine."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }


def describe_software() -> dict[str, str]:
    """Return the versions of DCMTK, pydicom, pynetdicom and dicomsend."""
    return {
        "storescu": _version_line([STORESCU, "--version"]),
        "dcmsend": _version_line([DCMSEND, "--version"]),
        "pydicom": _package_version("pydicom"),
        "pynetdicom": _package_version("pynetdicom"),
        "dicomsend": _package_version("dicomsend"),
    }
