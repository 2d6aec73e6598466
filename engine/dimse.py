"""DIMSE messages on the socket of an established association.

``MessageChannel`` owns the socket once negotiation is done. It frames
command and data sets into P-DATA-TF PDUs, sends them with ``sendmsg``,
reads PDUs within deadlines and turns every failure into the matching
exception of ``engine.errors``. Any failure except a file read error before
the first byte leaves the channel dead, and ``dead_reason`` then contains the
reason.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import sys
import time
from dataclasses import dataclass

from engine import pdu
from engine.errors import (
    AssociationAbortedError,
    AssociationTimeoutError,
    FileError,
    ProtocolError,
)
from engine.options import Timeouts

logger = logging.getLogger(__name__)

# A FileSlice up to this size is read with one pread. A larger one is read
# and sent in chunks of STREAM_CHUNK_LENGTH, so memory stays bounded.
SMALL_FILE_LIMIT = 4 * 1024 * 1024
STREAM_CHUNK_LENGTH = 1024 * 1024
# Fragment size when the peer sets no maximum PDU length.
UNLIMITED_FRAGMENT_LENGTH = 256 * 1024
# Buffers per sendmsg call; Linux allows 1024 (IOV_MAX).
MAX_BUFFERS_PER_SEND = 1000
RECEIVE_LENGTH = 256 * 1024
# Linux delays ACKs by up to 40 ms. A receiver that leaves Nagle's algorithm
# on (DCMTK 3.6.7 storescp does unless TCP_NODELAY=1 is in its environment)
# and writes a response in two parts then delays the second part until our
# ACK, which caps a request/response loop at about 22 per second. Asking for
# an immediate ACK before each read removes that wait. The flag is not
# sticky, so it is set again before every read.
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
# How long to look for an A-ABORT after a send failed, to report its reason.
ABORT_PEEK_SECONDS = 0.5
# Python's socket module calls poll() before every send and receive on a
# socket that has a timeout. On Linux the channel keeps its socket blocking
# instead and has the kernel bound each call (SO_RCVTIMEO, SO_SNDTIMEO): a
# call that runs out of time fails with EAGAIN. That saves two system calls
# per C-STORE. The receive limit is set again only when the wanted wait
# differs from the one in force by more than TIMEOUT_SLACK seconds. A wait
# therefore ends at most that much late, and one that ends early is resumed.
KERNEL_TIMEOUTS = sys.platform.startswith("linux")
TIMEOUT_SLACK = 0.05
_TIMEVAL = struct.Struct("@ll")
_NOT_SET = -1.0


@dataclass(frozen=True, slots=True)
class FileSlice:
    """``length`` bytes of the file at ``path`` starting at ``offset``.

    For a DICOM file this is its data set: the bytes after the file meta
    information, in the transfer syntax the file meta names.
    """

    path: str | os.PathLike[str]
    offset: int
    length: int


Payload = bytes | bytearray | memoryview | FileSlice


def seconds_text(value: float | None) -> str:
    """Return a timeout for messages: ``"30 s"`` or ``"no limit"``."""
    return "no limit" if value is None else f"{value:g} s"


def _timeval(seconds: float | None) -> bytes:
    """Return a ``struct timeval`` for SO_RCVTIMEO or SO_SNDTIMEO; None: no limit."""
    if seconds is None:
        return _TIMEVAL.pack(0, 0)
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    # A zero timeval would mean no limit at all.
    return _TIMEVAL.pack(whole, max(micro, 1) if whole == 0 else micro)


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send a last PDU (A-ABORT, A-RELEASE-RP), ignoring a connection gone."""
    try:
        sock.settimeout(1.0)
        sock.sendall(data)
    except OSError:
        pass


