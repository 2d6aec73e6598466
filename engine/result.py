"""The summary that ``StoreScu.send`` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.commitment import CommitmentResult
    from engine.reports import FileRecord


@dataclass(frozen=True, slots=True)
class FailedFile:
    """A file that was not stored, with what went wrong and what to do."""

    file: str
    error: str


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to every file of one ``send``.

    ``successful + failed == total_files`` always holds. Files stored with a
    warning status count as successful and add one line to ``warnings``.
    ``skipped`` counts files found in directories that are not DICOM objects
    to store (clutter, DICOMDIR); they are not part of ``total_files``.
    ``interrupted`` is True when Ctrl-C stopped the transfer; the files it
    left unsent count as failed. ``already_stored`` counts files a resume
    journal showed as stored by an earlier run; they were not sent again
    and are not part of ``total_files``. ``records`` contains one record per
    file in the order outcomes arrived, plus a commitment record per stored
    file when storage commitment was requested. ``commitment`` is the
    receiver's storage commitment report, or None.
    """

    successful: int
    failed: int
    warnings: tuple[str, ...]
    total_files: int
    skipped: int
    duration_seconds: float
    failures: tuple[FailedFile, ...]
    skipped_files: tuple[str, ...]
    interrupted: bool = False
    already_stored: int = 0
    records: tuple[FileRecord, ...] = ()
    commitment: CommitmentResult | None = None

    @property
    def all_stored(self) -> bool:
        return self.failed == 0
