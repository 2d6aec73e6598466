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


def _loopback_listener(backlog: int) -> socket.socket:
    """Listen on a free 127.0.0.1 port; accept() wakes every 0.2 s to check for stop."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(backlog)
    listener.settimeout(0.2)
    return listener


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


# Receivers that misbehave on purpose, for the fault tests.

A_ABORT_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])


class FaultProxy:
    """A TCP proxy on loopback that breaks chosen connections to a receiver.

    ``faults[i]`` applies to the i-th connection (0-based); connections past
    the end of ``faults``, and ``None`` entries, are forwarded untouched. A
    fault is ``(kind, count)`` and acts once ``count`` bytes from the client
    were forwarded. ``"abort"`` sends the client an A-ABORT and closes both
    sides, ``"close"`` closes both sides without a word, and ``"stall"``
    stops forwarding in both directions but keeps the client's socket open
    until the client gives up.
    """

    def __init__(self, target_port: int,
                 faults: Sequence[tuple[str, int] | None] = ()) -> None:
        import threading

        self.target_port = target_port
        self.faults = list(faults)
        self.host = LOOPBACK
        self.connections = 0
        self.faults_injected: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = _loopback_listener(16)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="fault-proxy")
        self._thread.start()

    def _accept_loop(self) -> None:
        import threading

        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
            fault = self.faults[index] if index < len(self.faults) else None
            try:
                server = socket.create_connection((LOOPBACK, self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump_client, daemon=True,
                             args=(client, server, fault)).start()
            threading.Thread(target=self._pump_server, daemon=True,
                             args=(client, server)).start()

    def _pump_client(self, client: socket.socket, server: socket.socket,
                     fault: tuple[str, int] | None) -> None:
        forwarded = 0
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                if fault is not None and forwarded + len(data) >= fault[1]:
                    server.sendall(data[:fault[1] - forwarded])
                    self._inject(fault[0], client, server)
                    return
                server.sendall(data)
                forwarded += len(data)
        except OSError:
            pass
        _close_all(client, server)

    def _inject(self, kind: str, client: socket.socket,
                server: socket.socket) -> None:
        self.faults_injected.append(kind)
        if kind == "abort":
            try:
                client.sendall(A_ABORT_PDU)
            except OSError:
                pass
            _close_all(client, server)
        elif kind == "close":
            _close_all(client, server)
        elif kind == "stall":
            # Drop the receiver's side; keep the client waiting until it quits.
            server.close()
            try:
                while client.recv(65536):
                    pass
            except OSError:
                pass
            client.close()
        else:
            raise ValueError(f"Invalid fault kind {kind!r}")

    @staticmethod
    def _pump_server(client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stop(self) -> None:
        """Stop accepting and close every proxied connection."""
        self._stopping.set()
        self._listener.close()
        self._thread.join(timeout=5)
        with self._lock:
            _close_all(*self._sockets)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _close_all(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass


class RestartableScp:
    """A pynetdicom storage SCP that can be stopped and started on the same port.

    Every storage SOP class is accepted in the uncompressed syntaxes;
    ``handle_store`` is the C-STORE handler.
    """

    def __init__(self, handle_store: Callable[[Any], Any]) -> None:
        self.handle_store = handle_store
        self.host = LOOPBACK
        self.port = free_port()
        self.running: RunningPynetdicomScp | None = None
        self.start()

    def start(self) -> None:
        """Listen on ``port`` again, retrying while the old socket lingers."""
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title="ANY-SCP")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10.0
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                server = ae.start_server(
                    (LOOPBACK, self.port), block=False,
                    evt_handlers=[(evt.EVT_C_STORE, self.handle_store)])
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.running = RunningPynetdicomScp(ae, server)

    def stop(self) -> None:
        """Stop listening and abort the open associations."""
        if self.running is not None:
            self.running.stop()
            self.running = None

    def __enter__(self) -> RestartableScp:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class FakeScp:
    """A storage SCP written on raw sockets that responds wrongly to chosen files.

    It accepts every proposed presentation context with its first transfer
    syntax, reads each C-STORE-RQ and returns success (0x0000),
    unless the request's Affected SOP Instance UID is a key of ``faults``.
    Then it acts as the value specifies:

    ``"unknown_pdu"``
        sends a PDU of type 0x0A, which does not exist;
    ``"truncated_pdu"``
        sends a P-DATA-TF header announcing 200 bytes, 10 of them, and closes;
    ``"bad_pdv"``
        sends a P-DATA-TF whose item length runs past the end of the PDU;
    ``"unknown_message"``
        answers with an N-EVENT-REPORT-RQ instead of a C-STORE-RSP;
    ``"wrong_message_id"``
        answers with a C-STORE-RSP for the message ID plus one;
    ``"silent_close"``
        closes the connection without a word.

    ``requests`` counts the C-STORE-RQs per SOP Instance UID and ``stored``
    lists the UIDs answered with success.
    """

    def __init__(self, faults: dict[str, str]) -> None:
        import threading
        from collections import Counter

        self.faults = dict(faults)
        self.host = LOOPBACK
        self.requests: Counter[str] = Counter()
        self.stored: list[str] = []
        self.errors: list[str] = []
        self._stopping = threading.Event()
        self._listener = _loopback_listener(8)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="fake-scp")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            conn.settimeout(10)
            try:
                self._handle_connection(conn)
            except (OSError, ValueError) as exc:
                self.errors.append(repr(exc))
            finally:
                _close_all(conn)

    def _handle_connection(self, conn: socket.socket) -> None:
        pdu_type, body = _read_pdu(conn)
        if pdu_type != 0x01:
            return
        conn.sendall(_associate_ac(body))
        command = bytearray()
        context_id = 1
        while True:
            pdu_type, body = _read_pdu(conn)
            if pdu_type == 0x05:  # A-RELEASE-RQ
                conn.sendall(bytes([0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
                return
            if pdu_type != 0x04:  # anything but P-DATA-TF ends the connection
                return
            offset = 0
            while offset < len(body):
                length = int.from_bytes(body[offset:offset + 4], "big")
                context_id = body[offset + 4]
                control = body[offset + 5]
                value = body[offset + 6:offset + 4 + length]
                offset += 4 + length
                if control & 0x01:
                    command += value
                elif control & 0x02:
                    # The last data set fragment: send the response.
                    if not self._answer(conn, context_id, bytes(command)):
                        return
                    command = bytearray()

    def _answer(self, conn: socket.socket, context_id: int, command: bytes) -> bool:
        """Respond to one C-STORE-RQ; return False when the connection must end."""
        elements = _parse_command(command)
        message_id = int.from_bytes(elements[0x0110], "little")
        sop_class = elements[0x0002].rstrip(b"\x00").decode()
        sop_instance = elements[0x1000].rstrip(b"\x00").decode()
        self.requests[sop_instance] += 1
        fault = self.faults.get(sop_instance)

        if fault is None:
            conn.sendall(_pdata(context_id, _store_rsp(message_id, sop_class,
                                                       sop_instance)))
            self.stored.append(sop_instance)
            return True
        if fault in ("truncated_pdu", "silent_close"):
            if fault == "truncated_pdu":
                conn.sendall(bytes([0x04, 0, 0, 0, 0, 200]) + bytes(10))
            return False
        if fault == "unknown_pdu":
            conn.sendall(bytes([0x0A, 0, 0, 0, 0, 2, 0, 0]))
        elif fault == "bad_pdv":
            item = (500).to_bytes(4, "big") + bytes([context_id, 0x03]) + bytes(4)
            conn.sendall(bytes([0x04, 0]) + len(item).to_bytes(4, "big") + item)
        elif fault == "unknown_message":
            conn.sendall(_pdata(context_id, _command([
                (0x0002, sop_class.encode()),
                (0x0100, (0x0100).to_bytes(2, "little")),
                (0x0110, (7).to_bytes(2, "little")),
                (0x0800, (0x0101).to_bytes(2, "little")),
                (0x1000, sop_instance.encode()),
                (0x1002, (1).to_bytes(2, "little")),
            ])))
        elif fault == "wrong_message_id":
            conn.sendall(_pdata(context_id, _store_rsp(
                message_id + 1, sop_class, sop_instance)))
        else:
            raise ValueError(f"Invalid fault {fault!r}")
        # Wait for the client to abort or close, so it reads what we sent.
        try:
            conn.settimeout(5)
            while conn.recv(65536):
                pass
        except OSError:
            pass
        return False

    def stop(self) -> None:
        """Stop accepting connections."""
        self._stopping.set()
        self._listener.close()
        self._thread.join(timeout=15)

    def __enter__(self) -> FakeScp:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _read_exactly(conn: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        chunk = conn.recv(length - len(data))
        if not chunk:
            raise ValueError("the peer closed the connection")
        data += chunk
    return data


def _read_pdu(conn: socket.socket) -> tuple[int, bytes]:
    header = _read_exactly(conn, 6)
    length = int.from_bytes(header[2:6], "big")
    return header[0], _read_exactly(conn, length)


def _associate_ac(request: bytes) -> bytes:
    """Build an A-ASSOCIATE-AC accepting each context with its first syntax."""
    # PS3.8 9.3.2: fixed fields of 68 bytes, then the variable items.
    fixed = bytearray(request[:68])
    items = []
    offset = 68
    while offset < len(request):
        item_type = request[offset]
        length = int.from_bytes(request[offset + 2:offset + 4], "big")
        body = request[offset + 4:offset + 4 + length]
        offset += 4 + length
        if item_type == 0x10:  # application context
            items.append(bytes([0x10, 0]) + length.to_bytes(2, "big") + body)
        elif item_type == 0x20:  # presentation context
            context_id = body[0]
            syntax = b""
            sub = 4
            while sub < len(body):
                sub_type = body[sub]
                sub_length = int.from_bytes(body[sub + 2:sub + 4], "big")
                if sub_type == 0x40:
                    syntax = body[sub + 4:sub + 4 + sub_length]
                    break
                sub += 4 + sub_length
            transfer = bytes([0x40, 0]) + len(syntax).to_bytes(2, "big") + syntax
            context = bytes([context_id, 0, 0, 0]) + transfer
            items.append(bytes([0x21, 0]) + len(context).to_bytes(2, "big") + context)
    max_length = bytes([0x51, 0, 0, 4]) + (16384).to_bytes(4, "big")
    uid = b"1.2.826.0.1.3680043.9.9999.1"
    implementation = bytes([0x52, 0]) + len(uid).to_bytes(2, "big") + uid
    user = max_length + implementation
    items.append(bytes([0x50, 0]) + len(user).to_bytes(2, "big") + user)
    body = bytes(fixed) + b"".join(items)
    return bytes([0x02, 0]) + len(body).to_bytes(4, "big") + body


def _parse_command(command: bytes) -> dict[int, bytes]:
    """Return the values of a command set in Implicit VR Little Endian, by element."""
    elements = {}
    offset = 0
    while offset + 8 <= len(command):
        element = int.from_bytes(command[offset + 2:offset + 4], "little")
        length = int.from_bytes(command[offset + 4:offset + 8], "little")
        elements[element] = command[offset + 8:offset + 8 + length]
        offset += 8 + length
    return elements


def _command(elements: list[tuple[int, bytes]]) -> bytes:
    """Encode group 0000 elements in Implicit VR Little Endian, with group length."""
    body = b""
    for element, value in elements:
        if len(value) % 2:
            value += b"\x00"
        body += (b"\x00\x00" + element.to_bytes(2, "little")
                 + len(value).to_bytes(4, "little") + value)
    length = b"\x00\x00\x00\x00" + (4).to_bytes(4, "little")
    return length + len(body).to_bytes(4, "little") + body


def _store_rsp(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    return _command([
        (0x0002, sop_class.encode()),
        (0x0100, (0x8001).to_bytes(2, "little")),
        (0x0120, message_id.to_bytes(2, "little")),
        (0x0800, (0x0101).to_bytes(2, "little")),
        (0x0900, (0x0000).to_bytes(2, "little")),
        (0x1000, sop_instance.encode()),
    ])


def _pdata(context_id: int, command: bytes) -> bytes:
    """Wrap a whole command set in one P-DATA-TF as its last fragment."""
    item = (len(command) + 2).to_bytes(4, "big") + bytes([context_id, 0x03]) + command
    return bytes([0x04, 0]) + len(item).to_bytes(4, "big") + item


# Orthanc as a storage target.

ORTHANC_PACS_EXECUTABLES = (Path("/usr/sbin/Orthanc"), Path("/usr/bin/Orthanc"),
                            Path("/usr/local/bin/Orthanc"))
ORTHANC_PACS_STARTUP_TIMEOUT = 30.0


def require_orthanc_executable() -> Path:
    """Return the Orthanc executable; skip the test without it, or fail under CI."""
    for path in ORTHANC_PACS_EXECUTABLES:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    searched = ", ".join(map(str, ORTHANC_PACS_EXECUTABLES))
    message = f"Orthanc was not found in {searched}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI needs the Debian package orthanc installed")
    pytest.skip(message)


class OrthancPacs:
    """An Orthanc server on loopback with its REST API on ``http_port``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, http_port: int,
                 log_path: Path) -> None:
        import urllib.request

        self.process = process
        self.host = LOOPBACK
        self.port = port
        self.http_port = http_port
        self.log_path = log_path
        # No proxy: environment proxy settings must not see loopback requests.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def rest(self, path: str) -> Any:
        """GET ``path`` from the REST API and return the decoded JSON."""
        import json

        url = f"http://{LOOPBACK}:{self.http_port}{path}"
        with self._opener.open(url, timeout=10) as response:
            return json.loads(response.read())

    def output(self) -> str:
        """Return what Orthanc logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Terminate Orthanc and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> OrthancPacs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_orthanc_pacs(work_dir: Path | str, **settings: Any) -> OrthancPacs:
    """Start Orthanc as a PACS on free loopback ports, storing into ``work_dir``.

    It accepts any calling AE title, unknown SOP classes and every transfer
    syntax, has no plug-ins and no HTTP authentication, and answers only on
    127.0.0.1. ``settings`` are more configuration options, which override
    these.

    Raises
    ------
    RuntimeError
        If Orthanc exits or its REST API does not answer within 30 s.
    """
    import json
    import urllib.error

    orthanc = require_orthanc_executable()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    last_output = ""
    for attempt in range(3):
        port, http_port = free_port(), free_port()
        config = {
            "Name": "dicomsend-test",
            "StorageDirectory": str(work_dir / "storage"),
            "IndexDirectory": str(work_dir / "storage"),
            "DicomAet": "ORTHANC",
            "DicomPort": port,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
            "Plugins": [],
            "StorageCompression": False,
            "DicomScpTimeout": 30,
            "LoadPrivateDictionary": False,
            **settings,
        }
        config_path = work_dir / f"orthanc-{attempt}.json"
        config_path.write_text(json.dumps(config, indent=2))
        log_path = work_dir / f"orthanc-{attempt}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(orthanc), str(config_path)], cwd=work_dir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        running = OrthancPacs(process, port, http_port, log_path)
        deadline = time.monotonic() + ORTHANC_PACS_STARTUP_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                running.rest("/system")
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.1)
                continue
            if _port_accepts(LOOPBACK, port):
                return running
            time.sleep(0.1)
        last_output = running.output()
        running.stop()
    raise RuntimeError(f"Orthanc did not start; its output: {last_output[-2000:]!r}")
