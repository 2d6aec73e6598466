"""One synchronous DICOM association as a requestor: negotiation, C-STORE, C-ECHO.

Everything runs on the caller's thread: a request goes out with blocking
socket calls and the response is read right after, each wait bounded by a
timeout of ``Timeouts``. There is no reader thread, so no response can be
taken by anyone else while the caller waits for it.

After an abort, a timeout, a protocol error or a release the association is
closed. Every later ``send_c_store`` or ``send_c_echo`` call then raises
``AssociationAbortedError``, and ``release`` and ``abort`` do nothing.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from engine import pdu
from engine.dimse import (
    RECEIVE_LENGTH,
    FileSlice,
    MessageChannel,
    Payload,
    send_quietly,
)
from engine.dimse import seconds_text as _seconds
from engine.errors import (
    AssociationRejectedError,
    ConnectionFailedError,
    NoContextError,
    ProtocolError,
)
from engine.options import Timeouts
from engine.statuses import StatusCategory, StoreStatus, describe_status
from engine.uids import uid_name

logger = logging.getLogger(__name__)

# Our implementation class UID: the 2.25 root followed by a fixed random UUID
# as an integer (PS3.5 section B.2).
IMPLEMENTATION_CLASS_UID = "2.25.14631631606801446483640040532608070738"
IMPLEMENTATION_VERSION_NAME = "DICOMSEND_010"

MAX_CONTEXTS = 128

# Hints appended to the A-ASSOCIATE-RJ message, by (source, reason).
_REJECT_HINTS = {
    (1, 3): "check that the receiver knows the calling AE title {calling!r}",
    (1, 7): "check the called AE title {called!r}",
    (1, 2): "the receiver does not support the DICOM application context",
}


@dataclass(frozen=True, slots=True)
class ContextRequest:
    """A presentation context to propose: one abstract syntax, its transfer syntaxes."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


