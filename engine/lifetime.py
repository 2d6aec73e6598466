"""Make worker and sender processes end when the caller's process dies.

Without this, a ``kill -9`` of the caller leaves its children blocked on
their queues for good, and each sender keeps its association open.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def stop_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this process when its parent dies.

    Linux only (prctl PR_SET_PDEATHSIG); elsewhere this does nothing. The
    process exits at once if its parent is already gone.
    """
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            logger.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d",
                         ctypes.get_errno())
            return
    except (OSError, AttributeError) as exc:
        logger.debug("prctl is not available: %s", exc)
        return
    # The parent may have died before the request took effect.
    if os.getppid() != parent.pid:
        os._exit(1)
