"""C-ECHO: check that a receiver responds before sending it a batch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from engine.association import Association, ContextRequest
from engine.options import Address, Timeouts
from engine.statuses import describe_status
from engine.tls import TlsSettings, build_context

logger = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


@dataclass(frozen=True, slots=True)
class EchoResult:
    status: int
    meaning: str
    round_trip_seconds: float


def echo(
    address: Address,
    *,
    calling_ae_title: str,
    called_ae_title: str,
    max_pdu_length: int,
    timeouts: Timeouts,
    tls: TlsSettings | None = None,
) -> EchoResult:
    """Open an association, send one C-ECHO-RQ and release.

    Raises
    ------
    ConnectionFailedError, AssociationRejectedError, AssociationError
        If the association cannot be opened or breaks.
    NoContextError
        If the receiver does not accept the Verification SOP class.
    """
    context = ContextRequest(
        VERIFICATION_SOP_CLASS, (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
    )
    with Association.open(
        address.host,
        address.port,
        calling_ae_title=calling_ae_title,
        called_ae_title=called_ae_title,
        contexts=[context],
        max_pdu_length=max_pdu_length,
        timeouts=timeouts,
        tls=build_context(tls) if tls is not None else None,
    ) as association:
        started = time.perf_counter()
        status = association.send_c_echo()
        elapsed = time.perf_counter() - started

    _, meaning = describe_status(status)
    return EchoResult(status, meaning, elapsed)