class MessageChannel:
    """The socket of one established association, as a requestor uses it.

    Parameters
    ----------
    sock : socket.socket
        The connected socket, after the A-ASSOCIATE-AC.
    address : str
        The receiver as ``host:port`` or ``[ipv6]:port``, for messages.
    timeouts : Timeouts
        ``network`` bounds each send and read; the callers pass deadlines
        for the DIMSE and ACSE waits.
    max_receive_length : int
        Our maximum PDU length; 0 means no limit.
    peer_max_pdu_length : int
        The receiver's maximum PDU length; 0 means no limit.
    context_ids : iterable of int
        The accepted presentation context IDs.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: str,
        timeouts: Timeouts,
        max_receive_length: int,
        peer_max_pdu_length: int,
        context_ids: list[int],
    ) -> None:
        self._socket: socket.socket | None = sock
        self._socket_timeout: float | None = sock.gettimeout()
        self._buffer = bytearray()
        self._receive_area = memoryview(bytearray(RECEIVE_LENGTH))
        # The SO_RCVTIMEO in force when the kernel bounds the waits.
        self._kernel_wait: float | None = _NOT_SET
        # A TLS socket reports a kernel timeout as an SSL error, not as
        # TimeoutError, so it keeps Python's own timeouts.
        self._kernel_timeouts = (
            KERNEL_TIMEOUTS and not isinstance(sock, ssl.SSLSocket)
        ) and self._use_kernel_timeouts(
            sock, timeouts.network)
        self._timeouts = timeouts
        self._max_receive_length = max_receive_length
        self.address = address
        self.dead_reason: str | None = None
        self.peer_max_pdu_length = peer_max_pdu_length
        self._fragment_length = pdu.max_fragment_length(
            peer_max_pdu_length, UNLIMITED_FRAGMENT_LENGTH
        )
        # Cache the 12-byte header of a full, not-last data set fragment per
        # context, which every large data set repeats.
        self._full_fragment_headers = {
            context_id: pdu.pdata_header(context_id, 0, self._fragment_length)
            for context_id in context_ids
        }

    @staticmethod
    def _use_kernel_timeouts(sock: socket.socket, network: float | None) -> bool:
        """Make ``sock`` blocking with a kernel send limit; False if refused."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(network))
            sock.settimeout(None)
        except OSError as exc:
            logger.debug("Using Python's socket timeouts: %s", exc)
            return False
        return True

    def send_message(
        self, context_id: int, command: bytes, payload: Payload | None, waiting: str
    ) -> None:
        """Send a command set and its data set, if any, on one context."""
        command_pdu = pdu.encode_pdata(
            context_id, command, True, self.peer_max_pdu_length)
        if payload is None:
            self.send_buffers([command_pdu], waiting)
        elif isinstance(payload, FileSlice):
            self._send_file_slice(context_id, command_pdu, payload, waiting)
        else:
            buffers: list[bytes | memoryview] = [command_pdu]
            self._add_fragments(buffers, context_id, memoryview(payload), True)
            self.send_buffers(buffers, waiting)

    def _add_fragments(
        self,
        buffers: list[bytes | memoryview],
        context_id: int,
        data: memoryview,
        ends_message: bool,
    ) -> None:
        """Append header and data buffers of one P-DATA-TF per fragment of data."""
        fragment = self._fragment_length
        full_header = self._full_fragment_headers[context_id]
        total = len(data)
        start = 0
        while start < total or (start == 0 and ends_message):
            end = start + fragment
            if end >= total and ends_message:
                chunk = data[start:total]
                buffers.append(pdu.pdata_header(
                    context_id, pdu.PDV_LAST_FRAGMENT, len(chunk)))
                buffers.append(chunk)
                return
            if end > total:
                # A partial fragment only happens at the end of the message.
                end = total
                buffers.append(pdu.pdata_header(context_id, 0, end - start))
            else:
                buffers.append(full_header)
            buffers.append(data[start:end])
            start = end

    def _send_file_slice(
        self, context_id: int, command_pdu: bytes, payload: FileSlice, waiting: str
    ) -> None:
        """Send the command PDU, then the file's bytes, reading as needed."""
        path = os.fspath(payload.path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise FileError(
                f"Unable to read '{path}' ({exc.strerror or exc})"
            ) from exc
        try:
            if payload.length <= SMALL_FILE_LIMIT:
                data = self._read_file(fd, path, payload.offset, payload.length)
                buffers: list[bytes | memoryview] = [command_pdu]
                self._add_fragments(buffers, context_id, memoryview(data), True)
                self.send_buffers(buffers, waiting)
                return
            self._stream_file(fd, path, context_id, command_pdu, payload, waiting)
        finally:
            os.close(fd)

    def _stream_file(
        self,
        fd: int,
        path: str,
        context_id: int,
        command_pdu: bytes,
        payload: FileSlice,
        waiting: str,
    ) -> None:
        """Send a large FileSlice in chunks of whole fragments."""
        chunk_length = max(
            self._fragment_length,
            STREAM_CHUNK_LENGTH // self._fragment_length * self._fragment_length,
        )
        chunk = bytearray(chunk_length)
        view = memoryview(chunk)
        self.send_buffers([command_pdu], waiting)
        sent = 0
        while sent < payload.length:
            length = min(chunk_length, payload.length - sent)
            try:
                got = os.preadv(fd, [view[:length]], payload.offset + sent)
            except OSError as exc:
                self._abort_after_file_error()
                raise FileError(
                    f"Unable to read '{path}' at byte {payload.offset + sent} "
                    f"({exc.strerror or exc}); the association was aborted"
                ) from exc
            if got != length:
                self._abort_after_file_error()
                raise FileError(
                    f"Unable to read '{path}' as it ended after "
                    f"{payload.offset + sent + got} bytes, expected "
                    f"{payload.offset + payload.length}; the association was "
                    "aborted"
                )
            sent += got
            buffers: list[bytes | memoryview] = []
            self._add_fragments(
                buffers, context_id, view[:got], sent >= payload.length)
            self.send_buffers(buffers, waiting)

    @staticmethod
    def _read_file(fd: int, path: str, offset: int, length: int) -> bytes:
        try:
            data = os.pread(fd, length, offset)
        except OSError as exc:
            raise FileError(
                f"Unable to read '{path}' ({exc.strerror or exc})"
            ) from exc
        if len(data) != length:
            raise FileError(
                f"Unable to read '{path}' as it ended after "
                f"{offset + len(data)} bytes, expected {offset + length}"
            )
        return data

    def _abort_after_file_error(self) -> None:
        self.die("a file read failed in the middle of a C-STORE", send_abort=True)

    def send_buffers(self, buffers: list[bytes | memoryview], waiting: str) -> None:
        """Send every buffer with as few sendmsg calls as the kernel allows."""
        sock = self.live_socket()
        if not self._kernel_timeouts:
            self._set_timeout(sock, self._timeouts.network)
        index = 0
        count = len(buffers)
        try:
            while index < count:
                batch = buffers[index:index + MAX_BUFFERS_PER_SEND]
                if isinstance(sock, ssl.SSLSocket):
                    # SSL sockets have no sendmsg; sendall sends all or raises.
                    sock.sendall(b"".join(batch))
                    index += len(batch)
                    continue
                sent = sock.sendmsg(batch)
                # Skip the buffers sent in full and trim a partly sent one.
                for buffer in batch:
                    size = len(buffer)
                    if sent < size:
                        buffers[index] = memoryview(buffer)[sent:]
                        break
                    sent -= size
                    index += 1
        except (TimeoutError, BlockingIOError) as exc:
            self.die(f"network timeout sending the {waiting}", send_abort=True)
            raise AssociationTimeoutError(
                f"Timed out sending the {waiting} to {self.address}: the receiver "
                f"read nothing for the network timeout of "
                f"{seconds_text(self._timeouts.network)}; the association was aborted"
            ) from exc
        except OSError as exc:
            raise self._connection_lost(exc, f"while sending the {waiting}") from exc

    def _connection_lost(self, exc: OSError, when: str) -> AssociationAbortedError:
        """Build the error for a failed socket call, naming an A-ABORT if one came."""
        abort = self._look_for_abort()
        self.die(f"the connection was lost {when}", send_abort=False)
        if abort is not None:
            return AssociationAbortedError(
                f"Association aborted by {self.address} {when} "
                f"({pdu.describe_abort(*abort)})"
            )
        return AssociationAbortedError(
            f"Association with {self.address} lost {when}: the connection was "
            f"closed ({exc.strerror or exc})"
        )

    def _look_for_abort(self) -> tuple[int, int] | None:
        """Return (source, reason) of an A-ABORT waiting on the socket, if any."""
        sock = self._socket
        if sock is None:
            return None
        deadline = time.monotonic() + ABORT_PEEK_SECONDS
        try:
            while True:
                pdus = self._split_buffer()
                for pdu_type, body in pdus:
                    if pdu_type == pdu.A_ABORT:
                        return pdu.decode_abort(body)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._set_timeout(sock, remaining)
                received = sock.recv_into(self._receive_area)
                if not received:
                    return self._find_abort_in_buffer()
                self._buffer += self._receive_area[:received]
        except (OSError, ProtocolError):
            return self._find_abort_in_buffer()

    def _find_abort_in_buffer(self) -> tuple[int, int] | None:
        try:
            for pdu_type, body in self._split_buffer():
                if pdu_type == pdu.A_ABORT:
                    return pdu.decode_abort(body)
        except ProtocolError:
            pass
        return None

    def _split_buffer(self) -> list[tuple[int, bytes]]:
        """Take every complete PDU off the receive buffer."""
        pdus = []
        buffer = self._buffer
        while len(buffer) >= pdu.PDU_HEADER_LENGTH:
            pdu_type, length = pdu.parse_pdu_header(buffer)
            end = pdu.PDU_HEADER_LENGTH + length
            if len(buffer) < end:
                break
            pdus.append((pdu_type, bytes(buffer[pdu.PDU_HEADER_LENGTH:end])))
            del buffer[:end]
        return pdus

    # --- receiving ------------------------------------------------------------

    def read_pdu(
        self, deadline: float | None, waiting: str, timeout_name: str,
        timeout_value: float | None,
    ) -> tuple[int, bytes]:
        """Return the next PDU as (type, body), waiting until ``deadline``.

        ``waiting``, ``timeout_name`` and ``timeout_value`` only word the
        AssociationTimeoutError, e.g. "C-STORE-RSP (message ID 3)", "DIMSE
        timeout", 60.0.
        """
        sock = self.live_socket()
        buffer = self._buffer
        area = self._receive_area
        network = self._timeouts.network
        # When the last byte arrived, for the network timeout; None until
        # the first wait.
        quiet_since: float | None = None
        while True:
            # Return a complete PDU from the buffer if there is one.
            if len(buffer) >= pdu.PDU_HEADER_LENGTH:
                try:
                    pdu_type, length = pdu.parse_pdu_header(buffer)
                    if (pdu_type == pdu.P_DATA_TF and self._max_receive_length
                            and length > self._max_receive_length):
                        raise ProtocolError(
                            f"Received a P-DATA-TF PDU of {length} bytes, above "
                            f"our maximum PDU length of {self._max_receive_length}"
                        )
                except ProtocolError as exc:
                    # A-ABORT reason 1 is an unrecognised PDU, 6 a bad parameter.
                    reason = 6 if buffer[0] in pdu.PDU_NAMES else 1
                    raise self._protocol_error(str(exc), abort_reason=reason) from exc
                end = pdu.PDU_HEADER_LENGTH + length
                if len(buffer) >= end:
                    body = bytes(buffer[pdu.PDU_HEADER_LENGTH:end])
                    del buffer[:end]
                    return pdu_type, body

            # Otherwise wait for more bytes, within both timeouts.
            now = time.monotonic()
            if quiet_since is None:
                quiet_since = now
            wait = None if network is None else network - (now - quiet_since)
            if deadline is not None:
                remaining = deadline - now
                if remaining <= 0:
                    raise self._timeout(waiting, timeout_name, timeout_value)
                wait = remaining if wait is None else min(wait, remaining)
            if wait is not None and wait <= 0:
                raise self._timeout(waiting, "network timeout", network)
            try:
                self._set_timeout(sock, wait)
                if QUICKACK is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
                received = sock.recv_into(area)
            except (TimeoutError, BlockingIOError):
                # A kernel limit may end the wait early by TIMEOUT_SLACK; the
                # checks above then resume it or raise.
                if not self._kernel_timeouts:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise self._timeout(
                            waiting, timeout_name, timeout_value) from None
                    raise self._timeout(waiting, "network timeout", network) from None
                continue
            except OSError as exc:
                raise self._connection_lost(
                    exc, f"while waiting for the {waiting}") from exc
            if not received:
                self.die(
                    f"the receiver closed the connection while we waited for the "
                    f"{waiting}",
                    send_abort=False,
                )
                raise AssociationAbortedError(
                    f"Association with {self.address} lost while waiting for the "
                    f"{waiting}: the receiver closed the connection"
                )
            buffer += area[:received]
            quiet_since = None

    def read_response(
        self, expected: int, message_id: int, context_id: int, waiting: str
    ) -> pdu.DimseResponse:
        """Read PDUs until the command set of the response is complete."""
        timeout = self._timeouts.dimse
        deadline = None if timeout is None else time.monotonic() + timeout
        fragments: list[bytes] = []
        while True:
            pdu_type, body = self.read_pdu(
                deadline, waiting, "DIMSE timeout", timeout)
            if pdu_type != pdu.P_DATA_TF:
                self.handle_non_data_pdu(pdu_type, body, waiting)
                continue
            try:
                pdvs = pdu.decode_pdata(body)
            except ProtocolError as exc:
                raise self._protocol_error(str(exc), abort_reason=6) from exc

            # Collect command fragments until the last one.
            for index, (pdv_context, control, data) in enumerate(pdvs):
                if not control & pdu.PDV_COMMAND:
                    raise self._protocol_error(
                        f"Received a data set fragment while waiting for the "
                        f"{waiting}"
                    )
                if pdv_context != context_id:
                    raise self._protocol_error(
                        f"Received a command on presentation context "
                        f"{pdv_context} while waiting for the {waiting} on "
                        f"context {context_id}"
                    )
                fragments.append(data)
                if control & pdu.PDV_LAST_FRAGMENT:
                    if index != len(pdvs) - 1:
                        raise self._protocol_error(
                            f"Received more PDVs after the end of the {waiting}"
                        )
                    return self._check_response(
                        b"".join(fragments), expected, message_id, waiting)

    def _check_response(
        self, command: bytes, expected: int, message_id: int, waiting: str
    ) -> pdu.DimseResponse:
        try:
            response = pdu.decode_response(command)
        except ProtocolError as exc:
            raise self._protocol_error(
                f"Invalid command set while waiting for the {waiting}: {exc}"
            ) from exc
        if response.command_field != expected:
            raise self._protocol_error(
                f"Received an unexpected {pdu.command_name(response.command_field)} "
                f"while waiting for the {waiting}"
            )
        if response.message_id_being_responded_to != message_id:
            raise self._protocol_error(
                f"Received a {pdu.command_name(expected)} for message ID "
                f"{response.message_id_being_responded_to} while waiting for the "
                f"{waiting}"
            )
        if response.status is None:
            raise self._protocol_error(f"The {waiting} has no Status element")
        if response.has_data_set:
            raise self._protocol_error(
                f"The {waiting} announces a data set, which it must not have"
            )
        return response

    def handle_non_data_pdu(self, pdu_type: int, body: bytes, waiting: str) -> None:
        """Raise for a PDU other than P-DATA-TF that arrives mid-operation."""
        if pdu_type == pdu.A_ABORT:
            source, reason = pdu.decode_abort(body)
            words = pdu.describe_abort(source, reason)
            self.die(f"the receiver sent A-ABORT ({words})", send_abort=False)
            logger.info("Association aborted by %s (%s)", self.address, words)
            raise AssociationAbortedError(
                f"Association aborted by {self.address} while waiting for the "
                f"{waiting} ({words})"
            )
        if pdu_type == pdu.A_RELEASE_RQ:
            # The receiver asked to release; confirm, so it can close cleanly.
            sock = self.live_socket()
            send_quietly(sock, pdu.encode_release_rp())
            self.die("the receiver released the association", send_abort=False)
            logger.info("Association released by %s", self.address)
            raise AssociationAbortedError(
                f"Association released by {self.address} while waiting for the "
                f"{waiting}, so the request has no response"
            )
        raise self._protocol_error(
            f"Received an unexpected {pdu.PDU_NAMES[pdu_type]} while waiting for "
            f"the {waiting}",
            abort_reason=2,
        )

    # --- state ----------------------------------------------------------------

    def check_alive(self) -> None:
        """Raise AssociationAbortedError if the channel is dead."""
        if self.dead_reason is not None:
            raise AssociationAbortedError(
                f"The association with {self.address} is no longer usable: "
                f"{self.dead_reason}"
            )

    def live_socket(self) -> socket.socket:
        """Return the socket, or raise AssociationAbortedError once closed."""
        if self._socket is None:
            self.check_alive()
            raise AssociationAbortedError(
                f"The association with {self.address} is closed")
        return self._socket

    def _set_timeout(self, sock: socket.socket, timeout: float | None) -> None:
        """Bound the next receive by ``timeout`` seconds; None waits forever.

        Raises OSError if the socket refuses the option (it is closed).
        """
        if not self._kernel_timeouts:
            if timeout != self._socket_timeout:
                sock.settimeout(timeout)
                self._socket_timeout = timeout
            return
        current = self._kernel_wait
        if timeout is None or current is None or current == _NOT_SET:
            if timeout == current:
                return
        elif abs(current - timeout) <= TIMEOUT_SLACK:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
        self._kernel_wait = timeout

    def die(self, reason: str, *, send_abort: bool, abort_reason: int = 0,
            abort_source: int = 0) -> None:
        """Mark the association dead, optionally send A-ABORT, close the socket."""
        if self.dead_reason is None:
            self.dead_reason = reason
        sock = self._socket
        if sock is None:
            return
        if send_abort:
            send_quietly(sock, pdu.encode_abort(abort_source, abort_reason))
        self._socket = None
        try:
            sock.close()
        except OSError:
            pass

    def _protocol_error(self, message: str, abort_reason: int = 0) -> ProtocolError:
        """Abort as the service provider and return the error to raise."""
        full = f"{message} (from {self.address}); the association was aborted"
        self.die(f"protocol error: {message}", send_abort=True,
                 abort_source=2, abort_reason=abort_reason)
        logger.info("Association aborted after a protocol error")
        return ProtocolError(full)

    def _timeout(
        self, waiting: str, timeout_name: str, timeout_value: float | None
    ) -> AssociationTimeoutError:
        """Abort and return the error for a wait that ran out of time."""
        self.die(f"{timeout_name} waiting for the {waiting}", send_abort=True)
        logger.info("Association aborted after a timeout")
        return AssociationTimeoutError(
            f"Timed out waiting for the {waiting} from {self.address}: "
            f"nothing arrived within the {timeout_name} of "
            f"{seconds_text(timeout_value)}; the association was aborted"
        )
