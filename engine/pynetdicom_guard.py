"""A runtime fix for a race in the reactor of pynetdicom 3.0.x associations.

Every ``Association.send_c_*`` (and ``send_n_*``, ``release``) method of
pynetdicom 3.0.x pauses the association's reactor thread before it sends a
request and waits for the response on the DIMSE queue. It clears the
reactor checkpoint (a ``threading.Event``) and spins until the reactor's
``_is_paused`` flag is True. The reactor loop sets ``_is_paused``, waits on
the checkpoint, clears ``_is_paused`` and then reads the DIMSE queue without
blocking. If the caller clears the checkpoint after the reactor's wait has
returned but before the reactor has cleared the flag, the caller sees a
stale True, sends its request, and the reactor later takes the response off
the queue. The reactor logs "Received unexpected ... service message" at
WARNING on the ``pynetdicom`` logger and drops the response, so the caller
waits until its DIMSE timeout aborts the association.

:func:`install_reactor_guard` replaces ``Association._run_reactor`` with a
copy that checks the checkpoint again after clearing the flag and goes back
to waiting, without touching the queue, when a pause was requested in
between. The caller that saw the stale flag then finds its response on the
queue. An association whose reactor is the only reader of the queue (a plain
storage SCP) never hits the race, so the guard changes nothing there.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import cast

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association

logger = logging.getLogger(__name__)

# The pynetdicom releases the guard patches. The copy below comes from the
# 3.0.4 source, and the test suite checks it against the installed release.
GUARDED_VERSION_PREFIX = "3.0."

# The copy logs on the logger of the module it comes from, as the original.
_pynetdicom_logger = logging.getLogger("pynetdicom.association")

_UNGUARDED_RUN_REACTOR = Association._run_reactor
_lock = threading.Lock()


# _guarded_run_reactor is derived from Association._run_reactor of
# pynetdicom 3.0.4, which is distributed under this licence:
#
#   Copyright (c) 2012-2021 Patrice Munger and pynetdicom contributors
#
#   Permission is hereby granted, free of charge, to any person obtaining a
#   copy of this software and associated documentation files (the
#   "Software"), to deal in the Software without restriction, including
#   without limitation the rights to use, copy, modify, merge, publish,
#   distribute, sublicense, and/or sell copies of the Software, and to
#   permit persons to whom the Software is furnished to do so, subject to
#   the following conditions:
#
#   The above copyright notice and this permission notice shall be included
#   in all copies or substantial portions of the Software.
#
#   THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
#   OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
#   MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
#   IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
#   CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
#   TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
#   SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
def _guarded_run_reactor(self: Association) -> None:
    """Run the association's reactor loop with the pause race closed.

    The only change from pynetdicom 3.0.4 is the ``is_set()`` check marked
    "Added" below; the rest is the original loop with shorter comments.
    """
    self._is_paused = False
    while not self._kill:
        time.sleep(0.001)

        # A send_*() call in another thread pauses the loop here so that it
        # is the only reader of the DIMSE queue until it has its response.
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        # Added: a send_*() call may have cleared the checkpoint after the
        # wait above returned and then seen the stale _is_paused = True.
        # Its response must stay on the queue, so pause again instead.
        if not self._reactor_checkpoint.is_set():
            continue

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, cast(int, context_id))

        # The peer requested release: send the A-RELEASE-RP and stop.
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            _pynetdicom_logger.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        # Either side aborted.
        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            _pynetdicom_logger.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        # The DUL thread has stopped.
        if not self.dul.is_alive():
            self.kill()
            return

        # The network timeout expired.
        if self.dul.idle_timer_expired():
            _pynetdicom_logger.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()

            self.kill()
            return


def install_reactor_guard() -> bool:
    """Patch pynetdicom's association reactor against the pause race.

    Calling it again does nothing. Associations created after the call use
    the guarded loop, and so do those whose reactor thread has not yet
    entered its loop.

    Returns
    -------
    bool
        True if the guard is installed (now or by an earlier call), False if
        the installed pynetdicom is not a 3.0.x release, which this patch was
        not written for (logged at DEBUG).
    """
    version = str(pynetdicom.__version__)
    if not version.startswith(GUARDED_VERSION_PREFIX):
        logger.debug(
            "Reactor guard not installed: pynetdicom %s is not a %sx release, "
            "and the guarded loop is a copy of the 3.0.x one",
            version,
            GUARDED_VERSION_PREFIX,
        )
        return False

    with _lock:
        if Association._run_reactor is not _guarded_run_reactor:
            Association._run_reactor = _guarded_run_reactor  # type: ignore[method-assign]
            logger.debug("Reactor guard installed for pynetdicom %s", version)
    return True


def remove_reactor_guard() -> None:
    """Restore pynetdicom's own reactor loop, if the guard replaced it."""
    with _lock:
        Association._run_reactor = _UNGUARDED_RUN_REACTOR  # type: ignore[method-assign]


def is_reactor_guard_installed() -> bool:
    """Return True if associations use the guarded reactor loop."""
    return Association._run_reactor is _guarded_run_reactor
