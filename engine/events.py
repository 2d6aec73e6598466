"""Events: what the caller's callbacks receive, and what the processes send.

The public ``Event`` is built in the caller's process. The other classes are
the messages that worker and sender processes put on the events queue. They
are frozen and slotted, so they pickle small and cannot change on the way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class EventType(enum.Enum):
    """The kinds of event a callback can receive."""

    TRANSFER_STARTED = "transfer started"
    FILE_SENDING = "file sending"
    FILE_SENT = "file sent"
    FILE_ERROR = "file error"
    TRANSFER_COMPLETED = "transfer completed"


@dataclass(frozen=True)
class Event:
    """One callback event: a readable ``message`` and its fields in ``data``."""

    type: EventType
    message: str
    data: dict[str, Any] = field(default_factory=dict)


# Messages from the processes to the coordinator.


@dataclass(frozen=True, slots=True)
class FileSending:
    job_id: int
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True, slots=True)
class FileStored:
    """The receiver responded with a success or warning status."""

    job_id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    duration_seconds: float
    status: int
    warning: str | None = None
    # For per-file reports: sends made (1 plus retries) and data set bytes sent.
    attempts: int = 1
    bytes_sent: int | None = None


@dataclass(frozen=True, slots=True)
class FileFailed:
    job_id: int
    error: str
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    file_transfer_syntax: str | None = None
    # For per-file reports: the receiver's status when it responded with a
    # failure, the sends made (0 when the file never reached a sender) and
    # the time from the first send to the failure.
    status: int | None = None
    attempts: int = 0
    duration_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class AssociationFailed:
    """A sender could not open its association; it takes no more files."""

    sender_id: int
    error_type: str
    message: str
    result: int = 0
    source: int = 0
    reason: int = 0


@dataclass(frozen=True, slots=True)
class AssociationOpened:
    sender_id: int


@dataclass(frozen=True, slots=True)
class ProcessFinished:
    """A worker or sender has stopped after its last file."""

    role: str
    process_id: int


@dataclass(frozen=True, slots=True)
class LogMessage:
    """A log record from another process, as a dict of its attributes."""

    record: dict[str, Any]
