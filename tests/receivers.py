"""Storage receivers for tests: DCMTK storescp and pynetdicom SCPs on loopback.

Every receiver listens on a free 127.0.0.1 port, exposes ``.port`` and
``.stop()``, and is a context manager, so a fixture can always stop it::

    with start_storescp(tmp_path, "+xa") as scp:
        send_to("127.0.0.1", scp.port)

DCMTK is looked up in /usr/bin only, because the ``storescp`` found first on
PATH may be pynetdicom's script of the same name. When a DCMTK tool is
missing, ``require_dcmtk_tool`` skips the test, except under CI (``CI=true``)
where a missing tool fails it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

DCMTK_DIRECTORIES = (Path("/usr/bin"), Path("/usr/local/bin"))
STARTUP_TIMEOUT = 10.0
LOOPBACK = "127.0.0.1"


def find_dcmtk_tool(name: str) -> Path | None:
    """Return the path of a DCMTK executable such as ``storescp``, or None.

    Only /usr/bin and /usr/local/bin are searched, and a file that starts with
    ``#!`` (a script, such as pynetdicom's ``storescp``) is never returned.
    """
    for directory in DCMTK_DIRECTORIES:
        path = directory / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        with path.open("rb") as handle:
            if handle.read(2) == b"#!":
                continue
        return path
    return None


def require_dcmtk_tool(name: str) -> Path:
    """Return a DCMTK tool's path; skip the test without it, or fail under CI."""
    path = find_dcmtk_tool(name)
    if path is not None:
        return path
    message = f"DCMTK's {name} was not found in /usr/bin or /usr/local/bin"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI needs DCMTK installed")
    pytest.skip(message)


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` at the time of the call."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class RunningStoreScp:
    """A DCMTK storescp process listening on ``port``; ``stop()`` ends it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int,
                 log_path: Path, out_dir: Path) -> None:
        self.process = process
        self.port = port
        self.host = LOOPBACK
        self.log_path = log_path
        self.out_dir = out_dir

    def output(self) -> str:
        """Return what storescp printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Terminate storescp, wait for it, and delete its log file."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> RunningStoreScp:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_storescp(out_dir: Path | str, *args: str) -> RunningStoreScp:
    """Start ``/usr/bin/storescp`` on a free loopback port, writing into out_dir.

    Parameters
    ----------
    out_dir : Path or str
        An existing directory, passed as ``--output-directory``.
    *args : str
        More storescp options, e.g. ``"+xa"``, ``"--aetitle", "PACS"``.

    Returns
    -------
    RunningStoreScp
        The process once its port accepts connections.

    Raises
    ------
    RuntimeError
        If storescp exits or does not listen within 10 s (three attempts, in
        case another process takes the port first).
    """
    storescp = require_dcmtk_tool("storescp")
    out_dir = Path(out_dir)
    last_output = ""
    for _ in range(3):
        port = free_port()
        handle, name = tempfile.mkstemp(prefix="storescp-", suffix=".log")
        log_path = Path(name)
        with os.fdopen(handle, "wb") as log:
            process = subprocess.Popen(
                [str(storescp), "--output-directory", str(out_dir), *args,
                 str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        receiver = RunningStoreScp(process, port, log_path, out_dir)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if _port_accepts(LOOPBACK, port):
                return receiver
            time.sleep(0.05)
        last_output = receiver.output()
        receiver.stop()
    raise RuntimeError(f"storescp did not start; its output: {last_output!r}")


class RunningPynetdicomScp:
    """A pynetdicom SCP started with ``AE.start_server(block=False)``."""

    def __init__(self, ae: Any, server: Any) -> None:
        self.ae = ae
        self.server = server
        self.host = LOOPBACK
        self.port = int(server.server_address[1])

    def stop(self) -> None:
        """Shut the server down and close its associations."""
        self.server.shutdown()
        self.ae.shutdown()

    def __enter__(self) -> RunningPynetdicomScp:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_pynetdicom_scp(
    handle_store: Callable[[Any], Any] | None = None,
    *,
    ae_title: str = "ANY-SCP",
    require_called_aet: bool = False,
    abstract_syntaxes: Sequence[str] | None = None,
    transfer_syntaxes: Sequence[str] | None = None,
    handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
    dimse_timeout: float = 10.0,
) -> RunningPynetdicomScp:
    """Start a pynetdicom storage SCP on a free loopback port.

    Parameters
    ----------
    handle_store : callable, optional
        The ``evt.EVT_C_STORE`` handler; it returns the status. Without it the
        SCP returns 0x0000 for every C-STORE.
    ae_title : str
        The SCP's AE title.
    require_called_aet : bool
        Reject associations whose called AE title is not ``ae_title``.
    abstract_syntaxes : sequence of str, optional
        The SOP classes to support; default all storage classes and
        Verification.
    transfer_syntaxes : sequence of str, optional
        The transfer syntaxes to accept for each; default pynetdicom's
        default list (the three uncompressed ones).
    handlers : sequence of (event, handler)
        More pynetdicom event handlers.
    dimse_timeout : float
        The SCP's DIMSE timeout in seconds.
    """
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=ae_title)
    ae.require_called_aet = require_called_aet
    ae.dimse_timeout = dimse_timeout
    ae.acse_timeout = 10.0
    ae.network_timeout = 10.0
    if abstract_syntaxes is None:
        abstract_syntaxes = [
            context.abstract_syntax for context in AllStoragePresentationContexts
        ]
        abstract_syntaxes.append(Verification)
    for abstract in abstract_syntaxes:
        if transfer_syntaxes is None:
            ae.add_supported_context(abstract)
        else:
            ae.add_supported_context(abstract, list(transfer_syntaxes))

    def accept_all(event: Any) -> int:
        return 0x0000

    event_handlers = [(evt.EVT_C_STORE, handle_store or accept_all), *handlers]
    server = ae.start_server((LOOPBACK, 0), block=False, evt_handlers=event_handlers)
    return RunningPynetdicomScp(ae, server)