def _start_tls(sock: socket.socket, context: ssl.SSLContext, host: str,
               address: str, timeouts: Timeouts) -> ssl.SSLSocket:
    """Run the TLS handshake on a connected socket; close it if that fails."""
    server_hostname = host if context.check_hostname else None
    try:
        sock.settimeout(timeouts.connect)
        secure = context.wrap_socket(sock, server_hostname=server_hostname)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise ConnectionFailedError(
            f"Connection failed: could not establish association with {address} "
            f"(TLS: the receiver's certificate was not accepted: "
            f"{exc.verify_message}); check --tls-ca, or the receiver's certificate"
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise ConnectionFailedError(
            f"Connection failed: could not establish association with {address} "
            f"(TLS handshake failed: {exc}); check that the receiver speaks TLS, "
            "and give our certificate and key (--tls-cert, --tls-key) if it "
            "requires one"
        ) from exc
    logger.info("TLS established with %s (%s)", address, secure.version())
    return secure


def format_address(host: str, port: int) -> str:
    """Return ``host:port``, or ``[host]:port`` for an IPv6 address."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class Association:
    """An established association on which this process is the requestor.

    Create it with ``Association.open``. Use it as a context manager to
    release it on a normal exit and abort it when an exception leaves the
    block.

    Attributes
    ----------
    address : str
        The receiver as ``host:port`` or ``[ipv6]:port``.
    accepted_contexts : dict[tuple[str, str], int]
        (abstract syntax, transfer syntax) -> presentation context ID, for
        every context the receiver accepted.
    rejected_contexts : dict[str, str]
        Abstract syntax -> the reason in words, for the abstract syntaxes of
        which no context was accepted.
    peer_max_pdu_length : int
        The receiver's maximum PDU length; 0 means no limit.
    peer_implementation_class_uid, peer_implementation_version_name : str or None
        What the receiver sent in its user information item.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: str,
        timeouts: Timeouts,
        max_pdu_length: int,
        accept: pdu.AssociateAccept,
        proposed: dict[int, ContextRequest],
    ) -> None:
        self._timeouts = timeouts
        self._message_id = 0
        self.address = address
        self.peer_max_pdu_length = accept.max_pdu_length
        self.peer_implementation_class_uid = accept.implementation_class_uid
        self.peer_implementation_version_name = accept.implementation_version_name

        # Sort the contexts of the A-ASSOCIATE-AC into accepted and rejected.
        self.accepted_contexts: dict[tuple[str, str], int] = {}
        self.rejected_contexts: dict[str, str] = {}
        self._context_abstract: dict[int, str] = {}
        for context_id, request in proposed.items():
            abstract = request.abstract_syntax
            outcome = accept.contexts.get(context_id)
            if outcome is None:
                self.rejected_contexts.setdefault(
                    abstract, "missing from the A-ASSOCIATE-AC")
                continue
            result, transfer_syntax = outcome
            if result == pdu.CONTEXT_ACCEPTED and transfer_syntax:
                self.accepted_contexts.setdefault((abstract, transfer_syntax),
                                                  context_id)
                self._context_abstract[context_id] = abstract
            else:
                self.rejected_contexts.setdefault(
                    abstract,
                    pdu.CONTEXT_RESULTS.get(result, f"unknown result {result}"),
                )

        # An abstract syntax with one accepted context is not rejected.
        for abstract in set(self._context_abstract.values()):
            self.rejected_contexts.pop(abstract, None)

        self._channel = MessageChannel(
            sock, address, timeouts, max_pdu_length, accept.max_pdu_length,
            list(self._context_abstract),
        )

    # --- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        calling_ae_title: str,
        called_ae_title: str,
        contexts: Sequence[ContextRequest],
        max_pdu_length: int = 16384,
        timeouts: Timeouts | None = None,
        implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
        implementation_version_name: str | None = IMPLEMENTATION_VERSION_NAME,
        tls: ssl.SSLContext | None = None,
    ) -> Association:
        """Connect to a receiver and negotiate an association.

        Parameters
        ----------
        host : str
            Host name, IPv4 or IPv6 address of the receiver.
        port : int
            TCP port of the receiver.
        calling_ae_title, called_ae_title : str
            Our AE title and the receiver's, 1 to 16 ASCII characters.
        contexts : sequence of ContextRequest
            1 to 128 presentation contexts; they get the IDs 1, 3, 5, ...
        max_pdu_length : int
            The maximum PDU length we accept from the receiver; 0 means no
            limit.
        timeouts : Timeouts, optional
            ``connect`` bounds the TCP connect, ``acse`` the wait for the
            A-ASSOCIATE-AC, ``network`` every socket read and write.
        implementation_class_uid, implementation_version_name : str
            Sent in the user information item; the defaults identify dicomsend.
        tls : ssl.SSLContext or None
            Secure the connection with TLS (DICOM TLS) using this context;
            the handshake is bounded by the connect timeout.

        Returns
        -------
        Association
            The established association.

        Raises
        ------
        ValueError
            If ``contexts`` is empty or has more than 128 entries, or an AE
            title is invalid.
        ConnectionFailedError
            If the TCP connection fails, or the receiver closes it, aborts or
            sends nothing within the ACSE timeout instead of an A-ASSOCIATE
            response.
        AssociationRejectedError
            If the receiver responds with A-ASSOCIATE-RJ.
        ProtocolError
            If the answer is malformed; the connection is aborted.
        """
        if not contexts:
            raise ValueError("Invalid contexts []: propose at least one context")
        if len(contexts) > MAX_CONTEXTS:
            raise ValueError(
                f"Invalid contexts: {len(contexts)} presentation contexts "
                f"proposed, an association allows at most {MAX_CONTEXTS}"
            )
        timeouts = timeouts or Timeouts()
        address = format_address(host, port)
        proposed = {2 * index + 1: request for index, request in enumerate(contexts)}
        request_pdu = pdu.encode_associate_rq(
            calling_ae_title,
            called_ae_title,
            [(cid, req.abstract_syntax, req.transfer_syntaxes)
             for cid, req in proposed.items()],
            max_pdu_length,
            implementation_class_uid,
            implementation_version_name,
        )

        # Connect; create_connection tries every address getaddrinfo returns.
        logger.info("Connecting to %s", address)
        try:
            sock = socket.create_connection((host, port), timeout=timeouts.connect)
        except TimeoutError as exc:
            raise ConnectionFailedError(
                f"Connection failed: could not establish association with "
                f"{address} (TCP connect timed out after "
                f"{_seconds(timeouts.connect)})"
            ) from exc
        except OSError as exc:
            raise ConnectionFailedError(
                f"Connection failed: could not establish association with "
                f"{address} ({exc.strerror or exc})"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = _start_tls(sock, tls, host, address, timeouts)

        try:
            accept = cls._negotiate(sock, address, request_pdu, timeouts)
        except AssociationRejectedError as exc:
            sock.close()
            hint = _REJECT_HINTS.get((exc.source, exc.reason))
            if hint is None and exc.transient:
                hint = "the receiver may accept a later attempt"
            if hint is None:
                raise
            titles = {"called": called_ae_title, "calling": calling_ae_title}
            raise AssociationRejectedError(
                f"{exc}; {hint.format(**titles)}",
                result=exc.result, source=exc.source, reason=exc.reason,
            ) from None
        except BaseException:
            sock.close()
            raise

        association = cls(sock, address, timeouts, max_pdu_length, accept, proposed)
        association._log_established()
        return association

    @staticmethod
    def _negotiate(
        sock: socket.socket, address: str, request_pdu: bytes, timeouts: Timeouts
    ) -> pdu.AssociateAccept:
        """Send the A-ASSOCIATE-RQ and return the decoded A-ASSOCIATE-AC."""
        failed = f"Connection failed: could not establish association with {address}"

        # Send the request and read the response PDU, header first.
        deadline = None if timeouts.acse is None else time.monotonic() + timeouts.acse
        try:
            sock.settimeout(timeouts.network)
            sock.sendall(request_pdu)
            header = _receive_exactly(sock, pdu.PDU_HEADER_LENGTH, deadline,
                                      timeouts.network)
            pdu_type, length = pdu.parse_pdu_header(header)
            body = _receive_exactly(sock, length, deadline, timeouts.network)
        except TimeoutError as exc:
            if deadline is not None and time.monotonic() >= deadline:
                limit = f"the ACSE timeout of {_seconds(timeouts.acse)}"
            else:
                limit = f"the network timeout of {_seconds(timeouts.network)}"
            raise ConnectionFailedError(
                f"{failed} (no A-ASSOCIATE response within {limit})"
            ) from exc
        except ProtocolError as exc:
            send_quietly(sock, pdu.encode_abort(2, 1))
            raise ProtocolError(
                f"Invalid response to the A-ASSOCIATE-RQ from {address}: {exc}"
            ) from exc
        except OSError as exc:
            raise ConnectionFailedError(f"{failed} ({exc.strerror or exc})") from exc

        # Raise for any response other than A-ASSOCIATE-AC.
        if pdu_type == pdu.A_ASSOCIATE_RJ:
            reject = pdu.decode_associate_rj(body)
            raise AssociationRejectedError(
                f"Association rejected by {address}: {reject.describe()}",
                result=reject.result, source=reject.source, reason=reject.reason,
            )
        if pdu_type == pdu.A_ABORT:
            source, reason = pdu.decode_abort(body)
            raise ConnectionFailedError(
                f"{failed} (the receiver sent A-ABORT instead of A-ASSOCIATE-AC "
                f"or -RJ, {pdu.describe_abort(source, reason)})"
            )
        if pdu_type != pdu.A_ASSOCIATE_AC:
            send_quietly(sock, pdu.encode_abort(2, 2))
            raise ProtocolError(
                f"Invalid response to the A-ASSOCIATE-RQ from {address}: received "
                f"{pdu.PDU_NAMES[pdu_type]}"
            )
        try:
            accept = pdu.decode_associate_ac(body)
            if 0 < accept.max_pdu_length <= pdu.PDV_HEADER_LENGTH:
                raise ProtocolError(
                    f"Maximum PDU length {accept.max_pdu_length} leaves no room "
                    "for data"
                )
        except ProtocolError as exc:
            send_quietly(sock, pdu.encode_abort(2, 6))
            raise ProtocolError(
                f"Invalid A-ASSOCIATE-AC from {address}: {exc}"
            ) from exc
        return accept

    def _log_established(self) -> None:
        logger.info(
            "Association established with %s (max PDU %s)",
            self.address, self.peer_max_pdu_length or "unlimited",
        )
        if not logger.isEnabledFor(logging.INFO):
            return
        for (abstract, transfer), _ in sorted(
                self.accepted_contexts.items(), key=lambda item: item[1]):
            logger.info(
                "Presentation context accepted: %s, transfer syntax: %s",
                uid_name(abstract), uid_name(transfer),
            )
        for abstract, reason in self.rejected_contexts.items():
            logger.info(
                "Presentation context rejected: %s (%s)", uid_name(abstract), reason
            )

    # --- lookup ---------------------------------------------------------------

    def find_context(self, sop_class_uid: str, transfer_syntax_uid: str) -> int | None:
        """Return the accepted context ID for a SOP class and transfer syntax."""
        return self.accepted_contexts.get((sop_class_uid, transfer_syntax_uid))

    @property
    def is_alive(self) -> bool:
        """True while the association can still carry requests."""
        return self._channel.dead_reason is None

    # --- DIMSE ----------------------------------------------------------------

    def send_c_store(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        payload: Payload,
        *,
        priority: int = 0,
    ) -> StoreStatus:
        """Send one C-STORE-RQ with its data set and return the receiver's status.

        Parameters
        ----------
        context_id : int
            An accepted presentation context for ``sop_class_uid``, whose
            transfer syntax the data set is encoded in.
        sop_class_uid, sop_instance_uid : str
            Affected SOP Class UID and Affected SOP Instance UID.
        payload : bytes, bytearray, memoryview or FileSlice
            The encoded data set, without file meta information.
        priority : int
            0 medium, 1 high, 2 low.

        Returns
        -------
        StoreStatus
            The status code, error comment and status category.

        Raises
        ------
        ValueError
            If ``context_id`` was not accepted or is for another SOP class.
        FileError
            If the FileSlice cannot be read in full. When part of the data set
            was already sent, the association is aborted as well.
        AssociationAbortedError
            If the association is no longer usable, or the receiver aborts,
            releases or closes it before its response.
        AssociationTimeoutError
            If a send blocks past the network timeout or the response does not
            arrive within the DIMSE timeout; the association is aborted.
        ProtocolError
            If the response is malformed or belongs to another message. The
            association is then aborted.
        """
        self._channel.check_alive()
        abstract = self._context_abstract.get(context_id)
        if abstract != sop_class_uid:
            raise ValueError(self._context_mismatch(context_id, sop_class_uid))
        message_id = self._next_message_id()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "Sending C-STORE-RQ: message ID %s, %s, SOP Instance %s",
                message_id, uid_name(sop_class_uid), sop_instance_uid,
            )

        # Send the command set and the data set, then read the C-STORE-RSP.
        command = pdu.encode_c_store_rq(
            message_id, sop_class_uid, sop_instance_uid, priority)
        self._channel.send_message(
            context_id, command, payload, f"C-STORE-RQ (message ID {message_id})")
        response = self._channel.read_response(
            pdu.C_STORE_RSP, message_id, context_id,
            f"C-STORE-RSP (message ID {message_id})",
        )
        status = response.status if response.status is not None else 0
        category, meaning = describe_status(status)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("C-STORE response: %s (0x%04X)", meaning, status)
        return StoreStatus(status, response.error_comment, category)

    def send_c_echo(self) -> int:
        """Send a C-ECHO-RQ on the Verification context and return the status.

        Raises
        ------
        NoContextError
            If the receiver accepted no context for the Verification SOP class.
        AssociationAbortedError, AssociationTimeoutError, ProtocolError
            As for ``send_c_store``.
        """
        self._channel.check_alive()
        context_id = next(
            (cid for cid, abstract in self._context_abstract.items()
             if abstract == pdu.VERIFICATION_SOP_CLASS),
            None,
        )
        if context_id is None:
            raise NoContextError(
                f"Unable to send C-ECHO to {self.address} as no context for the "
                "Verification SOP class (1.2.840.10008.1.1) was accepted; "
                "propose it when opening the association"
            )
        message_id = self._next_message_id()
        logger.debug("Sending C-ECHO-RQ: message ID %s", message_id)
        self._channel.send_message(
            context_id, pdu.encode_c_echo_rq(message_id), None,
            f"C-ECHO-RQ (message ID {message_id})",
        )
        response = self._channel.read_response(
            pdu.C_ECHO_RSP, message_id, context_id,
            f"C-ECHO-RSP (message ID {message_id})",
        )
        status = response.status if response.status is not None else 0
        logger.debug("C-ECHO response: %s (0x%04X)", describe_status(status)[1],
                     status)
        return status

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 65535 + 1
        return self._message_id

    def _context_mismatch(self, context_id: int, sop_class_uid: str) -> str:
        abstract = self._context_abstract.get(context_id)
        if abstract is None:
            return (
                f"Invalid context_id {context_id}: the receiver did not accept "
                "this presentation context"
            )
        return (
            f"Invalid context_id {context_id}: it was accepted for "
            f"{abstract}, not for SOP class {sop_class_uid}"
        )

    # --- release and abort ----------------------------------------------------

    def release(self) -> None:
        """Release the association (A-RELEASE-RQ, then wait for A-RELEASE-RP).

        Does nothing when the association is already closed. If the receiver
        requests a release at the same time, its request is confirmed and our
        wait goes on. This is the release collision of the PS3.8 state machine,
        states Sta9 and Sta11 for the requestor.

        Raises
        ------
        AssociationTimeoutError
            If no A-RELEASE-RP arrives within the ACSE timeout; the association
            is aborted.
        AssociationAbortedError
            If the receiver aborts or closes the connection instead.
        ProtocolError
            If the receiver sends something other than a release PDU.
        """
        channel = self._channel
        if channel.dead_reason is not None:
            return
        waiting = "A-RELEASE-RP"
        channel.send_buffers([pdu.encode_release_rq()], "A-RELEASE-RQ")
        timeout = self._timeouts.acse
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pdu_type, body = channel.read_pdu(deadline, waiting, "ACSE timeout",
                                              timeout)
            if pdu_type == pdu.A_RELEASE_RP:
                break
            if pdu_type == pdu.A_RELEASE_RQ:
                logger.debug("Release collision with %s", self.address)
                channel.send_buffers([pdu.encode_release_rp()], "A-RELEASE-RP")
            elif pdu_type == pdu.P_DATA_TF:
                logger.debug("Ignored a P-DATA-TF that arrived during release")
            else:
                channel.handle_non_data_pdu(pdu_type, body, waiting)
        channel.die("the association was released", send_abort=False)
        logger.info("Association released")

    def abort(self) -> None:
        """Abort the association (A-ABORT, then close); does nothing if closed."""
        if self._channel.dead_reason is None:
            self._channel.die("the association was aborted by this side",
                              send_abort=True)
            logger.info("Association aborted")

    def close(self) -> None:
        """Abort the association if it is still open; same as ``abort``."""
        self.abort()

    def __enter__(self) -> Association:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.release()
        else:
            self.abort()


def _receive_exactly(
    sock: socket.socket, length: int, deadline: float | None,
    network: float | None,
) -> bytes:
    """Read exactly ``length`` bytes; TimeoutError past the deadline."""
    parts = []
    remaining_bytes = length
    while remaining_bytes:
        wait = network
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            wait = remaining if wait is None else min(wait, remaining)
        sock.settimeout(wait)
        data = sock.recv(min(remaining_bytes, RECEIVE_LENGTH))
        if not data:
            raise ConnectionResetError(0, "the receiver closed the connection")
        parts.append(data)
        remaining_bytes -= len(data)
    return b"".join(parts)


__all__ = [
    "Association",
    "ContextRequest",
    "FileSlice",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "Payload",
    "StatusCategory",
    "StoreStatus",
    "format_address",
]
