"""Run one command and measure its wall time, CPU time and peak memory.

CPU time comes from ``os.wait4``: on Linux the rusage it returns covers the
process and every descendant that the process (or its descendants) reaped.
A second figure sums the last CPU times seen for each process of the tree
while polling; it catches descendants that were never reaped, at the cost of
missing up to one polling interval of each process's life. The report takes
the larger of the two.

Peak memory is the largest sum of RSS over all processes of the tree seen at
any poll. Pages shared between processes (a forked worker's copy of the
interpreter, shared libraries, the parent's heap as it was at the fork) are
counted once per process, so the figure over-states what the tree costs the
machine when it forks. On request the poll also sums PSS (proportional set
size: each shared page divided among the processes that map it), which
counts every page once; reading it costs about a millisecond per process, so
it is only done where memory is the question.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.02


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one run of a command cost and how it ended."""

    wall_s: float
    cpu_user_s: float
    cpu_system_s: float
    cpu_polled_s: float
    peak_rss_bytes: int
    returncode: int | None
    timed_out: bool
    stdout_path: str
    stderr_path: str
    peak_pss_bytes: int = 0

    @property
    def cpu_s(self) -> float:
        """User plus system CPU seconds of the whole process tree."""
        return max(self.cpu_user_s + self.cpu_system_s, self.cpu_polled_s)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields and ``cpu_s`` as a JSON-ready dictionary."""
        data = asdict(self)
        data["cpu_s"] = self.cpu_s
        return data


def _poll_tree(
    root: psutil.Process, cpu_by_pid: dict[int, float], pss: bool = False
) -> tuple[int, int]:
    """Return the summed RSS and PSS (0 unless asked) of ``root`` and its tree.

    The CPU times of every process are recorded in ``cpu_by_pid``.
    """
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss_total = 0
    for process in processes:
        try:
            with process.oneshot():
                if pss:
                    full = process.memory_full_info()
                    rss += full.rss
                    pss_total += full.pss
                else:
                    rss += process.memory_info().rss
                times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        cpu_by_pid[process.pid] = times.user + times.system
    return rss, pss_total


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_measured(
    command: Sequence[str],
    *,
    log_stem: Path,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    pss: bool = False,
) -> Measurement:
    """Run ``command`` to completion and measure it.

    Parameters
    ----------
    command : sequence of str
        Program and arguments.
    log_stem : Path
        The standard output goes to ``<log_stem>.out`` and the standard error
        to ``<log_stem>.err``.
    timeout_s : float
        Wall time after which the whole process group is killed with SIGKILL
        and the run is marked as timed out.
    env : mapping, optional
        Environment of the process; the harness's own environment if omitted.
    cwd : Path, optional
        Working directory of the process.
    pss : bool
        Also sum the PSS of the tree at each poll (``peak_pss_bytes``).

    Returns
    -------
    Measurement
        Wall time from just before the start until the process was reaped,
        CPU times, peak RSS of the tree, exit code and log paths.

    Raises
    ------
    OSError
        If the program cannot be started.
    """
    log_stem.parent.mkdir(parents=True, exist_ok=True)
    out_path = log_stem.with_suffix(".out")
    err_path = log_stem.with_suffix(".err")
    cpu_by_pid: dict[int, float] = {}
    peak_rss = peak_pss = 0
    timed_out = False
    logger.debug("running %s", " ".join(command))

    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        # A new session makes the command a process group leader, so that a
        # timeout kills its workers too.
        proc = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        root = psutil.Process(proc.pid)

        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss, proportional = _poll_tree(root, cpu_by_pid, pss)
            peak_rss = max(peak_rss, rss)
            peak_pss = max(peak_pss, proportional)
            if time.perf_counter() - start > timeout_s:
                timed_out = True
                _kill_group(proc.pid)
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(POLL_INTERVAL_S)
        wall = time.perf_counter() - start

    # Leftover members of the group (a worker whose parent died) are killed so
    # that they cannot disturb the next run.
    _kill_group(proc.pid)
    returncode = os.waitstatus_to_exitcode(status)
    proc.returncode = returncode
    return Measurement(
        wall_s=wall,
        cpu_user_s=rusage.ru_utime,
        cpu_system_s=rusage.ru_stime,
        cpu_polled_s=sum(cpu_by_pid.values()),
        peak_rss_bytes=peak_rss,
        returncode=None if timed_out else returncode,
        timed_out=timed_out,
        stdout_path=str(out_path),
        stderr_path=str(err_path),
        peak_pss_bytes=peak_pss,
    )
