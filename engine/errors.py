"""Exceptions raised by the dicomsend engine.

The tree::

    DicomSendError
    ├── AssociationError               an association could not be used
    │   ├── ConnectionFailedError      TCP connect or A-ASSOCIATE-AC never came
    │   ├── AssociationRejectedError   the receiver sent A-ASSOCIATE-RJ
    │   ├── AssociationAbortedError    A-ABORT received or the socket closed
    │   ├── AssociationTimeoutError    ARTIM, DIMSE or network timeout
    │   └── ProtocolError              the peer sent something malformed
    ├── FileError                      one input file cannot be sent
    │   ├── NotDicomError              the file is not a DICOM object at all
    │   ├── InvalidDicomFileError      DICOM, but truncated or missing a UID
    │   └── NoContextError             no accepted presentation context fits
    └── SendInterrupted                send() was interrupted (Ctrl-C)

Option validation raises ``ValueError``, as the Python API promises. Errors
from the ``transcode`` package keep their own classes
(``transcode.errors.TranscodeError``).
"""

from __future__ import annotations


class DicomSendError(Exception):
    """Base class of every error the engine raises on purpose."""


class AssociationError(DicomSendError):
    """An association with the receiver could not be opened or used."""


class ConnectionFailedError(AssociationError):
    """The receiver could not be reached, or sent no response to the A-ASSOCIATE-RQ."""


class AssociationRejectedError(AssociationError):
    """The receiver responded with A-ASSOCIATE-RJ.

    ``result``, ``source`` and ``reason`` are the numeric fields of the PDU
    (PS3.8 section 9.3.4); ``transient`` is True for result 2
    (rejected-transient), which is worth retrying later.
    """

    def __init__(self, message: str, result: int = 1, source: int = 1,
                 reason: int = 1) -> None:
        super().__init__(message)
        self.result = result
        self.source = source
        self.reason = reason

    @property
    def transient(self) -> bool:
        return self.result == 2


class AssociationAbortedError(AssociationError):
    """The receiver aborted the association or closed the connection."""


class AssociationTimeoutError(AssociationError):
    """A wait on the receiver ran past its timeout."""


class ProtocolError(AssociationError):
    """The receiver sent a PDU or DIMSE message that breaks the standard."""


class FileError(DicomSendError):
    """One input file cannot be sent; the batch goes on without it."""


class NotDicomError(FileError):
    """The input is not a DICOM file or data set."""


class InvalidDicomFileError(FileError):
    """The file is DICOM but cannot be sent as it is: truncated, or a UID is missing."""


class NoContextError(FileError):
    """No presentation context the receiver accepted fits the file."""


class SendInterrupted(DicomSendError):
    """The transfer was interrupted before every file had an outcome."""
