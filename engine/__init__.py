"""dicomsend: send DICOM files to a storage SCP, re-encoding them on the way."""

from __future__ import annotations

import logging

from engine.errors import (
    AssociationAbortedError,
    AssociationError,
    AssociationRejectedError,
    AssociationTimeoutError,
    ConnectionFailedError,
    DicomSendError,
    FileError,
    InvalidDicomFileError,
    NoContextError,
    NotDicomError,
    ProtocolError,
    SendInterrupted,
)
from engine.events import Event, EventType
from engine.result import FailedFile, SendResult
from engine.scu import StoreScu

logging.getLogger("engine").addHandler(logging.NullHandler())

__all__ = [
    "AssociationAbortedError",
    "AssociationError",
    "AssociationRejectedError",
    "AssociationTimeoutError",
    "ConnectionFailedError",
    "DicomSendError",
    "Event",
    "EventType",
    "FailedFile",
    "FileError",
    "InvalidDicomFileError",
    "NoContextError",
    "NotDicomError",
    "ProtocolError",
    "SendInterrupted",
    "SendResult",
    "StoreScu",
]
