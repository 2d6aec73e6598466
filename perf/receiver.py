"""Start DCMTK's storescp on a free loopback port and count what it received.

Variant A writes every received object into a folder on tmpfs, so the count of
files in that folder is the proof of delivery. Variant B runs storescp with
``--ignore``: it reads each data set off the wire and discards it, and the
count of "Received Store Request" lines in its verbose log is the proof.

Both variants run storescp with ``--fork`` (one child per association), so
that a sender with several associations at once is served in parallel, and
with ``TCP_NODELAY=1`` in the environment. DCMTK 3.6.7 reads that variable
when it accepts or opens a connection and then sets the TCP_NODELAY socket
option (``dcmnet/libsrc/dul.cc`` and ``dulfsm.cc``); without it the option
stays off unless DCMTK was built with ``DISABLE_NAGLE_ALGORITHM``.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import psutil

logger = logging.getLogger(__name__)

STORESCP = "/usr/bin/storescp"
RECEIVED_MARKER = b"Received Store Request"
LISTEN_TIMEOUT_S = 10.0


class Variant(enum.Enum):
    """How the receiver handles the data sets it receives."""

    STORE = "A"
    DISCARD = "B"

    @property
    def description(self) -> str:
        """One line for the report."""
        if self is Variant.STORE:
            return "storescp writes every object to tmpfs"
        return "storescp --ignore: receives every object and discards it"


def nodelay_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Return a copy of the environment with ``TCP_NODELAY=1`` for DCMTK."""
    env = dict(os.environ if base is None else base)
    env["TCP_NODELAY"] = "1"
    return env


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StoreScp:
    """A DCMTK storescp process for one run, used as a context manager.

    Parameters
    ----------
    variant : Variant
        Write the objects to ``output_dir`` or discard them.
    output_dir : Path
        Folder for the received objects (variant A). It is emptied on start
        and removed on exit.
    log_path : Path
        File that receives storescp's verbose log.
    max_pdu : int
        Maximum PDU size that storescp accepts (``-pdu``), 4096 to 131072.
    command_prefix : list of str, optional
        Words put before the storescp command, for example an ``strace`` call.
    """

    def __init__(
        self,
        variant: Variant,
        output_dir: Path,
        log_path: Path,
        max_pdu: int,
        command_prefix: list[str] | None = None,
    ) -> None:
        self.variant = variant
        self.output_dir = output_dir
        self.log_path = log_path
        self.max_pdu = max_pdu
        self.command_prefix = command_prefix or []
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StoreScp:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start storescp and wait until it listens.

        Raises
        ------
        RuntimeError
            If storescp exits or does not listen within 10 s.
        """
        if self.output_dir.exists():
            shutil.rmtree(self.output_dir)
        self.output_dir.mkdir(parents=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        command = [
            *self.command_prefix,
            STORESCP,
            "--fork",
            "-v",
            "+xa",  # accept every transfer syntax that DCMTK knows
            "-dhl",  # no reverse DNS look-up of the caller
            "-pdu",
            str(self.max_pdu),
        ]
        if self.variant is Variant.DISCARD:
            command.append("--ignore")
        else:
            command += ["-od", str(self.output_dir)]
        command.append(str(self.port))

        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=nodelay_env(),
                start_new_session=True,
            )
        self._wait_listening()
        logger.debug("storescp %s listening on port %d", self.variant.value, self.port)

    def _wait_listening(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        root = psutil.Process(self._proc.pid)
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"storescp exited with code {self._proc.returncode} before "
                    f"listening on port {self.port}; see '{self.log_path}'"
                )
            # With a command prefix (strace) storescp is a child of the root.
            for process in [root, *root.children(recursive=True)]:
                try:
                    connections = process.net_connections(kind="tcp")
                except psutil.Error:
                    continue
                for conn in connections:
                    listening = conn.status == psutil.CONN_LISTEN
                    if listening and conn.laddr.port == self.port:
                        return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"storescp did not listen on port {self.port} within "
            f"{LISTEN_TIMEOUT_S:.0f} s; see '{self.log_path}'"
        )

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Wait until no forked child is left, so every association is closed.

        Returns
        -------
        bool
            True if the children exited within ``timeout_s``.
        """
        if self._proc is None:
            return True
        root = psutil.Process(self._proc.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                children = [
                    c for c in root.children(recursive=True) if c.status() != "zombie"
                ]
            except psutil.NoSuchProcess:
                return True
            # With a command prefix, storescp itself is the one expected child.
            if len(children) <= (1 if self.command_prefix else 0):
                return True
            time.sleep(0.02)
        return False

    def received_count(self) -> int:
        """Return the number of C-STORE requests that storescp logged."""
        return self.log_path.read_bytes().count(RECEIVED_MARKER)

    def stored_count(self) -> int:
        """Return the number of files written to the output folder."""
        return sum(1 for path in self.output_dir.rglob("*") if path.is_file())

    def delivered_count(self) -> int:
        """Return stored files (variant A) or logged requests (variant B)."""
        if self.variant is Variant.STORE:
            return self.stored_count()
        return self.received_count()

    def stop(self) -> None:
        """Stop storescp and its children, and remove the output folder."""
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
            self._proc = None
        if self.output_dir.exists():
            shutil.rmtree(self.output_dir, ignore_errors=True)
